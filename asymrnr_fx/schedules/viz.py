"""Show a :class:`~asymrnr_fx.schedules.schedule.Schedule`: a text table and a heat-map PNG.

The table groups consecutive steps that use the same per-site ratios and block reuse (one
column per group), so even a 50-step schedule prints exactly in a few columns. The PNG draws
layers x steps for Q and K/V side by side with pillow alone. A block that does not run at a
step (a schedule's ``reuse`` table, block ``i`` holding site ``i``) is ``R`` (its last residual
reused) or ``P`` (predicted from its last two) in the table, orange or dark red in the PNG.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from tabulate import tabulate

from .schedule import Schedule

__all__ = ["step_runs", "format_summary", "format_table", "format_schedule", "heatmap"]

# Colour ramp from 0 (pale) to 1 (dark): a viridis-like sequence of stops, so that ratio
# differences read as lightness differences also in grey-scale print.
REUSED = (230, 85, 13)
PREDICTED = (165, 15, 21)
"""Colours of a reused and a predicted block's cells in the heat map (outside the ratio ramp)."""

_RAMP = [
    (0.0, (247, 247, 240)),
    (0.15, (199, 233, 180)),
    (0.3, (94, 201, 98)),
    (0.5, (33, 145, 140)),
    (0.7, (59, 82, 139)),
    (1.0, (68, 1, 84)),
]


def step_runs(schedule: Schedule | Sequence[Any]) -> list[tuple[int, int]]:
    """Maximal runs ``[start, stop)`` of consecutive steps with identical ratios (of a
    schedule, or of a list holding each step's ratios)."""
    rows = ([(schedule.ratios_at(s), schedule.reuse_at(s)) for s in range(schedule.num_steps)]
            if isinstance(schedule, Schedule) else list(schedule))
    runs: list[tuple[int, int]] = []
    start = 0
    for s in range(1, len(rows) + 1):
        if s == len(rows) or rows[s] != rows[start]:
            runs.append((start, s))
            start = s
    return runs


def _ratio(v: float) -> str:
    return "." if v == 0 else f"{v:.2f}".lstrip("0")


def format_summary(schedule: Schedule) -> str:
    """Header lines plus a per-component coverage table."""
    cov = schedule.coverage()
    title = f"schedule {schedule.name!r}" if schedule.name else "schedule"
    head = (
        f"{title}: {schedule.num_layers} attention sites x {schedule.num_steps} steps, "
        f"{len(schedule.distinct_phases())} distinct phase(s)"
    )
    if "source" in schedule.meta:  # a preset's (or a derived file's) origin: the authors' or ours
        head += f"\nsource: {schedule.meta['source']}"
    if "mapped_from" in schedule.meta:
        layers, steps = schedule.meta["mapped_from"]
        head += f"\nmapped by relative position from its native {layers} sites x {steps} steps"
    rows = [
        [
            "Q" if c == "q" else "K/V",
            f"{100 * cov[c]['reduced_share']:.1f}%",
            f"{cov[c]['mean_ratio_where_reduced']:.2f}",
            f"{cov[c]['max_ratio']:.2f}",
            f"{cov[c]['mean_ratio']:.3f}",
        ]
        for c in ("q", "kv")
    ]
    table = tabulate(
        rows, headers=["component", "cells reduced", "mean where reduced", "max", "mean overall"],
        tablefmt="simple", disable_numparse=True,
    )
    if schedule.reuse is not None:
        cells = [v for row in schedule.reuse for v in row]
        head += (f"\nblock reuse: {100 * schedule.reused_share():.1f}% of (step, block) cells of "
                 f"{schedule.num_blocks} blocks skip the block ({cells.count(1)} reuse its last residual, "
                 f"{cells.count(2)} predict it from its last two)")
    return head + "\n" + table


def format_table(schedule: Schedule, max_columns: int = 16) -> str:
    """Layers x step-groups table; each cell is ``q/kv`` (``.`` = not reduced).

    Steps with identical ratios are one column. When there are more than ``max_columns``
    groups, returns a per-component table of the mean ratio per layer instead, saying so.
    """
    runs = step_runs(schedule)
    if len(runs) > max_columns:
        rows = [
            [i, f"{sum(r[i] for r in schedule.q) / schedule.num_steps:.3f}",
             f"{sum(r[i] for r in schedule.kv) / schedule.num_steps:.3f}"]
            for i in range(schedule.num_layers)
        ]
        note = (f"{len(runs)} step groups (more than {max_columns}): "
                "mean ratio over all steps per layer")
        return note + "\n" + tabulate(rows, headers=["layer", "Q mean", "K/V mean"], disable_numparse=True)
    headers = ["layer"] + [
        f"step {a}" if b - a == 1 else f"steps {a}-{b - 1}" for a, b in runs
    ]
    rows = []
    for i in range(schedule.num_layers):
        row: list[object] = [i]
        for a, _ in runs:
            q, kv = schedule.q[a][i], schedule.kv[a][i]
            if _reused(schedule, a, i):
                row.append("R" if schedule.reuse[a][i] == 1 else "P")
            else:
                row.append("." if q == kv == 0 else f"{_ratio(q)}/{_ratio(kv)}")
        rows.append(row)
    legend = "cells are Q/K-V ratios ('.' = not reduced"
    legend += (", 'R' / 'P' = the block reuses / predicts its residual)" if schedule.reuse is not None else ")")
    table = tabulate(rows, headers=headers, disable_numparse=True)
    if schedule.reuse is not None and schedule.num_blocks != schedule.num_layers:
        reuse_rows = [[b] + [".RP"[schedule.reuse[a][b]] for a, _ in runs] for b in range(schedule.num_blocks)]
        table += "\n\nblock reuse per block ('R' = reused, 'P' = predicted)\n" + tabulate(
            reuse_rows, headers=["block"] + headers[1:], disable_numparse=True)
    return legend + "\n" + table


