"""One call to accelerate a diffusers pipeline: ``apply(pipe, config)`` and ``remove(pipe)``.

In the spirit of diffusers' ``enable_cache`` (config -> state -> hook -> ``apply_*``): every
transformer of the pipeline (``transformer`` and, for Wan 2.2's two experts,
``transformer_2``) gets its own AsymRnR backend and state, and a diffusers ``ModelHook`` that

* marks each forward and reads the latent grid from its input (evidence for graphs that do not
  show the patch embedding: regional compilation, LTX-Video's pre-patchified tokens);
* hears the pipeline's ``cache_context("cond"/"uncond", step_index=...)``: the CFG branch
  by name, and the step where the pipeline gives it;
* runs the transformer compiled with ``dynamic=False`` (a symbolic shape would turn the
  rewrite off), whole or its repeated blocks, after installing graph-friendly attention
  processors where the stock ones break the graph (Mochi, :mod:`asymrnr_fx.processors`).

The pipeline's scheduler tells every state the generation and its step count
(``set_timesteps``), the first step (``set_begin_index``) and each next step (``step``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import torch

from . import block_reuse
from .config import RATIO_FIELDS, AsymRnRConfig
from .context_parallel import enable_context_parallel
from .dynamo_backend import AsymRnRBackend
from .fences import CACHE_HOOKS, Fence, cache_hooks_of
from .models import latent_grid
from .processors import prepare, unprepare
from .schedules.presets import default_preset
from .schedules.ratios import describe
from .state import AsymRnRState

__all__ = ["apply", "remove", "states_of", "StepCallback", "AsymRnRHook", "compile_blind_hooks"]

logger = logging.getLogger("asymrnr_fx")

HOOK_NAME = "asymrnr"
TRANSFORMER_NAMES = ("transformer", "transformer_2")


def _transformers(pipe: Any) -> list[torch.nn.Module]:
    if isinstance(pipe, torch.nn.Module):
        return [pipe]
    found = [getattr(pipe, name, None) for name in TRANSFORMER_NAMES]
    found = [m for m in found if isinstance(m, torch.nn.Module)]
    if not found:
        raise ValueError(
            f"{type(pipe).__name__} has no `transformer` module: pass a diffusers video pipeline "
            "or the transformer itself"
        )
    return found


def _hooks_module() -> Any:
    try:
        from diffusers.hooks import HookRegistry, ModelHook
        from diffusers.hooks.hooks import BaseState, StateManager
    except ImportError as exc:  # pragma: no cover - diffusers is a dependency
        raise ImportError("asymrnr_fx.apply needs diffusers (pip install diffusers)") from exc
    return HookRegistry, ModelHook, BaseState, StateManager


HookRegistry, ModelHook, BaseState, StateManager = _hooks_module()


class _NoState(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        pass


class _ContextListener(StateManager):
    """diffusers hands each ``cache_context(...)`` to the StateManagers of stateful hooks; this
    one passes it on to the AsymRnR state (branch name, and the step where given)."""

    def __init__(self, state: AsymRnRState) -> None:
        super().__init__(_NoState)
        self.asymrnr_state = state

    def set_context(self, context: Any) -> None:
        super().set_context(context)
        state = self.asymrnr_state
        state.set_branch(None if context is None else context.name)
        step = getattr(context, "step_index", None)
        if isinstance(step, int):
            state.set_step(step, getattr(context, "num_inference_steps", None) or state.num_steps)


class AsymRnRHook(ModelHook):
    """Marks the transformer's forwards for its AsymRnR state and runs it compiled."""

    _is_stateful = True

    def __init__(self, state: AsymRnRState) -> None:
        super().__init__()
        self.state = state
        self.context = _ContextListener(state)
        self.fence: Fence | None = None  # compiles what runs under the step caches' hooks

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        if self.fence is not None:
            self.fence.refresh()  # a step cache enabled or disabled since the last forward
        state.add_grid_evidence(latent_grid(module, args, kwargs))
        timestep = kwargs.get("timestep")
        state.begin_forward(timestep if isinstance(timestep, torch.Tensor) else None)
        try:
            # The chain under this hook (step caches' logic, eager) ends in the compiled forward.
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            state.end_forward()

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        return module  # generations follow the scheduler, not hook resets


