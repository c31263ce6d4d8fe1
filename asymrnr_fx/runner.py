"""Run one captured graph: pick the ratios for this call, feed the indices, keep what came back.

A :class:`GraphRunner` replaces one graph Dynamo captured. Per call it asks the application's
:class:`~asymrnr_fx.state.AsymRnRState` for the step and the site indices, turns the ratios
into kept counts, and runs **one** compiled rewrite for every phase: the kept count K is the
size of the ``keep`` index the graph takes, so a new ratio is a new input size, not a new
graph (Inductor compiles the K dimension as dynamic). Per (site, component) the call either
re-matches (a refresh step, or no cached indices for this plan, window and branch) or passes
the cached indices on; a component at ratio 0 gets identity indices and is never matched.
Data-independent ablation modes (``strided``, ``random``) bake their indices per phase instead.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from .ops import dst_count, kept_count
from .passes.rewrite import MatchSettings, SitePlan, rewrite_attention
from .passes.sites import AttentionSite
from .state import AsymRnRState, Fallback, IndexKey

__all__ = ["GraphRunner", "InnerCompiler"]


def custom_op_signatures() -> str:
    """The schemas of the package's custom ops, as one string."""
    from .kernels import nearest  # noqa: F401  (registers asymrnr::nearest_dst)

    ops = (torch.ops.asymrnr.select_tokens.default, torch.ops.asymrnr.nearest_dst.default)
    return ";".join(str(op._schema) for op in ops)


def _inductor(gm: fx.GraphModule, example_inputs: Sequence[Any], config_patches: dict[str, Any]) -> Callable[..., Any]:
    """Inductor, with the custom ops' signatures in its cache keys.

    Inductor's on-disk caches key a graph by its code, where a custom op is its name and its
    arguments by position: after an upgrade that renames or adds an op argument they would
    serve code that calls the op with the old signature ("Unknown keyword argument").
    ``cache_key_tag`` is part of both cache keys; the user's own tag is kept in front.
    """
    from torch._inductor.compile_fx import compile_fx

    tag = f"{torch.compiler.config.cache_key_tag}|asymrnr:{custom_op_signatures()}"
    with torch.compiler.config.patch(cache_key_tag=tag):
        return compile_fx(gm, list(example_inputs), config_patches=config_patches)


