"""Built-in database quiescing (workload.conf): one driver-held session per job
that quiesces before the freeze, holds across freeze and snapshot, and
releases after the thaw (docs/workloads.md).

The face: ``__all__`` is read from ``__init__.pyi`` (one list, seen by type
checkers too); names load on first use, so importing one module of the family
does not import the rest (the start-up budget: the database drivers load only
when a workload is configured).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