def compile_blind_hooks(transformer: torch.nn.Module) -> list[str]:
    """Diffusers hooks under ``transformer`` whose forward is excluded from torch.compile
    (``torch.compiler.disable``): the modules they wrap run eagerly, so neither Inductor nor
    AsymRnR reaches the attention inside. diffusers' own step caches (MagCache fences its blocks
    so) are not among them: :class:`~asymrnr_fx.fences.Fence` compiles what they guard."""
    found = []
    for name, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        for hook_name, hook in (registry.hooks.items() if registry is not None else ()):
            forward = getattr(type(hook), "new_forward", None)
            if getattr(forward, "_torchdynamo_disable", False) and hook_name not in CACHE_HOOKS:
                found.append(f"{hook_name} on {name or type(transformer).__name__}")
    return found


def _hook(transformer: torch.nn.Module) -> AsymRnRHook | None:
    registry = getattr(transformer, "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(HOOK_NAME)


def _compiled_backend(module: Any) -> AsymRnRBackend | None:
    """The AsymRnR backend a ``torch.compile``'d module (``OptimizedModule``) was compiled with:
    the bare ``"asymrnr"`` name or :func:`asymrnr_fx.backend` (found through the wrappers Dynamo
    keeps around the backend), else None."""
    ctx = getattr(module, "dynamo_ctx", None)
    found, seen = getattr(ctx, "callback", None), 0
    while found is not None and not isinstance(found, AsymRnRBackend) and seen < 8:
        found = next((getattr(found, name) for name in ("_torchdynamo_orig_backend", "compiler_fn", "__wrapped__")
                      if getattr(found, name, None) is not None and getattr(found, name) is not found), None)
        seen += 1
    return found if isinstance(found, AsymRnRBackend) else None


def states_of(target: Any) -> list[AsymRnRState]:
    """The AsymRnR states of a backend, a state, a pipeline / transformer given to
    :func:`apply`, or one compiled with ``torch.compile(transformer, backend="asymrnr")`` or
    ``backend=asymrnr_fx.backend(...)`` (the bare name's state is one for the whole process)."""
    if isinstance(target, AsymRnRState):
        return [target]
    if isinstance(target, AsymRnRBackend):
        return [target.state]
    modules = [target] if isinstance(target, torch.nn.Module) else [
        m for name in TRANSFORMER_NAMES if isinstance(m := getattr(target, name, None), torch.nn.Module)]
    states = []
    for module in modules:
        hook = _hook(getattr(module, "_orig_mod", module))
        backend = _compiled_backend(module)
        if hook is not None:
            states.append(hook.state)
        elif backend is not None:
            states.append(backend.state)
    if not states:
        raise ValueError(f"AsymRnR is not applied to {type(target).__name__}: call asymrnr_fx.apply(pipe), "
                         "or compile the transformer with backend='asymrnr' or asymrnr_fx.backend(...)")
    return states


class _SchedulerTap:
    """Tells states the generations and steps of a diffusers scheduler (instance methods
    wrapped in place; :meth:`undo` restores them)."""

    METHODS = ("set_timesteps", "set_begin_index", "step")

    def __init__(self, scheduler: Any, states: list[AsymRnRState]) -> None:
        self.scheduler = scheduler
        self.states = states
        for name in self.METHODS:
            original = getattr(scheduler, name, None)
            if callable(original):
                setattr(scheduler, name, self._wrap(name, original))

    def _wrap(self, name: str, original: Any) -> Any:
        # functools.wraps keeps the signature visible: diffusers' retrieve_timesteps inspects
        # set_timesteps for `sigmas` / `timesteps` and refuses a scheduler that hides them.
        @functools.wraps(original)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            getattr(self, f"_after_{name}")(*args, **kwargs)
            return result

        return wrapped

    def _after_set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        for state in self.states:
            state.begin_generation(len(self.scheduler.timesteps))

    def _after_set_begin_index(self, begin_index: int = 0, *args: Any, **kwargs: Any) -> None:
        for state in self.states:
            state.set_step(int(begin_index))

    def _after_step(self, *args: Any, **kwargs: Any) -> None:
        for state in self.states:
            if state.step >= 0:
                state.step_done()

    def undo(self) -> None:
        for name in self.METHODS:
            vars(self.scheduler).pop(name, None)


def apply(
    pipe: Any,
    config: AsymRnRConfig | None = None,
    *,
    regional: bool = False,
    inner: str = "inductor",
    mode: str | None = None,
    options: dict[str, Any] | None = None,
    parallel: Any = None,
    **fields: Any,
) -> Any:
    """Compile the pipeline's transformer(s) with AsymRnR and tell them the denoising steps.

    Args:
        pipe: a diffusers pipeline (or a bare transformer: steps are then read from its
            ``timestep`` input).
        config: settings; ``fields`` are applied on top (e.g. ``kv_ratio=0.5``).
        regional: compile only the repeated blocks (``compile_repeated_blocks``): faster to
            compile, same rewrite (the grid comes from the transformer's input).
        inner, mode, options: as for :func:`asymrnr_fx.backend` and ``torch.compile``.
        parallel: a diffusers ``ContextParallelConfig`` (Ulysses): each transformer is first
            given :func:`asymrnr_fx.enable_context_parallel` (diffusers' plan, or the one
            shipped here). Ring attention is refused. ``torch.distributed`` must be initialized.

    Every transformer (``transformer``, ``transformer_2``) is its own application with its
    own state; both follow the pipeline's scheduler. Returns ``pipe``; undo with :func:`remove`.
    """
    if not isinstance(regional, bool):
        raise ValueError(f"regional={regional!r} is invalid: True (compile the repeated blocks) or False")
    transformers = _transformers(pipe)
    for transformer in transformers:
        if _hook(transformer) is not None:
            raise ValueError("AsymRnR is already applied to this transformer: call remove(pipe) first")
    family_default = config is None and not RATIO_FIELDS & set(fields)
    config = config or AsymRnRConfig()
    if fields:
        config = config.replace(**fields)
    reused = config.reuse_schedule
    if reused is not None:  # before anything changes: the table must fit every transformer
        for transformer in transformers:
            block_reuse.check(transformer, reused.num_blocks)
    for transformer in transformers:
        _parallelize(transformer, parallel)
    states = []
    for transformer in transformers:
        config_here = _authors_default(transformer, fields) if family_default else None
        prepare(transformer)
        blind = compile_blind_hooks(transformer)
        if blind:
            logger.warning(
                "asymrnr: %s: %s run outside torch.compile (torch.compiler.disable), so AsymRnR "
                "cannot reduce the attention inside; remove that cache or use one that compiles "
                "(e.g. FirstBlockCache)", type(transformer).__name__,
                ", ".join(blind[:3]) + (" ..." if len(blind) > 3 else ""))
        compiler = AsymRnRBackend(config_here or config, inner)
        compiler.state.hooked = True
        if reused is not None:  # the blocks' decisions run eagerly around compiled blocks (fences)
            block_reuse.install(transformer, compiler.state, reused.num_blocks)
        compile_kwargs: dict[str, Any] = {"backend": compiler, "dynamic": False}
        if mode is not None:
            compile_kwargs["mode"] = mode
        if options is not None:
            compile_kwargs["options"] = options
        hook = AsymRnRHook(compiler.state)
        HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, HOOK_NAME)
        if regional:
            transformer.compile_repeated_blocks(**compile_kwargs)
        hook.fence = Fence(transformer, functools.partial(torch.compile, **compile_kwargs), whole=not regional,
                           go_regional=functools.partial(_compile_blocks, transformer, compile_kwargs))
        hook.fence.refresh()
        states.append(compiler.state)

    scheduler = getattr(pipe, "scheduler", None)
    tap = _SchedulerTap(scheduler, states) if scheduler is not None and not isinstance(pipe, torch.nn.Module) else None
    for transformer, state in zip(transformers, states, strict=True):
        transformer._asymrnr_applied = {"tap": tap, "regional": regional}
        fenced = sorted({n for m in transformer.modules() for n in cache_hooks_of(m)})
        logger.info(
            "asymrnr: apply(%s): %s compiled (%s behind the rewrite); steps from %s; %s%s",
            type(transformer).__name__, "the whole model" if _hook(transformer).fence.whole else "its repeated blocks",
            "Inductor" if inner == "inductor" else "no Inductor",
            "the pipeline's scheduler" if tap is not None else "its timestep input", describe(state.config),
            f"; step caches run around compiled forwards: {', '.join(fenced)}" if fenced else "")
    return pipe


