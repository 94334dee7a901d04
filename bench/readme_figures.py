"""Write the figures of ``bench/RESULTS.md`` into the READMEs, so no README quotes a number by hand.

A README asks for figures with a marked block::

    <!-- figures gateway_overhead: gateway_rps_c32, floor_rps_c32, gateway_vs_floor -->
    (replaced)
    <!-- /figures -->

Everything between the two markers becomes a table of those figures as the last ``make bench``
run wrote them, with the run's date (or the date its benchmark was rerun alone, when it was).
``make bench`` rewrites every block after it writes RESULTS.md; ``python bench/readme_figures.py
--check`` fails when a block differs from RESULTS.md (the test suite runs it, so a README cannot
drift from the results it cites).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
READMES = (ROOT / "README.md", *sorted((ROOT / "services").glob("*/README.md")))
RERUN_KEY = "(rerun)"
"""The key under which :func:`parse_results` keeps that date among a benchmark's figures."""
RERUN_PREFIX = "Rerun alone: "
"""Starts the line under a benchmark's heading when ``run_all.py NAME`` reran it after the whole run."""

_BLOCK = re.compile(
    r"(?P<open><!-- figures (?P<bench>[a-z0-9_]+): (?P<fields>[a-z0-9_, ]+) -->\n)"
    r"(?P<body>.*?)(?P<close><!-- /figures -->)",
    re.DOTALL,
)


class FiguresError(Exception):
    """A README asks for a benchmark or a figure RESULTS.md does not have."""


def parse_results(text: str) -> tuple[str, dict[str, dict[str, str]]]:
    """The run's date line and each benchmark's figures, from RESULTS.md's text."""
    lines = text.splitlines()
    when = next((line for line in lines if line and not line.startswith("#")), "")
    benches: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in lines:
        if line.startswith("## "):
            current = benches.setdefault(line[3:].strip(), {})
        elif current is not None and line.startswith(RERUN_PREFIX):
            current[RERUN_KEY] = line[len(RERUN_PREFIX) :]
        elif current is not None and line.startswith("| ") and not line.startswith(("| figure", "| ---")):
            key, value = (cell.strip() for cell in line.strip("|").split("|", 1))
            current[key] = value
    return when, benches


def _table(when: str, bench: str, fields: list[str], figures: dict[str, str]) -> str:
    missing = [field for field in fields if field not in figures]
    if missing:
        raise FiguresError(f"bench/RESULTS.md has no {', '.join(missing)} in '{bench}'")
    rows = "".join(f"| {field} | {figures[field]} |\n" for field in fields)
    source = f"rerun alone, {figures[RERUN_KEY]}" if RERUN_KEY in figures else when
    return f"`make bench` ({source.rstrip('.')}), `{bench}`:\n\n| figure | value |\n| --- | --- |\n{rows}"


def render(readme: str, when: str, benches: dict[str, dict[str, str]]) -> str:
    """``readme`` with every figures block rewritten from ``benches``."""

    def block(match: re.Match[str]) -> str:
        bench = match["bench"]
        if bench not in benches:
            raise FiguresError(f"bench/RESULTS.md has no benchmark '{bench}'")
        fields = [field.strip() for field in match["fields"].split(",") if field.strip()]
        return match["open"] + _table(when, bench, fields, benches[bench]) + match["close"]

    return _BLOCK.sub(block, readme)


def update(check: bool = False) -> list[Path]:
    """Rewrite (or, with ``check``, only compare) every README's blocks; the READMEs that differ."""
    when, benches = parse_results(RESULTS.read_text())
    stale = []
    for path in READMES:
        text = path.read_text()
        new = render(text, when, benches)
        if new != text:
            stale.append(path)
            if not check:
                path.write_text(new)
    return stale


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = update(check=check)
    for path in stale:
        print(f"{'stale' if check else 'updated'}: {path.relative_to(ROOT)}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
