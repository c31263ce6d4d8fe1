"""The measured tables of the README and the docs are what the checked-in results render,
never typed by hand.

Each generated section is written by the command that measures it (named in the README above
the table); this checks that the section still equals what that command's JSON renders, so a
hand edit or a stale table fails CI. (The model-support table is checked against fresh runs in
``tests/test_model_support.py``.)
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from benchmarks.readme import RESULTS, ROOT, read_section, section_file


def _composition(document: dict) -> str:
    from .compose_matrix import markdown

    return markdown(document["rows"])


def _context_parallel(document: dict) -> str:
    from .cp_harness import markdown

    return markdown(document)


def _real_sizes(document: dict) -> str:
    from benchmarks.real_sizes import render

    return render(document["rows"])


def _stacking(document: dict) -> str:
    from benchmarks.compose import render

    return render(document)


def _quality(document: dict) -> str:
    from benchmarks.quality import render

    return render(document)


def _calibration(document: dict) -> str:
    from benchmarks.calibration import render

    return render(document)


def _demo(document: dict) -> str:
    from asymrnr_fx.small.demo import demo_table

    return demo_table(document)


def _leftover(document: dict) -> str:
    from benchmarks.leftover import render

    return render(document)


def _frontier(document: dict) -> str:
    from benchmarks.frontier import render

    return render(document)


def _frontier_summary(document: dict) -> str:
    from benchmarks.frontier import summary

    return summary(document)


def _speed(document: dict) -> str:
    from benchmarks.speed import format_tables

    return format_tables(document, "github")


SECTIONS: dict[str, tuple[str, Callable[[dict], str], str]] = {
    "demo": ("demo.json", _demo, "asymrnr demo, then copy asymrnr_demo/demo.json to benchmarks/results/"),
    "composition": ("compose_matrix.json", _composition, "python -m tests.compose_matrix"),
    "context-parallel": ("context_parallel.json", _context_parallel, "python -m tests.cp_harness"),
    "real-sizes": ("real_sizes.json", _real_sizes, "python -m benchmarks.real_sizes"),
    "stacking": ("compose.json", _stacking, "python -m benchmarks.compose --threads 2"),
    "quality": ("quality.json", _quality, "python -m benchmarks.quality --threads 2"),
    "calibration": ("calibration.json", _calibration, "python -m benchmarks.calibration --threads 2"),
    "leftover": ("leftover.json", _leftover, "python -m benchmarks.leftover --threads 2"),
    "frontier": ("frontier.json", _frontier, "python -m benchmarks.frontier --threads 2"),
    "frontier-summary": ("frontier.json", _frontier_summary, "python -m benchmarks.frontier --threads 2"),
    "speed-small": ("speed_small.json", _speed,
                    "python -m benchmarks.speed --preset small --schedule benchmarks/results/schedules/small-cut0.35.json "
                    "--isolate-compile --threads 2 --repeats 3 --out benchmarks/results/speed_small.json --readme"),
    "speed-cpu-mid": ("speed_cpu-mid.json", _speed,
                      "python -m benchmarks.speed --threads 1 --out benchmarks/results/speed_cpu-mid.json --readme"),
}


@pytest.mark.parametrize("section", list(SECTIONS))
def test_readme_section_is_what_the_results_render(section: str) -> None:
    filename, render, command = SECTIONS[section]
    document = json.loads((RESULTS / filename).read_text())
    assert read_section(section) == render(document).strip(), (
        f"{section_file(section).relative_to(ROOT)}'s {section} table is not what benchmarks/results/{filename} "
        f"renders: run `{command}`")


def test_readme_presets_table_is_what_the_presets_render() -> None:
    from benchmarks.presets_table import render

    assert read_section("presets") == render().strip(), (
        "docs/schedules.md's presets table is not what the shipped presets render: run "
        "`python -m benchmarks.presets_table`")


def test_the_frontier_plot_is_drawn_from_the_checked_in_results(tmp_path) -> None:
    from benchmarks.frontier import OUT_JSON, OUT_PNG, _digest, plot, plot_digest

    document = json.loads(OUT_JSON.read_text())
    assert plot_digest(OUT_PNG) == _digest(document), (
        "docs/frontier.png was not drawn from benchmarks/results/frontier.json: run "
        "`python -m benchmarks.frontier --plot-only`")
    redrawn = plot(document, tmp_path / "frontier.png")  # the command still draws it
    assert plot_digest(redrawn) == _digest(document)
