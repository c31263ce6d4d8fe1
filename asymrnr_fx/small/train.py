"""Train the small CogVideoX transformer on the procedural clips of :mod:`asymrnr_fx.small.data`.

Pixel-space rectified flow (no VAE): ``x_t = (1 - s) x_0 + s noise``. The model predicts
the clean clip ``x_0`` at timestep ``1000 s`` (x-prediction, trained with the velocity
loss); sampling turns it into the velocity ``(x_t - x_0) / s`` that diffusers'
``FlowMatchEulerDiscreteScheduler`` integrates.

    python -m asymrnr_fx.small.train --out asymrnr_fx/weights/shapes-cogvideox --minutes 60

Checkpoints (EMA weights, ``from_pretrained`` layout) are written every ``--save-every``
steps and at the end, so whatever is on disk when the run is stopped is usable;
``loss.csv`` logs every step and ``TRAINING.md`` records how the weights were made.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .data import TEXT_DIM, TEXT_TOKENS, encode_condition, make_batch

__all__ = ["MODEL_CONFIG", "build_model", "train", "main"]

# 8 frames x 32x32 pixels with 2x2 patches: 8 x 16 x 16 = 2048 video tokens, 5 text tokens.
MODEL_CONFIG: dict = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=3,
    out_channels=3,
    time_embed_dim=64,
    text_embed_dim=TEXT_DIM,
    num_layers=6,
    sample_width=32,
    sample_height=32,
    sample_frames=29,  # (29 - 1) // temporal_compression_ratio(4) + 1 = 8 frames
    patch_size=2,
    max_text_seq_length=TEXT_TOKENS,
    use_rotary_positional_embeddings=False,
)
FRAMES, SIZE = 8, 32


def build_model(**overrides) -> torch.nn.Module:
    """A fresh ``CogVideoXTransformer3DModel`` of the small config (fields overridable)."""
    from diffusers import CogVideoXTransformer3DModel

    return CogVideoXTransformer3DModel(**{**MODEL_CONFIG, **overrides})


def _sample_sigmas(batch: int, generator: torch.Generator) -> torch.Tensor:
    # Logit-normal noise levels (as in SD3): most training signal at mid noise, where
    # structure (shape, position) is decided.
    return torch.sigmoid(torch.randn(batch, generator=generator))


def flow_loss(model: torch.nn.Module, x0: torch.Tensor, text: torch.Tensor, noise: torch.Tensor,
              sigma: torch.Tensor) -> torch.Tensor:
    """The training loss at noise levels ``sigma`` (one per clip).

    x-prediction with the loss taken on the implied velocity ``(x_t - x0_hat) / s``, whose
    target is ``noise - x0``: the network outputs clean clips (no noise to pass through at
    high noise levels), while low noise levels keep their weight.
    """
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    xt = (1 - s) * x0 + s * noise
    x0_hat = model(hidden_states=xt, encoder_hidden_states=text, timestep=sigma * 1000, return_dict=False)[0]
    return ((x0_hat - x0) / s.clamp(min=0.05)).pow(2).mean()


HELDOUT_SEEDS = range(900_000_000, 900_000_008)  # never drawn by a training run
HELDOUT_SIGMAS = (0.2, 0.5, 0.8)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, frames: int = FRAMES) -> float:
    """The training loss of ``model`` on 8 fixed held-out clips at noise levels 0.2, 0.5, 0.8."""
    x0, conds = make_batch(list(HELDOUT_SEEDS), frames=frames, size=SIZE)
    text = encode_condition(conds)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    losses = [flow_loss(model, x0, text, noise, torch.full((len(x0),), sigma)) for sigma in HELDOUT_SIGMAS]
    return float(torch.stack(losses).mean())


def _optimizer(model: torch.nn.Module, lr: float, warmup: int, steps: int):  # noqa: ANN202
    """AdamW with a linear warm-up, then a cosine decay to half the rate."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.5 + 0.5 * math.cos(math.pi * min(1.0, s / steps)))
    )
    return opt, sched


def _train_step(model: torch.nn.Module, ema: torch.nn.Module, opt, sched, gen: torch.Generator,  # noqa: ANN001
                seeds: list[int], *, frames: int, cond_dropout: float, decay: float) -> float:
    """One optimizer step on the clips of ``seeds``, then the EMA update; returns the loss."""
    x0, conds = make_batch(seeds, frames=frames, size=SIZE)
    drop = torch.rand(len(seeds), generator=gen) < cond_dropout
    text = encode_condition([None if d else c for d, c in zip(drop.tolist(), conds, strict=True)])
    noise = torch.randn(x0.shape, generator=gen)
    loss = flow_loss(model, x0, text, noise, _sample_sigmas(len(seeds), gen))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1 - decay)
    return float(loss.detach())


