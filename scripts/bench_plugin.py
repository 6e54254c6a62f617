"""Benchmark what the plugin adds to ``import verl``, which every verl process pays.

verl loads this package's entry point on ``import verl`` in the driver, the task runner and every Ray
worker. The script starts fresh interpreters that run ``import verl``, alternately with the plugin
(``VERL_USE_EXTERNAL_PLUGINS=auto``, verl's default) and without it (``none``), and compares the
median wall time of the import and the median peak resident memory of the process:

    time ratio (plugin / none) <= 1.15        peak memory difference <= 40 MiB

It prints both and exits 1 when a bar is missed.

    python scripts/bench_plugin.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

MAX_TIME_RATIO = 1.15
MAX_MEMORY_MIB = 40.0

CHILD = """
import json, resource, sys, time
start = time.perf_counter()
import verl
elapsed = time.perf_counter() - start
loaded = sorted(name for name in sys.modules if name.startswith("verl_restrain"))
print(json.dumps({"seconds": elapsed, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "restrain_modules": loaded}))
"""


def measure(policy: str) -> dict:
    """One fresh ``import verl`` with ``VERL_USE_EXTERNAL_PLUGINS=policy``."""
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": policy}
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def verdict(value: float, bar: float, unit: str) -> str:
    return f"{value:.3f}{unit} ({'meets' if value <= bar else 'MISSES'} the bar of {bar:.2f}{unit})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fresh imports per side (alternating)")
    parser.add_argument("--max-ratio", type=float, default=MAX_TIME_RATIO)
    parser.add_argument("--max-memory-mib", type=float, default=MAX_MEMORY_MIB)
    args = parser.parse_args(argv)

    measure("none")  # warm the file cache for both sides
    runs: dict[str, list[dict]] = {"none": [], "auto": []}
    for repeat in range(args.repeats):
        order = ("none", "auto") if repeat % 2 == 0 else ("auto", "none")
        for policy in order:
            runs[policy].append(measure(policy))
        print(
            f"repeat {repeat}: none {runs['none'][-1]['seconds']:.2f} s {runs['none'][-1]['peak_mib']:.0f} MiB, "
            f"plugin {runs['auto'][-1]['seconds']:.2f} s {runs['auto'][-1]['peak_mib']:.0f} MiB"
        )
    seconds = {policy: statistics.median(run["seconds"] for run in runs[policy]) for policy in runs}
    memory = {policy: statistics.median(run["peak_mib"] for run in runs[policy]) for policy in runs}
    print(f"modules the plugin loads on import verl: {runs['auto'][-1]['restrain_modules']}")
    print(f"median import verl: none {seconds['none']:.2f} s, plugin {seconds['auto']:.2f} s")
    print(f"median peak memory: none {memory['none']:.0f} MiB, plugin {memory['auto']:.0f} MiB")
    ratio = seconds["auto"] / seconds["none"]
    extra = memory["auto"] - memory["none"]
    print("time ratio plugin/none: " + verdict(ratio, args.max_ratio, ""))
    print("extra peak memory: " + verdict(extra, args.max_memory_mib, " MiB"))
    return 0 if ratio <= args.max_ratio and extra <= args.max_memory_mib else 1


if __name__ == "__main__":
    sys.exit(main())
