"""Check one tiny diffusers video transformer under the asymrnr backend: one row of the
model-support table.

For a tiny random-weight config of the real class (:mod:`asymrnr_fx.tiny_models`):

* **sites**: compile it with an ``asymrnr`` backend and record, per attention call of one
  forward in execution order, what the pass decided (rewritten, or left alone and why);
* **reference**: run the same model eagerly with every rewritten call replaced by the
  independent float64 reference of the algorithm (``tests/reference.py``), fed the
  partitions and kept counts the site used, and compare with the compiled output;
* **regional**: where the class declares ``_repeated_blocks``, compile only the blocks
  (``apply(transformer, regional=True)``) and compare with the whole-model compile;
* **inductor**: ``apply(transformer)`` with Inductor behind the rewrite (the documented
  default) against the same reference: the rewritten graph must compile wherever Inductor
  compiles the original one (autocast regions and all), or fall back with a WARNING;
* **finite**: every output is finite.

The sites and reference checks run the rewritten graphs without Inductor (``inner="eager"``),
which keeps every class to a few seconds on a CPU; the Inductor check (off by default,
:func:`check_inductor`) costs a compile, a few seconds to a minute per class.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from asymrnr_fx.passes.grid import infer_grid
from asymrnr_fx.passes.sites import AttentionSite, SiteKind, classify_sites
from torch.overrides import TorchFunctionMode

import asymrnr_fx
from asymrnr_fx.models import latent_grid
from asymrnr_fx.ops import dst_count, kept_count, site_partition
from asymrnr_fx.tiny_models import TinyModel, build_tiny
from tests.reference import reference_attention

__all__ = ["ModelRow", "CompiledRun", "CHECK_CONFIG", "check_model", "run_compiled", "output_tensors",
           "compare_with_reference", "check_regional", "check_inductor", "site_label"]

# Both components cut at every site: the strongest test of the rewrite.
CHECK_CONFIG = asymrnr_fx.AsymRnRConfig(kv_ratio=0.5, q_ratio=0.3, seed=7)
REFERENCE_TOLERANCE = 1e-4  # max |compiled - reference| / max |reference|


@dataclass
class ModelRow:
    """What the checks found for one tiny config."""

    config: str
    model: str
    rewritten: int = 0  # attention calls per forward rewritten with apply()'s grid hint
    left_alone: int = 0
    plain_rewritten: int = 0  # the same under a plain torch.compile(model, backend="asymrnr")
    reasons: list[str] = field(default_factory=list)  # distinct reasons of the calls left alone
    plain_reasons: list[str] = field(default_factory=list)  # ... and of those only plain leaves
    labels: list[str] = field(default_factory=list)  # the table's words for ``reasons``, from the kinds
    plain_labels: list[str] = field(default_factory=list)  # ... and for ``plain_reasons``
    graphs: int = 0
    warnings: list[str] = field(default_factory=list)  # WARNING lines of the asymrnr_fx logger
    reference: str = ""  # "equal", "differs", or why it was not compared
    reference_error: float | None = None
    effect: float | None = None  # how far the rewrite moves the output from the unreduced model
    regional: str = ""
    inductor: str = ""  # the rewrite compiled by Inductor: "equal", "differs", "fell back: ..."
    finite: bool = False
    prepared: int = 0  # attention processors asymrnr_fx.prepare replaced
    notes: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor of a model output (tuple, list, dataclass-like or tensor), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in output_tensors(item)]
    if hasattr(output, "to_tuple"):
        return output_tensors(output.to_tuple())
    return []


class _LogLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class CompiledRun:
    """One forward of a model compiled with an ``asymrnr`` backend."""

    outputs: list[torch.Tensor]
    graphs: list[torch.fx.GraphModule]
    sites: list[list[AttentionSite]]  # per graph, as the backend classified them
    calls: list[int]  # the graph of each graph call, in execution order
    warnings: list[str]  # WARNING lines of the asymrnr_fx logger

    def call_sites(self, per_graph: list[list[AttentionSite]] | None = None) -> list[AttentionSite]:
        """The sites of every attention call of the forward, in execution order."""
        per_graph = self.sites if per_graph is None else per_graph
        return [site for graph in self.calls for site in per_graph[graph]]

    def plain_sites(self, config: asymrnr_fx.AsymRnRConfig = CHECK_CONFIG) -> list[list[AttentionSite]]:
        """Per graph, what a plain ``torch.compile(model, backend=...)`` decides: only the
        graphs' own patch embeddings as grid evidence (no input-derived hint)."""
        evidence: dict[int, tuple[int, int, int]] = {}
        per_graph = []
        for gm in self.graphs:
            grid = infer_grid(gm.graph)
            if grid is not None:
                evidence.setdefault(math.prod(grid), grid)
            per_graph.append(classify_sites(gm.graph, config.grid, config.text_tokens, config.text_side,
                                            grid_evidence=list(evidence.values()),
                                            allow_1d=config.allow_1d_partition))
        return per_graph


