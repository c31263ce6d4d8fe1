"""Where the ratios come from: the one place that turns settings into per-site ratios.

It owns, in order of use:

* **schedule sources**: a preset name, a schedule JSON file or a :class:`Schedule` object,
  loaded and validated when the config is built (a typo fails at ``backend(...)``, not after
  a model load and a compile), together with the matching settings the source carries
  (a preset's stride and cache interval; a calibrated file's stride, cache interval, metric
  and seed);
* **effective settings**: explicit config fields win over the source's, which win over the
  built-in defaults;
* **whole-model resolution**: a preset is written in relative depth, so it is laid out only
  once the model's attention-site count per forward is known (regional compilation and
  graph breaks split the sites over several graphs);
* **the step-count fallback**: the generation's told step count, else ``num_steps`` from the
  config, else the schedule's own;
* **attention-FLOP accounting** shared by calibration, the demo and the benchmarks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..defaults import DEFAULT_CACHE_INTERVAL, DEFAULT_METRIC, DEFAULT_SEED, DEFAULT_STRIDE
from ..ops import kept_count
from . import presets
from .schedule import Schedule

__all__ = [
    "DEFAULT_SETTINGS",
    "ScheduleSource",
    "load_schedule_source",
    "effective_settings",
    "RatioResolver",
    "attention_flops_cut",
    "per_step_ratios",
    "describe",
]

# Matching settings when neither the config nor the schedule gives them (CogVideoX's
# reference values: the paper's most used setting).
DEFAULT_SETTINGS: Mapping[str, Any] = {
    "stride": DEFAULT_STRIDE,
    "cache_interval": DEFAULT_CACHE_INTERVAL,
    "metric": DEFAULT_METRIC,
    "seed": DEFAULT_SEED,
}
SCHEDULE_SETTINGS = tuple(DEFAULT_SETTINGS)

Ratios = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ScheduleSource:
    """A loaded schedule spec: a fixed :class:`Schedule`, or a preset laid out on demand."""

    label: str
    schedule: Schedule | None  # None for a preset (relative: needs the site count)
    preset: presets.Preset | None
    settings: Mapping[str, Any]

    @property
    def num_layers(self) -> int | None:
        """Sites the schedule is written for (None: a preset fits any count)."""
        return None if self.schedule is None else self.schedule.num_layers

    def for_model(self, num_layers: int, num_steps: int | None = None) -> Schedule:
        """The schedule for a model with ``num_layers`` attention sites per forward."""
        if self.preset is not None:
            return presets.get_preset(self.preset.name, num_layers, num_steps)
        assert self.schedule is not None
        if self.schedule.num_layers != num_layers:
            raise ValueError(
                f"{self.label} has num_layers={self.schedule.num_layers} but the model runs "
                f"{num_layers} attention sites per forward: calibrate or build the schedule "
                "for this model"
            )
        return self.schedule


def _settings_from_meta(meta: Mapping[str, Any], label: str) -> dict[str, Any]:
    """The matching settings a schedule's ``meta`` carries, each checked: a wrong type or an
    unknown metric is a ValueError naming the key (nothing is rounded or ignored)."""
    settings: dict[str, Any] = {}

    def fail(key: str, expected: str) -> ValueError:
        return ValueError(f"{label}: meta[{key!r}]={meta[key]!r} is invalid: {expected} (fix the "
                          "schedule's meta, or override the setting in the config)")

    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if "stride" in meta:
        stride = meta["stride"]
        if isinstance(stride, (str, bytes)) or not isinstance(stride, Sequence) or len(stride) != 3 \
                or not all(positive_int(s) for s in stride):
            raise fail("stride", "three positive ints [t, h, w]")
        settings["stride"] = tuple(stride)
    if "cache_interval" in meta:
        if not positive_int(meta["cache_interval"]):
            raise fail("cache_interval", "a positive int")
        settings["cache_interval"] = meta["cache_interval"]
    if "metric" in meta:
        if meta["metric"] not in ("l2", "cosine"):
            raise fail("metric", "'l2' or 'cosine'")
        settings["metric"] = meta["metric"]
    if "seed" in meta:
        if isinstance(meta["seed"], bool) or not isinstance(meta["seed"], int):
            raise fail("seed", "an int")
        settings["seed"] = meta["seed"]
    return settings


def load_schedule_source(spec: Schedule | str | os.PathLike) -> ScheduleSource:
    """Load a schedule spec: a :class:`Schedule`, a preset name or a JSON file path.

    Every problem is a ``ValueError`` that names the spec and the fix.
    """
    if isinstance(spec, Schedule):
        label = f"schedule {spec.name!r}" if spec.name else "the schedule"
        return ScheduleSource(label, spec, None, _settings_from_meta(spec.meta, label))
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if isinstance(spec, str) and text in presets.PRESETS:
            preset = presets.PRESETS[text]
            settings = {"stride": preset.stride, "cache_interval": preset.cache_interval,
                        "metric": preset.metric}
            return ScheduleSource(f"preset {text!r}", None, preset, settings)
        if not os.path.exists(text):
            raise ValueError(
                f"schedule={text!r} is neither a preset ({', '.join(presets.PRESETS)}) nor an "
                "existing schedule JSON file"
            )
        schedule = Schedule.load(text)
        label = f"schedule file {text!r}"
        return ScheduleSource(label, schedule, None, _settings_from_meta(schedule.meta, label))
    raise ValueError(f"schedule={spec!r} is invalid: give a Schedule, a preset name or a JSON path")


def effective_settings(explicit: Mapping[str, Any], source: ScheduleSource | None) -> dict[str, Any]:
    """Matching settings: explicit fields, else the schedule source's, else the defaults."""
    from_source = dict(source.settings) if source is not None else {}
    return {name: explicit[name] if explicit.get(name) is not None
            else from_source.get(name, DEFAULT_SETTINGS[name])
            for name in SCHEDULE_SETTINGS}


