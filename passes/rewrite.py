"""Rewrite attention sites into match -> reduce -> attend -> restore.

A pure graph-to-graph function: it returns a new ``GraphModule`` (sharing parameters with the
input, never copying them) in which each planned ``scaled_dot_product_attention`` call is
replaced by :func:`asymrnr_fx.ops.reduced_sdpa`. Match indices come from one of three places,
the *variant* of the rewrite:

* ``"refresh"``: computed in the graph from the dst/src partition it takes as extra inputs
  (after the originals; a fresh draw per site, component and refresh window), and returned
  as extra outputs (after the originals);
* ``"reuse"``: taken as extra inputs (after the originals): a matching-cache hit;
* ``"static"``: precomputed constants (data-independent ``strided``/``random`` modes).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from asymrnr_fx import ops

from .grid import SequenceLayout
from .sites import find_sdpa_nodes, sdpa_arguments

__all__ = ["SitePlan", "IndexSpec", "RewriteResult", "rewrite_attention"]

VARIANTS = ("refresh", "reuse", "static")


@dataclass(frozen=True)
class SitePlan:
    """How one attention site is reduced. A kept count of None leaves that component alone."""

    node_name: str
    layout: SequenceLayout
    batch: int
    heads: int
    q_keep: int | None
    kv_keep: int | None
    stride: tuple[int, int, int] = (2, 2, 2)
    metric: str = "l2"
    match_on: str = "v"
    merge: str = "drop"
    mode: str = "similarity"
    symmetric: bool = False
    seed: int = 0

    @property
    def partition_stride(self) -> tuple[int, int, int]:
        return self.layout.partition_stride(self.stride)

    def components(self) -> list[str]:
        """Which matchings the site needs: ``shared`` (symmetric), else ``q`` and/or ``kv``."""
        if self.symmetric:
            return ["shared"] if (self.q_keep or self.kv_keep) else []
        return [c for c, n in (("q", self.q_keep), ("kv", self.kv_keep)) if n is not None]


@dataclass(frozen=True)
class IndexSpec:
    """One index tensor crossing the graph boundary (extra input or output)."""

    site: int  # position of the site among the plans
    component: str  # "q", "kv" or "shared"
    kind: str  # "dst" or "src" (partition), "keep" or "restore" (match)
    shape: tuple[int, ...]


@dataclass
class RewriteResult:
    """The rewritten graph and the index tensors it takes and returns beyond the original's."""

    gm: fx.GraphModule
    extra_inputs: list[IndexSpec]
    extra_outputs: list[IndexSpec]


def _copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    graph = fx.Graph()
    output = graph.graph_copy(gm.graph, {})
    graph.output(output)
    return fx.GraphModule(gm, graph, gm.__class__.__name__)


def _buffer(gm: fx.GraphModule, name: str, value: torch.Tensor) -> fx.Node:
    gm.register_buffer(name, value, persistent=False)
    return gm.graph.get_attr(name)


def rewrite_attention(gm: fx.GraphModule, plans: list[SitePlan], variant: str) -> RewriteResult:
    """A rewritten copy of ``gm``; ``gm`` itself is not modified."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: choose one of {VARIANTS}")
    new_gm = _copy_graph_module(gm)
    graph = new_gm.graph
    nodes = {n.name: n for n in find_sdpa_nodes(graph)}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    input_specs: list[IndexSpec] = []
    output_specs: list[IndexSpec] = []
    extra_outputs: list[fx.Node] = []

    def add_input(name: str, spec: IndexSpec) -> fx.Node:
        with graph.inserting_after(placeholders[-1]):
            node = graph.placeholder(name)
        placeholders.append(node)
        input_specs.append(spec)
        return node

    for site, plan in enumerate(plans):
        node = nodes[plan.node_name]
        args = sdpa_arguments(node)
        layout = plan.layout
        num_keep = {"q": plan.q_keep, "kv": plan.kv_keep, "shared": plan.q_keep or plan.kv_keep}
        indices: dict[str, tuple[fx.Node, fx.Node]] = {}
        prefix = f"_asymrnr_{site}"
        static_part = None
        if plan.mode != "similarity":
            example = node.meta.get("example_value")
            device = example.device if isinstance(example, torch.Tensor) else torch.device("cpu")
            static_part = ops.partition(layout.grid, plan.partition_stride, plan.seed, device)
        with graph.inserting_before(node):
            for component in plan.components():
                name = f"{prefix}_{component}"
                keep_spec = IndexSpec(site, component, "keep", (plan.batch, plan.heads, num_keep[component]))
                restore_spec = IndexSpec(site, component, "restore", (plan.batch, plan.heads, layout.video_len))
                if static_part is not None:
                    keep, restore = ops.static_match(static_part, layout.grid, plan.partition_stride,
                                                     num_keep[component], plan.mode, plan.seed)
                    indices[component] = (_buffer(new_gm, f"{name}_keep", keep),
                                          _buffer(new_gm, f"{name}_restore", restore))
                elif variant == "reuse":
                    indices[component] = (add_input(f"{name}_keep", keep_spec),
                                          add_input(f"{name}_restore", restore_spec))
                else:
                    num_dst = ops.dst_count(layout.grid, plan.partition_stride)
                    dst = add_input(f"{name}_dst", IndexSpec(site, component, "dst", (num_dst,)))
                    src = add_input(f"{name}_src", IndexSpec(site, component, "src", (layout.video_len - num_dst,)))
                    source = {"q": args["query"], "kv": args["value"] if plan.match_on == "v" else args["key"],
                              "shared": args["key"]}[component]
                    matched = graph.call_function(
                        ops.match_video_tokens,
                        (source, dst, src),
                        {"video_start": layout.video_start, "video_len": layout.video_len,
                         "num_keep": num_keep[component], "metric": plan.metric},
                    )
                    keep = graph.call_function(operator.getitem, (matched, 0))
                    restore = graph.call_function(operator.getitem, (matched, 1))
                    indices[component] = (keep, restore)
                    extra_outputs.extend([keep, restore])
                    output_specs.extend([keep_spec, restore_spec])
            q_idx = indices.get("shared" if plan.symmetric else "q") if plan.q_keep else None
            kv_idx = indices.get("shared" if plan.symmetric else "kv") if plan.kv_keep else None
            replacement = graph.call_function(
                ops.reduced_sdpa,
                (args["query"], args["key"], args["value"], args["attn_mask"], args["dropout_p"], args["scale"]),
                {"video_start": layout.video_start, "video_len": layout.video_len,
                 "q_keep": q_idx[0] if q_idx else None, "q_restore": q_idx[1] if q_idx else None,
                 "kv_keep": kv_idx[0] if kv_idx else None, "kv_restore": kv_idx[1] if kv_idx else None,
                 "merge": plan.merge},
            )
        replacement.meta = dict(node.meta)
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)

    if variant == "refresh" and extra_outputs:
        output = next(n for n in graph.nodes if n.op == "output")
        (result,) = output.args
        if not isinstance(result, (tuple, list)):
            raise ValueError("graph output is not a tuple; cannot append match indices")
        output.args = (tuple(result) + tuple(extra_outputs),)
    graph.lint()
    new_gm.recompile()
    return RewriteResult(new_gm, input_specs, output_specs)
