"""Azure resource detection: IMDS at most daily, cached for the runtime (docs/telemetry.md).

``detect_azure_vm`` runs opentelemetry-resource-detector-azure's
``AzureVMResourceDetector`` (one GET of
``http://169.254.169.254/metadata/instance/compute``, 0.2 s timeout) and
normalises what it says: ``cloud.platform`` becomes the current semantic
convention value ``azure.vm`` (the detector still says ``azure_vm``),
``cloud.account.id`` and ``azure.resource_group.name`` come from
``cloud.resource_id``, and only ``azure_resource.ALLOWED_KEYS`` are kept
(not the detector's ``service.instance.id``: a job's instance is its own).

IMDS is link-local and must never be asked through a proxy (Azure rejects a
proxied request, and a proxy would see the VM's metadata): the detector uses
``urllib``, which honours ``HTTP_PROXY``, so it runs with an opener that has
no proxy at all, whatever the environment says.

``refresh`` keeps the cache: ``<state-dir>/azure-resource.json`` (the
sidecar's copy, survives a reboot) and ``<spool>/azure-resource.json`` (the
runtime's, on a tmpfs a reboot empties, republished at every start like the
public key). IMDS is asked only when the state copy is older than
``max_age`` (a day), or missing; a failed detection keeps the old copy (the
runtime stops believing it after a week) and is retried after
``retry_seconds``. No IMDS: no cache, the sidecar and the runtime go on.

Thread: ``ResourceRefresher`` runs ``refresh`` on its own daemon thread,
first at start, then when due; ``stop`` ends it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from snapshot_runtime.core.atomic_file import write_atomic
from snapshot_runtime.telemetry.azure_resource import (
    CACHE_FILE,
    cache_document,
    clean_attributes,
    read_cache,
)

__all__ = [
    "DAY_SECONDS",
    "RETRY_SECONDS",
    "RefreshResult",
    "ResourceRefresher",
    "detect_azure_vm",
    "normalise",
    "refresh",
]

_log = logging.getLogger("snapshot_sidecar.resource_detection")

DAY_SECONDS = 24 * 3600.0
RETRY_SECONDS = 3600.0
# The value the detector (0.3.0) still emits, and the current semantic convention.
_DEPRECATED_PLATFORM = "azure_vm"
_PLATFORM = "azure.vm"


def normalise(detected: dict[str, object]) -> dict[str, str]:
    """Detector attributes as cache attributes (see the module docstring). Pure."""
    attrs = clean_attributes(detected)
    if attrs.get("cloud.platform") == _DEPRECATED_PLATFORM:
        attrs["cloud.platform"] = _PLATFORM
    # /subscriptions/<id>/resourceGroups/<name>/providers/Microsoft.Compute/...
    parts = attrs.get("cloud.resource_id", "").strip("/").split("/")
    lowered = [p.lower() for p in parts]
    if len(parts) >= 2 and lowered[0] == "subscriptions":
        attrs.setdefault("cloud.account.id", parts[1])
    if len(parts) >= 4 and lowered[2] == "resourcegroups":
        attrs.setdefault("azure.resource_group.name", parts[3])
    return clean_attributes(attrs)


@contextlib.contextmanager
def _no_proxy() -> Iterator[None]:
    """``urllib.request.urlopen`` without any proxy while inside (then as before)."""
    previous = getattr(urllib.request, "_opener", None)
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler({})))
    try:
        yield
    finally:
        urllib.request.install_opener(previous)  # None: back to the default opener


def detect_azure_vm() -> dict[str, str]:
    """The VM's resource attributes from IMDS, ``{}`` when there is no IMDS (fast: 0.2 s)."""
    from opentelemetry.resource.detector.azure.vm import (  # noqa: PLC0415
        AzureVMResourceDetector,
    )

    with _no_proxy():
        try:
            resource = AzureVMResourceDetector().detect()
        except Exception as exc:  # a malformed IMDS answer: no cache, never a crash
            _log.warning("Azure resource detection failed: %s", type(exc).__name__)
            return {}
    attrs = normalise(dict(resource.attributes))
    return attrs if attrs.get("cloud.provider") == "azure" and attrs.get("host.id") else {}


@dataclass(frozen=True)
class RefreshResult:
    """- detected: IMDS was asked (and answered: ``attributes`` non-empty).
    - attributes: what the runtime will read (from IMDS or the state copy).
    - next_seconds: when to call ``refresh`` again.
    """

    detected: bool
    attributes: dict[str, str]
    next_seconds: float


def _publish(spool: Path, data: bytes) -> None:
    spool.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = spool / CACHE_FILE
    with contextlib.suppress(FileNotFoundError):
        if target.read_bytes() == data:
            return
    write_atomic(target, data, mode=0o644, fsync=False)  # a tmpfs: fsync buys nothing


def refresh(
    state_dir: str | Path,
    spool: str | Path,
    *,
    detect: Callable[[], dict[str, str]] = detect_azure_vm,
    clock: Callable[[], float] = time.time,
    max_age: float = DAY_SECONDS,
    retry_seconds: float = RETRY_SECONDS,
) -> RefreshResult:
    """Ask IMDS when the cache is due, and (re)publish the cache to the spool."""
    state_copy = Path(state_dir) / CACHE_FILE
    now = clock()
    cached = None
    with contextlib.suppress(OSError, ValueError):
        cached = read_cache(state_copy, now=now)
    if cached is not None and now - cached.detected_at < max_age:
        _publish(Path(spool), cache_document(cached.attributes, cached.detected_at))
        return RefreshResult(False, cached.attributes, max_age - (now - cached.detected_at))
    attributes = detect()
    if attributes:
        data = cache_document(attributes, now)
        write_atomic(state_copy, data, mode=0o644)
        _publish(Path(spool), data)
        _log.info(
            "Azure resource: %s in %s (cached for the runtime)",
            attributes.get("host.id"),
            attributes.get("cloud.region"),
        )
        return RefreshResult(True, attributes, max_age)
    if cached is not None:  # IMDS did not answer this time: the older copy still serves
        _publish(Path(spool), cache_document(cached.attributes, cached.detected_at))
        return RefreshResult(False, cached.attributes, retry_seconds)
    _log.info("no Azure IMDS answered: spans carry no cloud.* resource attributes")
    return RefreshResult(False, {}, retry_seconds)


class ResourceRefresher:
    """``refresh`` on a daemon thread: once at start, then when due, until ``stop``."""

    def __init__(
        self,
        state_dir: str | Path,
        spool: str | Path,
        stop: threading.Event,
        *,
        detect: Callable[[], dict[str, str]] = detect_azure_vm,
    ) -> None:
        self.state_dir = state_dir
        self.spool = spool
        self.stop = stop
        self.detect = detect
        self.thread = threading.Thread(target=self._run, name="resource-detection", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                wait = refresh(self.state_dir, self.spool, detect=self.detect).next_seconds
            except OSError as exc:  # the spool or state dir unwritable: try again later
                _log.warning("Azure resource cache not written: %s", exc)
                wait = RETRY_SECONDS
            self.stop.wait(max(1.0, wait))
