#!/usr/bin/env bash
# One-shot GPU check: the gpu-marked tests, then the benchmarks on CUDA; ~6-7 minutes on an H200.
#
#   bash experiments/gpu_check.sh              # on the CUDA machine (run from the repo root)
#   bash experiments/gpu_check.sh --cpu-smoke  # anywhere: same steps on CPU with tiny settings (< 3 min)
#                                              # (or GPU_CHECK_CPU_SMOKE=1)
#   GPU_CHECK_ONLY="gpu_tests bench_decode" bash experiments/gpu_check.sh   # a rerun of some steps
#
# Needs the pure-Python wheels in .whl/ (sqlite-utils and its small deps, pytest-timeout); they are
# installed into /tmp/site, and synclearn is used from this source tree (PYTHONPATH), nothing else
# is installed. Every step has its own `timeout` and the whole run a deadline (GPU_CHECK_BUDGET_S,
# default 420 s), so one failure or hang does not stop the rest. Outputs, in $OUT (default
# experiments/out/gpu_check): gpu_check.log (everything), gpu_tests.xml (JUnit), bench_decode.json,
# bench_serve_learn.json, scale_1b.json, bench_memory.json, results.tar.gz (all of it plus per-step logs).
set -uo pipefail

SMOKE="${GPU_CHECK_CPU_SMOKE:-0}"
[[ "${1:-}" == "--cpu-smoke" ]] && SMOKE=1
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT="$PWD"
OUT="${OUT:-$ROOT/experiments/out/gpu_check}"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"   # JSON and per-step logs; tarred into $OUT at the end
LOG="$OUT/gpu_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
BUDGET="${GPU_CHECK_BUDGET_S:-420}"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
SECONDS=0
declare -a SUMMARY=()

stamp() { echo; echo "=== [$(date +%H:%M:%S) +${SECONDS}s] $*"; }

# step NAME LIMIT_S CMD...: runs CMD under timeout (capped by what is left of the budget), logs rc
step() {
    local name="$1" limit="$2"; shift 2
    if [[ -n "${GPU_CHECK_ONLY:-}" && " $GPU_CHECK_ONLY warmup " != *" $name "* ]]; then
        SUMMARY+=("$name: not selected (GPU_CHECK_ONLY)"); return 0
    fi
    local left=$((BUDGET - SECONDS))
    if ((left < 20)); then
        stamp "SKIP $name (budget of ${BUDGET}s spent)"; SUMMARY+=("$name: skipped (budget)"); return 0
    fi
    ((limit > left)) && limit=$left
    stamp "$name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    local rc=${PIPESTATUS[0]}
    local what="rc=$rc"
    ((rc == 124 || rc == 137)) && what="TIMEOUT after ${limit}s (rc=$rc)"
    SUMMARY+=("$name: $what, $((SECONDS - t0))s")
    stamp "$name done: $what"
    return 0
}

# -- Python and the wheels -------------------------------------------------------------------------
if ((SMOKE)); then
    PY="${GPU_CHECK_PYTHON:-$ROOT/.venv/bin/python}"     # this machine's python3 has no torch
    [[ -x "$PY" ]] || PY=python3
    DEV=cpu
else
    PY="${GPU_CHECK_PYTHON:-python3}"
    DEV=cuda
