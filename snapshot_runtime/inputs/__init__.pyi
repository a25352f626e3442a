"""What a job is given, parsed and validated once: handler settings, the plugin
config, backup metadata, blob URLs, facts about this machine."""

from .machine import machine_id as machine_id
from .machine import utcnow as utcnow
from .plugin_config import MAX_TIMEOUT_SECONDS as MAX_TIMEOUT_SECONDS
from .plugin_config import PluginConfig as PluginConfig
from .plugin_config import load_plugin_config as load_plugin_config
from .plugin_config_file import find_config_path as find_config_path
from .settings import HandlerSettings as HandlerSettings
from .settings import load_settings_file as load_settings_file
from .settings import parse_handler_settings as parse_handler_settings

__all__ = [
    "MAX_TIMEOUT_SECONDS",
    "HandlerSettings",
    "PluginConfig",
    "find_config_path",
    "load_plugin_config",
    "load_settings_file",
    "machine_id",
    "parse_handler_settings",
    "utcnow",
]
