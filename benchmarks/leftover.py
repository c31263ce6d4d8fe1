"""Leftover tokens: where the chunks sit when the stride does not divide the grid.

HunyuanVideo at 720p x 129 frames has 33 latent frames and the authors' stride 6: five chunks
of 6 frames cover 30 and 3 frames are left over. With ``chunk_offset="start"`` the chunked
region starts at frame 0, so the last frames never hold a dst token: their tokens are always
src, matched to dst tokens elsewhere. The reference implementation shifts the region by a
random offset per draw (``chunk_offset="random"``). Does the end of the clip degrade?

Measured on the shipped small model (8 x 16 x 16 token grid) with stride (3, 2, 2): two chunks
of 3 frames cover 6 of 8, frames 6 and 7 are left over, a quarter of the clip (HunyuanVideo's
case is 3 of 33). A high Q ratio everywhere (Q is the side whose cut stays visible) and a
moderate K/V ratio, eager rewrite, the held-out clips, 20 steps; PSNR per frame against the
unreduced clips, for each placement.

    python -m benchmarks.leftover --threads 2   # table, JSON, the section in docs/schedules.md (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

from asymrnr_fx.config import AsymRnRConfig
from asymrnr_fx.small.evaluate import baseline_clips
from asymrnr_fx.small.metrics import psnr
from asymrnr_fx.small.protocol import HELD_OUT
from asymrnr_fx.small.sampling import clip_geometry, generate, load_small_model, token_grid
from benchmarks.readme import write_section

SECTION = "leftover"
STRIDE = (3, 2, 2)
Q_RATIO, KV_RATIO = 0.6, 0.3
STEPS = 20


def per_frame_psnr(clips: torch.Tensor, baseline: torch.Tensor) -> list[float]:
    """Mean over the clips of each frame's PSNR (dB)."""
    return [float(psnr(clips[:, f:f + 1], baseline[:, f:f + 1]).mean()) for f in range(clips.shape[1])]


def render(document: dict) -> str:
    """The docs table: PSNR per frame, the chunked frames' mean and the leftover frames'."""
    covered, frames = document["covered_frames"], len(next(iter(document["psnr_per_frame"].values())))
    rows = []
    for placement, values in document["psnr_per_frame"].items():
        inside, leftover = statistics.fmean(values[:covered]), statistics.fmean(values[covered:])
        rows.append([f'`chunk_offset="{placement}"`', *[f"{v:.2f}" for v in values], f"{inside:.2f}",
                     f"{leftover:.2f}", f"{leftover - inside:+.2f}"])
    headers = ["placement", *[f"frame {f}" for f in range(frames)], f"frames 0-{covered - 1}",
               f"frames {covered}-{frames - 1}", "leftover - chunked"]
    return tabulate(rows, headers=headers, tablefmt="github")


def sample(model: torch.nn.Module, config: AsymRnRConfig) -> torch.Tensor:
    import asymrnr_fx

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=asymrnr_fx.backend(config, inner="eager"))
    return generate(compiled, list(HELD_OUT.prompts), list(HELD_OUT.seeds), steps=STEPS,
                    geometry=clip_geometry(model))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "leftover.json")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the docs section")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_small_model()
    grid = token_grid(model)
    covered = grid[0] // STRIDE[0] * STRIDE[0]
    start = time.perf_counter()
    baseline, _ = baseline_clips(model, HELD_OUT, STEPS)
    frames = {}
    for placement in ("start", "random"):
        config = AsymRnRConfig(q_ratio=Q_RATIO, kv_ratio=KV_RATIO, stride=STRIDE, chunk_offset=placement,
                               num_steps=STEPS)
        frames[placement] = per_frame_psnr(sample(model, config), baseline)
    seconds = time.perf_counter() - start

    result = {"grid": list(grid), "stride": list(STRIDE), "q_ratio": Q_RATIO, "kv_ratio": KV_RATIO,
              "steps": STEPS, "clips": HELD_OUT.describe(), "covered_frames": covered,
              "psnr_per_frame": frames, "seconds": seconds, "threads": torch.get_num_threads()}
    table = render(result)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_readme:
        write_section(SECTION, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
