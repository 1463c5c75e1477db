#!/bin/bash
# The accelerator rows of docs/benchmarks.md in one run, for a lent GPU with little time on it:
# the bf16 train step of `s` and `b` at 256x256, batch 16 (images/s, MFU, peak memory, compile
# time, and for `s` where the compile's time goes), inference at 1280x720 for `s` and `l`
# (whole image and adaptive exit), the `s` step in the formulation the lean step replaced
# (`--conv_impl reference`: whether the lean form pays on a GPU), three forms of the `s` step
# that tell what its compile is made of: without XLA's Triton GEMMs, split into a gradient
# program and an optimiser update program compiled side by side (train.split_step=on), and
# with the optimiser's moments per leaf (the layout before the flat one); and what is live at
# the `s` step's memory peak without and with the ViT's and the stem's remat
# (peak_memory.py). ROWS picks and orders the parts (default: all, in the order below). Each
# starts only if the time it needs (as taken on an H200; estimated for rows not yet run there)
# is left of BUDGET seconds. Output goes to $OUT (all.log + JSON rows).
#
#   BUDGET=520 OUT=/tmp/rows bash benchmarks/gpu_rows.sh
#   ROWS="inf_l ts_s_notriton" BUDGET=400 bash benchmarks/gpu_rows.sh
#   S=tiny B=tiny L=tiny SIZE=64 H=64 W=96 PY=.venv/bin/python bash benchmarks/gpu_rows.sh  # dry run
#
# Where the machine lacks packages (its image has jax, flax, optax, not ml_collections), wheels
# in .whl/ are installed first; fetch them where pip works:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#     ml_collections==1.1.0
set -u
START=$(date +%s); BUDGET=${BUDGET:-560}
OUT=${OUT:-/tmp/gpu_rows}; mkdir -p "$OUT"
S=${S:-s}; B=${B:-b}; L=${L:-l}; SIZE=${SIZE:-256}; H=${H:-720}; W=${W:-1280}; PY=${PY:-python3}
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
if [ -d .whl ] && [ "$PY" = python3 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/all.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
run() {  # name, seconds it needs at least, command...
  local name=$1 need=$2 l; shift 2; l=$(left)
  if [ "$l" -lt "$need" ]; then echo "== skip $name: $l s left"; return; fi
  echo "== $name ($l s left)"
  timeout "$l" "$@" 2>&1 | grep -v -E "Warning|warn\(|cuda_timer|^\s*$"
  echo "== $name done, rc ${PIPESTATUS[0]}, $(( $(date +%s) - START )) s in"
}
STEP="benchmarks/train_step.py --dtypes bfloat16 --batch 16 --size $SIZE --steps 10 --warmup 2"
TS="$STEP --no_split"  # one program, as training compiles it off the CPU
INF="benchmarks/inference.py --modes full,adaptive --dtype bfloat16 --repeats 3 --height $H --width $W"
PM="benchmarks/peak_memory.py --dtype bfloat16 --conv_impl lax --batch 16 --size $SIZE --no_split"
ALL="ts_s ts_s_reference inf_s inf_l ts_b ts_s_perleaf ts_s_split ts_s_notriton pm_s pm_s_remat"
for row in ${ROWS:-$ALL}; do
  case $row in
    ts_s) run ts_s 240 $PY $TS --presets "$S" --profile-compile 40 --json "$OUT/ts_s.json" ;;
    ts_b) run ts_b 250 $PY $TS --presets "$B" --json "$OUT/ts_b.json" ;;
    ts_s_reference) run ts_s_reference 180 $PY $TS --presets "$S" --no_counts \
      --conv_impl reference --json "$OUT/ts_s_reference.json" ;;
    ts_s_notriton) run ts_s_notriton 180 env XLA_FLAGS=--xla_gpu_enable_triton_gemm=false \
      $PY $TS --presets "$S" --no_counts --json "$OUT/ts_s_nt.json" ;;
    ts_s_perleaf) run ts_s_perleaf 180 $PY $TS --presets "$S" --no_counts --layout per_leaf \
      --json "$OUT/ts_s_perleaf.json" ;;
    ts_s_split) run ts_s_split 200 $PY $STEP --presets "$S" --no_counts \
      --profile-compile 40 --json "$OUT/ts_s_split.json" ;;
    inf_s) run inf_s 80 $PY $INF --presets "$S" --json "$OUT/inf_s.json" ;;
    inf_l) run inf_l 150 $PY $INF --presets "$L" --json "$OUT/inf_l.json" ;;
    pm_s) run pm_s 150 $PY $PM --presets "$S" --json "$OUT/pm_s.json" ;;
    pm_s_remat) run pm_s_remat 150 $PY $PM --presets "$S" --remat both \
      --json "$OUT/pm_s_remat.json" ;;
    *) echo "== unknown row $row (expected some of: $ALL)"; exit 2 ;;
  esac
done
echo "== all done, $(( $(date +%s) - START )) s"
