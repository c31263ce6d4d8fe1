"""Reduction schedules: a ratio per (attention site, denoising step, component).

A :class:`Schedule` holds two tables, ``q`` and ``kv``, each ``[step][layer]`` of floats in
``[0, 1)``: the fraction of *video* tokens removed from Q (resp. K and V) at that attention
site and step. "Layer" is the index of the attention site: the order in which the sites of the
transformer first run in a forward (one per self-attention call, so a dual-stream block counts
once per SDPA call); a site keeps its index when a step cache skips other blocks.

A schedule may also carry *block reuse* decisions (``reuse``, ``[step][block]`` of 0, 1 or 2): at
a step marked 1 the transformer block is not run and adds the residual (output minus input) of
its last computed step of the generation instead; at a step marked 2 it adds that residual
extrapolated linearly from its last two computed steps (first order, as TaylorSeer predicts);
0 computes (:mod:`asymrnr_fx.block_reuse`, run by :func:`asymrnr_fx.apply`). Calibration chooses
them with the token cuts (:mod:`asymrnr_fx.schedules.joint`).

Schedules are immutable and hashable (usable as keys), and they round-trip through JSON::

    {
      "schema_version": 2,           # 1 when there is no "reuse" (what older versions read)
      "num_layers": 30, "num_steps": 50,
      "q":  [[0.0, ...], ...],      # num_steps rows of num_layers ratios
      "kv": [[0.0, ...], ...],
      "reuse": [[0, 1, 2, ...], ...],  # optional: num_steps rows of one 0/1/2 per block
      "name": "optional label", "meta": {"optional": "JSON object"}
    }

Files of ``schema_version`` 1 (no ``reuse``) load unchanged.

Step mapping: a generation with ``N`` steps may use a schedule written for ``S`` steps.
Generation step ``s`` (``0 <= s < N``) reads schedule step ``floor(s * S / N)``: the
relative position in the denoising trajectory is kept. Equal counts map one to one; the
mapping is monotone and always lands inside the schedule (never a silent truncation).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "COMPONENTS",
    "Schedule",
    "map_step",
]

SCHEMA_VERSION = 2
"""The newest format this version reads and writes (1, without ``reuse``, still loads)."""
COMPONENTS = ("q", "kv")

Ratios = tuple[tuple[float, float], ...]
"""Per layer ``(q, kv)`` ratios at one step."""

Bound = int | float | None


def _fail(msg: str) -> ValueError:
    return ValueError(msg)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(f"{name}={value!r} is invalid: a positive int is required")
    return value


def check_ratio(where: str, value: Any) -> float:
    """``value`` as a float in [0, 1), else a ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(f"{where}={value!r} is not a number: a ratio is a float in [0, 1)")
    value = float(value)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise _fail(f"{where}={value!r} is out of range [0, 1)")
    return value


