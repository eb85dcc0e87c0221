#!/bin/bash
# The README's own-data flow, offline, on the Fashion-MNIST image folder `ckd make-folder` writes
# (6,000 train / 1,000 val 28x28 PNGs): a tv:resnet18 teacher, a CE-only resnet8, CKD into resnet8
# and into timm's DeiT-Tiny, evaluation, ONNX export. Offline there are no pretrained weights, so
# the teacher is trained from scratch (student.pretrained=false); with torchvision's weights in
# torch hub's cache, drop that override to fine-tune them instead.
# Usage: benchmarks/folder_flow.sh [WORK_DIR]   (about 20 minutes on 2 quiet CPU cores)
set -ex
OUT=${1:-runs/folder_flow}
CKD=${CKD:-$(dirname "$0")/../.venv/bin/ckd}
CKD=$(realpath "$CKD")
mkdir -p "$OUT" && cd "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -d data/fmnist_folder ] || $CKD make-folder --out data/fmnist_folder
$CKD train folder/teacher_resnet18 student.pretrained=false run.tensorboard=false
$CKD train folder/vanilla run.tensorboard=false
$CKD train folder/ckd_resnet run.tensorboard=false
$CKD eval runs/folder/ckd_resnet/seed0/last.pt
$CKD export runs/folder/ckd_resnet/seed0 --format onnx
$CKD train folder/ckd_deit run.tensorboard=false
$CKD export runs/folder/ckd_deit/seed0 --format onnx
