"""Property tests of the rewrite against the independent reference in ``reference.py``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from asymrnr_fx.passes.rewrite import rewrite_attention
from asymrnr_fx.passes.sites import classify_sites
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asymrnr_fx
from asymrnr_fx.ops import dst_count, kept_count, partition, partition_seed, site_partition

from .reference import reference_attention, reference_partition


class JointAttention(torch.nn.Module):
    """Text and video tokens joined, projected, attended: the shape of a video DiT block."""

    def __init__(self, dim: int, heads: int, text_side: str, call_style: str) -> None:
        super().__init__()
        self.heads, self.text_side, self.call_style = heads, text_side, call_style
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(dim, dim) for _ in range(3))

    def qkv(self, video: torch.Tensor, text: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat([text, video], 1) if self.text_side == "before" else torch.cat([video, text], 1)
        b, s, c = x.shape
        return [p(x).view(b, s, self.heads, c // self.heads).transpose(1, 2)
                for p in (self.to_q, self.to_k, self.to_v)]

    def forward(self, video: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self.qkv(video, text)
        if self.call_style == "positional":
            out = F.scaled_dot_product_attention(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=mask, dropout_p=0.0)
        return out * 1.0


cases = st.fixed_dictionaries({
    "batch": st.integers(1, 2),
    "heads": st.sampled_from([1, 2]),
    "head_dim": st.sampled_from([4, 8]),
    "grid": st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 4)),
    "text": st.integers(0, 4),
    "text_side": st.sampled_from(["before", "after"]),
    "mask": st.sampled_from([None, "bool-key", "bool-full"]),
    "call_style": st.sampled_from(["positional", "keyword"]),
    "q_ratio": st.sampled_from([0.0, 0.25, 0.5, 0.8]),
    "kv_ratio": st.sampled_from([0.0, 0.3, 0.5, 0.9]),
    "stride": st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 2)),
    "merge": st.sampled_from(["drop", "mean"]),
    "metric": st.sampled_from(["l2", "cosine"]),
    "match_on": st.sampled_from(["v", "k"]),
    "seed": st.integers(0, 2**16),
})


def _setup(case: dict):
    torch.manual_seed(case["seed"])
    dim = case["heads"] * case["head_dim"]
    module = JointAttention(dim, case["heads"], case["text_side"], case["call_style"]).eval()
    num_video = math.prod(case["grid"])
    seq = num_video + case["text"]
    video = torch.randn(case["batch"], num_video, dim)
    text = torch.randn(case["batch"], case["text"], dim)
    mask = None
    if case["mask"] == "bool-key":
        mask = torch.rand(case["batch"], 1, 1, seq) > 0.2
        mask[..., 0] = True  # no fully masked row
        mask[..., -1] = True
    elif case["mask"] == "bool-full":
        mask = torch.rand(case["batch"], case["heads"], seq, seq) > 0.3
        mask |= torch.eye(seq, dtype=torch.bool)
        if case["text"]:  # a query must keep at least one unmasked key after the cut
            start = 0 if case["text_side"] == "before" else num_video
            mask[..., start] = True
    return module, video, text, mask


def _config(case: dict) -> asymrnr_fx.AsymRnRConfig:
    return asymrnr_fx.AsymRnRConfig(
        q_ratio=case["q_ratio"], kv_ratio=case["kv_ratio"], stride=case["stride"], merge=case["merge"],
        metric=case["metric"], match_on=case["match_on"], grid=case["grid"], seed=case["seed"],
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases)
def test_rewrite_matches_reference(case: dict) -> None:
    module, video, text, mask = _setup(case)
    config = _config(case)
    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(config, inner="eager")
    with torch.no_grad():
        eager = module(video, text, mask)
        compiled = torch.compile(module, backend=compiler, fullgraph=True)
        out = compiled(video, text, mask)
        q, k, v = module.qkv(video, text)
        q, k, v = q.detach(), k.detach(), v.detach()

    assert out.shape == eager.shape and out.dtype == eager.dtype
    num_video = math.prod(case["grid"])
    start = case["text"] if case["text_side"] == "before" else 0
    video_rows = slice(start, start + num_video)
    text_rows = [t for t in range(out.shape[1]) if not start <= t < start + num_video]

    if config.is_identity or case["text"] == num_video:  # equal lengths: side unknown, left alone
        assert torch.equal(out, eager)
        return
    if case["mask"] == "bool-full":  # a per-query mask may be causal: the site is left alone
        assert torch.equal(out, eager) and not compiler.state.cache
        return
    # Step 0 is refresh window 0; Q and K/V each draw their own partition.
    parts = {c: site_partition(case["grid"], case["stride"], seed=case["seed"], site=0, component=c,
                               window=0) for c in ("q", "kv")}
    active = {}
    for component in ("q", "kv"):
        ratio = case[f"{component}_ratio"]
        kept = kept_count(num_video, ratio, parts[component].dst_idx.numel())
        active[component] = kept if ratio > 0 and kept < num_video else None
    expected = reference_attention(
        q, k, v, mask, video_start=start, video_len=num_video,
        q_partition=(parts["q"].dst_idx.tolist(), parts["q"].src_idx.tolist()),
        kv_partition=(parts["kv"].dst_idx.tolist(), parts["kv"].src_idx.tolist()),
        q_keep=active["q"], kv_keep=active["kv"], metric=case["metric"],
        merge=case["merge"], match_on=case["match_on"],
    ).float()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)

    # Kept counts follow the formula, and every restored row copies its representative.
    cache = compiler.state.cache
    for component in ("q", "kv"):
        entry = cache.get((0, component, 0))
        if active[component] is None:
            assert entry is None
            continue
        assert entry.keep.shape == (q.shape[0], q.shape[1], active[component])
        assert entry.keep.shape[-1] == max(int(num_video * (1 - case[f"{component}_ratio"])),
                                           parts[component].dst_idx.numel())
    entry = cache.get((0, "q", 0))
    if entry is not None:
        video_out = out[:, :, video_rows]
        representative = entry.keep.gather(-1, entry.restore)
        copied = video_out.gather(2, representative.unsqueeze(-1).expand_as(video_out))
        assert torch.equal(video_out, copied)
    if active["kv"] is None:  # text queries see the full K/V: their rows are untouched
        torch.testing.assert_close(out[:, :, text_rows], eager[:, :, text_rows])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases)
def test_rewritten_graph_lints_and_leaves_input_alone(case: dict) -> None:
    module, video, text, mask = _setup(case)
    captured = {}

    def capture(gm, example_inputs):  # noqa: ANN001, ANN202
        captured["gm"] = gm
        return gm.forward

    torch._dynamo.reset()
    torch.compile(module, backend=capture, fullgraph=True)(video, text, mask)
    gm = captured["gm"]
    before = gm.code
    sites = classify_sites(gm.graph, case["grid"])
    if case["mask"] == "bool-full":
        assert not sites[0].rewritable and "may be causal" in sites[0].reason
        return
    if case["text"] == math.prod(case["grid"]):
        assert not sites[0].rewritable and "text_side" in sites[0].reason
        return
    assert [s.rewritable for s in sites] == [True]
    layout = sites[0].layout
    assert layout.video_len == math.prod(case["grid"]) and layout.text_len == case["text"]
    assert layout.text_side == (case["text_side"] if case["text"] else None)
    from asymrnr_fx.passes.rewrite import MatchSettings, SitePlan

    site = sites[0]
    settings = MatchSettings(stride=case["stride"], seed=case["seed"])
    for variant, components in (("indexed", ("q", "kv")), ("static", ("kv",))):
        plan = SitePlan(site.node_name, layout, site.batch, site.heads, components,
                        (("kv", max(1, layout.video_len // 2)),))
        result = rewrite_attention(gm, [plan], settings.__class__(**{**settings.__dict__, "mode": "strided"})
                                   if variant == "static" else settings, variant)
        result.gm.graph.lint()
        names = [n.target for n in result.gm.graph.nodes if n.op == "call_function"]
        assert F.scaled_dot_product_attention not in names
        if variant == "indexed":  # per component: dst, src, keep, restore in; keep, restore out
            assert [s.kind for s in result.extra_inputs] == ["dst", "src", "keep", "restore"] * 2
            assert [s.kind for s in result.extra_outputs] == ["keep", "restore"] * 2
    assert gm.code == before  # the pass is pure


def test_cross_attention_and_causal_are_left_alone() -> None:
    class Cross(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(8, 8) for _ in range(3))

        def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            q = self.q(x).view(b, -1, 2, 4).transpose(1, 2)
            k = self.k(ctx).view(b, -1, 2, 4).transpose(1, 2)
            v = self.v(ctx).view(b, -1, 2, 4).transpose(1, 2)
            k_self = self.k(x).view(b, -1, 2, 4).transpose(1, 2)
            v_self = self.v(x).view(b, -1, 2, 4).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v)  # cross, different lengths
            c = F.scaled_dot_product_attention(q, k_self, v_self, is_causal=True)
            same_len = torch.cat([ctx, ctx], 1)
            k2 = self.k(same_len).view(b, -1, 2, 4).transpose(1, 2)
            v2 = self.v(same_len).view(b, -1, 2, 4).transpose(1, 2)
            d = F.scaled_dot_product_attention(q, k2, v2)  # cross, equal lengths
            return a.sum() + c.sum() + d.sum()

    captured = {}

    def capture(gm, example_inputs):  # noqa: ANN001, ANN202
        captured["gm"] = gm
        return gm.forward

    torch._dynamo.reset()
    torch.compile(Cross(), backend=capture)(torch.randn(1, 8, 8), torch.randn(1, 4, 8))
    sites = classify_sites(captured["gm"].graph, (2, 2, 2))
    assert [s.rewritable for s in sites] == [False, False, False]
    assert "cross-attention" in sites[0].reason
    assert "causal" in sites[1].reason
    assert "same tokens" in sites[2].reason


@pytest.mark.parametrize("bad", [{"kv_ratio": 1.0}, {"q_ratio": -0.1}, {"stride": (2, 0, 2)},
                                 {"merge": "avg"}, {"grid": (2, 2)}, {"cache_interval": 0},
                                 {"match_kernel": "cuda"}, {"seed": 1.5}])
def test_bad_config_names_the_field(bad: dict) -> None:
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        asymrnr_fx.AsymRnRConfig(**bad)


def test_unknown_option_is_an_error() -> None:
    with pytest.raises(ValueError, match="kv_ratioo"):
        asymrnr_fx.AsymRnRConfig.from_dict({"kv_ratioo": 0.3})
    with pytest.raises(ValueError, match="kv_ratioo"):
        asymrnr_fx.backend(kv_ratioo=0.3)
    from asymrnr_fx.dynamo_backend import inductor_config_patches

    with pytest.raises(ValueError, match="not_an_inductor_option"):
        inductor_config_patches(None, {"not_an_inductor_option": 1})


def test_grid_that_does_not_match_the_tokens_is_an_error() -> None:
    module = JointAttention(8, 2, "before", "positional")
    video, text = torch.randn(1, 12, 8), torch.randn(1, 3, 8)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=asymrnr_fx.backend(grid=(4, 4, 4), inner="eager"))
    with pytest.raises(Exception, match="grid"):
        compiled(video, text, None)


@settings(max_examples=60, deadline=None)
@given(grid=st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
       stride=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
       seed=st.integers(0, 2**31))
def test_partition_matches_the_reference_draw(grid, stride, seed) -> None:
    for chunk_offset in ("start", "random"):
        part = partition(grid, stride, seed, chunk_offset=chunk_offset)
        dst, src = reference_partition(grid, stride, seed, chunk_offset)
        assert part.dst_idx.tolist() == dst and part.src_idx.tolist() == src
        assert part.dst_idx.numel() == dst_count(grid, stride)


def test_random_chunk_offset_moves_the_leftover_frames() -> None:
    """33 latent frames, stride 6 (HunyuanVideo 720p x 129 frames): "start" never puts a dst in
    the last 3 frames; "random" does for some draws, and never shifts a grid the stride divides."""
    grid, stride = (33, 2, 2), (6, 2, 2)
    last_frames = {t * 4 + i for t in (30, 31, 32) for i in range(4)}
    start = [set(partition(grid, stride, seed).dst_idx.tolist()) for seed in range(40)]
    moved = [set(partition(grid, stride, seed, chunk_offset="random").dst_idx.tolist()) for seed in range(40)]
    assert not any(d & last_frames for d in start)
    assert any(d & last_frames for d in moved)
    even = (12, 4, 4)
    for seed in range(5):
        assert torch.equal(partition(even, stride, seed).dst_idx,
                           partition(even, stride, seed, chunk_offset="random").dst_idx)
    with pytest.raises(ValueError, match="chunk_offset='end'"):
        partition(grid, stride, 0, chunk_offset="end")


def test_site_partitions_differ_by_site_component_and_window_and_are_reproducible() -> None:
    grid, stride = (4, 6, 6), (2, 2, 2)
    draws = {}
    for site in (0, 1):
        for component in ("q", "kv"):
            for window in (0, 1):
                part = site_partition(grid, stride, seed=3, site=site, component=component, window=window)
                again = site_partition(grid, stride, seed=3, site=site, component=component, window=window)
                assert torch.equal(part.dst_idx, again.dst_idx)
                draws[(site, component, window)] = tuple(part.dst_idx.tolist())
                seed = partition_seed(3, site, component, window)
                assert draws[(site, component, window)] == tuple(reference_partition(grid, stride, seed)[0])
    assert len(set(draws.values())) == len(draws)  # a fresh draw for every (site, component, window)


def test_one_compiled_graph_serves_a_different_ratio_at_every_step() -> None:
    """20 steps, a different (q, kv) at each: one Inductor graph, no recompile, and every step
    equals the reference with that step's kept counts and refresh window's partitions."""
    grid, text, heads = (2, 4, 4), 3, 2
    module = JointAttention(8 * heads, heads, "before", "positional").eval()
    steps = 20
    q = [[round(0.04 * s, 2)] for s in range(steps)]  # 0.0 (every token kept) at step 0
    kv = [[round(0.7 - 0.03 * s, 2)] for s in range(steps)]
    schedule = asymrnr_fx.Schedule(1, steps, q, kv)
    config = asymrnr_fx.AsymRnRConfig(schedule=schedule, grid=grid, cache_interval=4, seed=1)
    compiler = asymrnr_fx.backend(config)
    torch._dynamo.reset()
    torch.manual_seed(0)
    video, text_tokens = torch.randn(1, 32, 8 * heads), torch.randn(1, text, 8 * heads)
    compiled = torch.compile(module, backend=compiler, fullgraph=True)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(steps):
            compiler.state.set_step(step, steps)
            out = compiled(video, text_tokens, None)
            qq, kk, vv = (t.detach() for t in module.qkv(video, text_tokens))
            parts = {c: site_partition(grid, (2, 2, 2), seed=1, site=0, component=c, window=step // 4)
                     for c in ("q", "kv")}
            keep = {c: kept_count(32, r, parts[c].dst_idx.numel())
                    for c, r in (("q", q[step][0]), ("kv", kv[step][0]))}
            expected = reference_attention(
                qq, kk, vv, None, video_start=text, video_len=32,
                q_partition=(parts["q"].dst_idx.tolist(), parts["q"].src_idx.tolist()),
                kv_partition=(parts["kv"].dst_idx.tolist(), parts["kv"].src_idx.tolist()),
                q_keep=keep["q"] if keep["q"] < 32 else None, kv_keep=keep["kv"] if keep["kv"] < 32 else None,
            ).float()
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    assert compiler.state.stats["compiles"] == 1  # the bound: one graph per captured graph


def test_inductor_cache_keys_carry_the_custom_op_signatures(monkeypatch) -> None:
    """Regression: Inductor's on-disk caches key a graph by its code, where a custom op call is
    its name and positional arguments. After the op's last argument was renamed, a cache entry
    compiled for the old signature was served ("Unknown keyword argument 'path' for operator
    'asymrnr::select_tokens'"). Every compile of a rewrite is tagged with the ops' schemas."""
    import torch._inductor.compile_fx as compile_fx_module

    tags = []
    real = compile_fx_module.compile_fx

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        tags.append(torch.compiler.config.cache_key_tag)
        return real(*args, **kwargs)

    monkeypatch.setattr(compile_fx_module, "compile_fx", spy)
    module = JointAttention(16, 2, "before", "positional").eval()
    config = asymrnr_fx.AsymRnRConfig(kv_ratio=0.5, grid=(2, 4, 4))
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=asymrnr_fx.backend(config), fullgraph=True)
    with torch.no_grad(), torch.compiler.config.patch(cache_key_tag="users-own"):
        compiled(torch.randn(1, 32, 16), torch.randn(1, 3, 16), None)
    schema = str(torch.ops.asymrnr.select_tokens.default._schema)
    assert tags and all(t.startswith("users-own") and schema in t for t in tags)
    assert torch.compiler.config.cache_key_tag == ""
