#!/usr/bin/env bash
# Wheels for an offline GPU machine (Python 3.12, manylinux x86-64) that has torch, pytorch-lightning,
# torchmetrics, torchvision, tensorboard, scikit-image, tifffile, timm, onnxruntime and matplotlib, but not
# the rest of what segkit and `make gpu-check` need. Run it here (pip must reach the package index):
#
#   scripts/gpu_wheels.sh            # -> .whl/*.whl (git-ignored), the versions installed in .venv
#
# and on the GPU machine (no internet, nothing installed into its Python):
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
#
# (scripts/gpu_check_remote.sh does both and runs the check). Versions: those of .venv here (pip show), else
# the fallback pins below. Environment: DEST (default .whl), PY (the Python whose pip downloads and whose
# versions are taken; default .venv/bin/python), NO_IMAGECODECS=1 leaves out imagecodecs, the largest wheel,
# which only 16-bit PNGs and LZW/deflate TIFFs need (not the GPU check).
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DEST:-.whl}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

# name=fallback version. The first block is what the GPU image lacks; the second what gpu-check also needs
# there and the image may lack (ONNX export, the progress bar's rich, pytest, NVML); all pure Python or small.
PACKAGES=(
  hydra-core=1.3.8
  omegaconf=2.3.1
  segmentation-models-pytorch=0.6.0
  pydicom=3.0.2
  imagecodecs=2026.3.6
  onnx=1.23.2
  onnxscript=0.7.2
  onnx-ir=1.1.0
  ml-dtypes=0.6.0
  rich=15.0.0
  markdown-it-py=4.3.0
  mdurl=0.1.2
  pygments=2.21.0
  pytest=9.2.0
  iniconfig=2.3.1
  pluggy=1.7.0
  nvidia-ml-py=13.595.45
)
# sdist only: built here into a py3-none-any wheel
ANTLR=antlr4-python3-runtime==4.9.3
# In $DEST/optional/: packages the image has, each installed by scripts/gpu_check_remote.sh only where the image's
# version does not fit (onnx needs protobuf >= 6.31.1; segkit needs pytorch-lightning >= 2.6.4, < 2.7 and
# torchmetrics >= 1.3), so that the image's own stay in use whenever they can.
OPTIONAL=(protobuf=7.36.2 pytorch-lightning=2.6.6 lightning-utilities=0.15.3 torchmetrics=1.9.0)

version_of() {  # the version installed for $PY, or nothing
  { "$PY" -m pip show "$1" 2>/dev/null || true; } | awk '/^Version:/ {print $2}'
}

rm -rf "$DEST"
mkdir -p "$DEST"
for entry in "${PACKAGES[@]}"; do
  name=${entry%%=*}
  fallback=${entry#*=}
  if [ "$name" = imagecodecs ] && [ -n "${NO_IMAGECODECS:-}" ]; then
    echo "skipping imagecodecs (NO_IMAGECODECS set)"
    continue
  fi
  version=$(version_of "$name")
  version=${version:-$fallback}
  echo "== $name==$version"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" "$name==$version"
done
mkdir -p "$DEST/optional"
for entry in "${OPTIONAL[@]}"; do
  name=${entry%%=*}
  version=$(version_of "$name")
  version=${version:-${entry#*=}}
  echo "== $name==$version (optional)"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST/optional" "$name==$version"
done
echo "== $ANTLR (built from its sdist)"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps "$ANTLR" -w "$DEST"

# every wheel's requirements, so that a dependency the GPU image lacks is noticed (see README, "GPU check")
if command -v unzip >/dev/null; then
  for whl in "$DEST"/*.whl; do
    reqs=$(unzip -p "$whl" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
           | sed 's/^Requires-Dist: //' | tr '\n' ';' || true)
    echo "$(basename "$whl"): ${reqs:-no requirements}"
  done
fi
total=$(du -cb "$DEST"/*.whl "$DEST"/optional/*.whl | tail -1 | cut -f1)
ls -l "$DEST" "$DEST/optional"
echo "$(ls "$DEST"/*.whl "$DEST"/optional/*.whl | wc -l) wheels, $((total / 1048576)) MiB in $DEST"
if [ "$total" -gt $((60 * 1048576)) ]; then
  echo "the wheels exceed 60 MiB (the device machine's transfer limit); try NO_IMAGECODECS=1" >&2
  exit 1
fi
