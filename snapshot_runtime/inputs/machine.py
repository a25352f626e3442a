"""Facts about this machine and its clock that status documents and guards carry.

The status shape needs a ``uniqueMachineId`` and UTC timestamps; both the job
and the extension handler write status, so both read them here.

``read_vm_identity`` is what the handler's sequence and task guards are keyed
to. It must change when the VM is restored or cloned, or a restored VM would
refuse its first job as "already processed". ``/etc/machine-id`` does not
qualify (a disk clone keeps it). The SMBIOS product UUID does: on Azure it is
the VM id, new for every VM created from a restored or copied disk. The guest
agent's ``HostingEnvironmentConfig.xml`` adds its ``Role`` GUID, the value the
reference compares (its ``MachineIdentity``). Paths are parameters so tests
point them at fixtures; ``parse_role_guid`` and ``VmIdentity.key`` are pure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from snapshot_runtime.core.untrusted_file import read_at_most

__all__ = [
    "DEFAULT_HOSTING_CONFIG_PATH",
    "DEFAULT_PRODUCT_UUID_PATH",
    "VmIdentity",
    "machine_id",
    "parse_role_guid",
    "read_vm_identity",
    "utcnow",
]

DEFAULT_PRODUCT_UUID_PATH = "/sys/class/dmi/id/product_uuid"
DEFAULT_HOSTING_CONFIG_PATH = "/var/lib/waagent/HostingEnvironmentConfig.xml"
# The agent's file is a few KiB; a sysfs attribute is one line.
_MAX_IDENTITY_FILE = 1024 * 1024
_MAX_IDENTITY_TEXT = 128


def machine_id() -> str:
    """systemd's /etc/machine-id, else the host name (containers may lack the file)."""
    with contextlib.suppress(OSError), open("/etc/machine-id", encoding="ascii") as fh:
        value = fh.read().strip()
        if value:
            return value
    return socket.gethostname()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class VmIdentity:
    """What identifies this VM across reboots but not across restore or clone."""

    product_uuid: str | None
    role_guid: str | None

    @property
    def key(self) -> str | None:
        """One comparable text; None when neither part is known."""
        if self.product_uuid is None and self.role_guid is None:
            return None
        return f"product_uuid={self.product_uuid or '-'};role_guid={self.role_guid or '-'}"


def _normal_id(text: str) -> str | None:
    """A UUID/GUID as lower case without braces; None for nothing usable."""
    value = text.strip().strip("{}").strip().lower()
    if not value or len(value) > _MAX_IDENTITY_TEXT or not value.isprintable():
        return None
    # An all-zero UUID is what firmware without one reports: no identity.
    if not value.replace("-", "").strip("0"):
        return None
    return value


def parse_role_guid(xml_text: str) -> str | None:
    """The ``guid`` of the first ``Role`` element of HostingEnvironmentConfig.xml,
    as the reference reads it; None if absent or the XML is malformed. Pure."""
    try:
        # The agent's own file (root-only /var/lib/waagent), capped at 1 MiB.
        # ElementTree never resolves external entities, and expat >= 2.4.1
        # (the one CPython ships with here) limits entity expansion.
        root = ET.fromstring(xml_text)  # noqa: S314
    except ET.ParseError:
        return None
    for element in root.iter():
        tag = element.tag.rpartition("}")[2] if isinstance(element.tag, str) else ""
        if tag == "Role":
            guid = element.get("guid")
            return _normal_id(guid) if guid is not None else None
    return None


def _read_small(path: str) -> str | None:
    """A regular file's text (at most 1 MiB), or None if absent/unreadable/other."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = read_at_most(fd, _MAX_IDENTITY_FILE + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > _MAX_IDENTITY_FILE:
        return None
    return data.decode("utf-8", errors="replace")


def read_vm_identity(
    *,
    product_uuid_path: str = DEFAULT_PRODUCT_UUID_PATH,
    hosting_config_path: str = DEFAULT_HOSTING_CONFIG_PATH,
) -> VmIdentity:
    """This VM's identity; a part that cannot be read is None (never raises)."""
    uuid_text = _read_small(product_uuid_path)
    xml_text = _read_small(hosting_config_path)
    return VmIdentity(
        product_uuid=_normal_id(uuid_text) if uuid_text is not None else None,
        role_guid=parse_role_guid(xml_text) if xml_text is not None else None,
    )