def _table(comp: str, rows: Any, num_layers: int, num_steps: int) -> tuple[tuple[float, ...], ...]:
    """Validate one component table and freeze it as nested tuples of floats."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise _fail(f"{comp} must be a list of {num_steps} rows of {num_layers} ratios, got {rows!r}")
    rows = list(rows)
    if len(rows) != num_steps:
        raise _fail(
            f"{comp} has {len(rows)} rows but num_steps={num_steps}: give one row per step"
        )
    out = []
    for s, row in enumerate(rows):
        if isinstance(row, (str, bytes)) or not isinstance(row, Iterable):
            raise _fail(f"{comp}[{s}] must be a list of {num_layers} ratios, got {row!r}")
        row = list(row)
        if len(row) != num_layers:
            raise _fail(
                f"{comp}[{s}] has {len(row)} ratios but num_layers={num_layers}: "
                "give one ratio per attention site"
            )
        out.append(tuple(check_ratio(f"{comp}[{s}][{i}]", v) for i, v in enumerate(row)))
    return tuple(out)


COMPUTE, REUSE, PREDICT = 0, 1, 2
"""Block reuse cells: run the block; add its last residual; add the residual extrapolated from
its last two computed steps."""


def _reuse_table(rows: Any, num_steps: int) -> tuple[tuple[int, ...], ...] | None:
    """Validate the block-reuse table (None: no reuse) and freeze it as tuples of 0/1/2."""
    if rows is None:
        return None
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise _fail(f"reuse must be a list of {num_steps} rows of 0/1/2 per block, got {rows!r}")
    rows = [list(row) if isinstance(row, Iterable) and not isinstance(row, (str, bytes)) else row
            for row in rows]
    if len(rows) != num_steps:
        raise _fail(f"reuse has {len(rows)} rows but num_steps={num_steps}: give one row per step")
    if any(not isinstance(row, list) for row in rows) or not rows[0] or len({len(r) for r in rows}) != 1:
        raise _fail("reuse must hold rows of equal length, one 0/1/2 per transformer block")
    out = []
    for s, row in enumerate(rows):
        for b, v in enumerate(row):
            if v not in (COMPUTE, REUSE, PREDICT) or isinstance(v, (float, bool)):
                raise _fail(f"reuse[{s}][{b}]={v!r} is invalid: 0 (compute), 1 (reuse the block's last residual) "
                            "or 2 (extrapolate it from the last two computed steps)")
        out.append(tuple(int(v) for v in row))
    if any(out[0]):
        raise _fail("reuse[0] marks a block reused at the first step, where nothing is cached yet: "
                    "set every reuse[0][b] to 0")
    return tuple(out)


def map_step(step: int, num_steps: int, schedule_steps: int) -> int:
    """Schedule step read at generation ``step`` of ``num_steps``: ``floor(step*S/N)``.

    Raises ``ValueError`` when ``step`` is outside ``[0, num_steps)``.
    """
    _check_count("num_steps", num_steps)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise _fail(f"step={step!r} is invalid: a non-negative int is required")
    if step >= num_steps:
        raise _fail(
            f"step={step} is out of range for a generation of num_steps={num_steps}: "
            "pass the generation's real step count as num_steps"
        )
    return step * schedule_steps // num_steps


@dataclass(frozen=True)
class Schedule:
    """Ratios per (step, layer, component), and optionally block reuse per (step, block); see
    the module docstring for the format.

    Equality and hashing use ``num_layers``, ``num_steps``, ``q``, ``kv`` and ``reuse``;
    ``name`` and ``meta`` are labels.
    """

    num_layers: int
    num_steps: int
    q: tuple[tuple[float, ...], ...]
    kv: tuple[tuple[float, ...], ...]
    name: str | None = field(default=None, compare=False)
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    reuse: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        _check_count("num_layers", self.num_layers)
        _check_count("num_steps", self.num_steps)
        object.__setattr__(self, "q", _table("q", self.q, self.num_layers, self.num_steps))
        object.__setattr__(self, "kv", _table("kv", self.kv, self.num_layers, self.num_steps))
        object.__setattr__(self, "reuse", _reuse_table(self.reuse, self.num_steps))
        if self.name is not None and not isinstance(self.name, str):
            raise _fail(f"name={self.name!r} is invalid: a string or None")
        if not isinstance(self.meta, Mapping):
            raise _fail(f"meta={self.meta!r} is invalid: a JSON object (mapping) is required")
        try:
            # A deep, JSON-clean copy: the schedule stays immutable and always saves.
            meta = json.loads(json.dumps(dict(self.meta)))
        except (TypeError, ValueError) as exc:
            raise _fail(f"meta is not JSON-serializable: {exc}") from None
        object.__setattr__(self, "meta", MappingProxyType(meta))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def uniform(
        cls, num_layers: int, num_steps: int, q: float = 0.0, kv: float = 0.0, *,
        name: str | None = None,
    ) -> Schedule:
        """The same ``(q, kv)`` at every layer and step."""
        _check_count("num_layers", num_layers)
        _check_count("num_steps", num_steps)
        q = check_ratio("q", q)
        kv = check_ratio("kv", kv)
        return cls(
            num_layers, num_steps,
            [[q] * num_layers] * num_steps, [[kv] * num_layers] * num_steps, name=name,
        )

    @classmethod
    def from_ranges(
        cls, num_layers: int, num_steps: int, rules: Sequence[Mapping[str, Any]], *,
        name: str | None = None, meta: Mapping[str, Any] | None = None,
    ) -> Schedule:
        """Build from rectangular rules over (layer, step); later rules win.

        Each rule is a mapping with optional keys:

        - ``"layers"``: ``[start, stop)`` (a pair), a single index, or ``None`` (all);
        - ``"steps"``: likewise over steps;
        - ``"q"`` / ``"kv"``: the ratio to set there (a component left out is not touched).

        A bound that is an ``int`` is an absolute index (``0 <= i <= count``); a ``float``
        in ``[0, 1]`` is a relative position, converted to index ``ceil(p * count)``, so
        ``{"steps": [0.0, 0.2]}`` is the first 20 % of steps at any step count and
        ``[0.5, 1.0]`` the second half. ``None`` as a bound means the start or end.
        Note the type matters: ``1`` is index 1, ``1.0`` is the end. Everything not
        covered by a rule is 0.

        Example: K/V 0.3 in the deeper 2/3 of layers after the first 20 % of steps, Q 0.5
        in the last third of layers over the last half::

            Schedule.from_ranges(30, 50, [
                {"layers": [1/3, 1.0], "steps": [0.2, 1.0], "kv": 0.3},
                {"layers": [2/3, 1.0], "steps": [0.5, 1.0], "q": 0.5},
            ])
        """
        _check_count("num_layers", num_layers)
        _check_count("num_steps", num_steps)
        q = [[0.0] * num_layers for _ in range(num_steps)]
        kv = [[0.0] * num_layers for _ in range(num_steps)]
        tables = {"q": q, "kv": kv}
        if isinstance(rules, Mapping) or isinstance(rules, (str, bytes)):
            raise _fail("rules must be a list of rule mappings")
        for r, rule in enumerate(rules):
            if not isinstance(rule, Mapping):
                raise _fail(f"rules[{r}]={rule!r} is invalid: a mapping is required")
            unknown = sorted(set(rule) - {"layers", "steps", "q", "kv"})
            if unknown:
                raise _fail(
                    f"rules[{r}] has unknown key(s) {unknown}: use 'layers', 'steps', "
                    "'q' and 'kv' (components are 'q' and 'kv')"
                )
            layers = _range(f"rules[{r}].layers", rule.get("layers"), num_layers)
            steps = _range(f"rules[{r}].steps", rule.get("steps"), num_steps)
            for comp in COMPONENTS:
                if comp in rule:
                    value = check_ratio(f"rules[{r}].{comp}", rule[comp])
                    for s in steps:
                        for i in layers:
                            tables[comp][s][i] = value
        return cls(num_layers, num_steps, q, kv, name=name, meta=meta or {})

    @classmethod
    def from_tiers(
        cls,
        tiers: Sequence[Sequence[float]] | Mapping[str, Sequence[Sequence[float]]],
        thresholds: Mapping[str, Any],
        *, name: str | None = None, meta: Mapping[str, Any] | None = None,
    ) -> Schedule:
        """Build from redundancy tiers and per-component thresholds: the paper's form.

        ``tiers`` is a table ``[block][step]`` of numbers (int tiers or float scores), in the
        reference implementation's orientation (its ``schedule[feature][block, step]``),
        shared by both components, or a mapping with one table per component (``"q"``, and
        ``"kv"`` or the reference's ``"v"``; same shape).

        ``thresholds`` maps a component to rules "tier >= min_tier -> ratio": the reference's
        YAML form ``{min_tier: ratio, ...}`` (e.g. ``{"q": {6: 0.4, 7: 0.8}, "v": {8: 0.3}}``;
        JSON string keys are read as numbers), or a list of ``(min_tier, ratio)`` pairs or
        ``{"min_tier": t, "ratio": r}`` mappings. As in the reference, a cell gets the largest
        ratio among the rules its tier satisfies, 0 if none; a component left out stays 0::

            Schedule.from_tiers(tiers, {"kv": [(2, 0.3)], "q": [(3, 0.5), (4, 0.8)]})
        """
        if isinstance(tiers, Mapping):
            tiers = {_component(c, "tiers"): table for c, table in tiers.items()}
            missing = [c for c in COMPONENTS if c not in tiers]
            if missing:
                raise _fail(f"tiers is missing component(s) {missing}: give both 'q' and 'kv' tables")
            tables = {c: _tier_table(f"tiers[{c!r}]", tiers[c]) for c in COMPONENTS}
        else:
            shared = _tier_table("tiers", tiers)
            tables = {c: shared for c in COMPONENTS}
        num_layers, num_steps = len(tables["q"]), len(tables["q"][0])
        for c in COMPONENTS:
            if len(tables[c]) != num_layers or len(tables[c][0]) != num_steps:
                raise _fail(
                    f"tiers[{c!r}] has shape {len(tables[c])}x{len(tables[c][0])} but "
                    f"tiers['q'] has {num_layers}x{num_steps}: both tables need the same shape"
                )
        if not isinstance(thresholds, Mapping):
            raise _fail("thresholds must be a mapping {'q': ..., 'kv': ...}")
        rules = {_component(c, "thresholds"): r for c, r in thresholds.items()}
        out = {}
        for c in COMPONENTS:
            comp_rules = _threshold_rules(c, rules.get(c, ()))
            out[c] = [[_tier_ratio(tables[c][layer][step], comp_rules) for layer in range(num_layers)]
                      for step in range(num_steps)]
        return cls(num_layers, num_steps, out["q"], out["kv"], name=name, meta=meta or {})

    @classmethod
    def preset(cls, name: str, num_layers: int | None = None, num_steps: int | None = None) -> Schedule:
        """The built-in preset ``name`` (see :mod:`asymrnr_fx.schedules.presets`) as a schedule:
        at its native size, or mapped to ``num_layers`` sites and ``num_steps`` steps
        (:meth:`mapped`). Its matching settings (stride, cache interval, metric) and its source
        are in ``meta``."""
        from .presets import get_preset  # presets build on this module

        return get_preset(name, num_layers, num_steps)

    def mapped(self, num_layers: int | None = None, num_steps: int | None = None) -> Schedule:
        """This schedule laid out on ``num_layers`` sites and ``num_steps`` steps by relative
        position: site ``i`` of ``L`` reads layer ``floor(i * num_layers_here / L)``, step ``s``
        reads :func:`map_step` (the same rule a generation with another step count uses).
        Equal counts give the schedule itself."""
        layers = self.num_layers if num_layers is None else _check_count("num_layers", num_layers)
        steps = self.num_steps if num_steps is None else _check_count("num_steps", num_steps)
        if (layers, steps) == (self.num_layers, self.num_steps):
            return self
        rows = [map_step(s, steps, self.num_steps) for s in range(steps)]
        cols = [i * self.num_layers // layers for i in range(layers)]
        q = [[self.q[r][c] for c in cols] for r in rows]
        kv = [[self.kv[r][c] for c in cols] for r in rows]
        meta = {**self.meta, "mapped_from": [self.num_layers, self.num_steps]}
        reuse = None if self.reuse is None else [self.reuse[r] if s else [COMPUTE] * self.num_blocks
                                                 for s, r in enumerate(rows)]
        return Schedule(layers, steps, q, kv, name=self.name, meta=meta, reuse=reuse)

    # ---------------------------------------------------------------------- queries
    def step_index(self, step: int, num_steps: int | None = None) -> int:
        """The schedule step read at generation ``step`` (see :func:`map_step`)."""
        return map_step(step, self.num_steps if num_steps is None else num_steps, self.num_steps)

    def ratios_at(self, step: int, num_steps: int | None = None) -> Ratios:
        """Per layer ``(q, kv)`` at generation ``step`` of a ``num_steps``-step generation.

        ``num_steps`` defaults to the schedule's own step count. Other counts map by
        relative position: schedule step ``floor(step * self.num_steps / num_steps)``.
        """
        s = self.step_index(step, num_steps)
        return tuple(zip(self.q[s], self.kv[s], strict=True))

    @property
    def num_blocks(self) -> int:
        """Transformer blocks the reuse table addresses (0 without one)."""
        return 0 if self.reuse is None else len(self.reuse[0])

    def reuse_at(self, step: int, num_steps: int | None = None) -> tuple[int, ...]:
        """Per block, its reuse cell at generation ``step`` (0 compute, 1 reuse, 2 predict;
        mapped as :meth:`ratios_at`; the first step computes); ``()`` without a reuse table."""
        if self.reuse is None:
            return ()
        return self.reuse[self.step_index(step, num_steps)] if step else (COMPUTE,) * self.num_blocks

    def reused_share(self) -> float:
        """Share of (step, block) cells that do not run the block (0.0 without a reuse table)."""
        if self.reuse is None:
            return 0.0
        return sum(v != COMPUTE for row in self.reuse for v in row) / (self.num_steps * self.num_blocks)

    def distinct_phases(self) -> tuple[Ratios, ...]:
        """The distinct per-step ratio vectors (*phases*), in order of first use.

        Every phase runs through the same compiled rewrite of a graph (the kept counts are
        input sizes, not constants), so this counts the ratio patterns a generation walks
        through, not compiles.
        """
        seen: dict[Ratios, None] = {}
        for s in range(self.num_steps):
            seen.setdefault(tuple(zip(self.q[s], self.kv[s], strict=True)), None)
        return tuple(seen)

    @property
    def is_identity(self) -> bool:
        """True when every ratio is 0 and no block is reused (nothing is saved anywhere)."""
        return (all(v == 0.0 for table in (self.q, self.kv) for row in table for v in row)
                and not self.reused_share())

    def coverage(self) -> dict[str, dict[str, float]]:
        """Per component: share of (layer, step) cells reduced, mean and max ratio."""
        out = {}
        cells = self.num_layers * self.num_steps
        for c in COMPONENTS:
            values = [v for row in getattr(self, c) for v in row]
            nz = [v for v in values if v > 0]
            out[c] = {
                "reduced_share": len(nz) / cells,
                "mean_ratio": sum(values) / cells,
                "mean_ratio_where_reduced": (sum(nz) / len(nz)) if nz else 0.0,
                "max_ratio": max(values),
            }
        return out

    # ------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``schema_version`` 2 with a reuse table, else 1 (which older
        versions of this package read too)."""
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION if self.reuse is not None else 1,
            "num_layers": self.num_layers,
            "num_steps": self.num_steps,
            "q": [list(row) for row in self.q],
            "kv": [list(row) for row in self.kv],
        }
        if self.reuse is not None:
            d["reuse"] = [[int(v) for v in row] for row in self.reuse]
        if self.name is not None:
            d["name"] = self.name
        if self.meta:
            d["meta"] = json.loads(json.dumps(dict(self.meta)))
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Inverse of :meth:`to_dict`; every problem is a ``ValueError`` naming the entry."""
        if not isinstance(data, Mapping):
            raise _fail(f"a schedule must be a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if "schema_version" not in data:
            raise _fail(f"missing key 'schema_version' (expected {SCHEMA_VERSION})")
        if isinstance(version, bool) or version not in (1, SCHEMA_VERSION):
            raise _fail(
                f"schema_version={version!r} is not supported: this version reads 1 and {SCHEMA_VERSION}"
            )
        required = ("num_layers", "num_steps", "q", "kv")
        allowed = {"schema_version", "name", "meta", *required} | ({"reuse"} if version >= 2 else set())
        unknown = sorted(set(data) - allowed)
        if "reuse" in unknown:
            raise _fail("key 'reuse' needs schema_version 2 (this file says 1): set \"schema_version\": 2")
        if unknown:
            raise _fail(
                f"unknown key(s) {unknown} in schedule: components are 'q' and 'kv'; "
                f"allowed keys are {sorted(allowed)}"
            )
        for key in required:
            if key not in data:
                raise _fail(f"missing key {key!r} in schedule")
        return cls(
            data["num_layers"], data["num_steps"], data["q"], data["kv"],
            name=data.get("name"), meta=data.get("meta") or {}, reuse=data.get("reuse"),
        )

    def to_json(self) -> str:
        """The schedule as a JSON string (one row per line for readable diffs)."""
        d = self.to_dict()
        lines = ["{"]
        items = list(d.items())
        for k, (key, value) in enumerate(items):
            comma = "," if k < len(items) - 1 else ""
            if key in (*COMPONENTS, "reuse"):
                rows = ",\n".join("    " + json.dumps(row) for row in value)
                lines.append(f'  "{key}": [\n{rows}\n  ]{comma}')
            else:
                lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        """Parse a JSON string written by :meth:`to_json` (or any equivalent JSON)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the schedule as JSON to ``path`` (whole, or not at all)."""
        from ..files import write_text_atomic

        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Schedule:
        """Read a schedule JSON file; any problem is a ``ValueError`` naming the file."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise _fail(f"cannot read schedule file {os.fspath(path)!r}: {exc.strerror or exc}") from None
        try:
            return cls.from_json(text)
        except ValueError as exc:
            raise _fail(f"invalid schedule file {os.fspath(path)!r}: {exc}") from None