fi
stamp "install wheels into $SITE"
rm -rf "$SITE" && mkdir -p "$SITE"
if ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$ROOT"/.whl/*.whl; then
        echo "pip install failed; unpacking the (pure-Python) wheels instead"
        python3 - "$SITE" "$ROOT"/.whl/*.whl <<'EOF'
import sys, zipfile
for whl in sys.argv[2:]:
    zipfile.ZipFile(whl).extractall(sys.argv[1])
EOF
    fi
    ls "$SITE"
else
    echo "no wheels in .whl/ (fine where the packages are installed already)"
fi
export PYTHONPATH="$SITE:$ROOT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export SYNCLEARN_CACHE="$WORK/cache"

stamp "environment"
nvidia-smi 2>&1 || echo "(no nvidia-smi)"
"$PY" - "$WORK/env.json" <<'EOF'
import importlib, json, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device=p.name, capability=list(torch.cuda.get_device_capability(0)), memory_gib=p.total_memory / 2**30)
for name in ("transformers", "peft", "lightning", "sqlite_utils", "pytest_timeout", "numpy"):
    try:
        m = importlib.import_module(name)
        info[name] = f"{getattr(m, '__version__', '?')} from {m.__file__}"
    except Exception as err:  # reported; the steps below show what it breaks
        info[name] = f"NOT importable: {err!r}"
import synclearn.chat, synclearn.learn, synclearn.memory, synclearn.model  # noqa: E401,F401
info["synclearn"] = synclearn.__file__
for k, v in info.items():
    print(f"{k}: {v}")
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF
[[ $? -eq 0 ]] || echo "!!! environment/import check failed (see above)"

# CUDA warm-up (context creation, cuBLAS handles) so the first timed step is not the one paying for it
step warmup 60 "$PY" -c "import torch; d='$DEV'; x=torch.randn(1024, 1024, device=d); y=(x @ x).sum().item(); print('warm-up ok on', d)"

# -- 1. the gpu tests --------------------------------------------------------------------------------
TEST_ENV=()
((SMOKE)) && TEST_ENV=(env SYNCLEARN_GPU_TEST_DEVICE=cpu)
if ((SMOKE)); then
    # a representative subset on CPU (the full file takes ~2 min on 2 cores)
    step gpu_tests 100 "${TEST_ENV[@]}" "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider --timeout=90 \
        -rfEs --durations=10 --junitxml="$WORK/gpu_tests.xml" \
        -k "model_on_device_matches_cpu or learner_step_on_device_matches_cpu or half_written or only_the_selected"
else
    step gpu_tests 150 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider --timeout=120 \
        -rfEs --durations=15 --junitxml="$WORK/gpu_tests.xml"
fi

# -- 2. decode/training: MCSD vs a same-size Llama (fp32 mcsd-small, then mcsd-1b vs Llama-1B in bf16) --
if ((SMOKE)); then
    step bench_decode 60 "$PY" experiments/bench_decode.py --device cpu --model mcsd-tiny --contexts 32 64 \
        --batches 1 --new-tokens 4 --repeats 1 --train-seq 64 --train-steps 1 --threads 2 --big-model none \
        --out "$WORK/bench_decode.json"
else
    step bench_decode 110 "$PY" experiments/bench_decode.py --device cuda --model mcsd-small --contexts 256 2048 \
        --batches 1 8 --new-tokens 32 --repeats 3 --train-seq 2048 --train-steps 2 --big-model mcsd-1b \
        --out "$WORK/bench_decode.json"
fi

# -- 3. serving latency with the learner detached vs attached (own CUDA stream) -----------------------
if ((SMOKE)); then
    step bench_serve_learn 45 "$PY" experiments/bench_serve_learn.py --device cpu --model mcsd-tiny --loads 0.5 \
        --seconds 2 --new-tokens 8 --out "$WORK/bench_serve_learn.json"
else
    step bench_serve_learn 80 "$PY" experiments/bench_serve_learn.py --device cuda --model mcsd-small --loads 0.25 0.5 \
        --seconds 10 --new-tokens 32 --out "$WORK/bench_serve_learn.json"
fi

# -- 4. the 1B sparse learner in bf16: peak GPU memory inference vs learning, steps/s ------------------
if ((SMOKE)); then
    step scale_1b 40 "$PY" experiments/scale_1b.py --device cpu --model mcsd-tiny --dtype bfloat16 --steps 1 --batch 2 \
        --out "$WORK/scale_1b.json"
else
    step scale_1b 100 "$PY" experiments/scale_1b.py --device cuda --model mcsd-1b --dtype bfloat16 --steps 3 --batch 4 \
        --out "$WORK/scale_1b.json"
fi

# -- 5. (if time is left) training memory per update family on the device ------------------------------
if ((SMOKE)); then
    step bench_memory 40 "$PY" experiments/bench_memory.py --device cpu --model mcsd-tiny --steps 1 --batch 2 \
        --out "$WORK/bench_memory.json"
else
    step bench_memory 60 "$PY" experiments/bench_memory.py --device cuda --model mcsd-small --steps 3 --batch 8 \
        --out "$WORK/bench_memory.json"
fi

# -- collect -------------------------------------------------------------------------------------------
stamp "summary (${SECONDS}s of ${BUDGET}s)"
printf '  %s\n' "${SUMMARY[@]}"
[[ -f "$WORK/gpu_tests.xml" ]] && grep -o '<testsuite [^>]*>' "$WORK/gpu_tests.xml" | head -1
for f in gpu_tests.xml bench_decode.json bench_serve_learn.json scale_1b.json bench_memory.json; do
    [[ -f "$WORK/$f" ]] && cp "$WORK/$f" "$OUT/$f"
done
rm -rf "$WORK/cache"
cp "$LOG" "$WORK/gpu_check.log" 2>/dev/null
tar -czf "$OUT/results.tar.gz" -C "$WORK" . && echo "wrote $OUT/results.tar.gz"
ls -la "$OUT"
exit 0
