#!/usr/bin/env bash
# Create .venv and install tuneline with pinned, tested versions.
# torch comes first: the CPU build when no NVIDIA GPU is present (a plain `torch` requirement would
# pull a multi-GB CUDA build). DeepSpeed builds from source without prebuilt ops (they JIT-compile on
# first use), so it needs torch already installed and no build isolation.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
STAMP="$VENV/.tuneline-installed"
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade "pip>=24" "setuptools>=70" wheel
TORCH_VERSION=$(grep -E '^torch==' constraints.txt | cut -d= -f3)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found: installing torch==$TORCH_VERSION (CUDA build)"
  pip install -q "torch==$TORCH_VERSION"
else
  echo "setup: no NVIDIA GPU: installing torch==$TORCH_VERSION (CPU build)"
  # Set TORCH_INDEX_URL (e.g. the PyTorch CPU wheel index) where the default index serves CUDA builds.
  pip install -q "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
DS_VERSION=$(grep -E '^deepspeed==' constraints.txt | cut -d= -f3)
DS_BUILD_OPS=0 pip install -q --no-build-isolation -c constraints.txt "deepspeed==$DS_VERSION"
pip install -q -c constraints.txt -e ".[dev,postgres,cluster]"  # postgres: the feedback store on
# PostgreSQL; cluster: `make cluster` and its tests (SeaweedFS S3, the DVC S3 remote)
echo "$want" > "$STAMP"
echo "setup: ready ($VENV)"
