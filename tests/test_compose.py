"""AsymRnR together with what people already stack on a video transformer."""

from __future__ import annotations

import pytest
import torch

import asymrnr_fx
from asymrnr_fx.tiny_models import build_tiny


def _rewritten(model: torch.nn.Module, inputs: dict) -> tuple[int, list[str], torch.Tensor]:
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(kv_ratio=0.5, inner="eager")
    with torch.no_grad():
        out = torch.compile(model, backend=compiler)(**inputs)[0]
    return compiler.state.sites_rewritable, [r for _, r in compiler.state.sites_left_alone], out


@pytest.mark.parametrize("fused", [False, True])
def test_lora_adapters_do_not_change_which_sites_are_rewritten(fused: bool) -> None:
    peft = pytest.importorskip("peft")
    plain = build_tiny("wan", batch=1)
    expected = _rewritten(plain.model, plain.inputs)[:2]
    tiny = build_tiny("wan", batch=1)
    # LoRA layers sit between the hidden states and q/k/v: lora_B(lora_A(dropout(x))) + W x.
    tiny.model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"],
                                           init_lora_weights=False))
    if fused:
        tiny.model.fuse_lora()
    rewritten, left_alone, out = _rewritten(tiny.model, tiny.inputs)
    assert (rewritten, left_alone) == expected == (2, ["cross-attention (query length 64, key length 8)"] * 2)
    assert torch.isfinite(out).all()


from . import compose_matrix  # noqa: E402

COMBINATIONS = {c.name: c for c in compose_matrix.combinations()}


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_composition(name: str) -> None:
    combination = COMBINATIONS[name]
    row = compose_matrix.run(combination)
    if "skipped" in row:
        pytest.skip(row["skipped"])
    assert row["runs"]
    assert row["steps_right"], row["steps_told"]
    assert row["relative_error_vs_reference"] < 1e-4
    assert combination.expect_rewritten  # every combination reaches the attention now
    assert row["sites_rewritten"] > 0 and row["reference_calls"] > 0
    # AsymRnR adds no recompiles of its own: at most its one nested graph (Inductor), and the
    # block graph MagCache's own fence keeps from compiling under a plain backend.
    extra = (combination.apply_kwargs.get("inner") == "inductor") + name.startswith("MagCache")
    assert row["graphs"] <= row["graphs_plain_backend"] + extra
