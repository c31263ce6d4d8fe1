"""Mochi: its joint attention made graph-friendly, rewritten, and equal to the reference."""

from __future__ import annotations

import logging

import torch
from diffusers.models.attention_processor import MochiAttention, MochiAttnProcessor2_0
from hypothesis import given, settings
from hypothesis import strategies as st

import asymrnr_fx
from asymrnr_fx.processors import MochiJointAttnProcessor
from asymrnr_fx.tiny_models import build_tiny
from tests.model_checks import check_model


def _attention(context_pre_only: bool) -> MochiAttention:
    torch.manual_seed(0)
    attn = MochiAttention(query_dim=16, added_kv_proj_dim=12, processor=MochiAttnProcessor2_0(), heads=2,
                          dim_head=8, added_proj_bias=False, out_dim=16, out_context_dim=12,
                          context_pre_only=context_pre_only)
    for p in attn.parameters():  # the RMSNorm weights start at 1: make them matter
        p.data.normal_()
    return attn.double().eval()


@settings(max_examples=25, deadline=None)
@given(masks=st.lists(st.lists(st.booleans(), min_size=5, max_size=5), min_size=1, max_size=3),
       rotary=st.booleans(), context_pre_only=st.booleans(), seed=st.integers(0, 1000))
def test_graph_friendly_processor_equals_the_stock_one(masks, rotary, context_pre_only, seed) -> None:
    """Any prompt mask (padding anywhere, none valid, all valid): the same video and prompt
    outputs as diffusers' processor, padded prompt positions included."""
    attn = _attention(context_pre_only)
    generator = torch.Generator().manual_seed(seed)
    batch, video = len(masks), 6
    hidden = torch.randn(batch, video, 16, generator=generator, dtype=torch.float64)
    text = torch.randn(batch, 5, 12, generator=generator, dtype=torch.float64)
    mask = torch.tensor(masks)
    rope = None
    if rotary:
        angles = torch.randn(video, 2, 4, generator=generator, dtype=torch.float64)
        rope = (angles.cos(), angles.sin())
    with torch.no_grad():
        stock = MochiAttnProcessor2_0()(attn, hidden, text, mask, rope)
        ours = MochiJointAttnProcessor()(attn, hidden, text, mask, rope)
    for a, b in zip(stock, ours, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_unprepared_mochi_logs_one_line_naming_the_fix(caplog) -> None:
    tiny = build_tiny("mochi", batch=2)
    backend = asymrnr_fx.backend(kv_ratio=0.5, inner="eager")
    with caplog.at_level(logging.INFO, logger="asymrnr_fx"), torch.no_grad():
        out = torch.compile(tiny.model, backend=backend)(**tiny.inputs)[0]
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.WARNING and r.name == "asymrnr_fx"]
    assert len(lines) == 1, lines  # one line, though the loop breaks the model into 11 graphs
    assert "asymrnr_fx.prepare(transformer)" in lines[0] and "MochiAttnProcessor2_0" in lines[0]
    assert backend.state.sites_rewritable == 0 and torch.isfinite(out).all()


def test_prepared_mochi_rewrites_every_joint_attention_and_equals_the_reference(caplog) -> None:
    """Regression: the stock processor kept every joint attention out of the graph."""
    with caplog.at_level(logging.WARNING, logger="asymrnr_fx"):
        row = check_model("mochi", regional=False)
    assert row.prepared == 2 and row.graphs == 1
    assert row.rewritten == 2 == row.plain_rewritten  # one joint attention per block
    assert row.reasons == ["cross-attention (query length 1, key length 7)"]  # the caption pooling
    assert row.reference == "equal" and row.finite
    assert not any("prepare" in r.getMessage() for r in caplog.records)


def test_apply_installs_the_processor_and_remove_restores_the_stock_one() -> None:
    tiny = build_tiny("mochi", batch=1)
    asymrnr_fx.apply(tiny.model, kv_ratio=0.3, inner="eager")
    processors = [m.processor for m in tiny.model.modules() if isinstance(m, MochiAttention)]
    assert processors and all(isinstance(p, MochiJointAttnProcessor) for p in processors)
    asymrnr_fx.remove(tiny.model)
    processors = [m.processor for m in tiny.model.modules() if isinstance(m, MochiAttention)]
    assert all(isinstance(p, MochiAttnProcessor2_0) for p in processors)
    assert asymrnr_fx.unprepare(tiny.model) == 0 and asymrnr_fx.prepare(tiny.model) == len(processors)


def test_plain_compile_of_the_mochi_pipeline_counts_its_steps() -> None:
    """The fallback step tracker of a plain torch.compile counts the real MochiPipeline's
    forwards as steps 0..3 of one generation. (diffusers 0.42.1 hands the transformer
    decreasing timesteps; Mochi's own increasing convention is covered in test_state.py.)"""
    from tests.tiny_pipelines import build_pipeline

    pipe, call = build_pipeline("mochi")
    asymrnr_fx.prepare(pipe.transformer)
    backend = asymrnr_fx.backend(kv_ratio=0.5, cache_interval=2, inner="eager")
    pipe.transformer = torch.compile(pipe.transformer, backend=backend, dynamic=False)
    with torch.no_grad():
        pipe(**call, generator=torch.Generator().manual_seed(0))
    timesteps = pipe.scheduler.timesteps.tolist()  # what each forward received
    assert len(timesteps) == 4 and timesteps == sorted(timesteps, reverse=True)
    state = backend.state
    assert (state.step, state.stats["generations"], state.refresh_steps) == (3, 1, [0, 2])
    assert state.sites_rewritable == 2 and state.stats["compiles"] == 1  # one graph for every step
