#!/usr/bin/env bash
# The GPU checks of one device session (H100/H200, torch from the machine's image, the package
# from src/ without installing): (1) the NCCL path of distributed training through torchrun,
# (2) the Fashion-MNIST suites on the fast loader, (3) the epoch-time benchmark, (4) the cost of a
# CKD step against KD, DKD and CRD, (5) detection distillation on CUDA with bf16, (6) the speed
# checks of issue 14 (STEPS=speed: CUDA graphs, suite --jobs, ~7 minutes, run first).
# STEPS picks them (default: "nccl suites epoch"). Fashion-MNIST's four .gz files travel in
# .gpu_data/; wheels of packages the machine lacks (pycocotools, for step 5) in .whl/.
# Results go to $OUT.
set -u
STEPS=${STEPS:-"nccl suites epoch"}
has() { [[ " $STEPS " == *" $1 "* ]]; }
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu_data/*.gz /usr/share/datasets/fashion-mnist/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/machine.txt"
nproc | sed 's/^/cpu cores /' | tee -a "$OUT/machine.txt"

# (6) issue 14 (benchmarks/gpu_speed.py), about 7 minutes on an H200, at most 10 (each section
# has its own time limit, most important first): the step as a CUDA graph against eager over 50
# steps, epoch times with graphs, a suite's runs per hour with --jobs 1, 4 and 8, the CKD step
# against the KD step in every mode, the two other pairs; COMPILE=1 adds reduce-overhead.
has speed && {
  declare -A LIMIT=([equality]=90 [epoch]=150 [suite]=150 [cost]=90 [pairs]=120 [compile]=180)
  for s in equality epoch suite cost pairs ${COMPILE:+compile}; do
    echo "== $s"; timeout "${LIMIT[$s]}" python3 benchmarks/gpu_speed.py "$s" --out "$OUT"
  done
  python3 benchmarks/gpu_speed.py report --out "$OUT"
} 2>&1 | grep -v "^round" | tee "$OUT/gpu_speed.log"

# (1) NCCL: the same CKD run (gathered negatives) as a torchrun launch and as a plain process
has nccl && {
  python3 -m ckd train fashion_mnist/teacher data.loader=fast optim.epochs=3 run.out_dir=/tmp/teacher run.progress=false
  torchrun --standalone --nproc-per-node=1 -m ckd train fashion_mnist/ckd data.loader=fast \
    teacher.checkpoint=/tmp/teacher/last.pt method.global_negatives=true optim.epochs=3 \
    run.out_dir=/tmp/nccl run.progress=false --json
  python3 -m ckd train fashion_mnist/ckd data.loader=fast teacher.checkpoint=/tmp/teacher/last.pt \
    method.global_negatives=true optim.epochs=3 run.out_dir=/tmp/single run.progress=false --json
} 2>&1 | tee "$OUT/nccl.log"

# (2) the suites, fast loader, one shared teacher (bounded: what finished is packed either way)
CLAIM="[data.num_workers=0,data.train_subset=2000,optim.epochs=5,data.loader=fast]"
has suites && timeout "${SUITE_LIMIT:-420}" bash -c '
  run_suite() {
    python3 -m ckd suite "benchmarks/suites/fashion_mnist_$1.yaml" "overrides=$2" \
      "out_dir=runs/gpu/$1" teacher.out_dir=runs/gpu/teacher
  }
  time run_suite main "[data.num_workers=0,data.loader=fast]"
  time run_suite negatives "$0"
  time run_suite temperature_weight "$0"
  time run_suite batch_size "$0"
' "$CLAIM" > "$OUT/suites.log" 2>&1
has suites && tar czf "$OUT/gpu_suites.tgz" --exclude='*.pt' --exclude=tensorboard runs/gpu
has suites && tail -5 "$OUT/suites.log"

# (3) epoch time, if time is left
has epoch && timeout "${EPOCH_LIMIT:-150}" python3 benchmarks/gpu_epoch.py --out "$OUT" 2>&1 | tail -20

# (4) cost of a step: CKD against KD, DKD, CRD and CE only (time and peak CUDA memory)
has cost && python3 -m ckd bench speed --device cuda --rounds 3 --steps 40 \
  --variants fast:ckd,fast:kd,fast:dkd,fast:crd,fast:vanilla --json "$OUT/gpu_cost.json" \
  2>&1 | tee "$OUT/gpu_cost.txt" | grep -v "^round"

# (5) detection on CUDA with bf16 (a smoke test, not a benchmark): a 60-iteration teacher, then
# a CKD + ReviewKD student, Mask R-CNN on the generated shapes
D="run.device=cuda run.amp=bf16 optim.iters=60 optim.eval_every=60 optim.checkpoint_every=60"
D="$D optim.milestones=[40,50] optim.warmup_iters=10 data.num_workers=4"
has detection && {
  python3 -m ckd train detection/shapes/mask_rcnn_teacher $D run.out_dir=/tmp/det_t
  python3 -m ckd train detection/shapes/mask_rcnn_ckd $D teacher.checkpoint=/tmp/det_t/last.pt \
    run.out_dir=/tmp/det_s --json
} 2>&1 | grep -v "^iter" | tee "$OUT/gpu_detection.log"
