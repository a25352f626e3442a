"""`snapshot-sidecar`: the long-running exporter (ingest, /metrics, log mirror, spans).

Not built yet (tracked as its own issue): the command exists so the console
script is installed, and says plainly that it does nothing yet.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from snapshot_runtime import __version__

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snapshot-sidecar")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.parse_args(argv)
    print("snapshot-sidecar: not implemented yet (see the sidecar issue)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
