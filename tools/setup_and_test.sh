#!/usr/bin/env bash
# Sets up a venv with the test extras (CPU torch 2.13.0 pinned) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test,convert]'
python -m pytest -n 2 -q "$@"
