"""The presets table of docs/schedules.md: every built-in preset, what it cuts and where it comes from.

    python -m benchmarks.presets_table   # prints the table and rewrites its docs section
"""

from __future__ import annotations

import sys

from tabulate import tabulate

from asymrnr_fx.schedules.presets import PRESETS
from benchmarks.readme import write_section

SECTION = "presets"


def render() -> str:
    """One row per preset, at its native size."""
    rows = []
    for name, preset in PRESETS.items():
        schedule = preset.native()
        cov = schedule.coverage()
        rows.append([f"`{name}`", "authors' table" if preset.kind == "authors" else "our prior",
                     f"{schedule.num_layers} x {schedule.num_steps}", str(tuple(preset.stride)),
                     preset.cache_interval,
                     f"{cov['q']['reduced_share']:.0%} (max {cov['q']['max_ratio']:g})",
                     f"{cov['kv']['reduced_share']:.0%} (max {cov['kv']['max_ratio']:g})", preset.source])
    return tabulate(rows, headers=["preset", "kind", "sites x steps", "stride", "matching every",
                                   "Q cells cut", "K/V cells cut", "source"], tablefmt="github")


def main() -> int:
    table = render()
    print(table)
    write_section(SECTION, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
