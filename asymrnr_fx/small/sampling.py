"""Generate clips with the small trained video transformer, and write them as GIF/PNG.

The model is the real diffusers ``CogVideoXTransformer3DModel`` trained in pixel space
with rectified flow to predict the clean clip (see :mod:`asymrnr_fx.small.train`); sampling
turns each prediction into a velocity and integrates it with diffusers'
``FlowMatchEulerDiscreteScheduler``. The transformer is always called as
``model(hidden_states=..., encoder_hidden_states=..., timestep=..., return_dict=False)``
with one timestep value per step, so a ``torch.compile``'d model (whose backend tracks
denoising steps from ``timestep``) can be passed in place of the eager one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..files import atomic_path
from .data import Condition, encode_condition, parse_prompt

__all__ = [
    "DEFAULT_WEIGHTS",
    "load_small_model",
    "clip_geometry",
    "token_grid",
    "make_scheduler",
    "FlowTrajectory",
    "generate",
    "to_uint8",
    "save_gif",
]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "shapes-cogvideox"


def load_small_model(path: str | Path | None = None) -> torch.nn.Module:
    """The shipped small ``CogVideoXTransformer3DModel`` (or the one at ``path``), in eval mode."""
    from diffusers import CogVideoXTransformer3DModel

    model = CogVideoXTransformer3DModel.from_pretrained(str(path or DEFAULT_WEIGHTS), low_cpu_mem_usage=False)
    return model.eval().requires_grad_(False)


def clip_geometry(model: torch.nn.Module) -> tuple[int, int, int, int]:
    """``(frames, channels, height, width)`` of the pixel clips the model was built for."""
    cfg = model.config
    frames = (cfg.sample_frames - 1) // cfg.temporal_compression_ratio + 1
    return frames, cfg.in_channels, cfg.sample_height, cfg.sample_width


def token_grid(model: torch.nn.Module) -> tuple[int, int, int]:
    """``(frames, height, width)`` of the video tokens: the clip divided by the patch size."""
    frames, _, height, width = clip_geometry(model)
    patch = model.config.patch_size
    return frames, height // patch, width // patch


def make_scheduler(steps: int, shift: float = 1.0):
    """A diffusers flow-matching Euler scheduler set to ``steps`` denoising steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler


def _as_condition(item: Condition | str) -> Condition:
    return item if isinstance(item, Condition) else parse_prompt(item)


class FlowTrajectory:
    """One batch of clips sampled step by step: a
    :class:`~asymrnr_fx.schedules.trajectory.Trajectory` (calibration replays its steps with
    gradients; :func:`generate` runs it).

    Each step calls ``model`` once (CFG in one batch), turns the clean-clip prediction into
    a velocity and takes the flow-matching Euler step of diffusers'
    ``FlowMatchEulerDiscreteScheduler`` (its arithmetic, without its step counter, so a step
    can be replayed).
    """

    def __init__(self, model: torch.nn.Module, conditions: Sequence[Condition | str],
                 seeds: Sequence[int], *, steps: int = 20, guidance_scale: float = 1.0,
                 shift: float = 1.0, geometry: tuple[int, int, int, int] | None = None) -> None:
        self.conditions = [_as_condition(c) for c in conditions]
        if len(self.conditions) != len(seeds):
            raise ValueError(f"{len(self.conditions)} conditions but {len(seeds)} seeds: "
                             "give one seed per clip")
        self.model = model
        self.seeds = [int(s) for s in seeds]
        self.num_steps = steps
        self.guidance_scale = guidance_scale
        self.geometry = geometry or clip_geometry(model)
        scheduler = make_scheduler(steps, shift)
        self.timesteps = scheduler.timesteps
        self.sigmas = scheduler.sigmas
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        text = encode_condition(self.conditions)
        if guidance_scale != 1.0:  # CFG in one batch: [conditional; unconditional]
            text = torch.cat([text, encode_condition([None] * len(self.conditions))])
        self.text = text

    def start(self) -> torch.Tensor:
        """The starting noise: each clip's depends on its seed only."""
        frames, channels, height, width = self.geometry
        return torch.stack([
            torch.randn(frames, channels, height, width, generator=torch.Generator().manual_seed(s))
            for s in self.seeds
        ])

    def step(self, index: int, latent: torch.Tensor) -> torch.Tensor:
        t = self.timesteps[index]
        cfg = self.guidance_scale != 1.0
        model_in = torch.cat([latent, latent]) if cfg else latent
        timestep = t.to(torch.float32).expand(model_in.shape[0])
        # Inside the model's diffusers cache_context, as diffusers pipelines call it.
        context = getattr(self.model, "cache_context", None)
        with context("cond_uncond") if context is not None else contextlib.nullcontext():
            x0 = self.model(hidden_states=model_in, encoder_hidden_states=self.text, timestep=timestep,
                            return_dict=False)[0]
        if cfg:
            cond_x0, uncond_x0 = x0.chunk(2)
            x0 = uncond_x0 + self.guidance_scale * (cond_x0 - uncond_x0)
        # The model predicts the clean clip; the scheduler integrates the velocity.
        sigma = float(t) / self.num_train_timesteps
        velocity = (latent - x0) / max(sigma, 1e-3)
        return latent.to(torch.float32) + (self.sigmas[index + 1] - self.sigmas[index]) * velocity

    def finish(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.clamp(-1, 1)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    conditions: Sequence[Condition | str],
    seeds: Sequence[int],
    *,
    steps: int = 20,
    guidance_scale: float = 1.0,
    shift: float = 1.0,
    geometry: tuple[int, int, int, int] | None = None,
    progress: bool = False,
    desc: str = "sample",
    on_step: Callable[[int, float], None] | None = None,
) -> torch.Tensor:
    """Sample one clip per (condition, seed) pair, all in one batch.

    Args:
        model: the transformer (eager or ``torch.compile``'d).
        conditions: :class:`~asymrnr_fx.small.data.Condition` objects or prompts for
            :func:`~asymrnr_fx.small.data.parse_prompt`.
        seeds: one seed per clip; the clip's starting noise depends on its seed only.
        steps: denoising steps.
        guidance_scale: classifier-free guidance; 1.0 disables it (no extra batch).
        shift: the scheduler's timestep shift.
        geometry: ``(frames, channels, height, width)``; read from the model config when
            None (pass it when ``model`` is a compiled wrapper without ``config``).
        progress: show a tqdm bar over the steps.
        on_step: called with (step index, timestep) before each model call (a cache hook's
            timestep callback reads it). Each call runs inside the model's diffusers
            ``cache_context`` when it has one, as diffusers pipelines do.

    Returns:
        ``(B, frames, channels, height, width)`` float32 clips clamped to ``[-1, 1]``.
    """
    trajectory = FlowTrajectory(model, conditions, seeds, steps=steps, guidance_scale=guidance_scale,
                                shift=shift, geometry=geometry)
    latent = trajectory.start()
    for index in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        if on_step is not None:
            on_step(index, float(trajectory.timesteps[index]))
        latent = trajectory.step(index, latent)
    return trajectory.finish(latent)


