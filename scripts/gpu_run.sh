#!/usr/bin/env bash
# One call on the lent GPU machine: the training-step benchmark, then training; results packed in $OUT.
#
# From the repository root there, with .whl (soundfile + cffi + pycparser wheels for its Python),
# .before (an earlier package, for the benchmark's baseline) and the corpus carried along:
#   BENCH="press-s" MODELS="press-s press-m" MAX_MINUTES=5.5 bash scripts/gpu_run.sh
# Environment: BENCH (configs to benchmark, may be empty), BENCH_BATCH (default 16), BENCH_VARIANTS (forms of
# the step, bench_train_step.py --variants; default partials), BENCH_ARGS (more benchmark options), MODELS,
# MAX_MINUTES, INIT_DIR, CORPUS: as scripts/gpu_train.sh. Writes $OUT/bench.tar.gz (JSON, profiler
# tables, log), $OUT/train.tar.gz (checkpoints, logs) and $OUT/compile-cache.tar.gz (torch.compile's artefacts,
# to put in INIT_DIR next time), so that few files come back.
set -uo pipefail
OUT=${OUT:-/tmp/out}
BENCH=${BENCH:-}
BENCH_BATCH=${BENCH_BATCH:-16}
mkdir -p "$OUT/bench" "$OUT/train"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/bench/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' | tee -a "$OUT/bench/gpu.txt"

export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor}
for cfg in $BENCH; do
  timeout 300 python3 benchmarks/bench_train_step.py --before .before --config "$cfg" --batch "$BENCH_BATCH" \
    --steps 50 --variants "${BENCH_VARIANTS:-partials}" ${BENCH_ARGS:-} --profile "$OUT/bench" \
    --json "$OUT/bench/bench-$cfg.json" 2>&1 | tee -a "$OUT/bench/bench.log"
done
# the Triton sources of the costliest kernels, to read without device time
[ -n "$BENCH" ] && python3 benchmarks/inductor_sources.py "$OUT/bench" "$TORCHINDUCTOR_CACHE_DIR" "$OUT/bench/kernels"
tar -czf "$OUT/bench.tar.gz" -C "$OUT" bench && rm -rf "$OUT/bench"

if [ -n "${MODELS:-}" ]; then
  OUT="$OUT/train" MODELS="$MODELS" bash scripts/gpu_train.sh
  RC=$?
  # at most 16 MB per returned file: the optimiser states (<name>.opt.pt, 2x a checkpoint) stay behind
  tar -czf "$OUT/train.tar.gz" -C "$OUT" --exclude='*.opt.pt' --exclude='*.compile.bin' train
  # the compile artefacts apart: over 16 MB they stay behind, and the checkpoints still come back
  (cd "$OUT/train" && ls *.compile.bin >/dev/null 2>&1 && tar -czf "$OUT/compile-cache.tar.gz" *.compile.bin)
  rm -rf "$OUT/train"
  ls -la "$OUT"
  exit "$RC"
fi
