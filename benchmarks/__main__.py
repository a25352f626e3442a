"""Run every benchmark module of this package, one after the other (``make bench``).

Each module in ``benchmarks/`` with a ``main()`` is run with its own default
arguments (``python -m benchmarks NAME...`` runs only those), all of them in
under 10 minutes on 2 cores; ``fleet`` (Prometheus scraping 200 fake sidecars
for 330 s), ``fleet_scale`` (1k/5k/10k simulated VMs, 10 minutes each) and
``fleet_sim`` (its simulator, which serves until stopped) run only when named.
A module that fails is reported and the others still run; the exit status
says whether all of them completed. Figures only: benchmarks assert nothing;
each prints ``VERDICT MET`` / ``VERDICT NOT MET`` lines for its goals,
collected again at the end.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks._verdict import VERDICTS


def _modules() -> list[str]:
    here = str(Path(__file__).resolve().parent)
    return sorted(
        m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_") and not m.ispkg
    )


# Minutes-long (fleet, fleet_scale) or serving until stopped (fleet_sim): only when named.
ONLY_WHEN_NAMED = frozenset({"fleet", "fleet_scale", "fleet_sim"})


def main(argv: list[str]) -> int:
    names = argv or [m for m in _modules() if m not in ONLY_WHEN_NAMED]
    unknown = sorted(set(names) - set(_modules()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(_modules())}")
        return 2
    failed = []
    began = time.monotonic()
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        entry = getattr(module, "main", None)
        if entry is None:
            continue
        print(f"\n===== benchmarks.{name}", flush=True)
        started = time.monotonic()
        saved = sys.argv
        sys.argv = [f"benchmarks.{name}"]  # each parses its own (default) arguments
        try:
            entry()
        except (Exception, SystemExit) as exc:
            if isinstance(exc, SystemExit) and exc.code in (None, 0):
                pass
            else:
                traceback.print_exc()
                failed.append(name)
        finally:
            sys.argv = saved
        print(f"----- {name}: {time.monotonic() - started:.1f} s", flush=True)
    print(f"\n===== verdicts ({time.monotonic() - began:.0f} s in all)")
    for name_line in VERDICTS:
        print(name_line)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
