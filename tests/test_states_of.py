"""``states_of`` answers for every documented way of compiling."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import asymrnr_fx
from asymrnr_fx.dynamo_backend import asymrnr_backend


def test_the_bare_name_and_a_backend_object_are_found_through_torch_compile() -> None:
    pipe = SimpleNamespace(transformer=torch.compile(torch.nn.Linear(2, 2), backend="asymrnr"))
    assert asymrnr_fx.states_of(pipe) == [asymrnr_backend.state]
    compiler = asymrnr_fx.backend(kv_ratio=0.5)
    compiled = torch.compile(torch.nn.Linear(2, 2), backend=compiler, dynamic=False)
    assert asymrnr_fx.states_of(compiled) == [compiler.state]
    assert asymrnr_fx.states_of(compiler) == [compiler.state]


def test_a_model_without_asymrnr_says_how_to_add_it() -> None:
    with pytest.raises(ValueError, match="apply.*backend='asymrnr'"):
        asymrnr_fx.states_of(torch.compile(torch.nn.Linear(2, 2), backend="eager"))
    with pytest.raises(ValueError, match="not applied"):
        asymrnr_fx.states_of(SimpleNamespace(unet=torch.nn.Linear(2, 2)))
