#!/usr/bin/env bash
# Rebuild pesq 0.0.4 from its source for this machine's CPU, and keep it only if it scores exactly as the
# default build does. The pesq licence forbids changing its (ITU-T P.862) code, not how it is compiled:
# -march=native lets the compiler vectorise with this CPU's instructions (1.27x faster per call on the
# 2-core EPYC box), and -ffp-contract=off forbids fused multiply-adds, the one thing those instructions
# would change in the results (a build with them differs in 63 of the 94 reference scores).
#
#   bash scripts/build_fast_pesq.sh                # into the current Python environment (needs PyPI)
#   TARGET=/tmp/pesq-fast PESQ_SRC=.gpu-bundle/whl/pesq-0.0.4.tar.gz bash scripts/build_fast_pesq.sh
#       # into a folder to put first on PYTHONPATH, from a local sdist, offline (the GPU bundle's)
#
# Then `python scripts/pesq_reference.py` compares 94 scores of committed audio with the stored ones
# (tests/fixtures/pesq_reference.json) for equality; on any difference the build is undone (the default
# build reinstalled, or TARGET removed) and the script exits 1. Needs a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAGS=${PESQ_CFLAGS:-"-O3 -march=native -ffp-contract=off"}
SRC=${PESQ_SRC:-pesq==0.0.4}
# --no-cache-dir: pip would otherwise reuse (or cache) a wheel built with other flags under the same name
pipi() { python3 -m pip install -q --no-deps --no-cache-dir --no-binary pesq "$@"; }
# a local sdist (the GPU bundle's) builds offline, with the build tools already installed
[ -f "$SRC" ] && pipi() { python3 -m pip install -q --no-deps --no-cache-dir --no-index --no-build-isolation "$@"; }
if [ -n "${TARGET:-}" ]; then
  rm -rf "$TARGET"
  CFLAGS="$FLAGS" pipi --target "$TARGET" "$SRC"
  if PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" python3 scripts/pesq_reference.py; then
    echo "pesq built with '$FLAGS' in $TARGET: put it first on PYTHONPATH"
  else
    rm -rf "$TARGET"; echo "that build scores differently: removed" >&2; exit 1
  fi
else
  CFLAGS="$FLAGS" pipi --force-reinstall "$SRC"
  if python3 scripts/pesq_reference.py; then
    echo "pesq rebuilt with '$FLAGS'"
  else
    echo "that build scores differently: reinstalling the default build" >&2
    pipi --force-reinstall "$SRC"; exit 1
  fi
fi
