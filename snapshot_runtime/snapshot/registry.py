"""Snapshot backends by name, and the choice of one for a job (before any freeze).

``BACKENDS`` is the one explicit table: a new backend is one module and one
line here (docs/snapshot-backends.md); importing a backend module registers
nothing. ``choose_backend`` builds the named backends in order of preference
and asks each ``decide()``: the first that accepts is used; every decline is
kept (name and reason) for the job state, status and spans. A declined backend
is closed at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from snapshot_runtime.core.redact import scrub
from snapshot_runtime.snapshot.backend import SnapshotRequest, Snapshotter, SnapshotterFactory

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKENDS",
    "BackendChoice",
    "BackendDeclined",
    "azure_blob_backend",
    "choose_backend",
    "host_backend",
    "host_required_backend",
]


def azure_blob_backend(request: SnapshotRequest) -> Snapshotter:
    """One Snapshot Blob request per disk, from the disks' SAS URLs."""
    # Each factory imports its backend when the backend is built: always before
    # the freeze (choose_backend runs before prepare, I1), and a job (or a
    # module that only needs DEFAULT_BACKENDS) never loads an SDK it does not use.
    from snapshot_runtime.snapshot.azure_blob import AzureBlobSnapshotter  # noqa: PLC0415

    settings = request.settings
    return AzureBlobSnapshotter(
        settings.disk_sas_urls,
        policy=request.policy,
        deadline_seconds=request.deadline_seconds,
        metadata=dict(settings.backup_metadata),
    )


def host_backend(request: SnapshotRequest) -> Snapshotter:
    """One WireServer dosnapshot for all disks; declines when presnapshot fails."""
    from snapshot_runtime.snapshot.host import HostSnapshotter  # noqa: PLC0415

    return HostSnapshotter(request)


def host_required_backend(request: SnapshotRequest) -> Snapshotter:
    """The host path when it is the only one (onlyHost): accepts whatever presnapshot said."""
    from snapshot_runtime.snapshot.host import HostSnapshotter  # noqa: PLC0415

    return HostSnapshotter(request, required=True)


# name -> factory. The one place a backend is registered.
BACKENDS: Mapping[str, SnapshotterFactory] = {
    "azure_blob": azure_blob_backend,
    "host": host_backend,
    "host_required": host_required_backend,
}

# The job's order of preference when none is configured.
DEFAULT_BACKENDS: tuple[str, ...] = ("azure_blob",)


@dataclass(frozen=True)
class BackendDeclined:
    """A backend that answered "not me" (or could not be built), and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class BackendChoice:
    """The backend to use (None: every one declined) and the declines before it."""

    name: str | None
    snapshotter: Snapshotter | None
    declined: tuple[BackendDeclined, ...]


def choose_backend(
    names: Iterable[str],
    request: SnapshotRequest,
    *,
    backends: Mapping[str, SnapshotterFactory] = BACKENDS,
) -> BackendChoice:
    """The first of ``names`` (in order) whose backend accepts; every decline recorded.

    An unknown name, or a factory or ``decide`` that raises, counts as a
    decline with the reason (the exception's type and text), so a broken
    backend falls back instead of failing the job.
    """
    declined: list[BackendDeclined] = []
    for name in names:
        factory = backends.get(name)
        if factory is None:
            declined.append(BackendDeclined(name, "unknown backend"))
            continue
        snapshotter: Snapshotter | None = None
        try:
            snapshotter = factory(request)
            decision = snapshotter.decide()
        except Exception as exc:
            if snapshotter is not None:
                snapshotter.close()
            # I5: an exception text may quote a URL; scrub SAS fragments.
            declined.append(BackendDeclined(name, scrub(f"{type(exc).__name__}: {exc}")))
            continue
        if decision.use:
            return BackendChoice(name, snapshotter, tuple(declined))
        snapshotter.close()
        declined.append(BackendDeclined(name, decision.reason or "declined"))
    return BackendChoice(None, None, tuple(declined))
