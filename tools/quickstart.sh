#!/usr/bin/env bash
# Quick start on a fresh machine (CPU is enough, no download): install the package, train the
# `tiny` RADBlur preset on the built-in synthetic deblurring set (generated on first use), score
# the trained model on a held-out set of real photographs blurred by camera shake, and deblur a
# photo that ships with scikit-image. Outputs go under WORK (default workdir/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-workdir/quickstart}
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
mkdir -p "$WORK"
# Stage B on the synthetic set: checkpoints, metrics.jsonl, TensorBoard, validation grids.
python -m radblur_jax.main --config configs/deblur.py:tiny --workdir "$WORK/train"
# Real photographs (scikit-image) blurred by camera shake, scored with the GoPro protocol.
[ -d "$WORK/photo_shake" ] || python tools/make_photo_shake_set.py --output "$WORK/photo_shake"
python -m radblur_jax.main --config configs/eval.py:tiny --workdir "$WORK/eval_photos" \
    --config.checkpoint="$WORK/train" --config.data.name=paired_folder \
    --config.data.root="$WORK/photo_shake"
PHOTO=$(python -c "import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), 'data', 'chelsea.png'))")
python -m radblur_jax.deblur --checkpoint "$WORK/train" --input "$PHOTO" --output "$WORK/deblurred"
echo "quick start done: outputs in $WORK"
