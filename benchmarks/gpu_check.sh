#!/usr/bin/env bash
# GPU check: the fused nearest_dst kernel's tests and the real-size speed benchmarks, on one
# CUDA GPU with no internet. Everything it measures lands as JSON and logs in $OUT.
#
# The GPU machine needs python3 with torch (CUDA build, which brings Triton) installed.
# Everything else comes from a wheel directory .whl/ in the repository root, prepared on a
# machine with internet (about 41 MB; .whl/ is git-ignored, so bring it along explicitly):
#
#   pip download -d .whl --only-binary=:all: --python-version 3.12 --implementation cp \
#       --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 \
#       diffusers==0.42.1 tabulate hypothesis pytest safetensors tqdm pillow numpy \
#       "setuptools>=69" wheel
#
# (adjust --python-version/--abi to the GPU machine's python). setuptools and wheel are there
# to build this project offline. Then, in the repository root on the GPU machine:
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# Stages, each under its own time limit so that one slow stage cannot eat the others (the
# whole script stays under about 8 minutes; the model benchmark gets what is left and writes
# partial JSON after every stage):
#   1. install (a venv over the system site-packages, so the system torch is used as it is)
#   2. tests/test_nearest.py (Triton kernel vs reference on CUDA in fp32/bf16/fp16, op,
#      compile, opcheck, the fallback) and the kernel's first-call health check per dtype
#   3. hunyuan-attn: SDPA at 119,056 tokens with K/V cut 0.5, matching amortised
#   4. cogvideox-2b: the CogVideoX-2B transformer (random weights), 4 settings, 10 steps

set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
TOTAL_S=${GPU_CHECK_SECONDS:-470}
START=$SECONDS

log() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$OUT/gpu_check.log"; }
FAILED=()
# stage NAME EXIT: log it, and remember a failure for the summary (the script fails at the end).
stage() { log "$1 exit $2"; [ "$2" -eq 0 ] || FAILED+=("$1 (exit $2)"); }
left() { echo $((TOTAL_S - (SECONDS - START))); }

# -- 1. install ---------------------------------------------------------------------------
VENV=${TMPDIR:-/tmp}/asymrnr-gpu-venv
DEPS=("diffusers==0.42.1" tabulate hypothesis pytest safetensors tqdm pillow numpy)
if [ ! -d .whl ]; then
    log "no .whl/ directory: see the header of this script for the pip download command"
    exit 2
fi
# A venv over the system site-packages sees the system torch (and the system pip, so no
# ensurepip is needed); requirements the system already satisfies are left alone.
# (When python3 is itself a venv, the new venv would not see its torch: then the fallback.)
if python3 -m venv --without-pip --system-site-packages "$VENV" >>"$OUT/install.log" 2>&1 \
    && "$VENV/bin/python" -m pip --version >>"$OUT/install.log" 2>&1 \
    && "$VENV/bin/python" -c "import torch" >>"$OUT/install.log" 2>&1; then
    PY=$VENV/bin/python
    timeout 150 "$PY" -m pip install -q --no-index --find-links .whl "${DEPS[@]}" \
        >>"$OUT/install.log" 2>&1 || { log "dependency install failed (see install.log)"; exit 3; }
    # Editable: the repository's asymrnr_fx, with passes/ mapped to asymrnr_fx.passes, is
    # the one imported from the repository root as well.
    timeout 120 "$PY" -m pip install -q --no-index --find-links .whl --no-deps -e . \
        >>"$OUT/install.log" 2>&1 || { log "project install failed (see install.log)"; exit 3; }
else
    # No venv: dependencies into a private directory first on PYTHONPATH, and the package
    # layout of pyproject.toml (passes/ is asymrnr_fx.passes) by a symlink in this copy.
    PY=python3
    SITE=${TMPDIR:-/tmp}/asymrnr-gpu-site
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    timeout 150 "$PY" -m pip install -q --no-index --find-links .whl --target "$SITE" "${DEPS[@]}" \
        >>"$OUT/install.log" 2>&1 || { log "dependency install failed (see install.log)"; exit 3; }
    [ -e asymrnr_fx/passes ] || ln -s ../passes asymrnr_fx/passes
fi
log "python: $PY"
"$PY" - >"$OUT/env.json" 2>>"$OUT/install.log" <<'EOF'
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
import diffusers, asymrnr_fx.passes  # noqa: F401 - the install works
info["diffusers"] = diffusers.__version__
print(json.dumps(info))
EOF
if [ ! -s "$OUT/env.json" ]; then
    log "torch / diffusers / asymrnr_fx do not import (see install.log)"
    exit 4
fi
log "environment: $(cat "$OUT/env.json")"

# -- 2. kernel tests ------------------------------------------------------------------------
timeout 120 "$PY" -m pytest -q -o addopts="" -p no:cacheprovider -rs tests/test_nearest.py \
    --junitxml="$OUT/test_nearest.xml" >"$OUT/test_nearest.log" 2>&1
stage "tests/test_nearest.py" $?
log "tests/test_nearest.py: $(tail -n 1 "$OUT/test_nearest.log")"
# What the op does on this GPU by default: the fused kernel, or the chunked fallback and why.
timeout 60 "$PY" - >"$OUT/kernel_health.json" 2>>"$OUT/kernel_health.log" <<'EOF'
import json, torch
from asymrnr_fx.kernels import nearest
out = {}
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    for metric in ("l2", "cosine"):
        src = torch.randn(2, 24, 4096, 128, device="cuda", dtype=dtype)
        dst = torch.randn(2, 24, 512, 128, device="cuda", dtype=dtype)
        nearest.nearest_dst(src, dst, metric)
        key = (str(src.device), dtype, metric)
        out[f"{dtype}/{metric}"] = {"triton": nearest.kernel_health.healthy.get(key),
                                    "reason": nearest.kernel_health.reasons.get(key)}
print(json.dumps(out))
EOF
stage "kernel health" $?
log "kernel health: $(cat "$OUT/kernel_health.json")"

# -- 3. attention at HunyuanVideo size ------------------------------------------------------
timeout 120 "$PY" -m benchmarks.speed --preset hunyuan-attn --out "$OUT/speed_hunyuan-attn.json" \
    >"$OUT/speed_hunyuan-attn.log" 2>&1
stage "hunyuan-attn" $?

# -- 4. CogVideoX-2B transformer ------------------------------------------------------------
BUDGET=$(($(left) - 20))
if [ "$BUDGET" -lt 120 ]; then
    log "only ${BUDGET}s left: cogvideox-2b skipped"
    FAILED+=("cogvideox-2b (no time left)")
else
    timeout "$BUDGET" "$PY" -m benchmarks.speed --preset cogvideox-2b --time-budget $((BUDGET - 30)) \
        --out "$OUT/speed_cogvideox-2b.json" >"$OUT/speed_cogvideox-2b.log" 2>&1
    stage "cogvideox-2b (budget ${BUDGET}s)" $?
fi
for result in env.json kernel_health.json test_nearest.xml speed_hunyuan-attn.json speed_cogvideox-2b.json; do
    [ -s "$OUT/$result" ] || FAILED+=("missing $result")
done
if [ ${#FAILED[@]} -gt 0 ]; then
    log "FAILED: ${FAILED[*]}; results so far in $OUT"
    exit 1
fi
log "done; results in $OUT"
