"""What a job is given, parsed and validated once: handler settings, the plugin
config, backup metadata, blob URLs, facts about this machine.

The face: ``__all__`` is read from ``__init__.pyi`` (one list, seen by type
checkers too); names load on first use, so importing one module of the family
does not import the rest (the start-up budget).
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
