#!/usr/bin/env bash
# Issue 7's and 15's GPU targets in one prepared run for a lent GPU machine: the step limits add up to
# 535 s, inside the device tool's 600 s per call (no GPU timing of this version yet).
#
# Meant for the device tool, which runs a copy of the working tree with a python3 that already
# holds torch, timm, pandas, rich, PyYAML, scikit-learn and safetensors but cannot install
# anything: the source tree is used in place (PYTHONPATH), nothing is pip-installed.
#
#     bash benchmarks/gpu_targets.sh              # on the GPU machine; JSON lines go to $OUT (or ./gpu_out)
#     QUICK=1 bash benchmarks/gpu_targets.sh      # the same steps at CPU size, to check the script itself
#
# Steps, each with its own time limit so that one slow step cannot eat the session (525 s, plus 10 s
# of summary; every step prints its JSON lines as it goes, so a step cut off by its limit keeps them):
#   throughput_eager     60 s  train (batch 64, bf16) and inference (batch 256) img/s per method, eager, vs the
#                              plain timm loop of the same run (ship = two SDPA calls, ship_masked = one call)
#   throughput_compiled 150 s  the same compiled: torch.compile(timm model) as the baseline, the harness's
#                              compiled step for the methods; `seconds` per row includes the compilation
#   infer1024            70 s  inference only at batch 1024, eager and compiled (the 12,000 img/s target)
#   memory               45 s  peak training memory per method, eager (SHIP <= 5 GiB)
#   synthetic            60 s  3 full-size synthetic VTAB-1k tasks (real split sizes and resolutions)
#   end_to_end          140 s  vpt_deep, 100 epochs per task with the defaults (compile=auto: on for CUDA), one
#                              line per task as it finishes with decode / train (compile included) / eval and
#                              the running extrapolation to all 19 tasks (target 900 s), with first-time
#                              decoding and with the decoded cache a later sweep reads
#   summary              ~1 s  benchmarks/gpu_summary.py: the issue's table from the lines above
#
# What to read from it (issue 15's table): summary.log gives, per figure, the plain timm loop eager and
# compiled, peftbench eager and compiled, and the ratios; ship vs ship_masked says which attention
# layout the GPU favours (ship.attention=auto picks masked on CUDA: flip ship.attention.attention_impl
# if split wins); end_to_end's last line gives the 19-task extrapolation and its first_step_s the
# compile time per task. Where a target is missed, the next step is a profile (torch.profiler around
# 20 compiled steps: kernel time vs launch gaps vs Python), which this script does not take.
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

FAILED=""
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output under $OUT
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || FAILED="$FAILED $name"
    echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - start))}" | tee -a "$OUT/steps.jsonl"
}

SYNTH=${SYNTH:-/tmp/peftbench-synth}
TASKS=dtd,eurosat,cifar100  # small test splits (dsprites_loc alone has 73,728 test images), smallest first
if [ "${QUICK:-0}" = 1 ]; then
    # CPU-sized (ViT-Ti at 64 px, tiny batches, 2 timed steps): checks the script and its plumbing, not speed
    QA="--backbone vit_tiny_patch16_224 --img-size 64 --batch 8 --infer-batch 16 --steps 2 --warmup 1"
    step throughput_eager 300 "$PY" benchmarks/throughput.py $QA
    # inductor on a CPU compiles slowly: one method shows that the compiled path and its ratios work
    step throughput_compiled 900 "$PY" benchmarks/throughput.py $QA --compile --methods vpt_deep
    step infer1024 300 "$PY" benchmarks/throughput.py $QA --methods linear --no-train
    step memory 300 "$PY" benchmarks/memory.py --quick
    step synthetic 300 "$PY" -m peftbench.cli make-synthetic --like vtab1k --tasks "$TASKS" --scale 0.02 --out "$SYNTH"
    step end_to_end 300 "$PY" benchmarks/end_to_end.py --synthetic "$SYNTH" --tasks "$TASKS" --method vpt_deep \
        --backbone vit_tiny_patch16_224 --epochs 1
else
    B=vit_base_patch16_224
    CM=full,vpt_deep,ship_masked,ship  # compiled: the targets' methods first, in case the limit cuts the step
    step throughput_eager 60 "$PY" benchmarks/throughput.py --backbone $B --batch 64 --infer-batch 256 --steps 15
    step throughput_compiled 150 "$PY" benchmarks/throughput.py --backbone $B --batch 64 --infer-batch 256 \
        --steps 15 --compile --methods "$CM"
    step infer1024 70 bash -c "'$PY' benchmarks/throughput.py --backbone $B --methods linear --no-train \
        --infer-batch 1024 --steps 10 && '$PY' benchmarks/throughput.py --backbone $B --methods linear --no-train \
        --infer-batch 1024 --steps 10 --compile"
    step memory 45 "$PY" benchmarks/memory.py --backbone $B --batch 64
    step synthetic 60 "$PY" -m peftbench.cli make-synthetic --like vtab1k --tasks "$TASKS" --out "$SYNTH"
    step end_to_end 140 "$PY" benchmarks/end_to_end.py --synthetic "$SYNTH" --tasks "$TASKS" --method vpt_deep \
        --backbone $B --epochs 100
fi
step summary 10 "$PY" benchmarks/gpu_summary.py "$OUT"
if [ -n "$FAILED" ]; then
    echo "failed or cut off by their limits:$FAILED (their output so far is in $OUT/<step>.log)"
    exit 1
fi
