"""The ``asymrnr`` torch.compile backend.

``torch.compile(model, backend="asymrnr")`` reaches :data:`asymrnr_backend` through the
``torch_dynamo_backends`` entry point; :func:`backend` builds one with custom settings. A
backend is one *application*: it owns an :class:`~asymrnr_fx.state.AsymRnRState` (steps,
site count, matching cache), shared by every graph it compiles and reset by
``torch.compiler.reset()``. For each captured graph it classifies the attention sites and
returns a :class:`GraphRunner`, which compiles one rewritten copy of the graph (the kept counts
are input sizes) on its first call and, per call, asks the state for the step and the sites'
indices; a graph captured with symbolic sizes gets a :class:`PerSizeRunner`, which does the
same once per concrete size.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch.fx as fx

from .config import AsymRnRConfig
from .context_parallel import RING_REFUSAL
from .passes.grid import infer_grid
from .passes.parallel import ring_attention
from .passes.shapes import concrete_graph, has_symbolic_sizes, size_signature
from .passes.sites import (
    NOT_VIDEO,
    AttentionSite,
    SiteKind,
    classify_sites,
    count_blocks,
    find_sdpa_nodes,
    module_classes,
)
from .passes.ticks import find_tick_input
from .processors import unprepared_warning
from .runner import RUNNER_IDS, GraphRunner, InnerCompiler
from .schedules.presets import default_preset
from .state import AsymRnRState

__all__ = ["AsymRnRBackend", "backend", "asymrnr_backend", "GraphRunner", "inductor_config_patches"]


def inductor_config_patches(mode: str | None, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Inductor settings of ``torch.compile(mode=..., options=...)``; unknown keys are errors."""
    import torch._inductor.config as inductor_config
    from torch._inductor import list_mode_options

    patches = dict(list_mode_options(mode)) if mode else {}
    known = set(inductor_config.get_config_copy())
    for key, value in (options or {}).items():
        if key not in known:
            raise ValueError(
                f"options[{key!r}] is not an Inductor option; see torch._inductor.list_options() "
                "(AsymRnR settings go in asymrnr_fx.backend(config=...))"
            )
        patches[key] = value
    return patches


def _reports_ticks(gm: fx.GraphModule, state: AsymRnRState, compiled: Callable[..., Any]) -> Callable[..., Any]:
    """A graph without rewritten sites still ticks the steps when it holds the tick input
    (the noise level)."""
    kind, index = find_tick_input(gm.graph)
    if kind is None:
        return compiled
    state.register_tick_source(kind)

    def run(*args: Any) -> Any:
        state.enter_graph((), (kind, args[index]))
        return compiled(*args)

    return run


class PerSizeRunner:
    """A graph Dynamo captured with symbolic sizes (a model called at a second resolution
    recompiles with dynamic shapes): specialized to each call's sizes
    (:func:`~asymrnr_fx.passes.shapes.concrete_graph`), then classified, rewritten and compiled
    as a static graph, once per size. AsymRnR stays on at every size."""

    def __init__(self, gm: fx.GraphModule, state: AsymRnRState, compiler: InnerCompiler) -> None:
        self.gm = gm
        self.state = state
        self.compiler = compiler
        self.uid = next(RUNNER_IDS)  # shared by every size: its sites keep their identity
        self.by_size: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def __call__(self, *args: Any) -> Any:
        size = size_signature(args)
        runner = self.by_size.get(size)
        if runner is None:
            runner = self._build(args)
            self.by_size[size] = runner
        return runner(*args)

    def _build(self, args: Sequence[Any]) -> Callable[..., Any]:
        try:
            concrete = concrete_graph(self.gm, args)
        except Exception as error:  # noqa: BLE001 - never a crash: the graph runs unreduced
            self.state.log_once(
                f"asymrnr: a graph captured with dynamic shapes could not be specialized to its "
                f"sizes ({type(error).__name__}: {error}), so it runs unreduced; compile with "
                "dynamic=False", logging.WARNING)
            return self.compiler.static(self.gm, args)
        self.state.stats["sizes_specialized"] += 1
        return build_runner(concrete, args, self.state, self.compiler, uid=self.uid)


