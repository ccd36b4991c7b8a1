"""Runs every benchmark in turn (`make bench`); each writes bench/results/<name>.json.

    python -m bench.run_all [--only ingest,models,serving,serving_slow_clients,pipeline,evaluate_scale]

The real-data results page is separate and much longer: `python -m bench.results`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import List, Optional

BENCHMARKS = ("ingest", "models", "serving", "serving_slow_clients", "pipeline", "evaluate_scale")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ",".join(BENCHMARKS))
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failed = []
    for name in chosen:
        print(f"=== bench.{name} ===", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        print(f"=== bench.{name}: exit {code} after {time.perf_counter() - started:.0f} s ===", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
