#!/usr/bin/env bash
# Runs one training command on every worker of a Cloud TPU VM pod slice (not run in CI).
#
#   tools/tpu/launch.sh TPU_NAME ZONE [PROJECT] -- --config configs/deblur.py:l \
#       --workdir /mnt/runs/deblur_l --config.data.root=/mnt/data/GOPRO_Large
#
# Every worker must run the same command at the same time: JAX's multi-process runtime
# (`jax.distributed.initialize()`, called by radblur_jax.main on a multi-host slice) waits until
# all of them have joined. The workdir must be one directory shared by all workers at the same
# path (a bucket mounted with gcsfuse, or Filestore; gs:// URLs are not supported); each
# worker reads its own rows of every batch from the dataset root, which must exist on every
# worker (a bucket mounted with gcsfuse, a Filestore share, or a copy on each VM's disk).
# Re-running the same command after a preemption resumes from the latest checkpoint.
#
# Environment: REPO_DIR (checkout on the workers, default ~/radblur_jax), VENV (default
# $REPO_DIR/.venv). Use tools/tpu/setup_workers.sh once to create them.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
PROJECT_ARGS=()
if [[ $1 != "--" ]]; then PROJECT_ARGS=(--project "$1"); shift; fi
[[ ${1:-} == "--" ]] && shift
REPO_DIR=${REPO_DIR:-'~/radblur_jax'}
VENV=${VENV:-"$REPO_DIR/.venv"}
ARGS=$(printf '%q ' "$@")

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_ARGS[@]}" --worker=all \
  --command "cd $REPO_DIR && PYTHONPATH=\$PWD $VENV/bin/python -m radblur_jax.main $ARGS \
             2>&1 | tee -a \$HOME/radblur_train.log"
