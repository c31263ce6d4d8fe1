"""What a calibration measures, for each kind of model, from Python as from the CLI.

:func:`calibration_setup` turns a model name into a :class:`CalibrationSetup`: the model, the
runs to measure (replayable trajectories, or pipeline runs that tell their steps), the token
layout and the matching settings of its family. ``asymrnr calibrate`` is this plus
:func:`asymrnr_fx.schedules.calibrate.measure` and ``fit``::

    setup = calibration_setup("small", steps=20)
    table = measure(setup.model, setup.runs, setup.reduction(), text_tokens=setup.text_tokens,
                    text_side=setup.text_side, steps=20)

Models: ``"small"`` (the shipped small model, its calibration clip set), ``"tiny:NAME"`` (a tiny
random-weight config of a diffusers class), or a diffusers pipeline (a Hub id or a folder, or a
loaded pipeline), sampled with the default text-to-video calibration prompts. A request that
cannot work is a :class:`SetupError`; a model that cannot be found, a
:class:`~asymrnr_fx.hub.ModelUnavailable` (both ``ValueError``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .hub import SMALL_MODEL_NAMES, ModelUnavailable, default_device, load_pipeline

__all__ = ["CalibrationSetup", "SetupError", "calibration_clips", "calibration_setup", "TINY_PREFIX",
           "SMALL_MODEL_NAMES"]

TINY_PREFIX = "tiny:"


class SetupError(ValueError):
    """The calibration asked for cannot run as asked; the message names the fix."""


@dataclass
class CalibrationSetup:
    """What a calibration measures: the model, its runs and its token layout."""

    model: Any
    runs: list[Any]  # Trajectory objects (replayable) or sample(set_step) callables
    grid: tuple[int, int, int]
    text_side: str | None
    stride: tuple[int, int, int]
    cache_interval: int
    name: str
    clips: list[tuple[str, int]] = field(default_factory=list)
    text_tokens: int | None = None
    replayable: bool = True  # runs are Trajectory objects: output sensitivity works
    data_range: float | None = None  # the output's value range, for a predicted PSNR


def calibration_clips(prompts: Sequence[str], seeds: int = 1, seed: int = 0) -> list[tuple[str, int]]:
    """(prompt, seed) per clip: every prompt ``seeds`` times, seeds counted from ``seed``."""
    rounds = [p for _ in range(seeds) for p in prompts]
    return [(p, seed + n) for n, p in enumerate(rounds)]


def _tiny_setup(name: str, steps: int, seed: int) -> CalibrationSetup:
    from .models import family_of
    from .schedules.trajectory import EulerTrajectory
    from .tiny_models import TINY_MODELS, build_tiny

    if name not in TINY_MODELS:
        raise SetupError(f"unknown tiny model {name!r}; choose one of {sorted(TINY_MODELS)}")
    tiny = build_tiny(name, batch=1, seed=seed)
    family = family_of(tiny.model)
    return CalibrationSetup(tiny.model, [EulerTrajectory(tiny.model, tiny.inputs, steps)], tiny.grid,
                            family.text_side, family.stride, family.cache_interval, f"tiny-{name}")


def _small_setup(steps: int, prompts: Sequence[str] | None, seeds: int, seed: int, batch: int,
                 weights: str | None) -> CalibrationSetup:
    from .models import family_of
    from .small import sampling
    from .small.data import TEXT_TOKENS
    from .small.protocol import CALIBRATION

    try:
        model = sampling.load_small_model(weights)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot load the small model: {' '.join(str(exc).split())}") from None
    geometry = sampling.clip_geometry(model)
    clips = calibration_clips(list(prompts or CALIBRATION.prompts), seeds, seed)
    try:
        batches = [clips[i:i + batch] for i in range(0, len(clips), batch)]
        runs = [sampling.FlowTrajectory(model, [p for p, _ in b], [s for _, s in b], steps=steps,
                                        geometry=geometry) for b in batches]
    except ValueError as exc:  # a prompt outside the small model's grammar
        raise SetupError(" ".join(str(exc).split())) from None
    family = family_of(model)
    return CalibrationSetup(model, runs, sampling.token_grid(model), "before", family.stride,
                            family.cache_interval, "shapes-cogvideox", clips, TEXT_TOKENS, data_range=2.0)


def _pipeline_sample(pipe: Any, call: Mapping[str, Any], prompt: str, seed: int, device: str) -> Callable:
    """A ``sample(set_step)`` callable: one pipeline run that tells its steps."""
    import torch

    def sample(set_step: Callable[[int], None]) -> None:
        def on_step_end(pipeline, i, t, callback_kwargs):  # noqa: ANN001, ANN202
            set_step(i + 1)
            return {}

        set_step(0)
        pipe(**{"prompt": prompt, **call, "callback_on_step_end": on_step_end, "output_type": "latent",
                "generator": torch.Generator(device).manual_seed(seed)})

    return sample


def _pipeline_setup(pipe: Any, name: str, steps: int, height: int | None, width: int | None,
                    frames: int | None, prompts: Sequence[str] | None, seeds: int, seed: int,
                    pipeline_args: Mapping[str, Any], device: str) -> CalibrationSetup:
    from .models import FAMILIES, family_of, pipeline_grid
    from .schedules.prompts import CALIBRATION_PROMPTS

    family = family_of(pipe.transformer)
    if family is None:
        known = ", ".join(c for f in FAMILIES for c in f.classes)
        raise SetupError(f"calibration does not know the token layout of "
                         f"{type(pipe.transformer).__name__}; supported: {known}")
    clips = calibration_clips(list(prompts or CALIBRATION_PROMPTS), seeds, seed)
    call = {"num_inference_steps": steps, "height": height, "width": width, "num_frames": frames,
            **dict(pipeline_args)}
    runs = [_pipeline_sample(pipe, call, prompt, clip_seed, device) for prompt, clip_seed in clips]
    return CalibrationSetup(pipe.transformer, runs, pipeline_grid(pipe, height, width, frames),
                            family.text_side, family.stride, family.cache_interval, name, clips,
                            replayable=False)


def calibration_setup(
    model: str | Any,
    *,
    steps: int,
    prompts: Sequence[str] | None = None,
    seeds: int = 1,
    seed: int = 0,
    method: str | None = None,
    batch: int = 8,
    weights: str | None = None,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    pipeline_args: Mapping[str, Any] | None = None,
    allow_download: bool = False,
    cpu: bool = False,
) -> CalibrationSetup:
    """The model, runs and token layout to calibrate ``model`` on.

    Args:
        model: ``"small"``, ``"tiny:NAME"``, a diffusers pipeline's Hub id or folder, or a
            loaded diffusers pipeline.
        steps: denoising steps of every run.
        prompts, seeds, seed: the clips: every prompt ``seeds`` times, seeds counted from
            ``seed`` (default prompts: the small model's calibration set, or 8 varied
            text-to-video prompts for a pipeline). ``seed`` also seeds a tiny config's weights.
        method: the measurement that will run; ``"sensitivity"`` needs replayable steps, which
            a pipeline does not expose (a :class:`SetupError`).
        batch: clips per run of the small model.
        weights: the small model's folder (default: the shipped weights).
        height, width, frames, pipeline_args: a pipeline's output size and extra call arguments.
        allow_download, cpu: how a pipeline is found and where it runs.
    """
    if isinstance(model, str) and model.startswith(TINY_PREFIX):
        return _tiny_setup(model[len(TINY_PREFIX):], steps, seed)
    if isinstance(model, str) and model in SMALL_MODEL_NAMES:
        return _small_setup(steps, prompts, seeds, seed, batch, weights)
    if None in (height, width, frames):
        raise SetupError("height, width and frames are required for a diffusers pipeline "
                         "(--height, --width, --frames)")
    if method == "sensitivity":
        raise SetupError("sensitivity replays single sampling steps, which a diffusers pipeline "
                         "does not expose: use the redundancy method (--method redundancy), or "
                         "calibrate from Python with a Trajectory (see asymrnr_fx.schedules.trajectory)")
    if isinstance(model, str):
        device, dtype = default_device(cpu)
        pipe, name = load_pipeline(model, allow_download=allow_download, device=device, dtype=dtype), model
    else:
        pipe, name, device = model, type(model).__name__, str(getattr(model, "device", "cpu"))
    return _pipeline_setup(pipe, name, steps, height, width, frames, prompts, seeds, seed,
                           pipeline_args or {}, device)
