"""Rewrite attention sites into match -> reduce -> attend -> restore.

A pure graph-to-graph function: it returns a new ``GraphModule`` (sharing parameters with the
input, never copying them) in which each planned ``scaled_dot_product_attention`` call is
replaced by :func:`asymrnr_fx.ops.reduced_sdpa`. Where the match indices come from is the
*variant* of the rewrite:

* ``"indexed"`` (the method): for every site and component the graph takes the dst/src
  partition and the cached ``keep``/``restore`` indices as extra inputs, plus one CPU bool
  tensor saying which (site, component) to re-match. The opaque
  :func:`asymrnr_fx.ops.select_tokens` node matches afresh or passes the cached indices on;
  the graph returns the indices it used as extra outputs. The kept count K is only the size
  of the ``keep`` input, so one compiled graph (K dynamic) serves every ratio and step.
* ``"static"``: precomputed constants, K baked in (the data-independent ``strided`` and
  ``random`` modes: the speed bound and an ablation).

Extra inputs and outputs follow the original ones, in the order of :attr:`RewriteResult.extra_inputs`
and :attr:`RewriteResult.extra_outputs`.

Where a site's sequence is not in the canonical (single-process) order (Ulysses context
parallelism with text: the rank-local sequences interleave text and video), the site's
query, key, value and key mask are first gathered into the canonical order, and its output
back: everything in between (matching, reduction, restoration) is the single-process code on
the single-process layout.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from asymrnr_fx import ops
from asymrnr_fx.defaults import DEFAULT_METRIC, DEFAULT_SEED, DEFAULT_STRIDE

from .grid import SequenceLayout
from .sites import find_sdpa_nodes, sdpa_arguments

__all__ = ["MatchSettings", "SitePlan", "IndexSpec", "RewriteResult", "rewrite_attention", "REFRESH_INPUT"]

VARIANTS = ("indexed", "static")
REFRESH_INPUT = "_asymrnr_refresh"


@dataclass(frozen=True)
class MatchSettings:
    """How every site of an application matches and merges (from the config)."""

    stride: tuple[int, int, int] = DEFAULT_STRIDE
    metric: str = DEFAULT_METRIC
    match_on: str = "v"
    merge: str = "drop"
    mode: str = "similarity"
    seed: int = DEFAULT_SEED
    kernel: str = "auto"  # the matching kernel: "auto", "triton" or "chunked"
    chunk_offset: str = "start"  # where the complete chunks sit: "start" or "random"


@dataclass(frozen=True)
class SitePlan:
    """One attention site to rewrite and the components reduced there.

    ``components`` holds ``"q"`` and/or ``"kv"`` (each matched on its own), or ``"shared"``
    (the symmetric baseline: one matching on K cuts Q, K and V). ``static_keep`` gives the
    ``(component, kept count)`` pairs of the ``"static"`` variant.
    """

    node_name: str
    layout: SequenceLayout
    batch: int
    heads: int
    components: tuple[str, ...]
    static_keep: tuple[tuple[str, int], ...] = ()

    def partition_stride(self, settings: MatchSettings) -> tuple[int, int, int]:
        return self.layout.partition_stride(settings.stride)


@dataclass(frozen=True)
class IndexSpec:
    """One index tensor crossing the graph boundary (extra input or output)."""

    site: int  # position of the site among the plans
    component: str  # "q", "kv" or "shared"
    kind: str  # "dst" or "src" (partition), "keep" or "restore" (match)


@dataclass
class RewriteResult:
    """The rewritten graph and the tensors it takes and returns beyond the original's.

    For ``"indexed"`` the extra inputs end with the refresh flags (a bool tensor, one entry
    per (site, component) in ``extra_outputs`` order of the keep tensors).
    """

    gm: fx.GraphModule
    extra_inputs: list[IndexSpec]
    extra_outputs: list[IndexSpec]


def _copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    return fx.GraphModule(gm, graph, gm.__class__.__name__)


class _Builder:
    """Adds extra inputs, outputs and buffers to the copy being rewritten."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.graph = gm.graph
        self.last_input = [n for n in self.graph.nodes if n.op == "placeholder"][-1]
        self.inputs: list[IndexSpec] = []
        self.outputs: list[IndexSpec] = []
        self.output_nodes: list[fx.Node] = []

    def add_input(self, name: str, spec: IndexSpec | None) -> fx.Node:
        with self.graph.inserting_after(self.last_input):
            node = self.graph.placeholder(name)
        self.last_input = node
        if spec is not None:
            self.inputs.append(spec)
        return node

    def add_buffer(self, name: str, value: torch.Tensor) -> fx.Node:
        self.gm.register_buffer(name, value, persistent=False)
        return self.graph.get_attr(name)

    def add_output(self, node: fx.Node, spec: IndexSpec) -> None:
        self.output_nodes.append(node)
        self.outputs.append(spec)

    def finish(self) -> None:
        if not self.output_nodes:
            return
        output = next(n for n in self.graph.nodes if n.op == "output")
        (result,) = output.args
        if not isinstance(result, (tuple, list)):
            raise ValueError("graph output is not a tuple; cannot append match indices")
        output.args = (tuple(result) + tuple(self.output_nodes),)


def _match_source(args: dict, component: str, settings: MatchSettings) -> fx.Node:
    """What a component is matched on: Q on Q, K/V on V (or K), the symmetric baseline on K."""
    if component == "q":
        return args["query"]
    if component == "kv" and settings.match_on == "v":
        return args["value"]
    return args["key"]


