#!/usr/bin/env bash
# The harness's GPU measurements (issue 15) in one call on the lent GPU machine, from the project root
# with .gpu-bundle (scripts/gpu_bundle.sh) carried along. Each step has its own time limit and writes
# its table to $OUT as soon as it ends, so a step that overruns costs only itself.
#   OUT=/tmp/out bash scripts/gpu_bench.sh
# Environment: N (default 3000), N_OVERHEAD (default 1000), SECONDS_PER_UTT (5), LOOP (20), STEPS
# (default "demo gpu overhead"; "online": benchmarks/bench_online.py on the GPU, issue 17, with
# ONLINE_BATCH utterances per pass for the chunk-safe model, default 1; "batching": recording with --batch
# RECORD_BATCH, default 16, against one utterance per pass, metrics off, N_OVERHEAD utterances; "host": a
# model worker's time per utterance, model half against host half; OVERHEAD_ARGS go to the overhead step,
# e.g. "--defaults-only --four-actors"; "stall": the demo recorded in two fresh Ray clusters, twice in the
# first, every Ray process writing its Python stacks each second, packed in stacks.tgz; "actor": a model
# actor's start in 1 and 4 processes at once, with and without the GPU metrics' warm-up). First, unless
# FAST_PESQ=0, pesq is
# rebuilt for the host's CPU and used only if it scores exactly as the default build (pesq.md).
set -uo pipefail
OUT=${OUT:-/tmp/out}
N=${N:-3000}
N_OVERHEAD=${N_OVERHEAD:-1000}
SEC=${SECONDS_PER_UTT:-5}
LOOP=${LOOP:-20}
STEPS=${STEPS:-"demo gpu overhead"}
mkdir -p "$OUT"
t0=$(date +%s)
[ "${NO_BUNDLE:-0}" = 1 ] || source .gpu-bundle/setup.sh  # NO_BUNDLE=1: the packages are installed
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc
  lscpu | grep -E "^(Model name|Thread|Core|Socket|CPU max MHz)"  # SMT: 16 CPUs may be 8 cores
  python3 -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'
  echo "setup $(( $(date +%s) - t0 )) s"; } > "$OUT/machine.txt" 2>&1
if [ "${FAST_PESQ:-1}" = 1 ]; then  # FAST_PESQ=0: the bundle's default pesq build throughout
  # pesq compiled for this host's CPU, kept only if its 94 reference scores are identical (build_fast_pesq.sh)
  { python3 scripts/pesq_reference.py
    TARGET=/tmp/pesq-fast PESQ_SRC=${PESQ_SRC:-.gpu-bundle/whl/pesq-0.0.4.tar.gz} bash scripts/build_fast_pesq.sh
  } > "$OUT/pesq.md" 2> "$OUT/pesq.err"
  [ -d /tmp/pesq-fast ] && export PYTHONPATH=/tmp/pesq-fast${PYTHONPATH:+:$PYTHONPATH}  # Ray's workers inherit it
fi
step() {  # name limit command...
  local name=$1 limit=$2; shift 2
  local s=$(date +%s)
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.md" 2> "$OUT/$name.err"
  echo "rc=$? wall=$(( $(date +%s) - s )) s" >> "$OUT/$name.md"
  tail -c 6000 "$OUT/$name.err" > "$OUT/$name.err.tail" && mv "$OUT/$name.err.tail" "$OUT/$name.err"
}
for s in $STEPS; do
  case $s in
    demo)
      step demo ${DEMO_LIMIT:-120} bash -c 'python3 benchmarks/bench_demo.py | grep "^|";
        rm -rf /tmp/d; s=$(date +%s.%N); python3 -m exitbench demo -r /tmp/d/results -o /tmp/d/reports >/dev/null 2>&1;
        echo "exitbench demo (CLI), wall: $(python3 -c "import time; print(round(time.time() - $s, 2))") s (rc $?)"' ;;
    stall)
      step stall ${STALL_LIMIT:-200} bash -c 'for i in 1 2; do python3 benchmarks/bench_demo.py --reps $((3 - i)) \
        --stacks /tmp/stacks$i --stacks-every 1 | grep -v "^| report part\|^| ---"; done'
      tar czf "$OUT/stacks.tgz" -C /tmp stacks1 stacks2 ;;
    actor) step actor ${ACTOR_LIMIT:-90} python3 benchmarks/bench_actor_start.py --procs 1 4 --calls 3 --no-warm-up ;;
    gpu) step gpu ${GPU_LIMIT:-290} python3 benchmarks/bench_harness.py gpu --n "$N" --seconds "$SEC" --loop "$LOOP" \
           --timeline /tmp/timeline.json ;;
    host) step host 120 python3 benchmarks/bench_harness.py host --n 104 --seconds "$SEC" ;;
    online) step online 400 python3 benchmarks/bench_online.py --root /tmp/bench-online --device cuda \
              --repeats 3 --batch "${ONLINE_BATCH:-1}" --json "$OUT/online.json" ;;
    batching) step batching 300 python3 benchmarks/bench_harness.py batching --n "$N_OVERHEAD" --seconds "$SEC" \
              --repeat 1 --batch "${RECORD_BATCH:-16}" ;;
    overhead) step overhead ${OVERHEAD_LIMIT:-300} python3 benchmarks/bench_harness.py overhead --n "$N_OVERHEAD" --seconds "$SEC" --repeat 1 \
              ${OVERHEAD_ARGS:-} \
              --timeline /tmp/timeline-overhead.json ;;
  esac
done
cat "$OUT"/*.md
