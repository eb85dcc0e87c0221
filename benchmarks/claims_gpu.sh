#!/usr/bin/env bash
# The paper's claims on one GPU, in one command: the three claims_gpu_* suites (real
# Fashion-MNIST, 10,000 training images per seed, the full test set, 40/80 epochs, 5 seeds),
# then the cost of a step of CKD against KD, DKD and CRD on each pair. Run from the repository
# root on a machine with CUDA, torch and torchvision (the package is read from src/):
#
#   benchmarks/claims_gpu.sh                          # everything, sequentially
#   JOBS=4 benchmarks/claims_gpu.sh                   # 4 runs at once, where `ckd suite --jobs` exists
#   SUITES="resnet32x4_resnet8x4" benchmarks/claims_gpu.sh   # one suite (names without claims_gpu_)
#
# Expected cost on one H200: benchmarks/README.md ("The claims suites on a GPU"). Suites skip
# finished runs and resume interrupted ones, so a stopped script continues where it stopped when
# run again on the same runs/ folder. Fashion-MNIST is read from data.root's defaults
# (/usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist); its four .gz files in
# .gpu_data/ are copied there first when present. Reports, per-run CSVs and figures: runs/suites/
# and, packed without checkpoints, $OUT/claims_gpu.tgz.
set -u
SUITES=${SUITES:-"resnet32x4_resnet8x4 resnet56_resnet20 resnet32x4_ShuffleV2"}
JOBS=${JOBS:-1}
OUT=${OUT:-/tmp/claims_gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .gpu_data/*.gz >/dev/null 2>&1; then
  mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu_data/*.gz /usr/share/datasets/fashion-mnist/
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  nproc | sed 's/^/cpu cores /'
} | tee "$OUT/machine.txt"

parallel=()
if [ "$JOBS" != 1 ]; then
  if python3 -m ckd suite --help | grep -q -- "--jobs"; then
    parallel=(--jobs "$JOBS")
  else
    echo "this ckd has no 'ckd suite --jobs': running the suites one run at a time" | tee -a "$OUT/machine.txt"
  fi
fi

for s in $SUITES; do
  echo "== claims_gpu_$s $(date -u +%FT%TZ)"
  start=$SECONDS
  python3 -m ckd suite "benchmarks/suites/claims_gpu_$s.yaml" "${parallel[@]}" \
    > "$OUT/claims_gpu_$s.log" 2>&1
  echo "claims_gpu_$s: exit $?, $((SECONDS - start)) s"
  grep -A100 "^## Paired differences" "runs/suites/claims_gpu_$s/report.md" | head -40
done 2>&1 | tee "$OUT/claims_gpu.log"

# the cost of a step (time, peak CUDA memory): CKD against KD, DKD, CRD and CE only, per pair,
# 10 classes as Fashion-MNIST, batch 64 as the suites, interleaved rounds (figures of a quiet GPU,
# unlike the images/s of the suites' runs, which share the GPU when JOBS > 1)
for pair in resnet56:resnet20 resnet32x4:resnet8x4 resnet32x4:ShuffleV2; do
  t=${pair%%:*} s=${pair##*:}
  python3 -m ckd bench speed --device cuda --teacher "$t" --student "$s" --classes 10 \
    --rounds 3 --steps 40 --variants fast:ckd,fast:kd,fast:dkd,fast:crd,fast:vanilla \
    --json "$OUT/claims_cost_${t}_${s}.json" 2>&1 | grep -v "^round" | tee "$OUT/claims_cost_${t}_${s}.txt"
done

tar czf "$OUT/claims_gpu.tgz" --exclude='*.pt' --exclude=tensorboard \
  runs/suites/claims_gpu_* 2>/dev/null
echo "results: runs/suites/claims_gpu_*/report.md; packed: $OUT/claims_gpu.tgz"
