"""Schedule table and heat map."""

from __future__ import annotations

from PIL import Image

from asymrnr_fx.schedules.presets import get_preset
from asymrnr_fx.schedules.schedule import Schedule
from asymrnr_fx.schedules.viz import _colour, format_schedule, format_table, heatmap, step_runs


def test_step_runs_are_phases() -> None:
    sched = get_preset("cogvideox-2b", 30, 50)
    runs = step_runs(sched)
    assert runs[0][0] == 0 and runs[-1][1] == 50
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:], strict=False))
    assert len(runs) == len(sched.distinct_phases())  # this preset never returns to a phase


def test_table_cells() -> None:
    sched = Schedule(2, 3, [[0, 0], [0, 0.5], [0, 0.5]], [[0, 0], [0.3, 0.3], [0.3, 0.3]], name="t")
    text = format_schedule(sched)
    assert "'t': 2 attention sites x 3 steps, 2 distinct phase(s)" in text
    assert "steps 1-2" in text and "step 0" in text
    lines = format_table(sched).splitlines()
    assert lines[-1].split() == ["1", ".", ".50/.30"]
    assert lines[-2].split() == ["0", ".", "./.30"]


def test_table_falls_back_to_means() -> None:
    rows = [[(s % 2) * 0.5] for s in range(20)]
    sched = Schedule(1, 20, rows, rows)
    text = format_table(sched, max_columns=16)
    assert "20 step groups" in text and "0.250" in text


def test_heatmap_png(tmp_path) -> None:
    sched = get_preset("hunyuanvideo", 60, 50)
    path = tmp_path / "h.png"
    img = heatmap(sched, path)
    assert path.stat().st_size > 1000
    back = Image.open(path)
    assert back.size == img.size and back.size[0] > 400
    # The deepest layer at the last step is cut; the first layer at step 0 is not: the
    # two cells must have different colours in the K/V panel.
    colours = {c for _, c in back.getcolors(1 << 16)}
    assert _colour(0.0) in colours and _colour(0.3) in colours and _colour(0.9) in colours


def test_colour_ramp_monotone_lightness() -> None:
    lum = [sum(_colour(v / 20)) for v in range(21)]
    assert all(a >= b for a, b in zip(lum, lum[1:], strict=False))
