"""Block reuse: a schedule's step-cache decisions, run by :func:`asymrnr_fx.apply`.

A schedule with a ``reuse`` table (:class:`~asymrnr_fx.schedules.schedule.Schedule`) names, per
denoising step and transformer block, the blocks that are not run: such a block returns its input
plus the residual (output minus input) it computed at its last computed step of the same
generation and CFG branch (cell 1, as FORA / Delta-DiT style caches do), or that residual
extrapolated linearly from its last two computed steps (cell 2, the first-order prediction of
TaylorSeer). Calibration chooses these decisions together with the token cuts, priced in the
same predicted output error (:mod:`asymrnr_fx.schedules.joint`).

Each block gets a diffusers ``ModelHook`` (:class:`BlockReuseHook`). The hook's decision reads
only the step the application's :class:`~asymrnr_fx.state.AsymRnRState` was told, so under
``apply`` it runs eagerly around the block's compiled forward (:mod:`asymrnr_fx.fences`, like
diffusers' step caches): nothing about it is guarded, and nothing recompiles from step to step.
The residuals live in the state and are dropped with every new generation. A block marked
reused with no residual of its own yet (the generation's shape or branch is new) computes.

Blocks are the transformer blocks diffusers' ``TransformerBlockRegistry`` knows (what its
FirstBlockCache caches; it also says which output follows which input), in module order.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .fences import cache_hooks_of

__all__ = ["HOOK_NAME", "BlockReuseHook", "reuse_blocks", "block_metadata", "block_inputs", "block_outputs",
           "residuals", "predicted", "check", "install", "uninstall"]

HOOK_NAME = "asymrnr_block_reuse"


def _registered(module: torch.nn.Module) -> bool:
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        TransformerBlockRegistry.get(type(module))
    except ValueError:
        return False
    return True


def reuse_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks a reuse table addresses: the outermost modules of a class diffusers'
    ``TransformerBlockRegistry`` knows (the transformer blocks its FirstBlockCache caches), in
    module order (the order a video transformer's forward runs them)."""
    blocks: list[torch.nn.Module] = []
    inner: set[int] = set()
    for module in transformer.modules():
        if id(module) in inner or module is transformer or not _registered(module):
            continue
        blocks.append(module)
        inner.update(id(m) for m in module.modules())
    return blocks


def block_metadata(block: torch.nn.Module) -> Any:
    """diffusers' TransformerBlockRegistry entry of the block's class (which output follows which input)."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    return TransformerBlockRegistry.get(type(block))


class BlockReuseHook(ModelHook):
    """Runs block ``index`` or adds its cached residual, as the schedule says for the step."""

    _is_stateful = False

    def __init__(self, index: int, state: Any) -> None:  # AsymRnRState
        super().__init__()
        self.index = index
        self.state = state
        self.metadata = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.metadata = block_metadata(module)
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = self.state
        inputs = block_inputs(self.metadata, args, kwargs)
        key = (self.index, state.tracker.branch_name, *(tuple(x.shape) for x in inputs))
        history = state.block_residuals.get(key)
        mode = state.reuse_mode(self.index) if history else 0
        if mode:
            state.stats["blocks_reused"] += 1
            residual = predicted(history, state.step) if mode == 2 else history[-1][1]
            return block_output(self.metadata, [x + r for x, r in zip(inputs, residual, strict=True)])
        output = self.fn_ref.original_forward(*args, **kwargs)
        state.stats["blocks_computed"] += 1
        if state.reuses_later(self.index):
            state.block_residuals[key] = [*(history or [])[-1:], (state.step, residuals(self.metadata, inputs, output))]
        return output


def predicted(history: list[tuple[int, tuple[torch.Tensor, ...]]], step: int) -> tuple[torch.Tensor, ...]:
    """The residual at ``step`` extrapolated linearly from the last two computed ``(step,
    residuals)`` (the last one alone when there is one)."""
    (s1, r1) = history[-1]
    if len(history) < 2:
        return r1
    (s0, r0) = history[-2]
    slope = (step - s1) / (s1 - s0)
    return tuple(a + (a - b) * slope for a, b in zip(r1, r0, strict=True))


def block_inputs(metadata: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
    """The block's hidden states, and its text hidden states where it returns them too."""
    hidden = metadata._get_parameter_from_args_kwargs(metadata.hidden_states_argument_name, args, kwargs)
    if metadata.return_encoder_hidden_states_index is None:
        return (hidden,)
    return hidden, metadata._get_parameter_from_args_kwargs(metadata.encoder_hidden_states_argument_name, args, kwargs)


def block_outputs(metadata: Any, output: Any) -> tuple[torch.Tensor, ...]:
    """The block's outputs in the order of :func:`block_inputs`."""
    if not isinstance(output, tuple):
        return (output,)
    if metadata.return_encoder_hidden_states_index is None:
        return (output[metadata.return_hidden_states_index],)
    return output[metadata.return_hidden_states_index], output[metadata.return_encoder_hidden_states_index]


def block_output(metadata: Any, values: list[torch.Tensor]) -> Any:
    """What the block returns, built from values in the order of :func:`block_inputs`."""
    if len(values) == 1:
        return values[0]
    out = [None, None]
    out[metadata.return_hidden_states_index] = values[0]
    out[metadata.return_encoder_hidden_states_index] = values[1]
    return tuple(out)


def residuals(metadata: Any, inputs: tuple[torch.Tensor, ...], output: Any) -> tuple[torch.Tensor, ...]:
    """Output minus input, per stream."""
    return tuple(o - x for o, x in zip(block_outputs(metadata, output), inputs, strict=True))


def check(transformer: torch.nn.Module, num_blocks: int) -> list[torch.nn.Module]:
    """The blocks of ``transformer`` a reuse table of ``num_blocks`` columns addresses; a table
    that does not fit the model, a block class diffusers cannot map outputs to inputs for, or a
    block already under a step cache is a ValueError naming the fix."""
    blocks = reuse_blocks(transformer)
    name = type(transformer).__name__
    if not blocks:
        raise ValueError(f"the schedule reuses blocks, but {name} has no block diffusers' TransformerBlockRegistry "
                         "knows (it says which output follows which input): use a schedule without 'reuse'")
    if len(blocks) != num_blocks:
        raise ValueError(f"the schedule's reuse table has {num_blocks} blocks but {name} has {len(blocks)}: "
                         "calibrate the schedule for this model")
    for block in blocks:
        if cache_hooks_of(block):
            raise ValueError(f"{name} already runs a step cache ({', '.join(cache_hooks_of(block))}) and the "
                             "schedule reuses blocks too: disable the cache, or use a schedule without 'reuse'")
    return blocks


def install(transformer: torch.nn.Module, state: Any, num_blocks: int) -> list[torch.nn.Module]:
    """Hook every block of ``transformer`` (:func:`check` first) for the reuse table of
    ``state``'s schedule; returns the hooked blocks."""
    blocks = check(transformer, num_blocks)
    for index, block in enumerate(blocks):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(BlockReuseHook(index, state), HOOK_NAME)
    return blocks


def uninstall(transformer: torch.nn.Module) -> None:
    """Remove the block-reuse hooks :func:`install` added."""
    for block in reuse_blocks(transformer):
        registry = getattr(block, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(HOOK_NAME) is not None:
            registry.remove_hook(HOOK_NAME, recurse=False)
