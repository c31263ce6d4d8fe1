"""Find the ``scaled_dot_product_attention`` calls of a Dynamo graph and classify them.

A site is rewritten only when the graph proves it is video self-attention: query, key and
value are 4-D with static shapes, query and key have the same length, both are projections of
the same inputs, the mask (if any) masks keys only (or is a symmetric padding mask whose video rows
all equal its key mask, :mod:`.masks`), there is evidence of the video grid, and the video tokens
form one contiguous segment (text, if any, before or after it). Under Ulysses context parallelism
the site must be proven to see the whole sequence (see :mod:`.parallel`); its layout is read from
the rank-local tokens. Everything else is left alone with a reason.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from .grid import SequenceLayout, infer_grid, infer_layout, layout_from_evidence
from .masks import valid_prefix_of_symmetric_mask
from .parallel import ulysses_exchange
from .verdicts import NOT_VIDEO, Refusal, SiteKind
from .walk import ancestors

__all__ = ["AttentionSite", "SiteKind", "SDPA_TARGETS", "DYNAMIC_SHAPES", "NOT_VIDEO", "find_sdpa_nodes",
           "sdpa_arguments", "classify_sites", "module_classes", "module_path", "count_blocks", "attention_kernel",
           "projection_weight_input"]

SDPA_TARGETS = (F.scaled_dot_product_attention, torch.ops.aten.scaled_dot_product_attention.default)


def _sdpa_signature(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):  # noqa: ANN001, ANN202 - signature only
    pass


_SIGNATURE = inspect.signature(_sdpa_signature)


DYNAMIC_SHAPES = "dynamic shapes: query/key/value sizes are symbolic (compile with dynamic=False)"


@dataclass(frozen=True)
class AttentionSite:
    """One attention call of the graph and what the pass decided about it."""

    node_name: str
    rewritable: bool
    reason: str  # for people; code decides on ``kind``
    layout: SequenceLayout | None = None
    batch: int = 0
    heads: int = 0
    kernel: str = "sdpa"  # or the name of the attention kernel that is not SDPA
    # The graph input holding the query projection's weight (Dynamo lifts parameters to
    # inputs, so one graph may serve every block): at run time it says which block this is.
    weight_input: int | None = None
    kind: SiteKind = SiteKind.VIDEO_SELF_ATTENTION
    module: str = ""  # the attention module's path in the model (``blocks.0.attn1``), "" if unknown

    @property
    def label(self) -> str:
        """How logs name the site: its module path, else its graph node."""
        return self.module or self.node_name


# Attention kernels that are not SDPA (diffusers' other attention backends): found by name, so
# they are reported as left alone instead of silently skipped. Kernel name -> diffusers backend.
_KERNEL_NAME = re.compile(r"attn|attention", re.IGNORECASE)
_BACKEND_OF_KERNEL = (("flex_attention", "flex"), ("flash_attn_3", "_flash_3"), ("flash_attn", "flash"),
                      ("sage", "sage"), ("xformers", "xformers"), ("npu_fusion_attention", "_native_npu"),
                      ("aiter", "aiter"))


def attention_kernel(node: fx.Node) -> str | None:
    """The name of the attention kernel ``node`` calls when it is not SDPA (flex attention,
    flash-attn, sage, xformers ops), else None."""
    if node.op != "call_function" or node.target in SDPA_TARGETS:
        return None
    target = node.target
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        name = str(target)
    else:
        name = getattr(target, "__name__", "") or str(target)
    return name if _KERNEL_NAME.search(name) else None


def _other_kernel_site(node: fx.Node, kernel: str) -> AttentionSite:
    backend = next((b for key, b in _BACKEND_OF_KERNEL if key in kernel), None)
    hint = f" (diffusers attention backend {backend!r})" if backend else ""
    return AttentionSite(node.name, False, f"attention kernel {kernel}{hint} is not "
                         "scaled_dot_product_attention: only SDPA calls are rewritten", kernel=kernel,
                         kind=SiteKind.OTHER_KERNEL)


def find_sdpa_nodes(graph: fx.Graph) -> list[fx.Node]:
    """All attention call nodes, in graph order."""
    return [n for n in graph.nodes if n.op == "call_function" and n.target in SDPA_TARGETS]


def module_classes(node: fx.Node) -> set[str]:
    """Class names of the modules ``node`` was traced inside (Dynamo's ``nn_module_stack``)."""
    names = set()
    for entry in (node.meta.get("nn_module_stack") or {}).values():
        cls = entry[1] if isinstance(entry, tuple) and len(entry) > 1 else entry
        names.add(cls.__name__ if isinstance(cls, type) else str(cls).rstrip("'>").rsplit(".", 1)[-1])
    return names


def count_blocks(graph: fx.Graph) -> int | None:
    """How many distinct repeated blocks (``<name>_blocks.<i>``, e.g. ``transformer_blocks.3``)
    the graph's nodes were traced inside; None when it shows none."""
    blocks = set()
    for node in graph.nodes:
        for entry in (node.meta.get("nn_module_stack") or {}).values():
            path = entry[0] if isinstance(entry, tuple) else str(entry)
            found = _BLOCK_PATH.search(str(path))
            if found:
                blocks.add(found.groups())
    return len(blocks) or None


_BLOCK_PATH = re.compile(r"(\w*blocks)\W*(\d+)")


def sdpa_arguments(node: fx.Node) -> dict[str, object]:
    """The node's arguments by name, positional or keyword, defaults filled in."""
    bound = _SIGNATURE.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _value(arg: object) -> object:
    return arg.meta.get("example_value", arg.meta.get("val")) if isinstance(arg, fx.Node) else arg


def _static_shape(arg: object) -> tuple[int, ...] | None:
    value = _value(arg)
    if not isinstance(value, torch.Tensor):
        return None
    if not all(isinstance(d, int) for d in value.shape):
        return None
    return tuple(value.shape)


_LINEAR_TARGETS = {F.linear, torch._C._nn.linear, torch.ops.aten.linear.default, torch.matmul}


def _is_linear(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _LINEAR_TARGETS
    if node.op == "call_module" and node.graph.owning_module is not None:
        return isinstance(node.graph.owning_module.get_submodule(node.target), torch.nn.Linear)
    return False


_PER_TOKEN = {F.dropout, torch.dropout, torch.nn.functional.dropout}


def _token_source(node: object) -> object:
    """The tokens a projection reads, through the per-token layers in front of it: a LoRA
    adapter's branch is ``lora_B(lora_A(dropout(x)))``, which reads the same ``x`` as the
    base projection. Linear layers and dropout never mix positions, so skipping them keeps
    the token correspondence that self-attention needs."""
    while isinstance(node, fx.Node) and node.args and (_is_linear(node) or (
            node.op == "call_function" and node.target in _PER_TOKEN)):
        node = node.args[0]
    return node


def _projection_sources(node: fx.Node, max_depth: int = 30) -> set[object]:
    """The tokens the linear projections that ``node`` is computed from read.

    A backward walk that stops at linear layers: query and key of self-attention are
    projections of the same tokens; cross-attention projects different ones.
    """
    return {_token_source(n.args[0]) for n in ancestors(node, max_depth, stop=_is_linear)
            if n is not node and _is_linear(n)}


def _left_alone(name: str, kind: SiteKind, reason: str) -> AttentionSite:
    return AttentionSite(name, False, reason, kind=kind)


def _classify(node: fx.Node, args: dict[str, object], layout_for) -> AttentionSite:  # noqa: ANN001
    name = node.name
    shapes = [_static_shape(args[k]) for k in ("query", "key", "value")]
    if any(s is None for s in shapes):
        return _left_alone(name, SiteKind.DYNAMIC_SHAPES, DYNAMIC_SHAPES)
    q_shape, k_shape, v_shape = shapes
    if len(q_shape) != 4 or len(k_shape) != 4 or len(v_shape) != 4:
        return _left_alone(name, SiteKind.UNSUPPORTED, f"not 4-D (B, H, S, D) tensors: {q_shape}")
    if args["is_causal"] is not False:
        return _left_alone(name, SiteKind.CAUSAL, "causal attention")
    if args["enable_gqa"] is not False or q_shape[1] != k_shape[1]:
        return _left_alone(name, SiteKind.GROUPED_QUERY, "grouped-query attention (head counts differ)")
    if not isinstance(args["dropout_p"], (int, float)) or args["dropout_p"] != 0.0:
        return _left_alone(name, SiteKind.DROPOUT, "attention dropout (training)")
    if not (args["scale"] is None or isinstance(args["scale"], (int, float))):
        return _left_alone(name, SiteKind.UNSUPPORTED, "scale is not a constant")
    if q_shape[2] != k_shape[2] or k_shape[2] != v_shape[2]:
        return _left_alone(name, SiteKind.CROSS_ATTENTION,
                           f"cross-attention (query length {q_shape[2]}, key length {k_shape[2]})")
    if q_shape[0] != k_shape[0]:
        return _left_alone(name, SiteKind.UNSUPPORTED, "batch sizes of query and key differ")
    mask, query_rows_valid = args["attn_mask"], None
    if mask is not None:
        m_shape = _static_shape(mask)
        if m_shape is None or len(m_shape) > 4:
            return _left_alone(name, SiteKind.UNSUPPORTED, "attention mask without a static shape")
        if len(m_shape) >= 2 and m_shape[-2] != 1:
            # A per-query mask may be causal or block-causal: restoring Q could copy a later
            # frame's output into an earlier position, and cutting it per head would expand
            # it to (B, H, L, S). Only key masks (..., 1, S) are followed, and the symmetric
            # padding mask whose video rows all equal its key mask.
            full_mask = f"full query x key attention mask {m_shape} (may be causal)"
            query_rows_valid = valid_prefix_of_symmetric_mask(mask)
            if not query_rows_valid:
                return _left_alone(name, SiteKind.PER_QUERY_MASK, full_mask)
    exchange = ulysses_exchange(args, shapes)
    if isinstance(exchange, str):
        return _left_alone(name, SiteKind.CONTEXT_PARALLEL, exchange)
    # Under Ulysses the projections and the layout are those of the rank-local tokens.
    query, key = (exchange.query, exchange.key) if exchange else (args["query"], args["key"])
    q_sources = _projection_sources(query)
    k_sources = _projection_sources(key)
    if not q_sources or q_sources != k_sources:
        return _left_alone(name, SiteKind.CROSS_ATTENTION,
                           "cross-attention (query and key are not projections of the same tokens)")
    layout = layout_for(node, query, q_shape[2], exchange.degree if exchange else 1)
    if isinstance(layout, Refusal):
        return _left_alone(name, layout.kind, layout.message)
    if query_rows_valid is not None and layout.video_start + layout.video_len > query_rows_valid:
        return _left_alone(name, SiteKind.PER_QUERY_MASK, full_mask)
    return AttentionSite(name, True, "video self-attention", layout, q_shape[0], q_shape[1],
                         weight_input=projection_weight_input(query))


def projection_weight_input(node: fx.Node, max_depth: int = 30) -> int | None:
    """The position among the graph's inputs of the weight of the first linear projection
    ``node`` is computed from (through casts and views of that weight), or None when the
    weight is not a graph input (a module attribute: the graph is then one module's own)."""
    placeholders = {n: i for i, n in enumerate(n for n in node.graph.nodes if n.op == "placeholder")}
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    linears = sorted((n for n in ancestors(node, max_depth, stop=_is_linear) if n is not node and _is_linear(n)),
                     key=order.__getitem__)
    for linear in linears:
        if linear.op != "call_function" or len(linear.args) < 2 or not isinstance(linear.args[1], fx.Node):
            continue
        weight = linear.args[1]
        for _ in range(4):  # w, w.to(dtype), w.t(), ...
            if weight.op == "placeholder":
                return placeholders[weight]
            inputs = weight.all_input_nodes
            if len(inputs) != 1:
                break
            weight = inputs[0]
    return None


def classify_sites(
    graph: fx.Graph,
    grid: tuple[int, int, int] | None = None,
    text_tokens: int | None = None,
    text_side: str | None = None,
    grid_evidence: Sequence[tuple[int, int, int]] = (),
    allow_1d: bool = False,
) -> list[AttentionSite]:
    """Classify every attention site of ``graph``, in graph order: every SDPA call, and every
    call of another attention kernel (left alone, its kernel named).

    The grid is, in order: ``grid`` (explicit), the graph's own patch embedding, the one
    grid of ``grid_evidence`` (grids seen outside this graph: another graph's patch
    embedding, the model's input shape) that fits the sequence. Without any, the site is
    left alone, or partitioned in 1-D when ``allow_1d``.
    """
    own_grid = grid or infer_grid(graph)

    def layout_for(node: fx.Node, query: fx.Node, seq_len: int, shards: int) -> SequenceLayout | Refusal:
        if own_grid is None and grid_evidence:
            return layout_from_evidence(query, seq_len, grid_evidence, text_tokens, text_side, shards)
        return infer_layout(query, seq_len, own_grid, text_tokens, text_side, allow_1d, shards)

    sites = []
    for node in graph.nodes:
        kernel = attention_kernel(node)
        if kernel is not None:
            sites.append(dataclasses.replace(_other_kernel_site(node, kernel), module=module_path(node)))
            continue
        if node.op != "call_function" or node.target not in SDPA_TARGETS:
            continue
        try:
            site = _classify(node, sdpa_arguments(node), layout_for)
        except Exception as error:  # a site the pass does not understand is left alone
            site = _left_alone(node.name, SiteKind.NOT_UNDERSTOOD, f"not understood ({type(error).__name__}: {error})")
        sites.append(dataclasses.replace(site, module=module_path(node)))
    return sites


def module_path(node: fx.Node) -> str:
    """The path of the innermost module ``node`` was traced inside, as ``named_modules`` spells
    it (``transformer_blocks.0.attn1``; Dynamo records ``L['self'].transformer_blocks[0].attn1``),
    "" when the graph does not say."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    entry = list(stack.values())[-1]
    path = str(entry[0] if isinstance(entry, tuple) else entry)
    path = re.sub(r"^L\[['\"]\w+['\"]\]\.?", "", path)  # the frame's local (self, fn)
    path = re.sub(r"\[['\"]?([^\]'\"]+)['\"]?\]", r".\1", path)  # [0] / ['key'] -> .0 / .key
    path = re.sub(r"(^|\.)(__dict__|_modules)(?=\.)", "", path)  # attribute lookups Dynamo spelled out
    return path.strip(".")