def _reused(schedule: Schedule, step: int, layer: int) -> bool:
    """Whether the block holding ``layer`` is reused at ``step`` (block ``i`` holds site ``i``)."""
    return schedule.reuse is not None and schedule.num_blocks == schedule.num_layers and schedule.reuse[step][layer]


def format_schedule(schedule: Schedule, max_columns: int = 16) -> str:
    """Summary and table, as ``asymrnr show`` prints them."""
    return format_summary(schedule) + "\n\n" + format_table(schedule, max_columns)


def _colour(v: float) -> tuple[int, int, int]:
    v = min(max(v, 0.0), 1.0)
    for (a, ca), (b, cb) in zip(_RAMP, _RAMP[1:], strict=False):
        if v <= b:
            t = (v - a) / (b - a)
            return tuple(round(x + (y - x) * t) for x, y in zip(ca, cb, strict=True))  # type: ignore[return-value]
    return _RAMP[-1][1]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _ticks(count: int, target: int = 10) -> list[int]:
    step = max(1, -(-count // target))
    for nice in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500):
        if nice >= step:
            step = nice
            break
    ticks = list(range(0, count, step))
    if count - 1 not in ticks and (count - 1 - ticks[-1]) >= step / 2:
        ticks.append(count - 1)
    return ticks


def heatmap(schedule: Schedule, path: str | os.PathLike | None = None) -> Image.Image:
    """Draw Q and K/V ratios as two layers x steps heat maps; save to ``path`` if given.

    Rows are attention sites (site 0, the shallowest, at the top), columns are steps
    (step 0, the noisiest, at the left); a colour bar maps ratio 0-1; a reused block's cells
    are orange, a predicted block's dark red.
    """
    L, S = schedule.num_layers, schedule.num_steps
    cw = max(3, min(60, 480 // S))
    ch = max(3, min(40, 480 // L))
    font, small = _font(15), _font(12)
    pad, left, top, gap, bar_w = 16, 52, 46, 36, 18
    pw, ph = cw * S, ch * L
    title = f"{schedule.name}: " if schedule.name else ""
    title = f"{title}{L} layers x {S} steps (fraction of video tokens removed)"
    legend = 60 if schedule.reuse is None else 96  # room for "predicted" beside the colour bar
    width = max(left + 2 * pw + gap + legend + bar_w + pad, round(font.getlength(title)) + 2 * pad)
    height = top + ph + 56
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 6), title, fill="black", font=font)
    for k, (comp, label) in enumerate((("q", "Q"), ("kv", "K/V"))):
        x0 = left + k * (pw + gap)
        table = getattr(schedule, comp)
        for s in range(S):
            for i in range(L):
                d.rectangle([x0 + s * cw, top + i * ch, x0 + (s + 1) * cw - 1,
                             top + (i + 1) * ch - 1],
                            fill=(REUSED if schedule.reuse[s][i] == 1 else PREDICTED) if _reused(schedule, s, i)
                            else _colour(table[s][i]),
                            # cell borders only where cells are big enough to need them
                            outline=(255, 255, 255) if min(cw, ch) >= 10 else None)
        d.rectangle([x0 - 1, top - 1, x0 + pw, top + ph], outline="black")
        d.text((x0 + pw // 2, top - 6), label, fill="black", font=font, anchor="mb")
        for s in _ticks(S):
            x = x0 + s * cw + cw // 2
            d.line([x, top + ph, x, top + ph + 3], fill="black")
            d.text((x, top + ph + 5), str(s), fill="black", font=small, anchor="mt")
        d.text((x0 + pw // 2, top + ph + 22), "step", fill="black", font=small, anchor="mt")
        if k == 0:
            for i in _ticks(L):
                y = top + i * ch + ch // 2
                d.line([x0 - 4, y, x0 - 1, y], fill="black")
                d.text((x0 - 6, y), str(i), fill="black", font=small, anchor="rm")
            d.text((x0 - 6, top - 6), "layer", fill="black", font=small, anchor="rb")
    # Colour bar.
    bx = left + 2 * pw + gap + 24
    for y in range(ph):
        d.line([bx, top + y, bx + bar_w, top + y], fill=_colour(y / max(1, ph - 1)))
    d.rectangle([bx - 1, top - 1, bx + bar_w, top + ph], outline="black")
    for v in (0.0, 0.5, 1.0):
        y = top + round(v * (ph - 1))
        d.text((bx + bar_w + 4, y), f"{v:g}", fill="black", font=small, anchor="lm")
    d.text((bx + bar_w // 2, top - 6), "ratio", fill="black", font=small, anchor="mb")
    if schedule.reuse is not None:
        for k, (fill, label) in enumerate(((REUSED, "reused"), (PREDICTED, "predicted"))):
            y = top + ph + 8 + 16 * k
            d.rectangle([bx, y, bx + bar_w, y + 12], fill=fill, outline="black")
            d.text((bx + bar_w + 4, y + 6), label, fill="black", font=small, anchor="lm")
    if path is not None:
        from ..files import atomic_path

        with atomic_path(path) as temporary:
            img.save(temporary)
    return img