# -------------------------------------------------------------------------- helpers
def _bound(where: str, value: Bound, count: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool):
        raise _fail(f"{where}={value!r} is invalid: an int index or a float position in [0, 1]")
    if isinstance(value, int):
        if not 0 <= value <= count:
            raise _fail(f"{where}={value} is out of range [0, {count}]")
        return value
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise _fail(f"{where}={value!r} is out of range: a relative position is in [0, 1]")
        # Round first so that e.g. 0.3 * 10 = 3.0000000000000004 stays index 3.
        return min(count, math.ceil(round(value * count, 9)))
    raise _fail(f"{where}={value!r} is invalid: an int index or a float position in [0, 1]")


def _range(where: str, spec: Any, count: int) -> range:
    if spec is None:
        return range(count)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if isinstance(spec, float):
            raise _fail(f"{where}={spec!r} is invalid: a single bound must be an int index")
        if not 0 <= spec < count:
            raise _fail(f"{where}={spec} is out of range [0, {count})")
        return range(spec, spec + 1)
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        start = _bound(f"{where}[0]", spec[0], count, 0)
        stop = _bound(f"{where}[1]", spec[1], count, count)
        if stop < start:
            raise _fail(f"{where}={list(spec)!r} is empty: start is after stop")
        return range(start, stop)
    raise _fail(f"{where}={spec!r} is invalid: give [start, stop), an int index, or None")


