#!/usr/bin/env bash
# The GPU checks of one device session (H100/H200, torch from the machine's image, the package
# from src/ without installing): (1) the NCCL path of distributed training through torchrun,
# (2) the Fashion-MNIST suites on the fast loader, (3) the epoch-time benchmark.
# Fashion-MNIST's four .gz files travel in .gpu_data/. Results go to $OUT.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
mkdir -p /usr/share/datasets/fashion-mnist && cp .gpu_data/*.gz /usr/share/datasets/fashion-mnist/
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/machine.txt"
nproc | sed 's/^/cpu cores /' | tee -a "$OUT/machine.txt"

# (1) NCCL: the same CKD run (gathered negatives) as a torchrun launch and as a plain process
{
  python3 -m ckd train fashion_mnist/teacher data.loader=fast optim.epochs=3 run.out_dir=/tmp/teacher run.progress=false
  torchrun --standalone --nproc-per-node=1 -m ckd train fashion_mnist/ckd data.loader=fast \
    teacher.checkpoint=/tmp/teacher/last.pt method.global_negatives=true optim.epochs=3 \
    run.out_dir=/tmp/nccl run.progress=false --json
  python3 -m ckd train fashion_mnist/ckd data.loader=fast teacher.checkpoint=/tmp/teacher/last.pt \
    method.global_negatives=true optim.epochs=3 run.out_dir=/tmp/single run.progress=false --json
} 2>&1 | tee "$OUT/nccl.log"

# (2) the suites, fast loader, one shared teacher (bounded: what finished is packed either way)
CLAIM="[data.num_workers=0,data.train_subset=2000,optim.epochs=5,data.loader=fast]"
timeout "${SUITE_LIMIT:-420}" bash -c '
  run_suite() {
    python3 -m ckd bench "benchmarks/suites/fashion_mnist_$1.yaml" "overrides=$2" \
      "out_dir=runs/gpu/$1" teacher.out_dir=runs/gpu/teacher
  }
  time run_suite main "[data.num_workers=0,data.loader=fast]"
  time run_suite negatives "$0"
  time run_suite temperature_weight "$0"
  time run_suite batch_size "$0"
' "$CLAIM" > "$OUT/suites.log" 2>&1
tar czf "$OUT/gpu_suites.tgz" --exclude='*.pt' --exclude=tensorboard runs/gpu
tail -5 "$OUT/suites.log"

# (3) epoch time, if time is left
timeout "${EPOCH_LIMIT:-150}" python3 benchmarks/gpu_epoch.py --out "$OUT" 2>&1 | tail -20
