"""Run every ``bench/bench_*.py`` and write ``bench/RESULTS.md`` (``make bench``).

Each script prints its own table and ends with one JSON line of its figures
(``{"bench": "<name>", ...}``); this runner collects those lines into one markdown table with
the date and the machine, then rewrites the figures blocks of the READMEs from it
(:mod:`readme_figures`). A script that fails or prints no JSON line fails the run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import psutil
import readme_figures

HERE = Path(__file__).resolve().parent


def _machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_gib = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, Python {platform.python_version()}"


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    results: list[dict[str, object]] = []
    failed: list[str] = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        done = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, check=False)
        print(done.stdout, end="", flush=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith('{"bench"')]
        if done.returncode != 0 or not lines:
            failed.append(script.name)
            continue
        results.append(json.loads(lines[-1]))
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# Benchmark results\n\n{today}, on {_machine()}.\n"]
    for result in results:
        out.append(f"\n## {result['bench']}\n\n| figure | value |\n| --- | --- |")
        out.extend(f"| {key} | {value} |" for key, value in result.items() if key != "bench")
    (HERE / "RESULTS.md").write_text("\n".join(out) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'} ({len(results)} benchmarks)")
    for readme in readme_figures.update():
        print(f"updated the figures in {readme.relative_to(readme_figures.ROOT)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
