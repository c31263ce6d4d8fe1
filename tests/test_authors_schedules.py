"""The authors' calibrated schedules, reproduced cell for cell from the shipped data."""

from __future__ import annotations

import json
from importlib import resources

import pytest

import asymrnr_fx
from asymrnr_fx.schedules.authors import AUTHORS_MODELS, RULES_FROM, VARIANTS, authors_schedule

# Their native sizes: blocks x steps (HunyuanVideo: 20 dual-stream + 40 single-stream blocks).
NATIVE = {"cogvideox-2b": (30, 50), "cogvideox-5b": (42, 50), "hunyuanvideo": (60, 30), "mochi": (48, 30),
          "fastvideo-hunyuan": (60, 6)}


def _raw() -> dict:
    return json.loads(resources.files("asymrnr_fx.schedules").joinpath("data/authors.json").read_text())


def _their_ratio(tier: int, rules: dict[str, float]) -> float:
    """The reference's reading: the largest ratio whose threshold the tier meets, else 0."""
    ratio = 0.0
    for threshold, candidate in rules.items():
        if tier >= int(threshold):
            ratio = max(ratio, candidate)
    return ratio


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", AUTHORS_MODELS)
def test_every_cell_is_the_authors_rule_applied_to_their_tier(model: str, variant: str) -> None:
    raw = _raw()
    entry = raw["models"][model]
    rules = raw["models"][RULES_FROM.get(model, model)]["rules"][variant]
    schedule = authors_schedule(model, variant)
    blocks, steps = NATIVE[model]
    assert (schedule.num_layers, schedule.num_steps) == (blocks, steps)
    for block in range(blocks):
        for step in range(steps):
            assert schedule.q[step][block] == _their_ratio(entry["tiers"]["q"][block][step], rules.get("q", {}))
            assert schedule.kv[step][block] == _their_ratio(entry["tiers"]["v"][block][step], rules.get("v", {}))
    assert schedule.meta["stride"] == entry["stride"] and schedule.meta["cache_interval"] == entry["cache_interval"]


def test_their_cogvideox_2b_base_table_cuts_shallow_queries_hard() -> None:
    """Shallow layers are not untouchable in their own practice: Q 0.8 in blocks 0, 2 and 3."""
    schedule = authors_schedule("cogvideox-2b")
    assert all(schedule.q[step][block] == 0.8 for step in range(50) for block in (0, 2, 3))


def test_a_backend_takes_their_settings_with_the_schedule() -> None:
    config = asymrnr_fx.AsymRnRConfig(schedule=authors_schedule("hunyuanvideo", "fast"))
    assert (config.stride, config.cache_interval, config.metric) == ((6, 2, 2), 3, "l2")


def test_unknown_models_and_variants_are_named() -> None:
    with pytest.raises(ValueError, match="model='wan'"):
        authors_schedule("wan")
    with pytest.raises(ValueError, match="variant='turbo'"):
        authors_schedule("mochi", "turbo")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", AUTHORS_MODELS)
def test_the_preset_named_after_a_model_is_the_authors_table(model: str, variant: str) -> None:
    """``schedule="cogvideox-2b"`` is the paper's AsymRnR on CogVideoX-2B, cell for cell from the
    data file, with their settings; ``-fast`` is their fast rule set."""
    from asymrnr_fx.schedules.presets import PRESETS
    from asymrnr_fx.schedules.schedule import Schedule

    raw = _raw()
    entry = raw["models"][model]
    rules = raw["models"][RULES_FROM.get(model, model)]["rules"][variant]
    name = model if variant == "base" else f"{model}-fast"
    assert PRESETS[name].kind == "authors"
    preset = Schedule.preset(name)
    blocks, steps = NATIVE[model]
    assert (preset.num_layers, preset.num_steps) == (blocks, steps)
    for block in range(blocks):
        for step in range(steps):
            assert preset.q[step][block] == _their_ratio(entry["tiers"]["q"][block][step], rules.get("q", {}))
            assert preset.kv[step][block] == _their_ratio(entry["tiers"]["v"][block][step], rules.get("v", {}))
    assert raw["commit"][:12] in preset.meta["source"]
    config = asymrnr_fx.AsymRnRConfig(schedule=name)
    assert (list(config.stride), config.cache_interval, config.metric) == (
        entry["stride"], entry["cache_interval"], entry["metric"])
