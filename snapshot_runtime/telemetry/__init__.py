"""One job's telemetry: spans, the job log, the spool hand-off to the sidecar,
the job record, sealing, export after the thaw, and the trace view.

The face: ``__all__`` is read from ``__init__.pyi`` (one list, seen by type
checkers too); names load on first use, so importing one module of the family
does not import the rest (the start-up budget).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
