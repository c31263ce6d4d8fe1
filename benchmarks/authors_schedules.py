"""Derive the authors' calibrated AsymRnR schedules from their repository, as data shipped here.

    python -m benchmarks.authors_schedules PATH [--commit SHA]

``PATH`` is a checkout of github.com/wenhao728/AsymRnR (MIT licence, per its README); the
default commit recorded is the one the shipped data came from. Its ``schedulers/
euclidean_<model>_cache<k>.safetensors`` hold int64 redundancy tiers ``[block][step]`` per
feature (q and v are used; h and k are not), its ``configs/<model>_cache<k>_0.yaml`` ("base") and
``_1.yaml`` ("fast") the rules ``tier >= threshold -> ratio`` (the largest ratio whose threshold
the tier meets). Written: ``asymrnr_fx/schedules/data/authors.json``, the tiers and rules as
they are (no ratio is computed here: :mod:`asymrnr_fx.schedules.authors` builds the schedules
with ``Schedule.from_tiers``, and a test checks every cell against an independent reading of
the rule).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from .readme import ROOT

OUT = ROOT / "asymrnr_fx" / "schedules" / "data" / "authors.json"
COMMIT = "9bd706094ef29553c9ad8c8959f6c0faa58bf1a0"
# Their model names -> ours, and the partition stride their code uses for each architecture.
MODELS = {"cogvideox-2b": ("cogvideox-2b", (2, 2, 2)), "cogvideox-5b": ("cogvideox-5b", (2, 2, 2)),
          "hyvideo": ("hunyuanvideo", (6, 2, 2)), "mochi": ("mochi", (6, 2, 2)),
          "fast-hyvideo": ("fastvideo-hunyuan", (6, 2, 2))}
FEATURES = ("q", "v")  # the features their configs cut (K and V share the matching on V)


def _rules(path: Path) -> dict[str, dict[str, float]]:
    """The uncommented ``feature: {tier: ratio}`` rules of one of their YAML configs."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    return {feature: {str(tier): float(ratio) for tier, ratio in rules.items()} for feature, rules in data.items()}


def derive(repo: Path, commit: str) -> dict[str, Any]:
    from safetensors import safe_open

    models: dict[str, Any] = {}
    for file in sorted((repo / "schedulers").glob("euclidean_*_cache*.safetensors")):
        match = re.fullmatch(r"euclidean_(.+)_cache(\d+)", file.stem)
        assert match, file
        theirs, cache_interval = match.group(1), int(match.group(2))
        ours, stride = MODELS[theirs]
        with safe_open(str(file), framework="pt") as tensors:
            tiers = {feature: tensors.get_tensor(feature).tolist() for feature in FEATURES}
        configs = {variant: _rules(config) for variant, suffix in (("base", "0"), ("fast", "1"))
                   if (config := repo / "configs" / f"{theirs}_cache{cache_interval}_{suffix}.yaml").exists()}
        models[ours] = {"source": f"schedulers/{file.name}", "tiers": tiers, "rules": configs,
                        "cache_interval": cache_interval, "stride": list(stride), "metric": "l2",
                        "blocks": len(tiers["q"]), "steps": len(tiers["q"][0])}
    return {"source": "https://github.com/wenhao728/AsymRnR", "commit": commit,
            "license": "MIT (as the repository's README states); tiers and rules copied unchanged",
            "models": models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo", type=Path, help="a checkout of github.com/wenhao728/AsymRnR")
    parser.add_argument("--commit", default=COMMIT, help="the commit of that checkout")
    args = parser.parse_args(argv)
    data = derive(args.repo, args.commit)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    for name, model in data["models"].items():
        print(f"{name}: {model['blocks']} blocks x {model['steps']} steps, variants {sorted(model['rules'])}")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