class RatioResolver:
    """Per-site ``(q, kv)`` ratios of one application, resolved for the whole model.

    ``ratios(step, num_steps, indices)`` gives the ratios of the attention sites with these
    indices (a site's index is its place in the model: see
    :meth:`asymrnr_fx.state.AsymRnRState.site_indices`). It returns
    None while a preset still waits for the model's site count (the caller then runs those
    sites unreduced). The count becomes known through :meth:`set_sites_per_forward` (from the
    graph that carries the noise level when it holds the sites, else at the end of the first
    forward), which also checks fixed-length schedules against it.
    """

    def __init__(self, config: Any) -> None:  # AsymRnRConfig (imported lazily: no circle)
        self.config = config
        self.source: ScheduleSource | None = config.schedule_source
        self.sites_per_forward: int | None = None
        self._schedule: Schedule | None = None
        self._num_layers = (len(config.layer_ratios) if config.layer_ratios is not None
                            else self.source.num_layers if self.source is not None else None)
        if self.source is not None and self.source.schedule is not None:
            self._schedule = self.source.schedule

    @property
    def uniform(self) -> bool:
        """True when every site gets the same ratios (no site count is needed)."""
        return self.source is None and self.config.layer_ratios is None

    def components(self, num_sites: int | None = None) -> list[tuple[str, ...]] | tuple[str, ...]:
        """The components (``"q"``, ``"kv"``) some site reduces at some step: what a rewritten
        graph must hold, whatever the step (a component at ratio 0 there keeps every token).

        With ``num_sites`` equal to the model's site count (a graph that holds every site),
        a list with each site's own components where the ratios say so; otherwise the union.
        """
        config = self.config
        if self.uniform:
            per_site = [(config.q_ratio, config.kv_ratio)]
        elif config.layer_ratios is not None:
            per_site = list(config.layer_ratios)
        else:
            schedule = self.source.schedule or self._schedule or self.source.preset.native()
            per_site = [(max(row[i] for row in schedule.q), max(row[i] for row in schedule.kv))
                        for i in range(schedule.num_layers)]

        def names(pairs: list[tuple[float, float]]) -> tuple[str, ...]:
            return tuple(name for name, i in (("q", 0), ("kv", 1)) if any(p[i] > 0 for p in pairs))

        if num_sites is not None and self._num_layers == num_sites:
            return [names([pair]) for pair in per_site]
        return names(per_site)

    def _layer_label(self) -> str:
        if self.config.layer_ratios is not None:
            return f"layer_ratios has {len(self.config.layer_ratios)} entries"
        assert self.source is not None
        return f"{self.source.label} has num_layers={self._num_layers}"

    @property
    def awaits_site_count(self) -> bool:
        """True while a preset waits for the model's site count to be laid out."""
        return self._schedule is None and self.source is not None and self.source.preset is not None

    def set_sites_per_forward(self, count: int) -> None:
        """The model runs ``count`` attention sites per forward (learned or told)."""
        if self.sites_per_forward == count:
            return
        if self._num_layers is not None and count != self._num_layers:
            raise ValueError(
                f"{self._layer_label()} but the model runs {count} attention sites per "
                "forward: build the schedule (or layer_ratios) for this model, e.g. with "
                "`asymrnr calibrate`, or use a preset (presets fit any site count)"
            )
        self.sites_per_forward = count
        if self.source is not None and self.source.preset is not None:
            self._schedule = self.source.for_model(count, self.config.num_steps)

    def schedule_steps(self) -> int | None:
        return self._schedule.num_steps if self._schedule is not None else None

    def ratios(self, step: int, num_steps: int | None, indices: Sequence[int]) -> Ratios | None:
        """Ratios of the sites with these indices at ``step`` (None: not known yet).

        An index past the model's site count (a site that first ran after the count was
        learned: a block the first forward skipped) is run unreduced, said once at WARNING
        by the caller; a fixed-length schedule refuses it.
        """
        config = self.config
        if self.uniform:
            return ((config.q_ratio, config.kv_ratio),) * len(indices)
        if self._num_layers is not None and indices and max(indices) >= self._num_layers:
            raise ValueError(
                f"{self._layer_label()} but the model runs more attention sites per forward "
                f"(at least {max(indices) + 1}): build the schedule for this model"
            )
        if config.layer_ratios is not None:
            return tuple(config.layer_ratios[i] for i in indices)
        if self._schedule is None:
            return None
        steps = num_steps or config.num_steps or self._schedule.num_steps
        per_layer = self._schedule.ratios_at(min(step, steps - 1), steps)
        return tuple(per_layer[i] if i < len(per_layer) else (0.0, 0.0) for i in indices)


