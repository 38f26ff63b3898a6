#!/usr/bin/env bash
# Installs patchscale_mm (editable) and its pinned dependencies into the
# current Python. Idempotent: when everything is already in place it only
# checks and returns in about a second.
#
#   bash tools/install.sh            # runtime + test requirements
#
# Environment: PYTHON (default python3), PATCHSCALE_CACHE (where the mmcv
# wheel built here is kept, default ~/.cache/patchscale_mm).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
CACHE=${PATCHSCALE_CACHE:-$HOME/.cache/patchscale_mm}
REQS=("$ROOT/requirements/runtime.txt" "$ROOT/requirements/tests.txt")

pin() { sed -n "s/^$1==\([^ #]*\).*/\1/p" "$ROOT/requirements/runtime.txt"; }

# Exit 0 when every pinned requirement is installed at its version, mmcv has
# its compiled ops, and patchscale_mm is this checkout.
installed_ok() {
  # From / so that the checkout itself is not importable from the cwd.
  (cd / && "$PY" - "$ROOT" "${REQS[@]}") <<'EOF' 2>/dev/null
import importlib.metadata as md, pathlib, re, sys
root = pathlib.Path(sys.argv[1]).resolve()
for req_file in sys.argv[2:]:
    for line in open(req_file):
        m = re.match(r'\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)', line)
        if m and md.version(m[1]) != m[2]:
            sys.exit(1)
import mmcv._ext  # noqa: F401  (the compiled ops mmdet/mmseg need)
import patchscale_mm
if pathlib.Path(patchscale_mm.__file__).resolve().parents[1] != root:
    sys.exit(1)
# The C++ scan kernel, built by `pip install -e .`: missing, or older than
# its sources, means build again.
import patchscale_mm.ops._C
so = pathlib.Path(patchscale_mm.ops._C.__file__).stat().st_mtime
if any(f.stat().st_mtime > so for f in (root / 'patchscale_mm/ops/csrc').iterdir()):
    sys.exit(1)
EOF
}

# Fashion-MNIST (Debian's dataset-fashion-mnist) is the real data of the
# tests' fixtures and of the scaling sweep.
FMNIST=${FASHION_MNIST_ROOT:-/usr/share/datasets/fashion-mnist}
if [ ! -e "$FMNIST/train-images-idx3-ubyte.gz" ] && [ ! -e "$FMNIST/train-images-idx3-ubyte" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[install] Debian package dataset-fashion-mnist"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      dataset-fashion-mnist >/dev/null
  else
    echo "[install] warning: Fashion-MNIST not found in $FMNIST; install Debian's" \
      "dataset-fashion-mnist or set FASHION_MNIST_ROOT to its idx files" >&2
  fi
fi

if installed_ok; then
  echo "[install] patchscale_mm and its requirements are installed"
  exit 0
fi

pip_install() { "$PY" -m pip install --disable-pip-version-check --root-user-action=ignore -q "$@"; }

TORCH=$(pin torch); TORCHVISION=$(pin torchvision); MMCV=$(pin mmcv)
echo "[install] torch $TORCH, torchvision $TORCHVISION"
pip_install "torch==$TORCH" "torchvision==$TORCHVISION"

# mmcv ships no wheel for this torch and mmdet/mmseg need its compiled ops
# (mmcv-lite lacks them): build it once with the CPU ops, keyed by the torch
# version, and reuse the wheel afterwards.
if ! "$PY" -c "import mmcv._ext, mmcv, sys; sys.exit(mmcv.__version__ != '$MMCV')" 2>/dev/null; then
  WHEELS="$CACHE/wheels/torch-$TORCH-py$("$PY" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
  WHEEL=$(ls "$WHEELS"/mmcv-"$MMCV"-*.whl 2>/dev/null | head -n 1 || true)
  if [ -z "$WHEEL" ]; then
    echo "[install] building mmcv $MMCV with CPU ops (about 5 minutes, once)"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    # A throw-away venv on top of this Python: the build sees its torch but
    # gets the setuptools<80 that mmcv 2.1's setup.py needs.
    "$PY" -m venv --system-site-packages "$BUILD/venv"
    "$BUILD/venv/bin/python" -m pip install --disable-pip-version-check -q \
      "setuptools<80" wheel ninja
    "$BUILD/venv/bin/python" -m pip download --disable-pip-version-check -q \
      --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV" -d "$BUILD"
    tar -xzf "$BUILD/mmcv-$MMCV.tar.gz" -C "$BUILD"
    # torch >= 2.5 headers need C++17 features beyond mmcv 2.1's -std flags.
    sed -i 's/-std=c++1[47]/-std=c++20/g' "$BUILD/mmcv-$MMCV/setup.py"
    mkdir -p "$WHEELS"
    (cd "$BUILD/mmcv-$MMCV" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} CFLAGS=-g0 \
      "$BUILD/venv/bin/python" -m pip wheel --disable-pip-version-check -q \
      --no-build-isolation --no-deps -w "$WHEELS" .)
    WHEEL=$(ls "$WHEELS"/mmcv-"$MMCV"-*.whl | head -n 1)
  fi
  echo "[install] mmcv from $WHEEL"
  pip_install --no-deps --force-reinstall "$WHEEL"
fi

echo "[install] pinned requirements"
pip_install -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt"
echo "[install] patchscale_mm (editable) from $ROOT"
pip_install --no-build-isolation --no-deps -e "$ROOT"
installed_ok || { echo "[install] error: the environment is still incomplete after installing" >&2; exit 1; }
echo "[install] done"
