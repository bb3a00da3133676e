#!/usr/bin/env bash
# `make gpu-check` on an offline GPU machine that has torch but not the rest of segkit's dependencies (see
# scripts/gpu_wheels.sh, run beforehand where pip reaches the index; .whl/ travels with the checkout).
# From the repository root, with OUT set (default gpu-report):
#
#   OUT=/some/dir bash scripts/gpu_check_remote.sh     # -> $OUT/gpu/gpu_check.{json,md}, junit XML, logs
#
# Nothing is installed into the machine's Python: the wheels go to /tmp/site, and PYTHONPATH puts them and the
# checkout (so that `segkit` and `benchmarks` import without installing) in front. The whole sequence stays under
# 8 minutes: the check gets what is left of 470 s after the installation, minus a margin, as its budget, and a
# hard timeout stops it 5 s before that.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
OUT=${OUT:-gpu-report}
REPORT="$OUT/gpu"
mkdir -p "$REPORT"
TOTAL_S=${TOTAL_S:-470}

ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run scripts/gpu_wheels.sh where pip reaches the index" >&2; exit 2; }
# the image's protobuf, Lightning and torchmetrics stay unless their versions do not fit (then .whl/optional/'s)
need=$(python3 - <<'EOF'
from importlib import metadata


def version(name):
    try:
        return tuple(int(p) for p in metadata.version(name).split("+")[0].split(".")[:3])
    except Exception:
        return None


need = []
if (version("protobuf") or (0,)) < (6, 31, 1):  # onnx's floor
    need.append("protobuf")
if not (2, 6, 4) <= (version("pytorch-lightning") or (0,)) < (2, 7):  # segkit's pin
    need += ["pytorch_lightning", "lightning_utilities"]
if (version("torchmetrics") or (0,)) < (1, 3):
    need.append("torchmetrics")
print(" ".join(need))
EOF
)
wheels=(.whl/*.whl)
for name in $need; do
  echo "the image's $name does not fit segkit: installing .whl/optional/$name-*.whl"
  wheels+=(.whl/optional/"$name"-*.whl)
done
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${wheels[@]}"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

{ nvidia-smi || echo "nvidia-smi failed"; } > "$REPORT/nvidia-smi.txt" 2>&1
python3 -m pip list --format=freeze > "$REPORT/pip_freeze.txt" 2>/dev/null || true
python3 -c 'import torch, pytorch_lightning, hydra, segmentation_models_pytorch, segkit; print("imports ok: torch", torch.__version__,
  "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "lightning", pytorch_lightning.__version__)' \
  || { echo "segkit does not import with these wheels" >&2; exit 2; }

left=$((TOTAL_S - ($(date +%s) - started)))
timeout -k 10 $((left - 5)) python3 -m benchmarks.gpu_check "$REPORT" --budget-s $((left - 40)) "$@" \
  > "$REPORT/console.log" 2>&1
status=$?
tail -n 40 "$REPORT/console.log"
[ -f "$REPORT/gpu_check.md" ] && cat "$REPORT/gpu_check.md"
echo "gpu_check exit status $status after $(($(date +%s) - started)) s; report in $REPORT"
exit $status
