"""The graph side of context parallelism, in one process: the Ulysses proof, the ring finder,
the layout of a gathered sequence, and the rewrite of an interleaved one."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

import asymrnr_fx
from asymrnr_fx import passes  # through the package: one import order, checked out or installed
from asymrnr_fx.dynamo_backend import build_runner
from asymrnr_fx.runner import GraphRunner, InnerCompiler
from asymrnr_fx.state import AsymRnRState

SequenceLayout = passes.grid.SequenceLayout
Exchange = passes.parallel.Exchange
ring_attention, ulysses_exchange = passes.parallel.ring_attention, passes.parallel.ulysses_exchange
classify_sites = passes.sites.classify_sites
C10D = torch.ops._c10d_functional


def test_token_order_puts_each_kind_back_together() -> None:
    # Two processes, each [text_r (2), video_r (3)]: gathered [t0 t1 v0 v1 v2 | t2 t3 v3 v4 v5].
    before = SequenceLayout(4, 6, (6, 1, 1), 4, True, shards=2)
    assert before.token_order() == [0, 1, 5, 6, 2, 3, 4, 7, 8, 9]
    after = SequenceLayout(0, 6, (6, 1, 1), 4, True, shards=2)  # each [video_r, text_r]
    assert after.token_order() == [0, 1, 2, 5, 6, 7, 3, 4, 8, 9]
    assert SequenceLayout(0, 6, (6, 1, 1), 0, True, shards=2).token_order() is None  # no text
    assert SequenceLayout(4, 6, (6, 1, 1), 4, True).token_order() is None  # one process


def _meta(node: fx.Node, *shape: int) -> fx.Node:
    node.meta["example_value"] = torch.empty(*shape, device="meta")
    return node


def _ulysses_graph(collective: str = "all_to_all", splits: tuple[int, int] = (8, 8)) -> tuple[fx.Graph, fx.Node]:
    """Query, key and value exchanged as diffusers' TemplatedUlyssesAttention does, for two
    processes: (B=1, S/2=4, H=2, D=2) locally, (1, 1, 8, 2) at the attention."""
    graph = fx.Graph()
    inputs = []
    for name in ("query", "key", "value"):
        local = _meta(graph.placeholder(name), 1, 4, 2, 2)
        x = graph.call_method("reshape", (local, 1, 4, 2, 1, 2))
        x = graph.call_method("flatten", (graph.call_method("contiguous", (graph.call_method("permute", (x, 2, 1, 0, 3, 4)),)),))
        if collective == "all_to_all":
            x = graph.call_function(C10D.all_to_all_single, (x, list(splits), list(splits), "0"))
        else:
            x = graph.call_function(C10D.all_gather_into_tensor, (x, 2, "0"))
        x = graph.call_method("reshape", (graph.call_function(C10D.wait_tensor, (x,)), (2, 4, 1, 1, 2)))
        x = graph.call_method("permute", (graph.call_method("flatten", (x, 0, 1)), 1, 2, 0, 3))
        inputs.append(_meta(x, 1, 1, 8, 2))
    sdpa = _meta(graph.call_function(F.scaled_dot_product_attention, tuple(inputs)), 1, 1, 8, 2)
    graph.output(sdpa)
    return graph, sdpa


def _exchange(graph: fx.Graph, sdpa: fx.Node) -> Exchange | str | None:
    args = dict(zip(("query", "key", "value"), sdpa.args, strict=True))
    return ulysses_exchange(args, [(1, 1, 8, 2)] * 3)


def test_ulysses_exchange_is_proven_back_to_the_local_tokens() -> None:
    graph, sdpa = _ulysses_graph()
    exchange = _exchange(graph, sdpa)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    assert exchange == Exchange(2, *placeholders)
    assert ring_attention(graph) is None


def test_uneven_or_gathered_exchanges_are_not_proof() -> None:
    graph, sdpa = _ulysses_graph(splits=(6, 10))  # ulysses_anything
    assert "uneven" in _exchange(graph, sdpa)
    graph, sdpa = _ulysses_graph(collective="all_gather")  # ring: shards gathered
    assert "ring attention" in _exchange(graph, sdpa)
    assert "all_gather_into_tensor" in ring_attention(graph)


class Joint(torch.nn.Module):
    """Self-attention over a given token sequence (text and video already joined)."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        q, k, v = (p(x).view(b, s, self.heads, c // self.heads).transpose(1, 2)
                   for p in (self.to_q, self.to_k, self.to_v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _run(layout: SequenceLayout, x: torch.Tensor, mask: torch.Tensor, merge: str) -> tuple[torch.Tensor, torch.Tensor]:
    """AsymRnR and plain attention of one captured Joint graph, its site laid out as ``layout``."""
    torch.manual_seed(0)
    module = Joint().eval()
    captured = {}

    def capture(gm, example_inputs):  # noqa: ANN001, ANN202
        captured["gm"], captured["inputs"] = gm, example_inputs
        return gm.forward

    torch._dynamo.reset()
    torch.compile(module, backend=capture, fullgraph=True)(x, mask)
    (site,) = classify_sites(captured["gm"].graph, layout.grid, text_side=layout.text_side)
    assert site.rewritable
    site = dataclasses.replace(site, layout=layout)
    state = AsymRnRState(asymrnr_fx.AsymRnRConfig(q_ratio=0.5, kv_ratio=0.5, merge=merge, stride=(2, 1, 2)))
    runner = GraphRunner(captured["gm"], [site], state, InnerCompiler("eager", {}), (None, None))
    with torch.no_grad():
        return runner(*captured["inputs"])[0], module(x, mask)


@pytest.mark.parametrize("side", ["before", "after"])
@pytest.mark.parametrize("merge", ["drop", "mean"])
def test_interleaved_sequence_is_reduced_as_the_canonical_one(side: str, merge: str) -> None:
    grid, text, shards = (2, 2, 4), 4, 2
    video = math.prod(grid)
    canonical = SequenceLayout(text if side == "before" else 0, video, grid, text, True)
    gathered = dataclasses.replace(canonical, shards=shards)
    order = torch.tensor(gathered.token_order())
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, video + text, 8, generator=generator)
    mask = torch.rand(1, 1, 1, video + text, generator=generator) > 0.2
    mask[..., order[0]] = True
    # Position order[i] of the gathered sequence holds canonical token i.
    x_gathered = torch.empty_like(x)
    x_gathered[:, order] = x
    mask_gathered = torch.empty_like(mask)
    mask_gathered[..., order] = mask
    expected, plain = _run(canonical, x, mask, merge)
    out, _ = _run(gathered, x_gathered, mask_gathered, merge)
    assert (expected - plain).abs().max() > 1e-3  # AsymRnR acted
    torch.testing.assert_close(out[:, :, order], expected, rtol=1e-5, atol=1e-6)


def test_the_backend_refuses_ring_attention_at_compile_time() -> None:
    graph, _ = _ulysses_graph(collective="all_gather")
    gm = fx.GraphModule(torch.nn.Module(), graph)
    state = AsymRnRState(asymrnr_fx.AsymRnRConfig())
    with pytest.raises(ValueError, match="does not support ring attention"):
        build_runner(gm, [], state, InnerCompiler("eager", {}))
