#!/usr/bin/env bash
# Data of the shipped CLSR-CARN-M x4 model (options/train/CLSR_CARN_M_x4_ship.yml) and of the
# results table (options/test/CLSR_CARN_M_x4_results_*.yml), made from ../shared/data only.
# LocalSR paper Sec. 4: bicubic x4 degradation (MATLAB-compatible, BasicSR's imresize).
# Resumable: rerunning skips complete outputs. Run from the repository root:
#     bash data/prepare_ship_data.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared/data}
OUT=${OUT:-datasets/ship}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# 1. official CARN-M (multi-scale) -> BasicSR single-scale x4 checkpoint (the CLSR base)
if [ ! -f experiments/pretrained_models/CARN_M_x4.pth ]; then
  $PY data/convert_carn_m.py --input "$SHARED/weights/carn_m.pth" \
      --output experiments/pretrained_models/CARN_M_x4.pth --scale 4
fi

# 2. the six DIV2K/Flickr2K images, split by image (issue 13): four train, two validate.
#    Checkpoints and settings are chosen on the two held-out images (24x24 ROIs every 16 px:
#    1,333 ROIs), never on Set5/Set14/BSD100. The split is fixed in advance: the last image of
#    each source is held out.
TRAIN_IMAGES="DIV2K/HR/0004.png Flickr2K/HR/000004.png Flickr2K/HR/000005.png Flickr2K/HR/000007.png"
VAL_IMAGES="DIV2K/HR/0006.png Flickr2K/HR/000010.png"
for part in train val; do
  mkdir -p "$OUT/split/$part"
  list=$TRAIN_IMAGES; [ "$part" = val ] && list=$VAL_IMAGES
  for img in $list; do
    ln -sfn "$(cd "$SHARED" && pwd)/$img" "$OUT/split/$part/$(basename "$(dirname "$(dirname "$img")")")_$(basename "$img")"
  done
done
#    training: 480x480 HR sub-images (step 240) -> x4 LR
$PY data/extract_subimages.py "$OUT/split/train" "$OUT/train/HR_sub" --crop-size 480 --step 240
$PY data/generate_lr.py "$OUT/train/HR_sub" "$OUT/train/LR_sub_x4" --scale 4
#    validation: whole held-out images, HR cropped to a multiple of 4 + x4 LR
$PY data/prepare_benchmark.py "$OUT/split/val" "$OUT/val/HR" "$OUT/val/LR_bicubic/X4" --scale 4

# 3. validation / test: Set5, Set14, BSD100 -> HR cropped to a multiple of 4 + x4 LR
for set in Set5 Set14 BSD100; do
  $PY data/prepare_benchmark.py "$SHARED/$set/HR" "$OUT/$set/HR" "$OUT/$set/LR_bicubic/X4" --scale 4
done