def to_uint8(clip: torch.Tensor) -> np.ndarray:
    """``(F, C, H, W)`` in [-1, 1] -> ``(F, H, W, C)`` uint8."""
    return ((clip.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _grid(rows: Sequence[Sequence[torch.Tensor]], scale: int, gap: int) -> np.ndarray:
    """Clips in a grid (rows of clips): ``(F, height, width, C)`` uint8, white gaps."""
    tiles = [[to_uint8(c).repeat(scale, axis=1).repeat(scale, axis=2) for c in row] for row in rows]
    f, h, w, c = tiles[0][0].shape
    cols = max(len(row) for row in tiles)
    out = np.full((f, len(tiles) * (h + gap) - gap, cols * (w + gap) - gap, c), 255, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for i, tile in enumerate(row):
            out[:, r * (h + gap) : r * (h + gap) + h, i * (w + gap) : i * (w + gap) + w] = tile
    return out


def _labelled(grid: np.ndarray, rows: int, columns: Sequence[str], captions: Sequence[str], gap: int) -> np.ndarray:
    """The grid with a title above each column and a caption above each row, in black on white
    (PIL's default font), drawn once and repeated on every frame."""
    from PIL import Image, ImageDraw, ImageFont

    f, height, width, c = grid.shape
    line = 14  # px per text line
    row_h = (height + gap) // rows
    head = line + 4 if columns else 0
    cap = line if captions else 0
    out_h = head + rows * (row_h + cap)
    canvas = Image.new("RGB", (width, out_h), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    tile_w = (width + gap) // max(len(columns), 1)
    for i, title in enumerate(columns):
        draw.text((i * tile_w + 2, 2), title, fill="black", font=font)
    for r, text in enumerate(captions):
        draw.text((2, head + r * (row_h + cap)), text, fill="black", font=font)
    text_layer = np.asarray(canvas)
    out = np.repeat(text_layer[None], f, axis=0).copy()
    for r in range(rows):
        top = head + r * (row_h + cap) + cap
        band = grid[:, r * row_h: min((r + 1) * row_h, height)]
        out[:, top: top + band.shape[1]] = band
    return out


def save_gif(
    clips: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]],
    path: str | Path,
    *,
    fps: int = 6,
    scale: int = 4,
    gap: int = 4,
    columns: Sequence[str] = (),
    captions: Sequence[str] = (),
) -> Path:
    """Write clips as one looping GIF: a flat list side by side, or a list of rows as a
    grid; ``columns`` titles the columns and ``captions`` the rows (one each). Returns the path."""
    from PIL import Image

    rows = [clips] if isinstance(clips[0], torch.Tensor) else clips
    grid = _grid(rows, scale, gap)
    if columns or captions:
        grid = _labelled(grid, len(rows), columns, captions, gap)
    images = [Image.fromarray(frame) for frame in grid]
    path = Path(path)
    with atomic_path(path) as temporary:
        images[0].save(temporary, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path
