#!/usr/bin/env bash
# Data of the real-world models (issue 21), from ../shared/data only, in one command:
#     bash data/prepare_real_data.sh
# 1. the 497 training images (BSDS500 train+test, T91, the six DIV2K/Flickr2K), split by image
#    BEFORE any training: every 20th image of the sorted list is validation (25 images), the
#    rest train (472). Set5/Set14/BSD100 are never trained or selected on.
# 2. training HR: the 2K images cut into 480 px sub-images (step 240), the small images as they
#    are, packed into one LMDB (BasicSR's make_lmdb_from_imgs, meta_info.txt inside). Training
#    degrades HR contexts on the fly (Real-ESRGAN second order, options/train/*_real_*.yml), so
#    there is no LR training folder.
# 3. validation: the 25 held-out images degraded once, seeded (data/make_degraded_sets.py: the
#    Real-ESRGAN set and the three single-factor sets), for checkpoint selection.
# 4. test sets: Set5/Set14/BSD100 HR -> the same four degraded kinds, seed 0, with manifests, and
#    the clean bicubic LR (for the bicubic models' table).
# Resumable: rerunning skips complete outputs (sub-images, LMDB); the degraded sets are
# rewritten byte-identically.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared/data}
OUT=${OUT:-datasets/real}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
SHARED_ABS=$(cd "$SHARED" && pwd)

# 0. the official IMDN x4 weights as a BasicSR checkpoint ({'params': ...}, no 'module.' prefix), so
#    that path.pretrain_network_g loads them into the network and its EMA copy (the real base's start)
if [ ! -f experiments/pretrained_models/IMDN_x4.pth ]; then
  mkdir -p experiments/pretrained_models
  $PY - "$SHARED/weights/IMDN_x4.pth" experiments/pretrained_models/IMDN_x4.pth <<'PYEOF'
import sys, torch
from clsr_arch.utils.checkpoint import atomic_save
sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True)
atomic_save({'params': {k.removeprefix('module.'): v for k, v in sd.items()}}, sys.argv[2])
PYEOF
fi

# 1. the split (sorted by source/name; names prefixed by their source so that stems are unique)
mkdir -p "$OUT/split/train_big" "$OUT/split/train_small" "$OUT/split/val"
i=0
for src in BSDS500/train BSDS500/test DIV2K/HR Flickr2K/HR T91; do
  for f in $(cd "$SHARED_ABS/$src" && ls | sort); do
    i=$((i + 1))
    name="$(echo "$src" | cut -d/ -f1)_$(basename "$src")_$f"
    [ "$src" = T91 ] && name="T91_$f"
    case "$src" in DIV2K/HR|Flickr2K/HR) kind=train_big ;; *) kind=train_small ;; esac
    [ $((i % 20)) -eq 0 ] && kind=val
    ln -sfn "$SHARED_ABS/$src/$f" "$OUT/split/$kind/$name"
  done
done
echo "split: $(ls "$OUT/split/train_big" "$OUT/split/train_small" | grep -c '\.') train, $(ls "$OUT/split/val" | wc -l) validation images"

# 2. training HR: sub-images of the 2K images + the small images, one LMDB
$PY data/extract_subimages.py "$OUT/split/train_big" "$OUT/train/HR" --crop-size 480 --step 240
for f in "$OUT"/split/train_small/*; do ln -sfn "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$OUT/train/HR/$(basename "$f")"; done
$PY data/create_lmdb.py "$OUT/train/HR" "$OUT/train/HR.lmdb"

# 3. validation: the held-out images, degraded once (seeded); their clean bicubic LR too (the
#    bicubic models, retrained on the same split, are chosen on it)
$PY data/make_degraded_sets.py "$OUT/split/val" "$OUT/val" --seed 0 \
    --kinds realesrgan,jpeg30,noise10,blur1.6,bicubic

# 4. test sets (never trained or selected on)
for set in Set5 Set14 BSD100; do
  $PY data/make_degraded_sets.py "$SHARED/$set/HR" "$OUT/$set" --seed 0 \
      --kinds realesrgan,jpeg30,noise10,blur1.6,bicubic
done