def _tier_table(where: str, table: Any) -> list[list[float]]:
    if isinstance(table, (str, bytes)) or not isinstance(table, Iterable):
        raise _fail(f"{where} must be a table [block][step] of numbers")
    rows = [list(r) if isinstance(r, Iterable) and not isinstance(r, (str, bytes)) else None
            for r in table]
    if not rows:
        raise _fail(f"{where} is empty: give at least one block row")
    for s, row in enumerate(rows):
        if row is None:
            raise _fail(f"{where}[{s}] must be a list of numbers (one per step)")
        if len(row) != len(rows[0]) or not row:
            raise _fail(
                f"{where}[{s}] has {len(row)} entries but {where}[0] has {len(rows[0])}: "
                "every block row needs one tier per step"
            )
        for i, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise _fail(f"{where}[{s}][{i}]={v!r} is not a number")
    return rows


def _threshold_rules(comp: str, rules: Any) -> list[tuple[float, float]]:
    if isinstance(rules, Mapping):
        # The reference's YAML form {min_tier: ratio}; JSON keys arrive as strings.
        pairs = []
        for t, r in rules.items():
            try:
                t = float(t)
            except (TypeError, ValueError):
                raise _fail(f"thresholds[{comp!r}] key {t!r} is not a number (a min_tier)") from None
            pairs.append((t, r))
        rules = pairs
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Iterable):
        raise _fail(f"thresholds[{comp!r}] must be a list of (min_tier, ratio) rules")
    out = []
    for k, rule in enumerate(rules):
        where = f"thresholds[{comp!r}][{k}]"
        if isinstance(rule, Mapping):
            if set(rule) != {"min_tier", "ratio"}:
                raise _fail(f"{where}={dict(rule)!r} is invalid: use keys 'min_tier' and 'ratio'")
            t, r = rule["min_tier"], rule["ratio"]
        elif isinstance(rule, (list, tuple)) and len(rule) == 2:
            t, r = rule
        else:
            raise _fail(f"{where}={rule!r} is invalid: a pair (min_tier, ratio)")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t):
            raise _fail(f"{where}.min_tier={t!r} is not a number")
        out.append((float(t), check_ratio(f"{where}.ratio", r)))
    return out


def _tier_ratio(tier: float, rules: list[tuple[float, float]]) -> float:
    """The largest ratio among the rules whose ``min_tier`` the tier reaches (the reference's)."""
    return max((r for t, r in rules if tier >= t), default=0.0)


def _component(name: Any, where: str) -> str:
    """``"q"`` or ``"kv"`` (the reference calls K/V ``"v"``)."""
    if name == "v":
        return "kv"
    if name not in COMPONENTS:
        raise _fail(f"{where} has unknown component {name!r}: components are 'q' and 'kv' (or 'v')")
    return name
