#!/usr/bin/env bash
# Issue 7's GPU targets in one prepared run for a lent GPU machine: the step limits add up to 545 s,
# inside the device tool's 600 s per call (the time on a GPU has not been measured yet).
#
# Meant for the device tool, which runs a copy of the working tree with a python3 that already
# holds torch, timm, pandas, rich, PyYAML, scikit-learn and safetensors but cannot install
# anything: the source tree is used in place (PYTHONPATH), nothing is pip-installed.
#
#     bash benchmarks/gpu_targets.sh              # on the GPU machine; JSON lines go to $OUT (or ./gpu_out)
#     QUICK=1 bash benchmarks/gpu_targets.sh      # the same steps at CPU size, to check the script itself
#
# Steps, each with its own time limit so that one slow step cannot eat the session:
#   throughput  training (batch 64, bf16) and inference (batch 256) images/s per method vs a timm loop
#   infer1024   inference at batch 1024 (the 12,000 img/s target)
#   memory      peak training memory per method (SHIP <= 5 GiB)
#   synthetic   3 full-size synthetic VTAB-1k tasks (real split sizes and resolutions)
#   end_to_end  vpt_deep, 100 epochs on those 3 tasks, decode / train / eval breakdown: the
#               19-task time is extrapolated from it in the note, not measured.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}

# methods/ is installed as peftbench.methods by pip; from the source tree it needs a link
if ! "$PY" -c "import peftbench.methods" 2>/dev/null; then
    ln -sfn ../methods peftbench/methods
fi
"$PY" - <<'EOF' | tee "$OUT/env.json"
import json, platform, torch, timm
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                  "cuda": torch.cuda.is_available(),
                  "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.machine()}))
EOF

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output under $OUT
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - start))}" | tee -a "$OUT/steps.jsonl"
}

SYNTH=${SYNTH:-/tmp/peftbench-synth}
TASKS=cifar100,dtd,eurosat  # small test splits: dsprites_loc alone has 73,728 test images
if [ "${QUICK:-0}" = 1 ]; then
    step throughput 300 "$PY" benchmarks/throughput.py --quick
    step memory 300 "$PY" benchmarks/memory.py --quick
    step synthetic 300 "$PY" -m peftbench.cli make-synthetic --like vtab1k --tasks "$TASKS" --scale 0.02 --out "$SYNTH"
    step end_to_end 300 "$PY" benchmarks/end_to_end.py --synthetic "$SYNTH" --tasks "$TASKS" --method vpt_deep \
        --backbone vit_tiny_patch16_224 --epochs 1
else
    step throughput 120 "$PY" benchmarks/throughput.py --backbone vit_base_patch16_224 --batch 64 --infer-batch 256
    step infer1024 60 "$PY" benchmarks/throughput.py --backbone vit_base_patch16_224 --methods linear \
        --batch 64 --infer-batch 1024
    step memory 100 "$PY" benchmarks/memory.py --backbone vit_base_patch16_224 --batch 64
    step synthetic 75 "$PY" -m peftbench.cli make-synthetic --like vtab1k --tasks "$TASKS" --out "$SYNTH"
    step end_to_end 190 "$PY" benchmarks/end_to_end.py --synthetic "$SYNTH" --tasks "$TASKS" --method vpt_deep \
        --backbone vit_base_patch16_224 --epochs 100
fi
