"""The ``asymrnr`` torch.compile backend.

``torch.compile(model, backend="asymrnr")`` reaches :data:`asymrnr_backend` through the
``torch_dynamo_backends`` entry point; :func:`backend` builds one with custom settings. A
backend is one *application*: it owns an :class:`~asymrnr_fx.state.AsymRnRState` (steps,
site count, matching cache), shared by every graph it compiles and reset by
``torch.compiler.reset()``. For each captured graph it classifies the attention sites and
returns a :class:`GraphRunner`, which compiles one rewritten copy of the graph per *phase*
(distinct kept-token counts of its sites) lazily and, per call, asks the state for the step.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx

from .config import AsymRnRConfig
from .ops import dst_count, kept_count
from .passes.grid import infer_grid
from .passes.rewrite import SitePlan, rewrite_attention
from .passes.sites import NOT_VIDEO, AttentionSite, classify_sites
from .state import AsymRnRState

__all__ = ["AsymRnRBackend", "backend", "asymrnr_backend", "GraphRunner", "inductor_config_patches"]

CompileFn = Callable[[fx.GraphModule, Sequence[Any]], Callable[..., Any]]


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


def _inner_compiler(inner: str, patches: dict[str, Any]) -> CompileFn:
    if inner == "eager":
        return lambda gm, example_inputs: gm.forward
    if inner == "inductor":
        from torch._inductor.compile_fx import compile_fx

        return lambda gm, example_inputs: compile_fx(gm, list(example_inputs), config_patches=patches)
    raise ValueError(f"inner={inner!r} is invalid: choose 'inductor' or 'eager'")


# Dynamo names placeholders after their source: `L_timestep_` -> `l_timestep_`.
TICK_INPUTS = (("timestep", r"(^|_)timestep_?$"), ("temb", r"(^|_)temb_?$"))


def _tick_input(gm: fx.GraphModule) -> tuple[str | None, int | None]:
    """The graph input that can mark a forward: ``timestep``, else ``temb`` (repeated blocks)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for kind, pattern in TICK_INPUTS:
        for index, node in enumerate(placeholders):
            if re.search(pattern, node.name, flags=re.IGNORECASE):
                return kind, index
    return None, None


def _device(args: Sequence[Any]) -> torch.device:
    return next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))


