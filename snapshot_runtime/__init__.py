"""snapshot-runtime: application-consistent snapshots of Linux VMs.

The job flows one way: settings -> plan -> phases -> job record -> sidecar.
Decisions live in pure modules (plugin_config, consistency, errors, redact);
effects (ioctl, subprocess, blob calls, clock) sit behind small seams.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
