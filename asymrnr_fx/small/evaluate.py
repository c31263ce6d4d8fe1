"""Score an AsymRnR config on a clip set of the small model: PSNR / SSIM per clip against the
unreduced model's clips (same prompts, seeds and steps).

The rewritten graphs run eagerly (``inner="eager"``): quality, not speed, is measured, and
Inductor would compile every variant for a minute on CPU. Used by the quality and
calibration benchmarks.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .metrics import psnr, ssim
from .protocol import ClipSet
from .sampling import clip_geometry, generate

__all__ = ["Scores", "baseline_clips", "score", "summary", "paired"]


@dataclass(frozen=True)
class Scores:
    """Per-clip PSNR (dB) and SSIM of one config on one clip set, and what the run did."""

    clip_set: str
    psnr: tuple[float, ...]
    ssim: tuple[float, ...]
    seconds: float
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"clip_set": self.clip_set, "psnr": summary(self.psnr), "ssim": summary(self.ssim),
                "psnr_per_clip": list(self.psnr), "ssim_per_clip": list(self.ssim),
                "seconds": self.seconds, "stats": self.stats}


def summary(values: tuple[float, ...] | list[float]) -> dict[str, float]:
    """Mean, standard deviation over the clips and the worst clip."""
    return {"mean": statistics.fmean(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min": min(values)}


def paired(a: Scores, b: Scores) -> dict[str, float]:
    """``a`` minus ``b``, clip by clip: the mean difference, its standard error and how many
    clips ``a`` wins (a claim holds when the mean is above two standard errors)."""
    diff = [x - y for x, y in zip(a.psnr, b.psnr, strict=True)]
    stderr = statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else 0.0
    return {"mean": statistics.fmean(diff), "stderr": stderr,
            "wins": sum(d > 0 for d in diff), "clips": len(diff)}


def baseline_clips(model: torch.nn.Module, clips: ClipSet, steps: int) -> tuple[torch.Tensor, float]:
    """The unreduced model's clips of ``clips`` (one batch) and the seconds they took."""
    start = time.perf_counter()
    out = generate(model, list(clips.prompts), list(clips.seeds), steps=steps)
    return out, time.perf_counter() - start


def score(model: torch.nn.Module, config: Any, clips: ClipSet, baseline: torch.Tensor,
          steps: int) -> Scores:
    """Sample ``clips`` with ``config`` (compiled backend, eager inner) and score them."""
    import asymrnr_fx

    torch._dynamo.reset()
    compiler = asymrnr_fx.backend(config.replace(num_steps=steps), inner="eager")
    compiled = torch.compile(model, backend=compiler)
    start = time.perf_counter()
    out = generate(compiled, list(clips.prompts), list(clips.seeds), steps=steps,
                   geometry=clip_geometry(model))
    seconds = time.perf_counter() - start
    return Scores(clips.name, tuple(psnr(out, baseline).tolist()), tuple(ssim(out, baseline).tolist()),
                  seconds, dict(compiler.state.stats))