class GraphRunner:
    """One captured graph: its sites, its compiled phases, and the per-call dispatch."""

    def __init__(self, gm: fx.GraphModule, sites: list[AttentionSite], state: AsymRnRState,
                 compile_graph: CompileFn) -> None:
        self.gm = gm
        self.all_sites = sites
        self.sites = [s for s in sites if s.rewritable]
        self.state = state
        self.config = state.config
        self.compile_graph = compile_graph
        self.compiled: dict[tuple[Any, str], Callable[..., Any]] = {}
        self.tick_kind, self.tick_index = _tick_input(gm)
        state.register_tick_source(self.tick_kind)
        self._plans: dict[tuple[tuple[float, float], ...], tuple[SitePlan, ...]] = {}

    def plans(self, ratios: tuple[tuple[float, float], ...]) -> tuple[SitePlan, ...]:
        """Kept counts per site for these ratios (the phase key); memoized per ratio vector."""
        plans = self._plans.get(ratios)
        if plans is None:
            plans = self._plans[ratios] = tuple(
                self._plan(site, q, kv) for site, (q, kv) in zip(self.sites, ratios, strict=True))
        return plans

    def _plan(self, site: AttentionSite, q: float, kv: float) -> SitePlan:
        config = self.config
        layout = site.layout
        num_dst = dst_count(layout.grid, layout.partition_stride(config.stride))
        if config.symmetric:
            q = kv = max(q, kv)
        keeps = []
        for ratio in (q, kv):
            keep = kept_count(layout.video_len, ratio, num_dst) if ratio > 0 else None
            if keep is not None and keep > int(layout.video_len * (1.0 - ratio)):
                self.state.log_once(
                    f"asymrnr: ratio {ratio:g} at {site.node_name} removes more than the "
                    f"partition's src tokens ({layout.video_len - num_dst} of {layout.video_len} "
                    f"with stride {config.stride}): capped at {1 - num_dst / layout.video_len:.3f}; "
                    "a larger stride allows more", logging.WARNING)
            keeps.append(None if keep == layout.video_len else keep)
        return SitePlan(
            site.node_name, layout, site.batch, site.heads, keeps[0], keeps[1], config.stride,
            config.metric, config.match_on, config.merge, config.match_mode, config.symmetric,
            config.seed,
        )

    # -- compiled variants -------------------------------------------------------------------

    def _variant(self, plans: tuple[SitePlan, ...] | None, variant: str, args: Sequence[Any]):  # noqa: ANN202
        key = (plans, variant)
        compiled = self.compiled.get(key)
        if compiled is None:
            start = time.perf_counter()
            if plans is None:
                compiled = self.compile_graph(self.gm, list(args))
            else:
                result = rewrite_attention(self.gm, list(plans), variant)
                device = _device(args)
                example = list(args) + [torch.zeros(s.shape, dtype=torch.long, device=device)
                                        for s in result.extra_inputs]
                compiled = self.compile_graph(result.gm, example)
                compiled = _Variant(compiled, result.extra_inputs, result.extra_outputs)
            self.compiled[key] = compiled
            self.state.stats["compiles"] += 1
            self.state.compile_log.append((variant, time.perf_counter() - start))
        return compiled

    def __call__(self, *args: Any) -> Any:
        state = self.state
        state.on_graph_call(self.tick_kind, None if self.tick_index is None else args[self.tick_index])
        step, first = state.claim_sites(len(self.sites))
        ratios = state.site_ratios(step, first, len(self.sites))
        plans = None if ratios is None else self.plans(ratios)
        if plans is None or all(p.q_keep is None and p.kv_keep is None for p in plans):
            return self._variant(None, "base", args)(*args)
        if self.config.match_mode != "similarity":
            return self._variant(plans, "static", args)(*args)
        return self._run_matched(plans, step, first, args)

    def _run_matched(self, plans: tuple[SitePlan, ...], step: int, first: int,
                     args: Sequence[Any]) -> Any:
        state = self.state
        device = _device(args)
        window = state.window(step)
        needed = [(first + i, component, plan) for i, plan in enumerate(plans)
                  for component in plan.components()]
        entries = [state.lookup(site, component, plan, window, device) for site, component, plan in needed]
        if not state.is_refresh_step(step) and None not in entries:
            state.stats["cache_hits"] += len(entries)
            indices = [t for e in entries for t in (e.keep, e.restore)]
            return self._variant(plans, "reuse", args)(*args, *indices)

        compiled = self._variant(plans, "refresh", args)
        partitions = {}
        for site, component, plan in needed:
            part = state.partition(site, component, window, plan.layout.grid, plan.partition_stride, device)
            partitions[(site - first, component)] = part
        extra = [getattr(partitions[(spec.site, spec.component)], f"{spec.kind}_idx")
                 for spec in compiled.extra_inputs]
        outputs = compiled(*args, *extra)
        produced = outputs[len(outputs) - len(compiled.extra_outputs):]
        for n, (site, component, plan) in enumerate(needed):
            state.store(site, component, plan, window, produced[2 * n], produced[2 * n + 1])
        state.stats["cache_refreshes"] += len(needed)
        if not state.refresh_steps or state.refresh_steps[-1] != step:
            state.refresh_steps.append(step)
        return outputs[:len(outputs) - len(compiled.extra_outputs)]


class _Variant:
    """A compiled rewritten graph and the index tensors it takes and returns extra."""

    def __init__(self, fn: Callable[..., Any], extra_inputs: list, extra_outputs: list) -> None:
        self.fn = fn
        self.extra_inputs = extra_inputs
        self.extra_outputs = extra_outputs

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


def _reports_ticks(gm: fx.GraphModule, state: AsymRnRState, compiled: Callable[..., Any]) -> Callable[..., Any]:
    """A graph without rewritten sites still marks forwards (it may be the one tick source)."""
    kind, index = _tick_input(gm)
    if kind is None:
        return compiled
    state.register_tick_source(kind)

    def run(*args: Any) -> Any:
        state.on_graph_call(kind, args[index])
        return compiled(*args)

    return run