def _names(labels: list[str], limit: int = 4) -> str:
    return ", ".join(labels[:limit]) + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _log_sites(gm: fx.GraphModule, sites: list[AttentionSite], state: AsymRnRState) -> None:
    """One INFO line per compiled graph (the sites rewritten by module path, those left alone by
    design counted by kind), one per site left alone for a reason the user may fix, and a
    WARNING when such reasons leave a graph's sites all alone (the speedup must never disappear
    silently)."""
    for site in sites:
        if not site.rewritable and site.kind not in NOT_VIDEO:
            state.log_once(f"asymrnr: left {site.label} alone: {site.reason}")
        elif site.rewritable and not site.layout.grid_inferred:
            state.log_once(f"asymrnr: {site.label}: 1-D partition over the video tokens "
                           "(allow_1d_partition=True; set grid=(T, H, W) for the paper's 3-D chunks)")
    if not sites:
        return
    rewritten = [s.label for s in sites if s.rewritable]
    by_design = Counter(s.kind.value for s in sites if not s.rewritable and s.kind in NOT_VIDEO)
    other = sum(not s.rewritable and s.kind not in NOT_VIDEO for s in sites)
    line = f"asymrnr: compiled a graph: {len(rewritten)} video self-attention site(s) rewritten"
    line += f" ({_names(rewritten)})" if rewritten else ""
    if by_design:
        line += "; left alone by design: " + ", ".join(f"{n} {kind}" for kind, n in sorted(by_design.items()))
    if other:
        line += f"; {other} left alone (said above)"
    state.log_once(line)
    fixable = sorted({s.reason for s in sites if not s.rewritable and s.kind not in NOT_VIDEO})
    if not rewritten and fixable:
        state.log_once(f"asymrnr: {len(sites)} attention site(s) in a graph and none rewritten, so "
                       f"AsymRnR does nothing there: {' | '.join(fixable)}", logging.WARNING)


def _warn_if_unprepared(gm: fx.GraphModule, state: AsymRnRState) -> None:
    """One WARNING for a model whose stock attention processor keeps its attention out of
    every graph (Mochi): it names the call that fixes it."""
    graph_modules = set().union(*(module_classes(n) for n in gm.graph.nodes))
    line = unprepared_warning(graph_modules, (module_classes(n) for n in find_sdpa_nodes(gm.graph)))
    if line is not None:
        state.log_once(line, logging.WARNING)


def build_runner(gm: fx.GraphModule, example_inputs: Sequence[Any], state: AsymRnRState,
                 compiler: InnerCompiler, uid: int | None = None) -> Callable[..., Any]:
    """The callable that replaces ``gm``: plain compile when nothing is to be rewritten, a
    :class:`PerSizeRunner` when its attention sizes are symbolic.

    Ring attention (context parallelism with ``ring_degree`` > 1) is refused here, at compile
    time: see :mod:`asymrnr_fx.context_parallel`.
    """
    ring = ring_attention(gm.graph)
    if ring is not None:
        raise ValueError(f"{RING_REFUSAL} (Found in the graph: {ring}.)")
    config = state.config
    if not config.is_identity and find_sdpa_nodes(gm.graph) and has_symbolic_sizes(gm.graph):
        return PerSizeRunner(gm, state, compiler)
    state.add_grid_evidence(infer_grid(gm.graph))
    sites = classify_sites(gm.graph, config.grid, config.text_tokens, config.text_side,
                           grid_evidence=list(state.grid_evidence.values()),
                           allow_1d=config.allow_1d_partition)
    state.record_sites(sites)
    _log_sites(gm, sites, state)
    _warn_if_unprepared(gm, state)
    runner_sites = [s for s in sites if s.rewritable]
    if config.grid is not None and sites and not runner_sites:
        too_short = [s for s in sites if s.kind is SiteKind.SHORTER_THAN_GRID]
        if too_short:
            raise ValueError(
                f"grid={config.grid} ({math.prod(config.grid)} video tokens) matches no attention "
                f"sequence of the graph ({too_short[0].reason}); fix grid, or leave it None to infer it"
            )
    if config.is_identity:
        return compiler.static(gm, example_inputs)
    if not runner_sites:
        return _reports_ticks(gm, state, compiler.static(gm, example_inputs))
    return GraphRunner(gm, sites, state, compiler, find_tick_input(gm.graph), uid)


