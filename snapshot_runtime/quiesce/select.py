"""The quiescer for a workload.conf: MariaDB/MySQL, PostgreSQL, or none (Oracle)."""

from __future__ import annotations

from snapshot_runtime.inputs.workload_conf import WorkloadConf
from snapshot_runtime.quiesce.quiescer import Quiescer

__all__ = ["open_quiescer"]


def open_quiescer(conf: WorkloadConf) -> Quiescer | None:
    """The quiescer for ``conf``; None for a workload recognised but not supported
    (Oracle: the job freezes and snapshots, filesystem-consistent, with
    ``WorkloadUnsupported``). The driver is imported here, only when needed."""
    if conf.name in ("mariadb", "mysql"):
        from snapshot_runtime.quiesce.mariadb import MariaDbQuiescer  # noqa: PLC0415 (driver on demand)

        return MariaDbQuiescer(conf)
    if conf.name == "postgres":
        from snapshot_runtime.quiesce.postgres import PostgresQuiescer  # noqa: PLC0415 (driver on demand)

        return PostgresQuiescer(conf)
    return None