def _log_sites(gm: fx.GraphModule, sites: list[AttentionSite], state: AsymRnRState) -> None:
    """INFO per site; a WARNING when a graph's sites are all left alone for a reason the user
    can fix (the speedup must never disappear silently)."""
    for site in sites:
        if not site.rewritable:
            state.log_once(f"asymrnr: left {site.node_name} alone: {site.reason}")
        elif not site.layout.grid_inferred:
            state.log_once(f"asymrnr: {site.node_name}: 1-D partition over the video tokens "
                      "(allow_1d_partition=True; set grid=(T, H, W) for the paper's 3-D chunks)")
    if not sites:
        return
    rewritten = sum(s.rewritable for s in sites)
    state.log_once(f"asymrnr: graph {id(gm.graph):x}: {rewritten} of {len(sites)} attention sites rewritten")
    fixable = sorted({s.reason for s in sites if not s.rewritable and not s.reason.startswith(NOT_VIDEO)})
    if not rewritten and fixable:
        state.log_once(f"asymrnr: {len(sites)} attention site(s) in a graph and none rewritten, so "
                  f"AsymRnR does nothing there: {' | '.join(fixable)}", logging.WARNING)


def build_runner(gm: fx.GraphModule, example_inputs: Sequence[Any], state: AsymRnRState,
                 compile_graph: CompileFn) -> Callable[..., Any]:
    """The callable that replaces ``gm``: plain compile when nothing is to be rewritten."""
    config = state.config
    state.add_grid_evidence(infer_grid(gm.graph))
    sites = classify_sites(gm.graph, config.grid, config.text_tokens, config.text_side,
                           grid_evidence=list(state.grid_evidence.values()),
                           allow_1d=config.allow_1d_partition)
    state.record_sites(sites)
    _log_sites(gm, sites, state)
    runner_sites = [s for s in sites if s.rewritable]
    if config.grid is not None and sites and not runner_sites:
        too_short = [s for s in sites if "shorter than the" in s.reason]
        if too_short:
            raise ValueError(
                f"grid={config.grid} ({math.prod(config.grid)} video tokens) matches no attention "
                f"sequence of the graph ({too_short[0].reason}); fix grid, or leave it None to infer it"
            )
    if config.is_identity:
        return compile_graph(gm, example_inputs)
    if not runner_sites:
        return _reports_ticks(gm, state, compile_graph(gm, example_inputs))
    return GraphRunner(gm, sites, state, compile_graph)


class AsymRnRBackend:
    """A torch.compile backend that applies AsymRnR: one application, one state.

    ``torch.compile(model, backend=asymrnr_fx.backend(kv_ratio=0.5))``. The runtime state
    (:attr:`state`) is shared by every graph this backend compiles, and only by them.
    """

    def __init__(self, config: AsymRnRConfig | None = None, inner: str = "inductor") -> None:
        if inner not in ("inductor", "eager"):
            raise ValueError(f"inner={inner!r} is invalid: choose 'inductor' or 'eager'")
        self.config = config or AsymRnRConfig()
        self.inner = inner
        self.state = AsymRnRState(self.config)

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], *, mode: str | None = None,
                 options: Mapping[str, Any] | None = None, **unknown: Any) -> Callable[..., Any]:
        if unknown:
            raise ValueError(f"unknown backend argument(s) {sorted(unknown)}; the backend takes mode= and options=")
        compile_graph = _inner_compiler(self.inner, inductor_config_patches(mode, options))
        return build_runner(gm, example_inputs, self.state, compile_graph)

    def reset(self) -> None:
        """Forget steps, site count, matching cache and statistics. ``torch.compiler.reset()``
        calls this (Dynamo resets the backends it has cached), so no state outlives its graphs."""
        self.state.reset()

    def __repr__(self) -> str:
        return f"AsymRnRBackend({self.config!r}, inner={self.inner!r})"


def backend(config: AsymRnRConfig | None = None, inner: str = "inductor", **fields: Any) -> AsymRnRBackend:
    """A torch.compile backend with these settings, and its own runtime state.

    ``torch.compile(model, backend=asymrnr_fx.backend(kv_ratio=0.5))``. ``fields`` are
    :class:`AsymRnRConfig` fields applied on top of ``config``; ``inner="eager"`` runs the
    rewritten graphs without Inductor (for debugging). Each call is a separate application:
    give each model its own backend.
    """
    config = config or AsymRnRConfig()
    if fields:
        config = config.replace(**fields)
    return AsymRnRBackend(config, inner)


asymrnr_backend = AsymRnRBackend()
"""The registered ``"asymrnr"`` backend: the default :class:`AsymRnRConfig`. Everything
compiled with the bare name is one application; give two models their own
:func:`backend` (or use :func:`asymrnr_fx.apply`) to keep their steps and indices apart."""
