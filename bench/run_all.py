"""Run every benchmark in turn: ``make bench`` (``python -m bench.run_all [--json]``).

Each module prints its own table (absolute figures, the baseline measured in the same run,
the ratio, the target, met or not). A module that fails is reported and the others still
run; the exit status is 1 if any failed. ``bench_feedback`` needs the services (Kafka,
Redis, PostgreSQL; ``make bench`` starts them); its size can be lowered with
``BENCH_FEEDBACK_EVENTS``. Nothing here asserts on wall-clock figures.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
import time
import traceback
from typing import Any

MODULES = ("bench_experiments", "bench_bandits", "bench_feedback", "bench_memory")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--only", nargs="*", choices=MODULES, help="run only these modules")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    failed = []
    for name in args.only or MODULES:
        started = time.perf_counter()
        if not args.json:
            print(f"=== bench.{name} ===", flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            if args.json:  # each module prints its own JSON: keep only the combined one
                with contextlib.redirect_stdout(io.StringIO()):
                    results[name] = module.main(["--json"])
            else:
                results[name] = module.main([])
        except Exception as exc:  # report and go on with the other benchmarks
            failed.append(name)
            results[name] = {"error": repr(exc)}
            print(f"bench.{name} failed: {exc!r}", file=sys.stderr)
            traceback.print_exc()
        if not args.json:
            print(f"({name}: {time.perf_counter() - started:.0f} s)\n", flush=True)
    if args.json:
        print(json.dumps(results, indent=2, default=float))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
