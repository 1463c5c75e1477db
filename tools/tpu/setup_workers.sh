#!/usr/bin/env bash
# One-time setup of every worker of a Cloud TPU VM pod slice (not run in CI):
# copies this checkout to ~/radblur_jax on each worker and installs it with jax[tpu].
#
#   tools/tpu/setup_workers.sh TPU_NAME ZONE [PROJECT]
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,5p' "$0" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2
PROJECT_ARGS=()
[[ $# -ge 3 ]] && PROJECT_ARGS=(--project "$3")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ARCHIVE=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$ARCHIVE"' EXIT
git -C "$ROOT" archive --format=tar.gz -o "$ARCHIVE" HEAD

gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME":radblur_jax.tar.gz --zone "$ZONE" \
  "${PROJECT_ARGS[@]}" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_ARGS[@]}" --worker=all \
  --command 'set -e; mkdir -p ~/radblur_jax && tar xzf ~/radblur_jax.tar.gz -C ~/radblur_jax
             cd ~/radblur_jax && python3 -m venv .venv
             .venv/bin/pip install -q -e . "jax[tpu]==0.10.2"'
