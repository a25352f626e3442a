"""``python -m snapshot_runtime.handler``: what deploy/extension/bin/handle.sh runs."""

from __future__ import annotations

import sys

from snapshot_runtime.handler.commands import handler_main

sys.exit(handler_main(sys.argv[1:]))