def _save_checkpoint(out: Path, model: torch.nn.Module, ema: torch.nn.Module, frames: int) -> dict:
    """Both the EMA (the checkpoint proper) and the raw weights (under raw/), each with its
    held-out loss, so a run can be judged and continued from either."""
    ema.save_pretrained(out, safe_serialization=True)
    model.save_pretrained(out / "raw", safe_serialization=True)
    model.eval()
    losses = {"ema": heldout_loss(ema, frames), "raw": heldout_loss(model, frames)}
    model.train()
    return losses


def train(
    out: Path,
    *,
    steps: int,
    minutes: float | None,
    batch: int,
    lr: float,
    seed: int,
    ema_decay: float,
    cond_dropout: float,
    save_every: int,
    warmup: int,
    command: str,
    init: Path | None = None,
    seed_offset: int = 0,
    model_overrides: dict | None = None,
    frames: int = FRAMES,
) -> dict:
    """Run training; returns a summary (steps done, final smoothed loss, seconds)."""
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(**(model_overrides or {})).train()
    if init is not None:  # continue from saved weights (a fresh optimizer and LR schedule)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(Path(init) / "diffusion_pytorch_model.safetensors")))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt, sched = _optimizer(model, lr, warmup, steps)
    gen = torch.Generator().manual_seed(seed)
    log = (out / "loss.csv").open("w")
    log.write("step,loss,lr,seconds\n")
    start = time.time()
    smooth = None
    summary: dict = {}

    def save(step: int) -> None:
        losses = _save_checkpoint(out, model, ema, frames)
        tqdm.write(f"step {step}: held-out loss ema {losses['ema']:.4f}, raw {losses['raw']:.4f}", file=sys.stdout)
        summary.update(
            steps=step, final_loss_ema100=round(float(smooth), 5),
            heldout_loss={k: round(v, 5) for k, v in losses.items()}, seconds=round(time.time() - start),
            batch=batch, lr=lr, seed=seed, ema_decay=ema_decay, cond_dropout=cond_dropout,
            params=sum(p.numel() for p in model.parameters()), command=command,
        )
        (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")

    bar = tqdm(range(steps), desc="train", unit="step", file=sys.stdout, mininterval=10)
    step = 0
    for step in bar:
        # Clip seeds never repeat within a run: every step sees fresh clips.
        seeds = [seed * 10_000_000 + seed_offset + step * batch + i for i in range(batch)]
        decay = min(ema_decay, (1 + step) / (10 + step))  # warm EMA: early weights fade fast
        value = _train_step(model, ema, opt, sched, gen, seeds, frames=frames,
                            cond_dropout=cond_dropout, decay=decay)
        smooth = value if smooth is None else 0.99 * smooth + 0.01 * value
        log.write(f"{step},{value:.5f},{sched.get_last_lr()[0]:.3e},{time.time() - start:.1f}\n")
        log.flush()
        bar.set_postfix(loss=f"{smooth:.4f}", refresh=False)  # the bar redraws every mininterval
        if (step + 1) % save_every == 0:
            save(step + 1)
        if minutes is not None and time.time() - start > minutes * 60:
            break
    save(step + 1)
    log.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output folder (from_pretrained layout)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (sets the LR decay)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall time")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema-decay", type=float, default=0.99)
    p.add_argument("--cond-dropout", type=float, default=0.1)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--patch-size", type=int, default=MODEL_CONFIG["patch_size"],
                   help="spatial patch size (2: 16x16 tokens per frame, 4: 8x8)")
    p.add_argument("--frames", type=int, default=FRAMES,
                   help="frames per training clip (fewer: a cheaper, spatial-only warm-up)")
    p.add_argument("--init", type=Path, default=None, help="start from the weights in this folder")
    p.add_argument("--first-seed-offset", type=int, default=0,
                   help="skip this many clips (continue a run on fresh clips)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m asymrnr_fx.small.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    summary = train(
        args.out, steps=args.steps, minutes=args.minutes, batch=args.batch, lr=args.lr, seed=args.seed,
        ema_decay=args.ema_decay, cond_dropout=args.cond_dropout, save_every=args.save_every,
        warmup=args.warmup, command=command, init=args.init, seed_offset=args.first_seed_offset,
        model_overrides={"patch_size": args.patch_size}, frames=args.frames,
    )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