class AsymRnRBackend:
    """A torch.compile backend that applies AsymRnR: one application, one state.

    ``torch.compile(model, backend=asymrnr_fx.backend(kv_ratio=0.5))``. The runtime state
    (:attr:`state`) is shared by every graph this backend compiles, and only by them.
    """

    def __init__(self, config: AsymRnRConfig | None = None, inner: str = "inductor") -> None:
        if inner not in ("inductor", "eager"):
            raise ValueError(f"inner={inner!r} is invalid: choose 'inductor' or 'eager'")
        # No settings at all: the authors' table where the graphs show a model they calibrated.
        self.family_default = config is None
        self.config = config or AsymRnRConfig()
        self.inner = inner
        self.state = AsymRnRState(self.config)
        self._family_checked = False

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], *, mode: str | None = None,
                 options: Mapping[str, Any] | None = None, **unknown: Any) -> Callable[..., Any]:
        if unknown:
            raise ValueError(f"unknown backend argument(s) {sorted(unknown)}; the backend takes mode= and options=")
        if self.family_default and not self._family_checked:
            self._adopt_authors_table(gm)
        compiler = InnerCompiler(self.inner, inductor_config_patches(mode, options))
        return build_runner(gm, example_inputs, self.state, compiler)

    def _adopt_authors_table(self, gm: fx.GraphModule) -> None:
        """Before the first attention graph is rewritten: the authors' base table when its blocks
        are of a model they calibrated (said at INFO), else the conservative default stays."""
        if not find_sdpa_nodes(gm.graph):
            return
        self._family_checked = True
        classes = set().union(*(module_classes(n) for n in gm.graph.nodes))
        name = default_preset(classes, count_blocks(gm.graph))
        if name is None:
            return
        self.config = AsymRnRConfig(schedule=name)
        self.state.use_config(self.config)
        self.state.log_once(f"asymrnr: no ratios given, so the AsymRnR authors' calibrated {name!r} table "
                            "(base rules) is used, mapped to the model's sites and steps")

    def reset(self) -> None:
        """Forget everything: steps, site count, matching cache, statistics, grid evidence.
        ``torch.compiler.reset()`` calls this (Dynamo resets the backends it has cached), so
        no state outlives the graphs it was learned from."""
        if self.family_default:  # the next model may be another family
            self.config = AsymRnRConfig()
            self.state.use_config(self.config)
            self._family_checked = False
        self.state.clear()

    def __repr__(self) -> str:
        return f"AsymRnRBackend({self.config!r}, inner={self.inner!r})"


def backend(config: AsymRnRConfig | None = None, inner: str = "inductor", **fields: Any) -> AsymRnRBackend:
    """A torch.compile backend with these settings, and its own runtime state.

    ``torch.compile(model, backend=asymrnr_fx.backend(kv_ratio=0.5))``. ``fields`` are
    :class:`AsymRnRConfig` fields applied on top of ``config``; ``inner="eager"`` runs the
    rewritten graphs without Inductor (for debugging). Each call is a separate application:
    give each model its own backend. With no settings at all, it is the bare ``"asymrnr"``
    backend's default: the authors' calibrated table on CogVideoX, HunyuanVideo and Mochi
    (recognised by their blocks in the graph), K/V 0.3 everywhere elsewhere.
    """
    if config is None and not fields:  # no settings: the family default, as for the bare name
        return AsymRnRBackend(None, inner)
    config = config or AsymRnRConfig()
    if fields:
        config = config.replace(**fields)
    if config.reuse_schedule is not None:
        raise ValueError(f"schedule {config.schedule_source.label} reuses transformer blocks, which a backend "
                         "cannot do (it sees graphs, not blocks): use asymrnr_fx.apply(pipe, schedule=...), "
                         "which hooks the blocks")
    return AsymRnRBackend(config, inner)


asymrnr_backend = AsymRnRBackend()
"""The registered ``"asymrnr"`` backend: the authors' calibrated table where its graphs show
CogVideoX, HunyuanVideo or Mochi blocks, else the default :class:`AsymRnRConfig`. Everything
compiled with the bare name is one application; give two models their own
:func:`backend` (or use :func:`asymrnr_fx.apply`) to keep their steps and indices apart."""
