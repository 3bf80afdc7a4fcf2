#!/usr/bin/env bash
# kfm's one-GPU benchmarks in one prepared run of at most 8 minutes (an H100/H200/B200), tables to bench/results/:
#   gpu_step.md       the training step, kfm vs torchtitan (bench/gpu/step.py)
#   gpu_attention.md  attention forward + backward, kfm vs cuDNN / flash / SDPA with mask / flex (bench/gpu/attention.py)
#   gpu_fp8_loss.md   FP8 vs bf16 over 200 steps (bench/gpu/fp8_loss.py)
# On the GPU machine, with the torch it has and the wheels of bench/gpu/fetch_wheels.sh carried in bench/gpu/wheels/:
#   bash bench/gpu/suite.sh [--out DIR]
# Anywhere, every part end to end at tiny shapes on CPU (tests/test_gpu_suite.py runs it):
#   bash bench/gpu/suite.sh --smoke --out DIR
# Each part has its own time limit; each writes its table as it goes, so a part stopped at its limit keeps its rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=bench/results
SMOKE=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=(--smoke) ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: bench/gpu/suite.sh [--smoke] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
PY=${PY:-python3}
mkdir -p "$OUT"
start=$(date +%s)

# kfm without installing it (the machine has no index to install its dependencies from): the kfm namespace as
# links to this tree's folders, plus the carried wheels, in a private folder ahead of the machine's packages.
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
mkdir -p "$SITE/kfm"
cp kfm/*.py "$SITE/kfm/"
for part in model tokenizer data_pipeline train; do ln -s "$PWD/$part" "$SITE/kfm/$part"; done
if compgen -G "bench/gpu/wheels/*.whl" > /dev/null; then
  "$PY" -m pip install --quiet --no-deps --no-index --target "$SITE" bench/gpu/wheels/*.whl
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -P - <<'PY' | tee "$OUT/gpu_machine.txt"  # -P: not this folder's kfm/, the linked one
import platform, subprocess, torch
import kfm.model
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| kfm.model from", kfm.model.__path__[0])
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0))
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip())
else:
    print("no GPU (smoke run)")
PY

part() {  # part NAME LIMIT_S COMMAND...: run one benchmark under its own time limit; a failure does not stop the rest
  local name=$1 limit=$2; shift 2
  echo "=== $name (at most ${limit} s; $(( $(date +%s) - start )) s so far)"
  if ! timeout "$limit" "$@"; then echo "=== $name stopped or failed (exit $?)"; fi
}
if [ ${#SMOKE[@]} -gt 0 ]; then
  part step 300 "$PY" bench/gpu/step.py --smoke --out "$OUT"
  part attention 120 "$PY" bench/gpu/attention.py --smoke --out "$OUT"
  part fp8-loss 120 "$PY" bench/gpu/fp8_loss.py --smoke --out "$OUT"
else
  part step 270 "$PY" bench/gpu/step.py --out "$OUT" --cases one:none packed:none packed:tensorwise
  part attention 90 "$PY" bench/gpu/attention.py --out "$OUT"
  part fp8-loss 100 "$PY" bench/gpu/fp8_loss.py --out "$OUT" --recipes tensorwise
fi
echo "=== done in $(( $(date +%s) - start )) s; tables in $OUT"