def _indexed_indices(builder: _Builder, site: int, plan: SitePlan, args: dict, settings: MatchSettings,
                     refresh: fx.Node, slot: int) -> dict[str, tuple[fx.Node, fx.Node]]:
    indices = {}
    for component in plan.components:
        name = f"_asymrnr_{site}_{component}"
        dst, src, keep, restore = (builder.add_input(f"{name}_{kind}", IndexSpec(site, component, kind))
                                   for kind in ("dst", "src", "keep", "restore"))
        selected = builder.graph.call_function(
            torch.ops.asymrnr.select_tokens.default,
            (_match_source(args, component, settings), dst, src, keep, restore, refresh, slot,
             plan.layout.video_start, settings.metric, settings.kernel),
        )
        keep = builder.graph.call_function(operator.getitem, (selected, 0))
        restore = builder.graph.call_function(operator.getitem, (selected, 1))
        builder.add_output(keep, IndexSpec(site, component, "keep"))
        builder.add_output(restore, IndexSpec(site, component, "restore"))
        indices[component] = (keep, restore)
        slot += 1
    return indices


def _static_indices(builder: _Builder, site: int, plan: SitePlan, example: object,
                    settings: MatchSettings) -> dict[str, tuple[fx.Node, fx.Node]]:
    device = example.device if isinstance(example, torch.Tensor) else torch.device("cpu")
    stride = plan.partition_stride(settings)
    part = ops.partition(plan.layout.grid, stride, settings.seed, device, settings.chunk_offset)
    indices = {}
    for component in plan.components:
        keep, restore = ops.static_match(part, plan.layout.grid, stride, dict(plan.static_keep)[component],
                                         settings.mode, settings.seed)
        name = f"_asymrnr_{site}_{component}"
        indices[component] = (builder.add_buffer(f"{name}_keep", keep),
                              builder.add_buffer(f"{name}_restore", restore))
    return indices


def _to_canonical(builder: _Builder, site: int, node: fx.Node, args: dict,
                  order: list[int]) -> tuple[dict, fx.Node]:
    """``args`` with query, key, value (and a key mask) in the canonical token order, and the
    index that puts an output back into the order of the call."""
    example = node.meta.get("example_value")
    device = example.device if isinstance(example, torch.Tensor) else torch.device("cpu")
    forward = torch.tensor(order, dtype=torch.long, device=device)
    back = torch.empty_like(forward).scatter_(0, forward, torch.arange(len(order), device=device))
    to_canonical = builder.add_buffer(f"_asymrnr_{site}_order", forward)
    unorder = builder.add_buffer(f"_asymrnr_{site}_unorder", back)
    args = dict(args)
    for name in ("query", "key", "value"):
        args[name] = builder.graph.call_function(torch.index_select, (args[name], 2, to_canonical))
    mask = args["attn_mask"]
    mask_shape = _example_shape(mask)
    if mask_shape is not None and mask_shape[-1] != 1:  # a key mask: its columns follow the keys
        args["attn_mask"] = builder.graph.call_function(torch.index_select, (mask, -1, to_canonical))
    return args, unorder


def _example_shape(arg: object) -> tuple[int, ...] | None:
    value = arg.meta.get("example_value", arg.meta.get("val")) if isinstance(arg, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _replace_site(builder: _Builder, node: fx.Node, args: dict, plan: SitePlan,
                  indices: dict[str, tuple[fx.Node, fx.Node]], settings: MatchSettings,
                  unorder: fx.Node | None = None) -> None:
    q_idx = indices.get("shared", indices.get("q"))
    kv_idx = indices.get("shared", indices.get("kv"))
    with builder.graph.inserting_before(node):
        replacement = builder.graph.call_function(
            ops.reduced_sdpa,
            (args["query"], args["key"], args["value"], args["attn_mask"], args["dropout_p"], args["scale"]),
            {"video_start": plan.layout.video_start, "video_len": plan.layout.video_len,
             "q_keep": q_idx[0] if q_idx else None, "q_restore": q_idx[1] if q_idx else None,
             "kv_keep": kv_idx[0] if kv_idx else None, "kv_restore": kv_idx[1] if kv_idx else None,
             "merge": settings.merge},
        )
        if unorder is not None:  # back into the order of the call
            replacement = builder.graph.call_function(torch.index_select, (replacement, 2, unorder))
    replacement.meta = dict(node.meta)
    node.replace_all_uses_with(replacement)
    builder.graph.erase_node(node)


def rewrite_attention(gm: fx.GraphModule, plans: list[SitePlan], settings: MatchSettings,
                      variant: str = "indexed") -> RewriteResult:
    """A rewritten copy of ``gm``; ``gm`` itself is not modified."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: choose one of {VARIANTS}")
    builder = _Builder(_copy_graph_module(gm))
    nodes = {n.name: n for n in find_sdpa_nodes(builder.graph)}
    refresh = builder.add_input(REFRESH_INPUT, None) if variant == "indexed" else None
    slot = 0
    for site, plan in enumerate(plans):
        if not plan.components:  # nothing reduced here at any step: the call stays as it is
            continue
        node = nodes[plan.node_name]
        args = sdpa_arguments(node)
        order, unorder = plan.layout.token_order(), None
        with builder.graph.inserting_before(node):
            if order is not None:
                args, unorder = _to_canonical(builder, site, node, args, order)
            if variant == "indexed":
                indices = _indexed_indices(builder, site, plan, args, settings, refresh, slot)
                slot += len(plan.components)
            else:
                indices = _static_indices(builder, site, plan, node.meta.get("example_value"), settings)
        _replace_site(builder, node, args, plan, indices, settings, unorder)
    builder.finish()
    builder.graph.lint()
    builder.gm.recompile()
    return RewriteResult(builder.gm, builder.inputs, builder.outputs)
