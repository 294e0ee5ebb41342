#!/usr/bin/env bash
# One GPU-machine session (see the device tool's README): measure fastft and the baselines in the same run.
# Prerequisites on this side: `bash ../shared/offline/pack_dali.sh .dali` (git-ignored), DALI parts copied to
# /tmp/dali_parts by the previous calls, and ../shared/bench/baselines.py copied to .dali/baselines.py.
# Usage (last call): bash benchmarks/gpu_session.sh   → JSON lines in $OUT (default /tmp/fastft_bench)
set -euo pipefail
OUT=${OUT:-/tmp/fastft_bench}; mkdir -p "$OUT"
if ! python -c "import nvidia.dali" 2>/dev/null; then
  bash .dali/c2/install_dali.sh /tmp/dali_parts >/dev/null && export PYTHONPATH=/tmp/dali_pp:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-}:$PWD
W=/tmp/fastft_gpu; mkdir -p $W
gpu=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
date=$(date +%F)
# a 100-class view of 256x256 JPEGs (ImageNet-like sizes before the shard resize)
[ -d $W/syn ] || python -m fastft synth --out $W/syn --classes $(python -c "from fastft.taxonomy import load; print(' '.join(load().under('n03575240')[:100]))") \
    --train-per-class 100 --val-per-class 4 --size 400 --val-layout folders
[ -f $W/store/manifest.json ] || python -m fastft shard $W/syn --out $W/store --allow-missing --quiet
python -m fastft subsets make all --out $W/spec.json \
    --param within="$(python -c "import json; from fastft.store import open_store; print(json.dumps(sorted({w for s in open_store('$W/store').shards for w in s['classes']})))")"
python -m fastft subsets resolve $W/spec.json --set target --store $W/store --out $W/view
python -m fastft bench loader $W/view --seconds 8 --out "$OUT/loader-$gpu-$date.json"
python -m fastft bench train $W/view --seconds 8 --out "$OUT/train-eager-$gpu-$date.json"
python -m fastft bench train $W/view --seconds 8 --compile --cache --out "$OUT/train-compile-$gpu-$date.json"
[ -f .dali/baselines.py ] && OUT=$OUT ANCHOR_BUDGET_S=200 ANCHOR_SECTIONS=env,corpus,compute,cpu,dali python .dali/baselines.py > "$OUT/baselines.txt" 2>&1 || true
cat "$OUT"/*.json
