"""The ``asymrnr`` torch.compile backend.

``torch.compile(model, backend="asymrnr")`` reaches :func:`asymrnr_backend` through the
``torch_dynamo_backends`` entry point; :func:`backend` builds one with custom settings. For
each captured graph the backend classifies the attention sites and returns a
:class:`GraphRunner`, which compiles one rewritten copy of the graph per *phase* (distinct
kept-token counts of its sites) lazily, and per call asks the dispatcher for the step.
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
from .dispatcher import DISPATCHER
from .ops import dst_count, kept_count
from .passes.rewrite import SitePlan, rewrite_attention
from .passes.sites import AttentionSite, classify_sites

__all__ = ["backend", "asymrnr_backend", "GraphRunner", "inductor_config_patches"]

logger = logging.getLogger("asymrnr_fx")
_logged: set[str] = set()

CompileFn = Callable[[fx.GraphModule, Sequence[Any]], Callable[..., Any]]


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


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
TIMESTEP_INPUT = r"(^|_)timestep_?$"
TEMB_INPUT = r"(^|_)temb_?$"


def _input_index(gm: fx.GraphModule, pattern: str) -> int | None:
    for index, node in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        if re.search(pattern, node.name, flags=re.IGNORECASE):
            return index
    return None


class GraphRunner:
    """One captured graph: its sites, its compiled phases, and the per-call dispatch."""

    def __init__(self, gm: fx.GraphModule, sites: list[AttentionSite], config: AsymRnRConfig,
                 compile_graph: CompileFn) -> None:
        self.gm = gm
        self.all_sites = sites
        self.sites = [s for s in sites if s.rewritable]
        self.config = config
        self.compile_graph = compile_graph
        self.compiled: dict[tuple[Any, str], Callable[..., Any]] = {}
        self.timestep_index = _input_index(gm, TIMESTEP_INPUT)
        self.temb_index = None if self.timestep_index is not None else _input_index(gm, TEMB_INPUT)
        self._schedule = None
        self._plans: dict[tuple[tuple[float, float], ...], tuple[SitePlan, ...]] = {}

    # -- ratios -----------------------------------------------------------------------------

    def _ratios(self, step: int, first_layer: int) -> list[tuple[float, float]]:
        config = self.config
        count = len(self.sites)
        if config.schedule is not None:
            schedule = self._resolved_schedule()
            num_steps = DISPATCHER.num_steps or config.num_steps or schedule.num_steps
            seen = DISPATCHER.sites_per_forward
            if seen is not None and seen != schedule.num_layers:
                raise ValueError(
                    f"schedule has num_layers={schedule.num_layers} but the model runs {seen} "
                    "attention sites per forward: build the schedule for this model"
                )
            if first_layer + count > schedule.num_layers:
                raise ValueError(
                    f"schedule has num_layers={schedule.num_layers} but the model runs more "
                    f"attention sites per forward (at least {first_layer + count})"
                )
            per_layer = schedule.ratios_at(min(step, num_steps - 1), num_steps)
            return list(per_layer[first_layer:first_layer + count])
        if config.layer_ratios is not None:
            ratios = config.layer_ratios
            if first_layer + count > len(ratios):
                raise ValueError(
                    f"layer_ratios has {len(ratios)} entries but the model runs at least "
                    f"{first_layer + count} attention sites per forward: give one (q, kv) per site"
                )
            return list(ratios[first_layer:first_layer + count])
        return [(config.q_ratio, config.kv_ratio)] * count

    def _resolved_schedule(self):  # noqa: ANN202
        if self._schedule is None:
            from .schedule import Schedule, resolve_schedule

            spec = self.config.schedule
            if isinstance(spec, Schedule):
                num_layers = spec.num_layers
            elif DISPATCHER.sites_per_forward is not None:
                num_layers = DISPATCHER.sites_per_forward
            else:
                num_layers = len(self.sites)
            self._schedule = resolve_schedule(spec, num_layers, self.config.num_steps)
        return self._schedule

    def plans(self, ratios: list[tuple[float, float]]) -> tuple[SitePlan, ...]:
        """Kept counts per site for these ratios (the phase key); memoized per ratio vector."""
        key = tuple(ratios)
        plans = self._plans.get(key)
        if plans is None:
            plans = self._plans[key] = self._make_plans(ratios)
        return plans

    def _make_plans(self, ratios: list[tuple[float, float]]) -> tuple[SitePlan, ...]:
        config = self.config
        plans = []
        for site, (q, kv) in zip(self.sites, ratios, strict=False):
            layout = site.layout
            num_dst = dst_count(layout.grid, layout.partition_stride(config.stride))
            if config.symmetric:
                q = kv = max(q, kv)
            q_keep = kept_count(layout.video_len, q, num_dst) if q > 0 else None
            kv_keep = kept_count(layout.video_len, kv, num_dst) if kv > 0 else None
            q_keep = None if q_keep == layout.video_len else q_keep
            kv_keep = None if kv_keep == layout.video_len else kv_keep
            plans.append(SitePlan(
                site.node_name, layout, site.batch, site.heads, q_keep, kv_keep, config.stride,
                config.metric, config.match_on, config.merge, config.match_mode, config.symmetric,
                config.seed,
            ))
        return tuple(plans)

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
                example = list(args)
                if variant == "reuse":
                    example += [torch.zeros(s.shape, dtype=torch.long, device=self._device(args))
                                for s in result.index_specs]
                compiled = self.compile_graph(result.gm, example)
            self.compiled[key] = compiled
            DISPATCHER.stats["compiles"] += 1
            DISPATCHER.compile_log.append((variant, time.perf_counter() - start))
        return compiled

    @staticmethod
    def _device(args: Sequence[Any]) -> torch.device:
        return next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))

    def __call__(self, *args: Any) -> Any:
        if self.timestep_index is not None:
            DISPATCHER.on_timestep(args[self.timestep_index])
        elif self.temb_index is not None:
            DISPATCHER.on_temb(args[self.temb_index])
        step, first_layer = DISPATCHER.claim_layers(len(self.sites))
        plans = self.plans(self._ratios(step, first_layer))
        if all(p.q_keep is None and p.kv_keep is None for p in plans):
            return self._variant(None, "base", args)(*args)
        if self.config.match_mode != "similarity":
            return self._variant(plans, "static", args)(*args)

        needed = [(first_layer + i, component, plan) for i, plan in enumerate(plans)
                  for component in plan.components()]
        entries = [DISPATCHER.lookup(layer, component, plan) for layer, component, plan in needed]
        refresh = DISPATCHER.is_refresh_step(step, self.config.cache_interval) or None in entries
        if not refresh and self._cache_matches(entries, args):
            DISPATCHER.stats["cache_hits"] += len(entries)
            indices = [t for e in entries for t in (e.keep, e.restore)]
            return self._variant(plans, "reuse", args)(*args, *indices)

        compiled = self._variant(plans, "refresh", args)
        outputs = compiled(*args)
        num_extra = 2 * len(needed)
        extra = outputs[len(outputs) - num_extra:]
        for n, (layer, component, plan) in enumerate(needed):
            DISPATCHER.store(layer, component, plan, extra[2 * n], extra[2 * n + 1])
        DISPATCHER.stats["cache_refreshes"] += len(needed)
        if not DISPATCHER.refresh_steps or DISPATCHER.refresh_steps[-1] != step:
            DISPATCHER.refresh_steps.append(step)
        return outputs[:len(outputs) - num_extra]

    def _cache_matches(self, entries: list[Any], args: Sequence[Any]) -> bool:
        """A cached index may only meet tensors of the shape and device it was made for."""
        device = self._device(args)
        return all(e.keep.device == device for e in entries)


def _track_steps(gm: fx.GraphModule, compiled: Callable[..., Any]) -> Callable[..., Any]:
    """A graph without sites still reports the timestep (it may be the only one that sees it)."""
    timestep_index = _input_index(gm, TIMESTEP_INPUT)
    if timestep_index is None:
        return compiled

    def run(*args: Any) -> Any:
        DISPATCHER.on_timestep(args[timestep_index])
        return compiled(*args)

    return run


def _describe(sites: list[AttentionSite]) -> str:
    rewritten = sum(s.rewritable for s in sites)
    return f"{rewritten} of {len(sites)} attention sites rewritten"


def build_runner(gm: fx.GraphModule, example_inputs: Sequence[Any], config: AsymRnRConfig,
                 compile_graph: CompileFn) -> Callable[..., Any]:
    """The callable that replaces ``gm``: plain compile when nothing is to be rewritten."""
    sites = classify_sites(gm.graph, config.grid, config.text_tokens, config.text_side,
                           grid_hint=DISPATCHER.grid_hint)
    for site in sites:
        if not site.rewritable:
            _log_once(f"asymrnr: left {site.node_name} alone: {site.reason}")
        elif not site.layout.grid_inferred:
            _log_once(f"asymrnr: {site.node_name}: video grid not found in the graph; "
                      "1-D partition over the video tokens (set grid=(T, H, W) to fix)")
    if sites:
        _log_once(f"asymrnr: graph {id(gm.graph):x}: {_describe(sites)}")
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
        return _track_steps(gm, compile_graph(gm, example_inputs))
    return GraphRunner(gm, sites, config, compile_graph)


def backend(config: AsymRnRConfig | None = None, inner: str = "inductor", **fields: Any) -> Callable[..., Any]:
    """A torch.compile backend with these settings.

    ``torch.compile(model, backend=asymrnr_fx.backend(kv_ratio=0.5))``. ``fields`` are
    :class:`AsymRnRConfig` fields applied on top of ``config``; ``inner="eager"`` runs the
    rewritten graphs without Inductor (for debugging).
    """
    config = config or AsymRnRConfig()
    if fields:
        config = config.replace(**fields)
    if inner not in ("inductor", "eager"):
        raise ValueError(f"inner={inner!r} is invalid: choose 'inductor' or 'eager'")

    def asymrnr(gm: fx.GraphModule, example_inputs: Sequence[Any], *, mode: str | None = None,
                options: Mapping[str, Any] | None = None, **unknown: Any) -> Callable[..., Any]:
        if unknown:
            raise ValueError(f"unknown backend argument(s) {sorted(unknown)}; the backend takes mode= and options=")
        compile_graph = _inner_compiler(inner, inductor_config_patches(mode, options))
        return build_runner(gm, example_inputs, config, compile_graph)

    asymrnr.config = config  # type: ignore[attr-defined]
    return asymrnr


def asymrnr_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> Callable[..., Any]:
    """The registered ``"asymrnr"`` backend: the default :class:`AsymRnRConfig`."""
    return backend()(gm, example_inputs, **kwargs)