def _compile_blocks(transformer: torch.nn.Module, compile_kwargs: dict[str, Any]) -> bool:
    """Compile the transformer's repeated blocks (diffusers' ``compile_repeated_blocks``); False
    when the class names none."""
    if not getattr(transformer, "_repeated_blocks", None):
        logger.warning(
            "asymrnr: %s: a step cache is enabled but the class names no repeated blocks "
            "(_repeated_blocks), so the whole model stays compiled; Dynamo may then skip its forward "
            "for every instance of the class in this process", type(transformer).__name__)
        return False
    transformer.compile_repeated_blocks(**compile_kwargs)
    return True


def _authors_default(transformer: torch.nn.Module, fields: dict[str, Any]) -> AsymRnRConfig | None:
    """The authors' base table for a transformer of a family they calibrated (the default when
    the user sets no ratios), said at INFO; None elsewhere (the conservative K/V default)."""
    name = default_preset([type(transformer).__name__], getattr(transformer.config, "num_layers", None))
    if name is None:
        return None
    logger.info("asymrnr: %s: no ratios given, so the AsymRnR authors' calibrated %r table (base rules) "
                "is used, mapped to the model's sites and steps", type(transformer).__name__, name)
    return AsymRnRConfig(schedule=name).replace(**fields)


def _parallelize(transformer: torch.nn.Module, parallel: Any) -> None:
    """Context parallelism before the AsymRnR hook, so the hook sees the whole input: turned on
    here (``parallel``), or already on (checked, and readied for compile)."""
    if parallel is not None or getattr(transformer, "_parallel_config", None) is not None:
        enable_context_parallel(transformer, parallel)


