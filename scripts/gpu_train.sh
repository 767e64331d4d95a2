#!/usr/bin/env bash
# Train reference models concurrently on one GPU, each stopped by wall clock.
#
# Run from the repository root on the lent GPU machine, with .corpus carried along:
#   OUT=$OUT bash scripts/gpu_train.sh
# Environment: MODELS (config names, default "press-s slimdemucs-s"), INIT_DIR (a folder holding
# <name>.pt checkpoints to continue, train.init, with their step counts and, from <name>.opt.pt
# beside them, the optimiser's state; <name>.compile.bin, an earlier call's compile artefacts), OUT (output folder,
# default /tmp/out), MAX_MINUTES (per model, default 8.5),
# DEVICE (default cuda if available, else cpu), THREADS (torch threads per process, default 4),
# CORPUS (corpus root, default .corpus; a missing one means synthetic sources).
# Writes to $OUT: <name>.pt and <name>.log.json per model, and train.log.
# EXTRA_ARGS: more arguments for every trainer, e.g. "--set train.batch_size=2"; EXTRA_ARGS_<name>
# (dashes as underscores, e.g. EXTRA_ARGS_slimdemucs_s) for one of them.
# CPU smoke test (small batches and validation set so that it fits in half a minute):
#   MAX_MINUTES=0.5 OUT=/tmp/out DEVICE=cpu THREADS=1 \
#   EXTRA_ARGS="--set train.batch_size=2 --set data.valid_items=4" bash scripts/gpu_train.sh
set -uo pipefail

OUT=${OUT:-/tmp/out}
MODELS=${MODELS:-"press-s slimdemucs-s"}
INIT_DIR=${INIT_DIR:-}
MAX_MINUTES=${MAX_MINUTES:-8.5}
THREADS=${THREADS:-4}
CORPUS=${CORPUS:-.corpus}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # works whether or not exitbench is pip-installed
mkdir -p "$OUT"
LOG="$OUT/train.log"

# the corpus is Opus/FLAC: soundfile reads it; install it offline from a carried wheel folder if absent
if ! python -c 'import soundfile' 2>/dev/null && [ -d .whl ]; then
  python -m pip install --no-index --find-links .whl soundfile >>"$LOG" 2>&1 || echo "soundfile install failed" >>"$LOG"
fi

if [ -z "${DEVICE:-}" ]; then
  DEVICE=$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi

{
  echo "== $(date -u +%FT%TZ) host=$(hostname) device=$DEVICE max_minutes=$MAX_MINUTES"
  python -c 'import sys, torch, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__)'
  python -c 'import soundfile; print("soundfile", soundfile.__version__)' 2>/dev/null \
    || python -c 'import torchaudio; print("torchaudio", torchaudio.__version__)' 2>/dev/null \
    || echo "WARNING: neither soundfile nor torchaudio: only the synthetic fallback can be used"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  if [ -f "$CORPUS/corpus.json" ]; then echo "corpus: $CORPUS/corpus.json present"; else echo "corpus.json absent"; fi
  ls -d "$CORPUS"/*/noise/train 2>/dev/null  # enhancement only
  ls -d "$CORPUS"/*/speech/train 2>/dev/null || echo "WARNING: no $CORPUS/<rate>/speech/train: synthetic fallback"
} >>"$LOG" 2>&1

# hard stop a little after the training budget: each run saves a checkpoint every epoch, so even
# a killed run leaves one behind
KILL_AFTER=$(python -c "print(int(float('$MAX_MINUTES') * 60 + 40))")

run() {  # name
  local init=()
  if [ -n "$INIT_DIR" ] && [ -f "$INIT_DIR/$1.pt" ]; then init=(--set "train.init=$INIT_DIR/$1.pt"); fi
  # torch.compile's artefacts: an earlier call's (INIT_DIR/<name>.compile.bin) skip most of the compile time;
  # this run's are written to $OUT/<name>.compile.bin for the next call
  if [ -n "$INIT_DIR" ] && [ -f "$INIT_DIR/$1.compile.bin" ]; then cp "$INIT_DIR/$1.compile.bin" "$OUT/"; fi
  init+=(--set "train.compile_cache=$OUT/$1.compile.bin")
  local own="EXTRA_ARGS_${1//-/_}"
  timeout --signal=INT --kill-after=15 "$KILL_AFTER" \
    python -m exitbench.models.train "$1" "$OUT" --device "$DEVICE" --max-minutes "$MAX_MINUTES" \
      --threads "$THREADS" --corpus "$CORPUS" "${init[@]}" ${EXTRA_ARGS:-} ${!own:-} >"$OUT/.$1.stdout" 2>&1
}

declare -A PIDS
for name in $MODELS; do run "$name" & PIDS[$name]=$!; done
STATUS=0
SUMMARY=""
for name in $MODELS; do
  wait "${PIDS[$name]}"; rc=$?
  [ "$rc" -eq 0 ] || STATUS=1
  SUMMARY="$SUMMARY $name=$rc"
  { echo "== $name output (last 60 lines)"; tail -n 60 "$OUT/.$name.stdout"; } >>"$LOG" 2>&1
  rm -f "$OUT/.$name.stdout"
done
rm -f "$OUT"/.*.tmp "$OUT"/*.tmp
echo "== done $(date -u +%FT%TZ) rc$SUMMARY" >>"$LOG"
ls -la "$OUT" >>"$LOG"
tail -n 30 "$LOG"
exit "$STATUS"
