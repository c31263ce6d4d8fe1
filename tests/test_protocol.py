"""The small model's fixed clip sets and the paired comparison of the benchmarks."""

from __future__ import annotations

import pytest

from asymrnr_fx.small.data import parse_prompt
from asymrnr_fx.small.evaluate import Scores, paired, summary
from asymrnr_fx.small.protocol import CALIBRATION, CLIP_SETS, HELD_OUT, ClipSet


def test_held_out_is_disjoint_from_calibration() -> None:
    assert not set(CALIBRATION.prompts) & set(HELD_OUT.prompts)
    assert not set(CALIBRATION.seeds) & set(HELD_OUT.seeds)
    assert len(set(HELD_OUT.prompts)) >= 4 and len(HELD_OUT) >= 8
    for clips in CLIP_SETS.values():
        assert len(set(clips.seeds)) == len(clips)  # every clip its own noise
        for prompt in clips.prompts:
            parse_prompt(prompt)  # inside the small model's grammar
    with pytest.raises(ValueError, match="one seed per clip"):
        ClipSet("x", ("red circle right",), (1, 2))


def test_paired_difference() -> None:
    a = Scores("held-out", (30.0, 31.0, 29.0, 32.0), (0.9,) * 4, 1.0, {})
    b = Scores("held-out", (29.0, 30.5, 29.5, 30.0), (0.9,) * 4, 1.0, {})
    d = paired(a, b)
    assert d["mean"] == pytest.approx(0.75) and d["wins"] == 3 and d["clips"] == 4
    assert d["stderr"] > 0
    assert summary([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0}
