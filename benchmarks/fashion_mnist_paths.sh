#!/bin/bash
# The three input paths give the same accuracy: a short Fashion-MNIST run (Debian's
# dataset-fashion-mnist, 3,000 training / 2,000 test images) of a resnet8 CKD student of a resnet20
# teacher, per path and seed: (a) standard, (b) data.loader=fast, (c) fast + teacher cache.
# Usage: benchmarks/fashion_mnist_paths.sh [OUT_DIR]   (about 15 minutes on 2 CPU cores)
set -e
OUT=${1:-runs/paths}
CKD=${CKD:-$(dirname "$0")/../.venv/bin/ckd}
CKD=$(realpath "$CKD")
mkdir -p "$OUT" && cd "$OUT"
COMMON="run.tensorboard=false data.train_subset=3000"
[ -f teacher/result.json ] || $CKD train fashion_mnist/teacher run.out_dir=teacher $COMMON \
    optim.epochs=5 data.loader=fast
for S in 0 1 2; do
  ST="fashion_mnist/ckd teacher.checkpoint=teacher/last.pt run.seed=$S optim.epochs=4 $COMMON"
  [ -f std$S/result.json ] || $CKD train $ST run.out_dir=std$S
  [ -f fast$S/result.json ] || $CKD train $ST run.out_dir=fast$S data.loader=fast
  [ -f cache$S/result.json ] || $CKD train $ST run.out_dir=cache$S data.loader=fast \
      run.teacher_cache=cache-seed$S
done
for P in std fast cache; do
  echo "$P: $(for S in 0 1 2; do python3 -c "import json; print(json.load(open('$P$S/result.json'))['last_top1'], end=' ')"; done)"
done