def _recording_backend(config: asymrnr_fx.AsymRnRConfig, run: CompiledRun,
                       hint: tuple[int, int, int] | None) -> Any:
    """An eager-inner asymrnr backend that records graphs, classified sites and calls."""
    backend = asymrnr_fx.backend(config, inner="eager")
    backend.state.add_grid_evidence(hint)  # what apply()'s hook reads from the input
    record_sites = backend.state.record_sites

    def record(sites: list[AttentionSite]) -> None:
        run.sites.append(list(sites))
        record_sites(sites)

    backend.state.record_sites = record  # type: ignore[method-assign]

    def spy(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
        index = len(run.graphs)
        run.graphs.append(gm)
        compiled = backend(gm, example_inputs)
        if len(run.sites) == index:  # no attention call in this graph
            run.sites.append([])

        def call(*args: Any) -> Any:
            run.calls.append(index)
            return compiled(*args)

        return call

    return spy


def run_compiled(tiny: TinyModel, config: asymrnr_fx.AsymRnRConfig = CHECK_CONFIG,
                 hint: bool = True) -> CompiledRun:
    """One forward of ``torch.compile(model, backend=...)``, with the grid hint that
    ``apply(pipe)`` derives from the input (the model-family table) unless ``hint`` is False."""
    run = CompiledRun([], [], [], [], [])
    grid = latent_grid(tiny.model, (), tiny.inputs) if hint else None
    handler = _LogLines()
    logger = logging.getLogger("asymrnr_fx")
    logger.addHandler(handler)
    try:
        torch._dynamo.reset()
        with torch.no_grad():
            output = torch.compile(tiny.model, backend=_recording_backend(config, run, grid),
                                   dynamic=False)(**tiny.inputs)
    finally:
        logger.removeHandler(handler)
    run.outputs = output_tensors(output)
    run.warnings = handler.lines
    return run


@dataclass(frozen=True)
class _RefSite:
    """What the reference needs to recompute one rewritten call."""

    index: int  # the site's number among the rewritten calls of the forward
    site: AttentionSite


def _sdpa_args(args: tuple, kwargs: dict) -> dict[str, Any]:
    def signature(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,  # noqa: ANN001, ANN202
                  enable_gqa=False):
        pass

    bound = inspect.signature(signature).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


class ReferenceSDPA(TorchFunctionMode):
    """Eager attention where the calls the pass rewrote run the reference instead.

    ``plan`` holds one entry per attention call of a forward, in execution order: None for a
    call left alone (it runs as it is), a :class:`_RefSite` for a rewritten one.
    """

    def __init__(self, plan: list[_RefSite | None], config: asymrnr_fx.AsymRnRConfig) -> None:
        super().__init__()
        self.plan, self.config = plan, config
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        entry = self.plan[self.calls] if self.calls < len(self.plan) else None
        self.calls += 1
        if entry is None:
            return func(*args, **kwargs)
        return self._reference(entry, _sdpa_args(args, kwargs))

    def _reference(self, entry: _RefSite, a: dict[str, Any]) -> torch.Tensor:
        layout, config = entry.site.layout, self.config
        stride = layout.partition_stride(config.stride)
        parts, keep = {}, {}
        for component, ratio in (("q", config.q_ratio), ("kv", config.kv_ratio)):
            part = site_partition(layout.grid, stride, seed=config.seed, site=entry.index,
                                  component=component, window=0)
            parts[component] = (part.dst_idx.tolist(), part.src_idx.tolist())
            kept = kept_count(layout.video_len, ratio, dst_count(layout.grid, stride))
            keep[component] = kept if ratio > 0 and kept < layout.video_len else None
        mask = a["attn_mask"]
        while mask is not None and mask.dim() < 4:
            mask = mask.unsqueeze(0)
        out = reference_attention(
            a["query"], a["key"], a["value"], mask, video_start=layout.video_start,
            video_len=layout.video_len, q_partition=parts["q"], kv_partition=parts["kv"],
            q_keep=keep["q"], kv_keep=keep["kv"], metric=config.metric, merge=config.merge,
            match_on=config.match_on, scale=a["scale"])
        return out.to(a["query"].dtype)


def _plan(sites: list[AttentionSite]) -> list[_RefSite | None]:
    plan, index = [], 0
    for site in (s for s in sites if s.kernel == "sdpa"):  # what ReferenceSDPA sees
        plan.append(_RefSite(index, site) if site.rewritable else None)
        index += site.rewritable
    return plan


def _relative_error(outputs: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    worst = 0.0
    for out, ref in zip(outputs, expected, strict=True):
        scale = float(ref.abs().max()) or 1.0
        worst = max(worst, float((out.double() - ref.double()).abs().max()) / scale)
    return worst


def compare_with_reference(tiny: TinyModel, run: CompiledRun,
                           config: asymrnr_fx.AsymRnRConfig = CHECK_CONFIG) -> tuple[str, float | None]:
    """Compiled outputs against the eager model with the reference at the rewritten calls."""
    plan = _plan(run.call_sites())
    if not any(plan):
        return "nothing rewritten", None
    mode = ReferenceSDPA(plan, config)
    with torch.no_grad(), mode:
        expected = output_tensors(tiny.model(**tiny.inputs))
    if mode.calls != len(plan):
        return f"not compared: {mode.calls} attention calls eagerly, {len(plan)} in the graphs", None
    error = _relative_error(run.outputs, expected)
    return ("equal" if error <= REFERENCE_TOLERANCE else "differs"), error


def _block_classes(model: torch.nn.Module) -> set[str]:
    """Classes of the model's transformer blocks (the members of its ModuleLists)."""
    return {type(block).__name__ for child in model.children() if isinstance(child, torch.nn.ModuleList)
            for block in child}


def check_regional(tiny: TinyModel, run: CompiledRun, rewritten: int,
                   config: asymrnr_fx.AsymRnRConfig = CHECK_CONFIG) -> str:
    """``apply(transformer, regional=True)`` against the whole-model compile."""
    blocks = getattr(type(tiny.model), "_repeated_blocks", None)
    if not blocks:
        return "no _repeated_blocks"
    if rewritten and not _block_classes(tiny.model) & set(blocks):
        return "its blocks are not in _repeated_blocks"
    torch._dynamo.reset()
    asymrnr_fx.apply(tiny.model, config, regional=True, inner="eager")
    try:
        with torch.no_grad():
            outputs = output_tensors(tiny.model(**tiny.inputs))
        (state,) = asymrnr_fx.states_of(tiny.model)
        sites = state.ratios.sites_per_forward or 0
    finally:
        asymrnr_fx.remove(tiny.model)
    if sites != rewritten:
        return f"differs: {sites} calls rewritten per forward, {rewritten} whole"
    error = _relative_error(outputs, run.outputs)
    return "equal" if error <= REFERENCE_TOLERANCE else f"differs (error {error:.1e})"


BF16_ULP = 2.0 ** -8  # one unit in the last place of bfloat16, relative


def rounds_to_bfloat16(graphs: Sequence[torch.fx.GraphModule]) -> bool:
    """Whether a graph casts to bfloat16 (Kandinsky 5's rotary embedding does, in float32 runs)."""
    return any(torch.bfloat16 in (*node.args, *node.kwargs.values())
               for gm in graphs for node in gm.graph.nodes if node.op in ("call_method", "call_function"))


def check_inductor(tiny: TinyModel, run: CompiledRun,
                   config: asymrnr_fx.AsymRnRConfig = CHECK_CONFIG) -> tuple[str, float | None]:
    """``apply(transformer)`` with Inductor behind the rewrite against the eager rewrite of
    ``run`` (itself checked against the reference): ``("equal" | "differs" | "fell back to
    ...", error)``.

    A model that rounds to bfloat16 inside (a float32 run) turns Inductor's last-bit float32
    differences into whole bfloat16 steps: there "equal" allows one bfloat16 step, and says so.
    """
    torch._dynamo.reset()
    asymrnr_fx.apply(tiny.model, config)
    try:
        with torch.no_grad():
            outputs = output_tensors(tiny.model(**tiny.inputs))
        (state,) = asymrnr_fx.states_of(tiny.model)
    finally:
        asymrnr_fx.remove(tiny.model)
    if state.fallbacks:
        return f"fell back to the {state.fallbacks[0].runs}", None
    error = _relative_error(outputs, run.outputs)
    if error <= REFERENCE_TOLERANCE:
        return "equal", error
    if rounds_to_bfloat16(run.graphs) and error <= BF16_ULP:
        return "equal within one bfloat16 step (the model rounds to bfloat16)", error
    return "differs", error


# The table's words for why a call is left alone, by the pass's typed verdict.
LABELS = {
    SiteKind.CROSS_ATTENTION: "cross-attention",
    SiteKind.PER_QUERY_MASK: "per-query mask (may be causal)",
    SiteKind.CAUSAL: "causal",
    SiteKind.GROUPED_QUERY: "grouped-query",
    SiteKind.NO_GRID_EVIDENCE: "no grid evidence",
    SiteKind.SHORTER_THAN_GRID: "shorter than the video grid (text, audio, per-frame or temporal)",
    SiteKind.LAYOUT_UNKNOWN: "where the video sits is unknown",
    SiteKind.SEVERAL_GRIDS: "several grids fit",
}


def site_label(site: AttentionSite) -> str:
    """A few words for why ``site`` is left alone, for the table."""
    if site.kind is SiteKind.OTHER_KERNEL:
        return f"{site.kernel} (not SDPA)"
    return LABELS.get(site.kind, site.kind.value)


def _site_counts(row: ModelRow, run: CompiledRun, tiny: TinyModel) -> None:
    sites = run.call_sites()
    row.graphs = len(run.graphs)
    row.rewritten = sum(s.rewritable for s in sites)
    row.left_alone = len(sites) - row.rewritten
    row.reasons = sorted({s.reason for s in sites if not s.rewritable})
    row.labels = sorted({site_label(s) for s in sites if not s.rewritable})
    plain = run.call_sites(run.plain_sites())
    row.plain_rewritten = sum(s.rewritable for s in plain)
    row.plain_reasons = sorted({s.reason for s in plain if not s.rewritable} - set(row.reasons))
    row.plain_labels = sorted({site_label(s) for s in plain if not s.rewritable} - set(row.labels))
    for site in sites:  # a rewritten call covers exactly the video grid, nothing else
        if site.rewritable and (site.layout.grid != tiny.grid or site.layout.video_len != math.prod(tiny.grid)):
            row.reference = f"wrong grid {site.layout.grid} at {site.node_name} (video grid {tiny.grid})"


def wake_zero_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Give zero-initialised weights (adaLN-zero gates, zeroed output layers) small random
    values, so that attention reaches the output and the comparisons are not vacuous."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.numel() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def check_model(name: str, regional: bool = True, inductor: bool = False) -> ModelRow:
    """All checks of tiny config ``name`` (a crash of the model or the backend is raised)."""
    start = time.perf_counter()
    tiny = build_tiny(name, batch=2)
    wake_zero_weights(tiny.model)
    row = ModelRow(name, type(tiny.model).__name__, notes=tiny.notes)
    row.prepared = asymrnr_fx.prepare(tiny.model)
    run = run_compiled(tiny)
    row.warnings = run.warnings
    _site_counts(row, run, tiny)
    row.finite = bool(run.outputs) and all(bool(torch.isfinite(t).all()) for t in run.outputs)
    if not row.reference:
        row.reference, row.reference_error = compare_with_reference(tiny, run)
    if row.rewritten:
        with torch.no_grad():
            row.effect = _relative_error(run.outputs, output_tensors(tiny.model(**tiny.inputs)))
    row.regional = check_regional(tiny, run, row.rewritten) if regional else "not checked"
    if not row.rewritten:
        row.inductor = "-"
    elif inductor:
        row.inductor = check_inductor(tiny, run)[0]
    row.seconds = round(time.perf_counter() - start, 1)
    return row
