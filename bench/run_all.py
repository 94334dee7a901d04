"""Run every ``bench/bench_*.py`` and write ``bench/RESULTS.md`` (``make bench``).

Each script prints its own table and ends with one JSON line of its figures
(``{"bench": "<name>", ...}``); this runner collects those lines into one markdown table with
the date and the machine, then rewrites the figures blocks of the READMEs from it
(:mod:`readme_figures`). A script that fails or prints no JSON line fails the run.

Given script names (``make bench BENCH="bench_streaming.py"``), it runs only those and replaces
their sections of the existing RESULTS.md, each marked with the date it was rerun alone; the
READMEs then cite that date for its figures.
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


def _run(scripts: list[Path]) -> tuple[list[dict[str, object]], list[str]]:
    """Each script's figures (its last JSON line), and the scripts that failed or printed none."""
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
    return results, failed


def _section(result: dict[str, object], rerun: str = "") -> str:
    head = f"## {result['bench']}\n\n" + (f"{readme_figures.RERUN_PREFIX}{rerun}.\n\n" if rerun else "")
    rows = "".join(f"| {key} | {value} |\n" for key, value in result.items() if key != "bench")
    return f"{head}| figure | value |\n| --- | --- |\n{rows}"


def replace_sections(text: str, results: list[dict[str, object]], rerun: str) -> str:
    """RESULTS.md's ``text`` with the sections of ``results`` replaced (or appended), marked as rerun."""
    parts = text.rstrip("\n").split("\n## ")
    sections = {part.split("\n", 1)[0].strip(): i for i, part in enumerate(parts) if i}
    for result in results:
        section = _section(result, rerun)[3:].rstrip("\n")
        index = sections.get(str(result["bench"]))
        if index is None:
            parts.append(section)
        else:
            parts[index] = section
    return parts[0] + "\n## " + "\n\n## ".join(part.rstrip("\n") for part in parts[1:]) + "\n"


def main(argv: list[str]) -> int:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results_md = HERE / "RESULTS.md"
    if argv:
        scripts = [HERE / Path(name).name for name in argv]
        unknown = [script.name for script in scripts if not script.is_file() or not script.name.startswith("bench_")]
        if unknown:
            print(f"no such benchmark script: {', '.join(unknown)}", file=sys.stderr)
            return 2
        results, failed = _run(scripts)
        rerun = f"{today}, on {_machine()}"
        results_md.write_text(replace_sections(results_md.read_text(), results, rerun))
    else:
        results, failed = _run(sorted(HERE.glob("bench_*.py")))
        head = f"# Benchmark results\n\n{today}, on {_machine()}.\n"
        results_md.write_text("\n".join([head, *(_section(result) for result in results)]))
    print(f"wrote {results_md} ({len(results)} benchmarks)")
    for readme in readme_figures.update():
        print(f"updated the figures in {readme.relative_to(readme_figures.ROOT)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