class InnerCompiler:
    """What compiles the rewritten graphs: Inductor (with the user's patches) or nothing."""

    def __init__(self, inner: str, config_patches: dict[str, Any]) -> None:
        if inner not in ("inductor", "eager"):
            raise ValueError(f"inner={inner!r} is invalid: choose 'inductor' or 'eager'")
        self.inner = inner
        self.config_patches = config_patches

    def static(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        """Compile with the shapes of ``example_inputs`` (the graph Dynamo handed over)."""
        if self.inner == "eager":
            return gm.forward
        return _inductor(gm, example_inputs, self.config_patches)

    def dynamic(self, gm: fx.GraphModule, dynamic_dims: Sequence[tuple[int, int]]) -> Callable[..., Any]:
        """Compile on first call, with the ``(input, dim)`` sizes in ``dynamic_dims`` symbolic.

        First as Dynamo would: the rewritten graph traced again with those sizes marked
        dynamic (its guards keep every other size at the captured one). That second trace can
        refuse a node the first trace put into the graph (Mochi's float32 autocast region warns
        on CPU, and Dynamo does not trace ``warnings.warn``): then the graph goes to Inductor
        directly, traced on fake inputs whose ``dynamic_dims`` are symbols
        (:func:`symbolic_inputs`). The runner serves one captured graph, whose other input
        sizes Dynamo's own guards keep fixed.
        """
        if self.inner == "eager":
            return gm.forward
        patches = self.config_patches

        def inductor(graph: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
            return _inductor(graph, example_inputs, patches)

        retraced = torch.compile(gm, backend=inductor, fullgraph=True)
        compiled: Callable[..., Any] | None = None

        def run(*args: Any) -> Any:
            nonlocal compiled
            if compiled is not None:
                return compiled(*args)
            for index, dim in dynamic_dims:
                torch._dynamo.maybe_mark_dynamic(args[index], dim)
            try:
                # Without duck shaping a kept count equal to the video length (ratio 0 on the
                # first call) stays its own symbol instead of being tied to that length.
                with torch.fx.experimental._config.patch(use_duck_shape=False):
                    result = retraced(*args)
                compiled = retraced
            except torch._dynamo.exc.Unsupported:  # the second trace refused the graph
                compiled = _inductor(gm, symbolic_inputs(args, dynamic_dims), patches)
                result = compiled(*args)
            return result

        return run


def symbolic_inputs(args: Sequence[Any], dynamic_dims: Sequence[tuple[int, int]]) -> list[Any]:
    """Fake copies of ``args`` whose ``(input, dim)`` sizes in ``dynamic_dims`` are symbols.

    Without duck shaping, a kept count equal to the video length (ratio 0 on the first call)
    stays its own symbol instead of being tied to that length.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    fake_mode = FakeTensorMode(shape_env=ShapeEnv(duck_shape=False))
    dynamic = set(dynamic_dims)
    fakes: list[Any] = []
    for index, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            fakes.append(arg)
            continue
        sizes = [DimDynamic.DYNAMIC if (index, dim) in dynamic else DimDynamic.STATIC
                 for dim in range(arg.dim())]
        fakes.append(fake_mode.from_tensor(arg, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes)))
    return fakes


@dataclass(frozen=True)
class _Slot:
    """One (site, component) of the indexed graph."""

    site: int  # index among the runner's rewritable sites
    component: str
    plan: SitePlan


RUNNER_IDS = itertools.count()


def _raiser(error: Exception) -> Callable[..., Any]:
    """A callable that raises ``error`` (a compile that failed, tried again as a call)."""

    def run(*args: Any) -> Any:
        raise error

    return run


def _device(args: Sequence[Any]) -> torch.device:
    return next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))


class GraphRunner:
    """One captured graph: its sites, its compiled rewrite, and the per-call bookkeeping."""

    def __init__(self, gm: fx.GraphModule, sites: list[AttentionSite], state: AsymRnRState,
                 compiler: InnerCompiler, tick: tuple[str | None, int | None], uid: int | None = None) -> None:
        self.gm = gm
        self.all_sites = sites
        self.sites = [s for s in sites if s.rewritable]
        self.state = state
        self.config = config = state.config
        self.compiler = compiler
        self.tick_kind, self.tick_index = tick
        state.register_tick_source(self.tick_kind)
        self.uid = next(RUNNER_IDS) if uid is None else uid  # names its node-keyed sites
        self.settings = MatchSettings(config.stride, config.metric, config.match_on, config.merge,
                                      config.match_mode, config.seed, config.match_kernel, config.chunk_offset)
        components = state.ratios.components(len(self.sites))
        if isinstance(components, tuple):  # the same for every site this graph may serve
            components = [components] * len(self.sites)
        if config.symmetric:
            components = [("shared",) if c else () for c in components]
        self.plans = [SitePlan(s.node_name, s.layout, s.batch, s.heads, c)
                      for s, c in zip(self.sites, components, strict=True)]
        self.slots = [_Slot(i, c, plan) for i, plan in enumerate(self.plans) for c in plan.components]
        self._indexed: Callable[..., Any] | None = None
        self._original: Callable[..., Any] | None = None  # set when no rewrite could run
        self._num_inputs = sum(n.op == "placeholder" for n in gm.graph.nodes)
        self.label = f"graph of {', '.join(s.node_name for s in self.sites)}"
        self._static: dict[tuple[tuple[int, ...], ...], Callable[..., Any]] = {}
        self._fillers: dict[tuple, tuple[torch.Tensor, ...]] = {}

    # -- kept counts ------------------------------------------------------------------------

    def kept(self, ratios: Sequence[tuple[float, float]] | None) -> list[int]:
        """Kept video tokens per slot (N, every token, where the ratio is 0)."""
        counts = []
        for slot in self.slots:
            layout = slot.plan.layout
            if ratios is None:
                counts.append(layout.video_len)
                continue
            q, kv = ratios[slot.site]
            ratio = {"q": q, "kv": kv, "shared": max(q, kv)}[slot.component]
            counts.append(self._kept(slot, ratio) if ratio > 0 else layout.video_len)
        return counts

    def _kept(self, slot: _Slot, ratio: float) -> int:
        layout = slot.plan.layout
        num_dst = dst_count(layout.grid, slot.plan.partition_stride(self.settings))
        keep = kept_count(layout.video_len, ratio, num_dst)
        if keep > int(layout.video_len * (1.0 - ratio)):
            self.state.log_once(
                f"asymrnr: ratio {ratio:g} at {slot.plan.node_name} removes more than the "
                f"partition's src tokens ({layout.video_len - num_dst} of {layout.video_len} with "
                f"stride {self.settings.stride}): capped at {1 - num_dst / layout.video_len:.3f}; "
                "a larger stride allows more", 30)
        return keep

    # -- calls ------------------------------------------------------------------------------

    def site_keys(self, args: Sequence[Any]) -> tuple[tuple[Any, ...], ...]:
        """What each site of this call is: the block whose query projection weight it was
        given (one graph may serve every block), else this graph's node."""
        keys = []
        for site in self.sites:
            weight = None if site.weight_input is None else args[site.weight_input]
            if isinstance(weight, torch.nn.Parameter):
                keys.append(("weight", id(weight)))
            else:
                keys.append(("node", self.uid, site.node_name))
        return tuple(keys)

    def __call__(self, *args: Any) -> Any:
        state = self.state
        keys = self.site_keys(args)
        state.enter_graph(keys, None if self.tick_index is None else (self.tick_kind, args[self.tick_index]))
        step, indices = state.site_indices(keys)
        kept = self.kept(state.site_ratios(step, indices))
        if self._original is not None:
            return self._original(*args)
        if self.settings.mode != "similarity":
            return self._run_static(kept, args)
        return self._run_indexed(kept, step, indices, args)

    def _timed_compile(self, variant: str, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
        start = time.perf_counter()
        compiled = build()
        self.state.stats["compiles"] += 1
        self.state.compile_log.append((variant, time.perf_counter() - start))
        return compiled

    def _run_static(self, kept: list[int], args: Sequence[Any]) -> Any:
        key = tuple(kept)
        compiled = self._static.get(key)
        if compiled is None:
            plans = []
            for i, plan in enumerate(self.plans):
                counts = {s.component: k for s, k in zip(self.slots, kept, strict=True)
                          if s.site == i and k < plan.layout.video_len}
                plans.append(SitePlan(plan.node_name, plan.layout, plan.batch, plan.heads,
                                      tuple(counts), tuple(counts.items())))
            plans = [p for p in plans if p.components]
            result = rewrite_attention(self.gm, plans, self.settings, "static")
            try:
                compiled = self._timed_compile("static", lambda: self.compiler.static(result.gm, args))
            except Exception as error:  # noqa: BLE001 - reported by _first_call
                compiled = _raiser(error)
            compiled, outputs = self._first_call(compiled, result.gm, args)
            if compiled is not None:
                self._static[key] = compiled
            return outputs
        return compiled(*args)

    def _fill(self, slot: _Slot, device: torch.device, kind: str) -> tuple[torch.Tensor, ...]:
        """Stand-in tensors of the right shapes: a dummy partition, or identity indices.

        Every slot gets its own: Dynamo guards on which inputs are the same object, so a
        tensor shared between slots in one call and not in the next would recompile.
        """
        plan = slot.plan
        key = (kind, slot, device)
        if key not in self._fillers:
            n = plan.layout.video_len
            if kind == "partition":
                num_dst = dst_count(plan.layout.grid, plan.partition_stride(self.settings))
                self._fillers[key] = (torch.zeros(num_dst, dtype=torch.long, device=device),
                                      torch.zeros(n - num_dst, dtype=torch.long, device=device))
            else:  # two tensors: one object passed twice would tie the kept count to N
                index = torch.arange(n, device=device).expand(plan.batch, plan.heads, n)
                self._fillers[key] = (index.contiguous(), index.contiguous())
        return self._fillers[key]

    def _run_indexed(self, kept: list[int], step: int, indices: Sequence[int], args: Sequence[Any]) -> Any:
        state = self.state
        device = _device(args)
        window = state.window(step)
        refresh_step = state.is_refresh_step(step)
        flags = torch.zeros(len(self.slots), dtype=torch.bool)
        extra: list[torch.Tensor] = []
        refreshed = []
        for n, (slot, keep_count) in enumerate(zip(self.slots, kept, strict=True)):
            plan = slot.plan
            site = indices[slot.site]
            video_len = plan.layout.video_len
            if keep_count == video_len:  # ratio 0 here: every token, in order
                extra += [*self._fill(slot, device, "partition"), *self._fill(slot, device, "identity")]
                continue
            key = IndexKey(plan.layout, plan.batch, plan.heads, keep_count)
            entry = None if refresh_step else state.lookup(site, slot.component, key, window, device)
            if entry is not None:
                state.stats["cache_hits"] += 1
                extra += [*self._fill(slot, device, "partition"), entry.keep, entry.restore]
                continue
            part = state.partition_for(site, slot.component, window, plan.layout.grid,
                                   plan.partition_stride(self.settings), device)
            flags[n] = True
            refreshed.append((n, site, slot.component, key))
            extra += [part.dst_idx, part.src_idx,
                      torch.empty((plan.batch, plan.heads, keep_count), dtype=torch.long, device=device),
                      torch.empty((plan.batch, plan.heads, video_len), dtype=torch.long, device=device)]
        if self._indexed is None:  # compiled on its first call: time that call
            start = time.perf_counter()
            rewritten, compiled = self._indexed_graph(args)
            self._indexed, outputs = self._first_call(compiled, rewritten, (*args, flags, *extra))
            self.state.compile_log.append(("indexed", time.perf_counter() - start))
            if self._indexed is None:  # the original graph ran: no indices came back
                return outputs
        else:
            outputs = self._indexed(*args, flags, *extra)
        num_extra = 2 * len(self.slots)
        for n, site, component, key in refreshed:
            keep, restore = outputs[len(outputs) - num_extra + 2 * n:len(outputs) - num_extra + 2 * n + 2]
            state.store(site, component, key, window, keep, restore)
        if refreshed:
            state.stats["cache_refreshes"] += len(refreshed)
            if not state.refresh_steps or state.refresh_steps[-1] != step:
                state.refresh_steps.append(step)
        return outputs[:len(outputs) - num_extra]

    def _indexed_graph(self, args: Sequence[Any]) -> tuple[fx.GraphModule, Callable[..., Any]]:
        """The rewritten graph, and its compiled form (compiled on its first call)."""
        result = rewrite_attention(self.gm, self.plans, self.settings, "indexed")
        # Inputs: the originals, the refresh flags, then per slot dst, src, keep, restore.
        keep_inputs = [len(args) + 1 + i for i, spec in enumerate(result.extra_inputs) if spec.kind == "keep"]
        self._indexed = self.compiler.dynamic(result.gm, [(i, 2) for i in keep_inputs])
        self.state.stats["compiles"] += 1
        return result.gm, self._indexed

    def _first_call(self, compiled: Callable[..., Any], rewritten: fx.GraphModule,
                    args: Sequence[Any]) -> tuple[Callable[..., Any] | None, Any]:
        """Run a freshly compiled rewrite; if compiling or running it fails, the rewrite
        without Inductor, and if that fails too, the original graph (then ``(None, outputs)``,
        and :attr:`_original` serves every later call). One WARNING names the cause: the
        user's forward never sees the exception."""
        attempts = [("Inductor", compiled)]
        if self.compiler.inner != "eager":
            attempts.append(("the rewrite without Inductor", rewritten.forward))
        causes = []
        for label, candidate in attempts:
            try:
                outputs = candidate(*args)
            except Exception as error:  # noqa: BLE001 - the user's forward must not fail here
                causes.append(f"{label}: {_first_line(error)}")
                continue
            if causes:
                self._report_fallback("rewrite without inductor", causes)
            return candidate, outputs
        self._report_fallback("original graph", causes)
        original_args = args[:self._num_inputs]
        try:
            self._original = self.compiler.static(self.gm, original_args)
            outputs = self._original(*original_args)
        except Exception:  # noqa: BLE001 - plain compile fails too: run the graph as captured
            self._original = self.gm.forward
            outputs = self._original(*original_args)
        return None, outputs

    def _report_fallback(self, runs: str, causes: list[str]) -> None:
        state = self.state
        state.fallbacks.append(Fallback(self.label, runs, tuple(causes)))
        what = "it runs without Inductor" if runs != "original graph" else "it runs unreduced, as captured"
        state.log_once(f"asymrnr: the rewritten {self.label} failed ({'; '.join(causes)}): {what}",
                       logging.WARNING)


def _first_line(error: BaseException) -> str:
    """``Type: first line`` of the error underneath (Dynamo wraps a backend's error in
    ``BackendCompilerFailed``)."""
    while (inner := getattr(error, "inner_exception", None) or error.__cause__) is not None:
        error = inner
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
