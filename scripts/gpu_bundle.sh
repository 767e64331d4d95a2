#!/usr/bin/env bash
# Build the bundle that lets exitbench run on a GPU machine with no package registry (the lent H200's
# image has torch, numpy, scipy, pandas, pyarrow, matplotlib, typer and rich, not Ray, DuckDB or the
# metric packages). Ray's wheel is stripped of what exitbench never imports (Java jars, RLlib, Serve,
# Tune, Train, LLM, the dashboard's web build); the bundle is about 46 MB.
#
#   bash scripts/gpu_bundle.sh [DEST]        # here, where pip reaches PyPI; DEST defaults to .gpu-bundle
#   source DEST/setup.sh && python3 -m exitbench demo      # there, from the project root
#
# setup.sh installs into /tmp/site once per machine (about 30 s) and puts the project root on PYTHONPATH.
# Needs pip and unzip here.
# The target is CPython 3.12 on x86_64 Linux (PYVER overrides). DEST is ignored by git (.gitignore).
set -euo pipefail
DEST=${1:-.gpu-bundle}
PYVER=${PYVER:-3.12}
PLAT="--python-version $PYVER --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64"
RAY=$(python3 -c 'import ray; print(ray.__version__)')       # the versions this checkout is tested with
DUCK=$(python3 -c 'import duckdb; print(duckdb.__version__)')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rm -rf "$DEST"; mkdir -p "$DEST/whl"
dl() { python3 -m pip download -q --no-deps $PLAT -d "$1" "$2"; }

echo "ray $RAY, stripped"
dl "$tmp" "ray==$RAY"
# unzip keeps the executable bits of Ray's binaries (gcs_server, raylet); Python's zipfile drops them,
# and Ray then cannot start (measured: "Permission denied: .../gcs/gcs_server")
mkdir "$tmp/ray" && (cd "$tmp/ray" && unzip -q ../ray-*.whl \
  && rm -rf ray/jars ray/rllib ray/llm ray/serve ray/tune ray/train ray/dashboard/client/build)
test -x "$tmp/ray/ray/core/src/ray/gcs/gcs_server" || { echo "gcs_server lost its executable bit" >&2; exit 1; }
tar -C "$tmp/ray" -cJf "$DEST/ray.tar.xz" .
echo "duckdb $DUCK"
dl "$tmp" "duckdb==$DUCK"
mkdir "$tmp/duck" && (cd "$tmp/duck" && unzip -q ../duckdb-*.whl)
tar -C "$tmp/duck" -cJf "$DEST/duckdb.tar.xz" .

echo "small wheels"
for p in soundfile cffi pycparser pystoi "mir_eval<0.9" decorator jsonschema jsonschema-specifications \
         referencing rpds-py threadpoolctl; do
  dl "$DEST/whl" "$p"
done

echo "sdists: pesq (its setup_requires would reach for the network: removed) and fast-bss-eval"
python3 -m venv "$tmp/venv" && "$tmp/venv/bin/pip" install -q cython numpy setuptools wheel
"$tmp/venv/bin/pip" download -q --no-deps --no-binary=:all: --no-build-isolation -d "$tmp" \
  pesq==0.0.4 fast-bss-eval==0.1.4
mkdir "$tmp/pesq" && tar -C "$tmp/pesq" -xzf "$tmp"/pesq-0.0.4.tar.gz
sed -i 's/^ *setup_requires=.*$//' "$tmp"/pesq/pesq-0.0.4/setup.py
tar -C "$tmp/pesq" -czf "$DEST/whl/pesq-0.0.4.tar.gz" pesq-0.0.4
cp "$tmp"/fast_bss_eval-*.tar.gz "$DEST/whl/"

cat > "$DEST/setup.sh" <<'SETUP'
# Source from the project root on the GPU machine: installs the bundle into /tmp/site once per machine.
B=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
export RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
if [ ! -f /tmp/site/.ok ]; then
  mkdir -p /tmp/site
  tar -C /tmp/site -xJf "$B/ray.tar.xz" &
  tar -C /tmp/site -xJf "$B/duckdb.tar.xz" &
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$B"/whl/*.whl
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site "$B"/whl/*.tar.gz
  wait
  python3 -c "import ray, duckdb, pesq, pystoi, fast_bss_eval, mir_eval, soundfile, threadpoolctl" && touch /tmp/site/.ok
fi
SETUP
du -sh "$DEST"
