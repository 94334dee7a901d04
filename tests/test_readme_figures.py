"""The READMEs' figures are the last `make bench` run's: generated from bench/RESULTS.md, never typed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def figures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "bench" / "readme_figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readme_figures", module)
    spec.loader.exec_module(module)
    return module


RESULTS = """# Benchmark results

2026-12-04 18:00 UTC, on 2 cores.


## gateway_overhead

| figure | value |
| --- | --- |
| ratio | 0.256 |
| gateway_vs_floor | 0.848 |
"""


def test_a_block_becomes_a_table_of_the_figures_it_names(figures: ModuleType):
    when, benches = figures.parse_results(RESULTS)
    readme = "intro\n<!-- figures gateway_overhead: gateway_vs_floor, ratio -->\nold 0.1\n<!-- /figures -->\nrest\n"
    out = figures.render(readme, when, benches)
    assert "old 0.1" not in out and out.startswith("intro\n") and out.endswith("<!-- /figures -->\nrest\n")
    assert "| gateway_vs_floor | 0.848 |\n| ratio | 0.256 |\n" in out
    assert "2026-12-04 18:00 UTC" in out
    assert figures.render(out, when, benches) == out  # rewriting is stable


def test_a_figure_results_do_not_have_is_an_error(figures: ModuleType):
    when, benches = figures.parse_results(RESULTS)
    with pytest.raises(figures.FiguresError, match="no missing_field"):
        figures.render("<!-- figures gateway_overhead: missing_field -->\n<!-- /figures -->", when, benches)
    with pytest.raises(figures.FiguresError, match="no benchmark 'nope'"):
        figures.render("<!-- figures nope: ratio -->\n<!-- /figures -->", when, benches)


def test_a_benchmark_rerun_alone_replaces_its_section_and_cites_its_own_date(figures: ModuleType):
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    assert spec is not None and spec.loader is not None
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    two = RESULTS + "\n## features\n\n| figure | value |\n| --- | --- |\n| p99_ms_c16 | 14.2 |\n"
    rerun = {"bench": "gateway_overhead", "ratio": 0.3, "gateway_vs_floor": 0.9, "new_field": 1}
    text = run_all.replace_sections(two, [rerun], "2026-12-05 19:30 UTC, on 2 cores")
    when, benches = figures.parse_results(text)
    assert when == "2026-12-04 18:00 UTC, on 2 cores."
    assert benches["features"] == {"p99_ms_c16": "14.2"}  # the other sections stay as they were
    assert benches["gateway_overhead"]["gateway_vs_floor"] == "0.9" and benches["gateway_overhead"]["new_field"] == "1"
    readme = "<!-- figures gateway_overhead: ratio -->\n<!-- /figures -->\n<!-- figures features: p99_ms_c16 -->\n"
    out = figures.render(readme + "<!-- /figures -->", when, benches)
    assert "(rerun alone, 2026-12-05 19:30 UTC, on 2 cores), `gateway_overhead`" in out and "| ratio | 0.3 |" in out
    assert "(2026-12-04 18:00 UTC, on 2 cores), `features`" in out
    assert run_all.replace_sections(text, [rerun], "2026-12-05 19:30 UTC, on 2 cores") == text  # stable


def test_every_readme_shows_the_figures_of_bench_results(figures: ModuleType):
    assert figures.update(check=True) == [], "run `python bench/readme_figures.py` (make bench does) and commit"
