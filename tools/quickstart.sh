#!/usr/bin/env bash
# Quick start on a fresh machine: install the package, generate the built-in synthetic
# deblurring set (no download), and run the depth CLI on it and on a photo that ships with
# scikit-image. No pretrained weights can be downloaded here, so the depth model is the `tiny`
# preset with random weights: this shows the pipeline end to end, not a useful depth map.
# With real weights: python tools/convert_weights.py --input depth_anything_v2_vits.pth --output ckpt
# and pass --checkpoint ckpt instead of --random-init tiny.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-workdir/quickstart}
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
mkdir -p "$WORK"
python tools/make_synthetic_dataset.py --output "$WORK/synthetic" --num-train 8 --num-test 4 \
    --size 256x256 --seed 0 --overwrite
PHOTO=$(python -c "import os, skimage; print(os.path.join(os.path.dirname(skimage.__file__), 'data', 'chelsea.png'))")
python -m radblur_jax.depth --random-init tiny --input "$PHOTO" --output "$WORK/depth_photo"
SCENE=$(ls -d "$WORK"/synthetic/test/*/blur | head -n 1)
python -m radblur_jax.depth --random-init tiny --input "$SCENE" --output "$WORK/depth_synthetic"
echo "quick start done: outputs in $WORK"
