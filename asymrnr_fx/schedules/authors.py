"""The AsymRnR authors' calibrated schedules, at their native layer and step counts.

The paper's reference implementation (github.com/wenhao728/AsymRnR, MIT) ships, per model, a
redundancy tier per (block, step) for Q and for V, and two rule sets: "base" and "fast"
(``tier >= threshold -> ratio``, the largest ratio whose threshold the tier meets). They are
shipped here unchanged (``data/authors.json``, written by ``python -m
benchmarks.authors_schedules``, with the commit they came from) and turned into schedules by
:meth:`Schedule.from_tiers`::

    schedule = authors_schedule("cogvideox-2b")            # 30 sites x 50 steps, the base rules
    pipe.transformer = torch.compile(pipe.transformer, backend=asymrnr_fx.backend(schedule=schedule))

Each schedule carries the authors' stride, cache interval and metric in ``meta``, so a backend
built on it matches as they do. Their sites are the transformer's blocks in order (HunyuanVideo:
20 dual-stream then 40 single-stream blocks), one attention call each, as this package counts
them. The authors ship no rules for CogVideoX-5B: its tiers are read with CogVideoX-2B's rules.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from .schedule import Schedule

__all__ = ["AUTHORS_MODELS", "VARIANTS", "authors_data", "authors_schedule"]

VARIANTS = ("base", "fast")
AUTHORS_MODELS = ("cogvideox-2b", "cogvideox-5b", "hunyuanvideo", "mochi", "fastvideo-hunyuan")
RULES_FROM = {"cogvideox-5b": "cogvideox-2b"}  # models the authors ship tiers but no rules for


@cache
def authors_data() -> dict[str, Any]:
    """The shipped tiers and rules (``data/authors.json``)."""
    text = resources.files(__package__).joinpath("data/authors.json").read_text(encoding="utf-8")
    return json.loads(text)


def authors_schedule(model: str, variant: str = "base") -> Schedule:
    """The authors' schedule for ``model`` (one of :data:`AUTHORS_MODELS`), ``variant``
    ``"base"`` or ``"fast"``, at its native size."""
    data = authors_data()
    if model not in data["models"]:
        raise ValueError(f"model={model!r} has no authors' schedule: choose one of {sorted(data['models'])}")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is invalid: choose one of {VARIANTS}")
    entry = data["models"][model]
    rules_model = RULES_FROM.get(model, model)
    rules = data["models"][rules_model]["rules"][variant]
    meta = {"stride": entry["stride"], "cache_interval": entry["cache_interval"], "metric": entry["metric"],
            "source": f"{data['source']} @ {data['commit'][:12]}: {entry['source']}",
            "rules": f"{rules_model} {variant}", "license": data["license"]}
    return Schedule.from_tiers(entry["tiers"], rules, name=f"{model} ({variant}, authors)", meta=meta)
