#!/usr/bin/env bash
# Install FFCV (the .beton data loader) and its pinned dependencies into a virtualenv.
#
#   bash scripts/install_ffcv.sh [PYTHON]        # PYTHON defaults to .venv/bin/python
#
# Idempotent and non-interactive. Steps:
#   1. Debian packages FFCV's C extension builds against (apt-get; sudo when not root):
#      pkg-config, libopencv-dev (OpenCV 4 C++ headers), libturbojpeg0-dev, a C++ compiler,
#      Python headers. pip's opencv wheels ship no headers, hence the system packages.
#   2. FFCV's real runtime dependencies at exact versions (checked with numpy 2.4 / torch 2.14).
#   3. ffcv itself with --no-deps: its install_requires names `opencv-python` (the GUI
#      build, which needs libGL); we install the headless wheel instead, which provides the
#      same `cv2` module. `pip check` therefore reports "ffcv requires opencv-python": expected.
#   4. An import + decode self-check.
# Without FFCV the rest of partialnet works; use `data=imagenet_folder` (ImageFolder) instead.
set -euo pipefail

PY="${1:-.venv/bin/python}"

# ---- pinned versions (change together; see the self-check below) --------------------------
FFCV_VERSION="1.0.2"   # partialnet/data/ffcv/internals.py is written against it: re-check it on a change
PIP_PINS=(
    "numba==0.68.1"                     # requires numpy>=1.22,<2.6: runs with our numpy 2.4.6
    "llvmlite==0.50.0"                  # the llvmlite numba 0.68 requires
    "opencv-python-headless==4.14.0.94" # cv2 for the writer (numpy>=2 build)
    "tqdm==4.70.1"
    "psutil==7.2.2"
    "terminaltables==3.1.10"            # ffcv.benchmarks
    "fastargs==1.2.0"                   # ffcv examples' argument parser
    "assertpy==1.1"                     # ffcv.benchmarks
    "pytorch-pfn-extras==0.9.0"         # ffcv's CuPy-based NormalizeImage on GPU (optional path)
)
APT_PACKAGES=(pkg-config libopencv-dev libturbojpeg0-dev build-essential python3-dev)

say() { echo "[install_ffcv] $*"; }
die() { echo "[install_ffcv] error: $*" >&2; exit 2; }

[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || die "python '$PY' not found; create the venv first (make venv) or pass its python as \$1"

# ---- 1. system packages ----------------------------------------------------------------------
missing=()
if command -v dpkg >/dev/null 2>&1; then
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} (or their equivalents) by hand"
    say "apt-get install ${missing[*]}"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "Debian packages present: ${APT_PACKAGES[*]}"
fi
pkg-config --exists opencv4 || pkg-config --exists opencv \
    || die "pkg-config cannot find opencv4; install libopencv-dev (Debian/Ubuntu) or OpenCV 4 with its .pc file"
pkg-config --exists libturbojpeg || die "pkg-config cannot find libturbojpeg; install libturbojpeg0-dev"

# ---- 2+3. python packages --------------------------------------------------------------------
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

installed_version() {
    "$PY" - "$1" <<'EOF' 2>/dev/null || true
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

say "pip install ${PIP_PINS[*]}"
pip_install "${PIP_PINS[@]}"

if [ "$(installed_version ffcv)" = "$FFCV_VERSION" ]; then
    say "ffcv $FFCV_VERSION already installed"
else
    # Build against the venv's own setuptools (no isolated build env to download); the
    # sdist's setup.py shells out to pkg-config for the OpenCV/turbojpeg flags.
    if ! "$PY" -c "import setuptools" >/dev/null 2>&1; then
        pip_install "setuptools==84.2.1"
    fi
    say "pip install --no-deps ffcv==$FFCV_VERSION (compiles the C extension)"
    pip_install --no-deps --no-build-isolation "ffcv==$FFCV_VERSION"
fi

# ---- 4. self-check ---------------------------------------------------------------------------
"$PY" - <<'EOF'
import numpy as np
import numba
import ffcv
from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder  # noqa: F401  (imports cv2, numba)
from ffcv.libffcv import imdecode  # noqa: F401  (loads the compiled C extension)
import cv2
from importlib.metadata import version

ok, buf = cv2.imencode(".jpg", np.full((8, 8, 3), 127, np.uint8))
assert ok and buf.size > 0
print(f"[install_ffcv] ok: ffcv {version('ffcv')}, "
      f"numba {numba.__version__}, numpy {np.__version__}, opencv {cv2.__version__}")
EOF
