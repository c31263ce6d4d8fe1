"""End to end on tiny random-weight configs of the real diffusers video transformers."""

from __future__ import annotations

import pytest
import torch

import asymrnr_fx
from asymrnr_fx.dynamo_backend import build_runner
from asymrnr_fx.runner import InnerCompiler
from asymrnr_fx.state import AsymRnRState
from asymrnr_fx.tiny_models import build_tiny

# The tiny configs of the original five families; every config's sites, reference check and
# regional compile are in test_model_support.py.
FAMILY_CONFIGS = ["cogvideox", "hunyuanvideo", "wan", "ltxvideo", "mochi"]


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_ratio_zero_hands_the_untouched_graph_to_the_inner_compiler(name: str) -> None:
    tiny = build_tiny(name, batch=1)
    handed = []

    class Inner(InnerCompiler):
        def static(self, gm, example_inputs):  # noqa: ANN001, ANN202
            handed.append(gm)
            return gm.forward

    inner = Inner("eager", {})

    def backend(gm, example_inputs):  # noqa: ANN001, ANN202
        code = gm.code
        result = build_runner(gm, example_inputs, AsymRnRState(asymrnr_fx.AsymRnRConfig(kv_ratio=0.0)), inner)
        assert handed[-1] is gm and gm.code == code
        return result

    torch._dynamo.reset()
    with torch.no_grad():
        reference = tiny.model(**tiny.inputs)[0]
        out = torch.compile(tiny.model, backend=backend)(**tiny.inputs)[0]
    assert handed and torch.equal(out, reference)


def test_inductor_end_to_end_matches_eager_rewrite_and_plain_inductor_at_zero() -> None:
    tiny = build_tiny("cogvideox", batch=2)
    config = asymrnr_fx.AsymRnRConfig(kv_ratio=0.5, q_ratio=0.3)
    outputs = {}
    with torch.no_grad():
        for label, backend in (
            ("inductor", "inductor"),
            ("asymrnr-zero", asymrnr_fx.backend(kv_ratio=0.0)),
            ("asymrnr-eager", asymrnr_fx.backend(config, inner="eager")),
            ("asymrnr", asymrnr_fx.backend(config)),
        ):
            torch._dynamo.reset()
            outputs[label] = torch.compile(tiny.model, backend=backend)(**tiny.inputs)[0]
    torch.testing.assert_close(outputs["asymrnr-zero"], outputs["inductor"], rtol=0, atol=0)
    torch.testing.assert_close(outputs["asymrnr"], outputs["asymrnr-eager"], rtol=1e-4, atol=1e-4)


def test_string_backend_is_registered_and_uses_the_default() -> None:
    from torch._dynamo import list_backends

    assert "asymrnr" in list_backends()
    tiny = build_tiny("wan", batch=1)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(tiny.model, backend="asymrnr", options={"compile_threads": 1})(**tiny.inputs)[0]
    assert torch.isfinite(out).all()
    state = asymrnr_fx.asymrnr_backend.state
    assert state.stats["cache_refreshes"] == 2  # K/V of both self-attention layers, Q untouched
