"""How long `kb check` takes on the sample world, as a pre-commit hook would run it (a fresh process each time).

Runs `kb check corpora` (and `--changed-since HEAD`, which still reads the
whole canon but reports only changed files) N times each as subprocesses, and
prints the median and range of wall times (the issue's budget is 5 s) and the
median CPU time (user + system), which a loaded shared machine inflates less.

    python bench/check.py [--runs 5] [PATH ...]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # as a script, bench/ comes first on sys.path

from bench.common import cpu_seconds, machine, median, revision  # noqa: E402

KB = str(Path(sys.executable).parent / "kb")


def timings(args: list[str], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run."""
    walls, cpus = [], []
    for _ in range(runs):
        start, cpu = time.perf_counter(), cpu_seconds(resource.RUSAGE_CHILDREN)
        done = subprocess.run([KB, "check", *args], cwd=ROOT, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_seconds(resource.RUSAGE_CHILDREN) - cpu)
        if done.returncode not in (0, 1):
            sys.exit(f"kb check {' '.join(args)} failed: {done.stderr.strip()}")
    return walls, cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["corpora"])
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    print(f"{machine()}; revision {revision()}")
    for extra in ([], ["--changed-since", "HEAD"]):
        args = [*options.paths, *extra]
        walls, cpus = timings(args, options.runs)
        print(f"kb check {' '.join(args)}: median {median(walls):.2f} s wall over {options.runs} runs "
              f"(min {min(walls):.2f}, max {max(walls):.2f}); median CPU {median(cpus):.2f} s")


if __name__ == "__main__":
    main()
