"""Schedule data model: construction, step mapping, JSON round trip, validation errors."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asymrnr_fx.schedules.presets import PRESETS, get_preset
from asymrnr_fx.schedules.ratios import load_schedule_source
from asymrnr_fx.schedules.schedule import Schedule, map_step

ratio = st.floats(min_value=0.0, max_value=0.99, allow_nan=False).map(lambda x: round(x, 3))


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    layers = draw(st.integers(1, 6))
    steps = draw(st.integers(1, 8))
    table = st.lists(st.lists(ratio, min_size=layers, max_size=layers),
                     min_size=steps, max_size=steps)
    return Schedule(layers, steps, draw(table), draw(table),
                    name=draw(st.none() | st.text(max_size=8)),
                    meta=draw(st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)))


@settings(max_examples=60, deadline=None)
@given(schedules())
def test_json_round_trip(sched: Schedule) -> None:
    back = Schedule.from_dict(json.loads(json.dumps(sched.to_dict())))
    assert back == sched and hash(back) == hash(sched)
    assert back.name == sched.name and dict(back.meta) == dict(sched.meta)
    assert Schedule.from_json(sched.to_json()) == sched


def test_save_load(tmp_path) -> None:
    sched = get_preset("cogvideox-2b", 30, 50)
    path = tmp_path / "s.json"
    sched.save(path)
    assert Schedule.load(path) == sched
    assert json.loads(path.read_text())["schema_version"] == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 80), st.integers(1, 80))
def test_relative_mapping(sched_steps: int, gen_steps: int) -> None:
    idx = [map_step(s, gen_steps, sched_steps) for s in range(gen_steps)]
    assert idx[0] == 0
    assert all(0 <= i < sched_steps for i in idx)  # never outside the schedule
    assert all(a <= b for a, b in zip(idx, idx[1:], strict=False))  # monotone
    if gen_steps >= sched_steps:  # every schedule step is used
        assert set(idx) == set(range(sched_steps))
    if gen_steps == sched_steps:
        assert idx == list(range(gen_steps))


def test_ratios_at_and_phases() -> None:
    sched = Schedule(2, 4, [[0, 0], [0, 0.5], [0, 0.5], [0.2, 0.5]],
                     [[0, 0], [0.3, 0.3], [0.3, 0.3], [0.3, 0.3]])
    assert sched.ratios_at(0) == ((0.0, 0.0), (0.0, 0.0))
    assert sched.ratios_at(3) == ((0.2, 0.3), (0.5, 0.3))
    # 8 generation steps over a 4-step schedule: each schedule step twice.
    assert [sched.step_index(s, 8) for s in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sched.ratios_at(7, 8) == sched.ratios_at(3)
    phases = sched.distinct_phases()
    assert len(phases) == 3 and phases[0] == sched.ratios_at(0)
    with pytest.raises(ValueError, match="num_steps=4"):
        sched.ratios_at(4)
    with pytest.raises(ValueError, match="num_steps=8"):
        sched.ratios_at(8, 8)
    with pytest.raises(ValueError, match="step=-1"):
        sched.ratios_at(-1)


def test_uniform() -> None:
    sched = Schedule.uniform(3, 5, q=0.25, kv=0.5)
    assert all(r == (0.25, 0.5) for s in range(5) for r in sched.ratios_at(s))
    assert len(sched.distinct_phases()) == 1
    assert Schedule.uniform(3, 5).is_identity
    assert hash(sched) == hash(Schedule.uniform(3, 5, q=0.25, kv=0.5))


def test_from_ranges() -> None:
    sched = Schedule.from_ranges(10, 10, [
        {"layers": [0.5, 1.0], "steps": [0.2, None], "kv": 0.3},
        {"layers": [8, 10], "steps": 9, "q": 0.5, "kv": 0.4},  # later rule wins
    ])
    assert sched.kv[1][9] == 0.0 and sched.kv[2][5] == 0.3 and sched.kv[2][4] == 0.0
    assert sched.kv[9][8] == 0.4 and sched.q[9][8] == 0.5 and sched.q[8][8] == 0.0
    # 0.3 * 10 is 3.0000000000000004 in floating point: still index 3.
    s2 = Schedule.from_ranges(1, 10, [{"steps": [0.3, 1.0], "kv": 0.1}])
    assert [row[0] for row in s2.kv] == [0.0] * 3 + [0.1] * 7


def test_from_tiers_reads_the_reference_orientation_and_rules() -> None:
    # Three blocks x five steps (non-square): tiers[block][step], as the reference indexes
    # its redundancy schedule (schedule[feature][block, step]).
    tiers = [[0, 2, 3, 6, 8],
             [4, 5, 9, 7, 6],
             [1, 1, 8, 8, 2]]
    sched = Schedule.from_tiers(tiers, {"kv": [(2, 0.3)], "q": [(3, 0.5), {"min_tier": 5, "ratio": 0.8}]})
    assert (sched.num_layers, sched.num_steps) == (3, 5)
    assert sched.kv[0] == (0.0, 0.3, 0.0)  # step 0: block 0 tier 0, block 1 tier 4, block 2 tier 1
    assert [row[1] for row in sched.kv] == [0.3] * 5  # block 1 reaches tier 2 at every step
    assert [row[0] for row in sched.q] == [0.0, 0.0, 0.5, 0.8, 0.8]
    # The reference's YAML (configs/cogvideox-2b_cache5_0.yaml): q {6: 0.4, 7: 0.8}, v {8: 0.3}.
    ref = Schedule.from_tiers(tiers, {"q": {"6": 0.4, "7": 0.8}, "v": {8: 0.3}})
    assert [row[0] for row in ref.q] == [0.0, 0.0, 0.0, 0.4, 0.8]
    assert [row[2] for row in ref.kv] == [0.0, 0.0, 0.3, 0.3, 0.0]
    # The largest ratio whose threshold the tier reaches, as in the reference.
    assert Schedule.from_tiers([[9]], {"q": {1: 0.6, 5: 0.4}}).q == ((0.6,),)
    # Per-component tables.
    s2 = Schedule.from_tiers({"q": tiers, "kv": [[9] * 5, [0] * 5, [0] * 5]}, {"kv": {"8": 0.3}})
    assert s2.kv == ((0.3, 0.0, 0.0),) * 5 and s2.q == ((0.0,) * 3,) * 5


BAD_DICTS = [
    ({"schema_version": 3}, "schema_version=3"),
    ({"schema_version": None}, "schema_version"),
    ({"num_layers": None}, "missing key 'num_layers'"),
    ({"q": None}, "missing key 'q'"),
    ({"k": [[0.0, 0.0]]}, "unknown key"),
    ({"num_steps": 0}, "num_steps=0"),
    ({"num_steps": -2}, "num_steps=-2"),
    ({"num_layers": 3}, r"q\[0\] has 2 ratios but num_layers=3"),
    ({"kv": [[0.0, 0.0], [0.0]]}, r"kv\[1\] has 1 ratios"),
    ({"kv": [[0.0, 0.0]]}, "kv has 1 rows but num_steps=2"),
    ({"kv": [[0.0, 0.0], [0.0, 1.2]]}, r"kv\[1\]\[1\]=1.2 is out of range \[0, 1\)"),
    ({"q": [[-0.1, 0.0], [0.0, 0.0]]}, r"q\[0\]\[0\]=-0.1 is out of range"),
    ({"q": [["x", 0.0], [0.0, 0.0]]}, r"q\[0\]\[0\]='x' is not a number"),
    ({"q": [[float("nan"), 0.0], [0.0, 0.0]]}, r"q\[0\]\[0\]=nan is out of range"),
    ({"meta": [1]}, "meta"),
]


@pytest.mark.parametrize("patch,msg", BAD_DICTS)
def test_bad_dict(patch: dict, msg: str) -> None:
    good = Schedule.uniform(2, 2, kv=0.3).to_dict()
    data = {**good, **patch}
    for k, v in patch.items():
        if v is None and k != "schema_version":
            del data[k]
    with pytest.raises(ValueError, match=msg):
        Schedule.from_dict(data)


@pytest.mark.parametrize("rule,msg", [
    ({"layers": [0, 9]}, r"rules\[0\].layers\[1\]=9 is out of range"),
    ({"steps": [0.5, 1.5]}, r"rules\[0\].steps\[1\]=1.5"),
    ({"layers": [3, 1]}, "start is after stop"),
    ({"k": 0.3}, "unknown key"),
    ({"kv": 1.0}, r"rules\[0\].kv=1.0 is out of range"),
])
def test_bad_ranges(rule: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        Schedule.from_ranges(4, 4, [rule])


@pytest.mark.parametrize("tiers,thresholds,msg", [
    ([[0, 1], [1]], {"kv": [(1, 0.3)]}, r"tiers\[1\] has 1 entries"),
    ([[0, 1]], {"k": [(1, 0.3)]}, "unknown component"),
    ({"q": [[0]], "k": [[0]]}, {}, "unknown component"),
    ([[0, 1]], {"kv": [(1, 1.3)]}, r"thresholds\['kv'\]\[0\].ratio=1.3"),
    ([[0, "a"]], {}, r"tiers\[0\]\[1\]='a' is not a number"),
])
def test_bad_tiers(tiers, thresholds, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        Schedule.from_tiers(tiers, thresholds)


def test_immutable() -> None:
    sched = Schedule.uniform(2, 2, kv=0.3, name="x")
    with pytest.raises(AttributeError):
        sched.num_layers = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        sched.meta["a"] = 1  # type: ignore[index]
    assert isinstance(sched.q, tuple) and isinstance(sched.q[0], tuple)


def test_resolve(tmp_path) -> None:
    def resolve(spec, layers, steps):  # noqa: ANN001, ANN202
        return load_schedule_source(spec).for_model(layers, steps)

    sched = Schedule.uniform(4, 3, kv=0.3)
    assert resolve(sched, 4, None) is sched
    with pytest.raises(ValueError, match="num_layers=4 but the model runs 5"):
        resolve(sched, 5, None)
    assert resolve("mochi", 6, 10) == get_preset("mochi", 6, 10)
    assert resolve("mochi", 6, None).num_steps == PRESETS["mochi"].num_steps
    path = tmp_path / "s.json"
    sched.save(path)
    assert resolve(str(path), 4, 7) == sched
    assert resolve(path, 4, None) == sched
    with pytest.raises(ValueError, match="has num_layers=4 but the model runs 2"):
        resolve(path, 2, None)
    with pytest.raises(ValueError, match="neither a preset"):
        resolve(str(tmp_path / "missing.json"), 4, None)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        resolve(bad, 4, None)
    with pytest.raises(ValueError, match="invalid"):
        resolve(3, 4, None)  # type: ignore[arg-type]


PRIORS = [name for name, p in PRESETS.items() if p.kind == "prior"]


@pytest.mark.parametrize("name", PRIORS)
@pytest.mark.parametrize("layers,steps", [(30, 50), (42, 50), (60, 50), (48, 64), (2, 4)])
def test_prior_presets(name: str, layers: int, steps: int) -> None:
    sched = get_preset(name, layers, steps)
    assert (sched.num_layers, sched.num_steps) == (layers, steps)
    cov = sched.coverage()
    if layers >= 28:  # the documented coverage of the priors at real model sizes
        assert 0.28 <= cov["kv"]["reduced_share"] <= 0.40
        assert 0.15 <= cov["q"]["reduced_share"] <= 0.25
        assert cov["q"]["max_ratio"] >= 0.4 and cov["kv"]["max_ratio"] == 0.3
    # shallow layers and early steps are never cut more than deep / late ones
    assert all(v == 0.0 for v in sched.q[0]) and all(v == 0.0 for v in sched.kv[0])
    assert all(row[0] == 0.0 for row in sched.q) and all(row[0] == 0.0 for row in sched.kv)
    # Q always cut in fewer cells than K/V (Q is the sensitive side).
    assert cov["q"]["reduced_share"] <= cov["kv"]["reduced_share"]
    assert sched.meta["kind"] == "prior" and "not calibrated" in sched.meta["source"]


@pytest.mark.parametrize("name", [name for name in PRESETS if name not in PRIORS])
@pytest.mark.parametrize("layers,steps", [(None, None), (4, 20), (42, 50), (7, 3)])
def test_every_authors_preset_maps_by_relative_position(name: str, layers: int | None, steps: int | None) -> None:
    native = Schedule.preset(name)
    assert (native.num_layers, native.num_steps) == (PRESETS[name].num_layers, PRESETS[name].num_steps)
    mapped = Schedule.preset(name, num_layers=layers, num_steps=steps)
    L, S = layers or native.num_layers, steps or native.num_steps
    assert (mapped.num_layers, mapped.num_steps) == (L, S)
    for s in range(S):
        for i in range(L):
            src_s, src_i = s * native.num_steps // S, i * native.num_layers // L
            assert mapped.q[s][i] == native.q[src_s][src_i]
            assert mapped.kv[s][i] == native.kv[src_s][src_i]
    for key in ("stride", "cache_interval", "metric", "source", "kind"):
        assert mapped.meta[key] == native.meta[key]


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="cogvideox-2b.*ltx-video"):
        get_preset("sora", 4, 4)