# --------------------------------------------------------------- attention accounting
def attention_flops_cut(
    per_step: Sequence[Ratios],
    *,
    num_video: int,
    num_dst: int,
    text_tokens: int = 0,
    symmetric: bool = False,
) -> float:
    """Share of the video self-attention FLOPs removed by these ratios.

    ``per_step`` holds, for every denoising step, the ``(q, kv)`` ratio of every site.
    Attention cost per site and step is ``(text + kept_q) * (text + kept_kv)`` (the
    ``QK^T`` and ``PV`` products; matching and gathers are not counted); ``symmetric``
    cuts Q and K/V by the larger of the two ratios, as the backend plans it.
    """
    full = spent = 0
    for ratios in per_step:
        for q, kv in ratios:
            if symmetric:
                q = kv = max(q, kv)
            spent += (text_tokens + kept_count(num_video, q, num_dst)) * (
                text_tokens + kept_count(num_video, kv, num_dst))
            full += (text_tokens + num_video) ** 2
    return 1.0 - spent / full if full else 0.0


def per_step_ratios(config: Any, num_layers: int, num_steps: int) -> list[Ratios]:
    """The ``(q, kv)`` ratios of every site at every step of a generation under ``config``."""
    resolver = RatioResolver(config)
    resolver.set_sites_per_forward(num_layers)
    out = []
    for step in range(num_steps):
        ratios = resolver.ratios(step, num_steps, range(num_layers))
        assert ratios is not None
        out.append(ratios)
    return out


def describe(config: Any) -> str:
    """The ratios and matching settings of ``config`` in one phrase, for logs."""
    source = config.schedule_source
    if config.layer_ratios is not None:
        what = f"layer_ratios for {len(config.layer_ratios)} sites"
    elif source is not None:
        what = source.label + (f" ({source.preset.source})" if source.preset is not None else "")
        if source.schedule is not None and source.schedule.reuse is not None:
            what += f", reusing {source.schedule.reused_share():.0%} of block steps"
    else:
        what = f"Q {config.q_ratio:g} and K/V {config.kv_ratio:g} at every site"
    return f"{what}; stride {tuple(config.stride)}, matching every {config.cache_interval} step(s)"
