#!/usr/bin/env bash
# GPU session, last call: every GPU measurement of fastft with its same-run baselines, in priority order, each step
# time-boxed so one failure or hang costs only its own figure. Output: $OUT/*.json + $OUT/session.log.
# Before: benchmarks/gpu_prep.sh (first call, background) and the DALI parts in /tmp/dali_parts (see the README).
set -u
OUT=${OUT:-/tmp/fastft_bench}; mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
T0=$(date +%s); BUDGET=${BUDGET:-420}
ONLY=${ONLY:-}  # e.g. ONLY=bench-train,baselines,train: run only these steps
step() {  # step NAME LIMIT_S CMD...: skipped when the budget is spent
  local name=$1 limit=$2; shift 2
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  if [ $left -lt 25 ]; then echo "== SKIP $name (budget)"; return; fi
  [ $limit -gt $left ] && limit=$left
  echo "== $name (t=$(( $(date +%s) - T0 ))s, limit ${limit}s)"
  timeout -k 5 $limit "$@"; echo "== $name rc=$? t=$(( $(date +%s) - T0 ))s"
}
python3 -c "import nvidia.dali" 2>/dev/null || { bash .dali/c2/install_dali.sh /tmp/dali_parts >/dev/null; export PYTHONPATH=/tmp/dali_pp; }
export PYTHONPATH=${PYTHONPATH:-}:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
python3 -c "import torch, nvidia.dali as d; print('torch', torch.__version__, 'dali', d.__version__, torch.cuda.get_device_name(0))"
W=/tmp/fastft_gpu
for i in $(seq 150); do [ -f $W/prep.done ] && break; sleep 1; done
tail -5 $W/prep.log; cp $W/prep.log "$OUT/prep.log"
BENCH_ARGS=${BENCH_ARGS:-}; TRAIN_ARGS=${TRAIN_ARGS:-}  # CPU rehearsal: smaller model and batch (and PROBE_ARGS, STEPS)
# the step modes, each with the step variants (fastft.train.variants) next to the mode they change: bench train gives
# each variant against its mode in the same run (variant_vs_baseline); compile+graph+fused+pad8 is today's best
VARIANTS=${VARIANTS:-fused-relu-pool-lrn}
STEPS=${STEPS:-graph,compile+graph,compile+graph+fused,compile+graph+fused+pad4,compile+graph+fused+pad8}
for v in ${VARIANTS//,/ }; do STEPS=$STEPS,graph+fused+pad8+$v,compile+graph+fused+pad8+$v; done
HW=${HW:-1.0}; CPU=${CPU:-0,0.6}  # hardware-decoder shares × host-decoded shares to measure (bench train)
LCPU=${LCPU:-0,0.2,0.3}           # host-decoded shares for bench loader (the loader alone: the hardware decoder's spare)
# first: does the paper's recipe learn at full size (227 crops of 256x256, width 1.0, batch 256, 100 classes x 1,300
# images, 15 epochs; Caffe scale vs the earlier /std input, bf16 vs fp32)? It decides whether the study's numbers mean
# anything (benchmarks/learning.py; ~1 min to build the store, then ~1 min per run on an H200)
step learning ${LEARN_LIMIT:-480} python3 benchmarks/learning.py --classes 100 --per-class 1300 --size 256 --crop 227 --width 1.0 \
    --batch 256 --epochs 15 --lr-step 20 --threads 16 --parallel 1 --precision ${LEARN_PRECISION:-bf16,fp32} \
    --variants ${LEARN_VARIANTS:-paper:caffe,paper:imagenet} --work /tmp/fastft_learning --out "$OUT/learning.json"
# what bounds the loader alone: variants and CPU accounting (incl. the host share balancing the two decoders), the
# fallback in the same run
step loader-probe 180 sh -c "cd benchmarks && python3 loader_probe.py $W/view --seconds 4 ${LPROBE_ARGS:-} --out '$OUT/loader-probe.json'"
# the probe's best settings join bench loader's (the README's figure: the loader against fastft's own fallback): its
# best hardware-decoder share with GPU Huffman (gpuhuffNN) and its two best host-decoded shares (cpuNN), alone or combined
read LHW LCPU LHUFF < <(python3 -c "
import json, re; v = json.load(open('$OUT/loader-probe.json'))['variants']
ok = sorted((r['img_s'], k) for k, r in v.items() if isinstance(r, dict) and k not in ('reader', 'cpu100'))
hw, cpu = [], []
for _, k in reversed(ok):
    for m in k.split('+'):
        if m.startswith('gpuhuff') and len(hw) < 1: hw.append(int(m[7:]) / 100)
        if m.startswith('cpu') and len(cpu) < 2 and int(m[3:]) / 100 not in cpu: cpu.append(int(m[3:]) / 100)
print(','.join(map(str, sorted({1.0, *hw}))), ','.join(map(str, sorted({0.0, *cpu}))), '--gpu-huffman' if hw else '')" 2>/dev/null ||
  echo "$HW $LCPU")
echo "bench loader settings: hw $LHW, host $LCPU $LHUFF"
step bench-loader 110 python3 -m fastft bench loader $W/view ${BENCH_ARGS/--width 0.25/} --seconds 4 --hw-load $LHW --cpu-decode $LCPU \
    $LHUFF --out "$OUT/bench-loader.json"
# the host cores' decoding rate (CPU only; its JSON line stays in session.log: at most 8 files come back)
step host-decode 40 python3 benchmarks/host_decode.py $W/view --seconds 2
# the reference baselines (../shared/bench/baselines.py, copied to .dali/c2/ by the operator): PIL DataLoader alone and
# (ANCHOR_SECTIONS with e2e) feeding a train step, on the same machine in the same session
[ -f .dali/c2/baselines.py ] && step baselines 130 env OUT=$W/anchor ANCHOR_SECTIONS=${ANCHOR_SECTIONS:-env,corpus,cpu,e2e} \
    ANCHOR_E2E_COMPILE=0 ANCHOR_BUDGET_S=120 python3 .dali/c2/baselines.py
[ -f $W/anchor/anchors.jsonl ] && cp $W/anchor/anchors.jsonl "$OUT/anchors.jsonl"
# the GPU checks, and the kernels on CUDA (exact against the eager ops; -s: their timings against the eager ops)
step gpu-tests 110 python3 -m pytest -q -s -x tests/test_gpu.py tests/test_kernels.py -p no:cacheprovider
# ceilings of every step mode; with --cache the device tier, half device/half decoded, and on GPUs the host tier and
# half device/half host both staged (today's CPU gather + copy stream) and read by the GPU itself (host_gather gpu)
step bench-train 260 python3 -m fastft bench train $W/view $BENCH_ARGS --seconds 4 --steps $STEPS \
    --hw-load $HW --cpu-decode $CPU ${CACHE---cache} --out "$OUT/bench-train.json"
python3 -c "import json,sys; sys.exit('fastft_e2e_img_s' not in json.load(open('$OUT/bench-train.json')))" 2>/dev/null ||
  step bench-train-plain 100 python3 -m fastft bench train $W/view $BENCH_ARGS --seconds 4 --steps graph --cache --out "$OUT/bench-train.json"
# torchvision's ResNet-50 (224 crops, preprocess imagenet) next to the paper's AlexNet: its step-rate ceilings and end
# to end, the same step modes but conv1's padding (AlexNet's alone); its JSON line stays in session.log (at most 8
# files come back). CPU rehearsal: RESNET_ARGS="--crop 64 --batch 32"
step bench-train-resnet50 150 python3 -m fastft bench train $W/view ${RESNET_ARGS:---crop 224} --model resnet50 --seconds 4 \
    --steps ${RESNET_STEPS:-graph,compile+graph+fused} --hw-load $HW --cpu-decode $CPU
step gpu-tests-resnet 90 python3 -m pytest -q -x tests/test_torchvision_models.py -m gpu -p no:cacheprovider
BEST=$(python3 -c "import json; print(json.load(open('$OUT/bench-train.json')).get('step', 'graph'))" 2>/dev/null || echo graph)
step e2e-probe 80 python3 benchmarks/e2e_probe.py $W/view --step $BEST --seconds 3 ${PROBE_ARGS:-} --out "$OUT/e2e-probe.json"
step train 60 python3 -m fastft train view=$W/view epochs=3 lr_step=2 out=$W/runs name=defaults checkpoint_every=100 progress=false $TRAIN_ARGS
for r in $W/runs/*/; do [ -f $r/metrics.jsonl ] && sed "s|^|{\"run\": \"$(basename $r)\", \"m\": |; s|$|}|" $r/metrics.jsonl; done > "$OUT/train-runs.jsonl"
# the best mode's baseline (without variants) and the baseline with each variant
PMODES=$(python3 -c "import sys; from fastft.bench import baseline_of as b; m = b(sys.argv[1])
print(','.join(dict.fromkeys([m] + [m + '+' + v for v in sys.argv[2].split(',') if v])))" "$BEST" "$VARIANTS" 2>/dev/null || echo "$BEST")
step profile 70 sh -c "python3 benchmarks/profile_step.py --modes $PMODES --steps 10 > '$OUT/profile.txt' 2>&1"
# the figures, named as benchmarks/results/ keeps them: train-<gpu>-<date>.json (the bench-train JSON, renamed:
# at most 8 files come back) and the ratios in the log
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -oiE '[AHBL][0-9]{2,3}' | head -1 | tr A-Z a-z)
TRAIN_JSON="$OUT/train-${GPU:-gpu}-$(date -u +%F).json"
[ -f "$OUT/bench-train.json" ] && mv "$OUT/bench-train.json" "$TRAIN_JSON" && python3 benchmarks/train_keys.py "$TRAIN_JSON"
rm -f "$OUT/prep.log"  # at most 8 files come back from the device machine; the log's tail is in session.log
echo "== done t=$(( $(date +%s) - T0 ))s"