def _compiled_modules(transformer: torch.nn.Module) -> Iterator[torch.nn.Module]:
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            yield module


def remove(pipe: Any) -> Any:
    """Undo :func:`apply`: the transformers run uncompiled again, with their stock attention
    processors, and the scheduler is unhooked."""
    for transformer in _transformers(pipe):
        applied = getattr(transformer, "_asymrnr_applied", None)
        if applied is None:
            continue
        hook = _hook(transformer)
        if hook is not None and hook.fence is not None:
            hook.fence.remove()
        block_reuse.uninstall(transformer)
        transformer._diffusers_hook.remove_hook(HOOK_NAME, recurse=False)
        if applied["regional"] or (hook is not None and hook.fence is not None and hook.fence.went_regional):
            for module in _compiled_modules(transformer):
                module._compiled_call_impl = None
        if applied["tap"] is not None:
            applied["tap"].undo()
        unprepare(transformer)
        del transformer._asymrnr_applied
    return pipe


class StepCallback:
    """A diffusers ``callback_on_step_end`` that tells AsymRnR the next step.

    ``pipe(..., callback_on_step_end=StepCallback(backend, num_steps))``: steps then follow
    the pipeline's own loop. ``target`` is a backend, a state, or an applied pipeline.
    """

    def __init__(self, target: Any, num_steps: int | None = None) -> None:
        self.states = states_of(target)
        self.num_steps = num_steps
        for state in self.states:
            state.set_step(0, num_steps)

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        for state in self.states:
            state.set_step(step_index, self.num_steps)  # (the step that just ran)
            state.step_done(self.num_steps)
        return callback_kwargs
