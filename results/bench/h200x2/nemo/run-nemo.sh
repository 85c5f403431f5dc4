#!/usr/bin/env bash
# NeMo engine vs mcore engine step time (issue 16 item 5), on the GPU machine, from the harness repo root, after
# copying /work/wheels-nemo/ (the *.whl files and stubs/) to .whl-nemo/ in the repo:
#
#   bash .whl-nemo/run-nemo.sh                      # cosmos-4b, seq 12,800, TP=1 then TP=2, nemo then mcore
#   TPS=2 ENGINES=nemo STEPS=5 bash .whl-nemo/run-nemo.sh
#
# Installs the wheels into $SITE (--no-index --no-deps: nemo_toolkit 2.7.3 + megatron-core 0.15.3 + the pure-python
# packages NeMo imports; torch, lightning, transformers and their dependencies come from the machine), adds the
# stand-ins of stubs/ for packages NeMo imports at module level but the harness engine never calls (only where
# the real package is not installed), then runs `harness.bench.train --engine nemo|mcore` per TP size. Each run
# prints "[engine TP=n] ... ms/step ... MFU"; JSON and logs go to $OUT.
# Without a GPU (the CPU check of this script) the defaults become the tiny preset at 64 tokens, and the NeMo
# runs go through tests/nemo_cpu_compat.py (the tests-only CUDA->CPU layer) under torchrun with gloo.
set -uo pipefail

WHEELS=${WHEELS:-.whl-nemo}
SITE=${SITE:-/tmp/site-nemo}
PY=${PY:-python}
TPS=${TPS:-"1 2"}
ENGINES=${ENGINES:-"nemo mcore"}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
OUT=${OUT:-results/bench/nemo-vs-mcore}

[ -f harness/bench/train.py ] || { echo "run-nemo.sh: run from the harness repo root" >&2; exit 2; }
ls "$WHEELS"/nemo_toolkit-2.7.3-*.whl >/dev/null 2>&1 || { echo "run-nemo.sh: $WHEELS/nemo_toolkit-2.7.3-*.whl missing" >&2; exit 2; }

rm -rf "$SITE" && mkdir -p "$SITE"
"$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl || exit 1
# A stand-in only where the machine has no real package of that name (PYTHONPATH precedes site-packages).
for stub in "$WHEELS"/stubs/*/; do
  name=$(basename "$stub")
  if ! PYTHONPATH="$SITE" "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$name') is None)" 2>/dev/null; then
    cp -r "$stub" "$SITE/$name"
  fi
done
export PYTHONPATH="$SITE:$PWD"
export PYTHONWARNINGS=ignore

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$GPUS" -gt 0 ]; then
  PRESET=${PRESET:-cosmos-4b}; SEQ=${SEQ:-12800}
else
  PRESET=${PRESET:-tiny}; SEQ=${SEQ:-64}
fi
"$PY" -c "import nemo, megatron.core, torch, lightning; from harness.stages.finetune import nemo as e
print('nemo', nemo.__version__, '| megatron-core', megatron.core.__version__, '| torch', torch.__version__,
      '| lightning', lightning.__version__, '| NeMo engine importable:', e.available())" || exit 1
mkdir -p "$OUT"

summary=()
for tp in $TPS; do
  if [ "$GPUS" -gt 0 ] && [ "$tp" -gt "$GPUS" ]; then
    summary+=("[TP=$tp] skipped: $GPUS GPU(s) here"); continue
  fi
  for engine in $ENGINES; do
    args=(--engine "$engine" --preset "$PRESET" --seq "$SEQ" --tp "$tp" --steps "$STEPS" --warmup "$WARMUP" --out "$OUT")
    log="$OUT/log-$engine-tp$tp.txt"
    echo "=== $engine TP=$tp: ${args[*]} (log $log)"
    start=$(date +%s)
    if [ "$GPUS" -eq 0 ] && [ "$engine" = nemo ]; then
      "$PY" -m torch.distributed.run --standalone --nproc-per-node "$tp" tests/nemo_cpu_compat.py --bench "${args[@]}" >"$log" 2>&1
    else
      "$PY" -m harness.bench.train "${args[@]}" >"$log" 2>&1
    fi
    rc=$?
    line=$(grep -h "ms/step" "$log" | tail -1)
    summary+=("${line:-[$engine TP=$tp] FAILED rc=$rc (see $log)} ($(( $(date +%s) - start )) s wall)")
    echo "${summary[-1]}"
    [ $rc -eq 0 ] || tail -20 "$log"
  done
done
echo "=== summary ($PRESET, seq $SEQ, $STEPS timed steps after $WARMUP warm-up; JSON in $OUT)"
printf '%s\n' "${summary[@]}"
