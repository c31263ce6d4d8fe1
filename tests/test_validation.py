"""Bad input is a ValueError that names the field and the fix, before any model runs; a
schedule that reduces nothing in the run says so once."""

from __future__ import annotations

import logging

import pytest
import torch

import asymrnr_fx
from asymrnr_fx import AsymRnRConfig, Schedule
from asymrnr_fx.state import AsymRnRState
from tests.test_identity import GRID, Toy, _x


@pytest.mark.parametrize(("fields", "named"), [
    ({"layer_ratios": []}, "layer_ratios=[]"),
    ({"layer_ratios": [0.5, 0.5]}, "layer_ratios[0]=0.5"),
    ({"layer_ratios": [(0.1, 0.2, 0.3)]}, "layer_ratios[0]"),
    ({"layer_ratios": [("0.1", 0.2)]}, "layer_ratios[0].q"),
    ({"layer_ratios": "0.5"}, "layer_ratios='0.5'"),
    ({"stride": 2}, "stride=2"),
    ({"stride": (2, 2)}, "stride=(2, 2)"),
    ({"stride": (2, 2, 2.0)}, "stride=(2, 2, 2.0)"),
    ({"stride": "222"}, "stride='222'"),
    ({"grid": (2, 4)}, "grid=(2, 4)"),
    ({"cache_interval": True}, "cache_interval=True"),
    ({"cache_interval": 2.5}, "cache_interval=2.5"),
    ({"num_steps": 0}, "num_steps=0"),
    ({"text_tokens": True}, "text_tokens=True"),
    ({"kv_ratio": 1.0}, "kv_ratio=1.0"),
])
def test_every_bad_setting_names_its_field(fields: dict, named: str) -> None:
    with pytest.raises(ValueError) as error:
        AsymRnRConfig(**fields)
    assert named in str(error.value)


@pytest.mark.parametrize(("meta", "named"), [
    ({"stride": [2, 2]}, "meta['stride']"),
    ({"stride": [2, 2, 2.5]}, "meta['stride']"),
    ({"cache_interval": "5"}, "meta['cache_interval']"),
    ({"cache_interval": 2.7}, "meta['cache_interval']"),  # never rounded to 2
    ({"metric": "manhattan"}, "meta['metric']"),  # never ignored
    ({"seed": 1.5}, "meta['seed']"),
])
def test_every_bad_schedule_meta_value_names_its_key(meta: dict, named: str, tmp_path) -> None:
    uniform = Schedule.uniform(2, 4, kv=0.5)
    schedule = Schedule(2, 4, q=uniform.q, kv=uniform.kv, meta=meta)
    with pytest.raises(ValueError) as error:
        AsymRnRConfig(schedule=schedule)
    assert named in str(error.value)
    path = tmp_path / "s.json"
    schedule.save(path)
    with pytest.raises(ValueError) as error:
        AsymRnRConfig(schedule=path)
    assert named in str(error.value) and "s.json" in str(error.value)


def test_a_step_beyond_num_steps_is_refused() -> None:
    state = AsymRnRState(AsymRnRConfig())
    state.set_step(3, 4)
    with pytest.raises(ValueError, match="step=4 is beyond the generation's num_steps=4"):
        state.set_step(4)
    with pytest.raises(ValueError, match="step=9 is beyond"):
        state.set_step(9, 5)


def test_a_schedule_that_reduces_nothing_in_the_run_says_so_once(caplog) -> None:
    """A 50-step preset-like table that cuts only its late steps, run for 4 forwards with no
    step count told: the steps it cuts never run."""
    late = Schedule.from_ranges(2, 50, [{"steps": [0.5, 1.0], "kv": 0.5}])
    backend = asymrnr_fx.backend(schedule=late, grid=GRID, inner="eager")
    compiled = torch.compile(Toy(), backend=backend, dynamic=False)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        for _ in range(2):  # two generations: the second starts when the timestep rises again
            for t in (900.0, 700.0, 500.0, 300.0):
                compiled(_x(), timestep=torch.tensor([t]))
    lines = [r.getMessage() for r in caplog.records if "reduced nothing" in r.getMessage()]
    assert len(lines) == 1 and "num_steps=50" in lines[0] and "4 step(s)" in lines[0]


def test_a_told_step_count_maps_the_same_schedule_onto_the_run_and_it_reduces(caplog) -> None:
    late = Schedule.from_ranges(2, 50, [{"steps": [0.5, 1.0], "kv": 0.5}])
    backend = asymrnr_fx.backend(schedule=late, grid=GRID, inner="eager")
    compiled = torch.compile(Toy(), backend=backend, dynamic=False)
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        for step in range(4):
            backend.state.set_step(step, 4)
            compiled(_x(), timestep=torch.tensor([900.0 - step]))
    assert "reduced nothing" not in caplog.text and backend.state.refresh_steps == [2]


def test_apply_refuses_a_non_bool_regional_before_any_work() -> None:
    model = Toy()
    with pytest.raises(ValueError, match="regional='yes'"):
        asymrnr_fx.apply(model, regional="yes")
    assert getattr(model, "_asymrnr_applied", None) is None
