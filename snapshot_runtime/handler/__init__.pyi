"""The Azure extension handler: HandlerEnvironment.json, N.settings, protected
settings, guards, the job daemon, and handler status."""

from .commands import handler_main as handler_main

__all__ = [
    "handler_main",
]
