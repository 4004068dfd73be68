#!/usr/bin/env bash
# GPU check (issue 18): on a machine with an NVIDIA GPU, run the lab's CUDA paths once and print PASS/FAIL per
# check with the measured ratios. Not part of CI or `make test`; run it by hand on a GPU machine:
#
#     bash scripts/gpu_check.sh            # from anywhere inside this checkout
#
# What it checks (scripts/gpu_check.py says more): SmolLM2-135M-Instruct on CUDA with SnapKV (fewer KV bytes),
# prompt lookup (greedy tokens equal the baseline's, on chat and grounded) and bf16 weights (half the bytes);
# and a tiny saved Flux pipeline on CUDA through the pipeline path with two caches (fewer blocks computed).
# Speeds are printed as information, never judged.
#
# Time: the check itself is limited to 480 s (expected 3-5 min on one GPU). On a fresh checkout, creating the
# venv (`make setup`, minutes of pip) and converting the model (`lab prepare`, about 40 s) come first.
# GPU_CHECK_PYTHON=/path/to/python uses that interpreter instead of .venv (no setup); extra arguments go to
# scripts/gpu_check.py (--quick, --keep).
# Exit: 0 all checks pass, 1 a check failed (or it timed out), 2 it could not start (no CUDA torch, no GPU).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# GPU_CHECK_PYTHON: an interpreter that already has requirements.txt and a CUDA torch (e.g. on a machine without
# network access, where `make setup` cannot install anything); default the project's venv, created if missing.
PY="${GPU_CHECK_PYTHON:-.venv/bin/python}"

if [ -z "${GPU_CHECK_PYTHON:-}" ] && { [ ! -x "$PY" ] || [ ! -f .venv/.installed ]; }; then
    echo "== no venv here: make setup (installs requirements.txt; minutes)"
    make setup
fi

# The venv pins torch==2.13.0; where pip took the CPU build (as on the machine the lab was built on), it cannot
# see a GPU. Stop here with the fix rather than guess a CUDA wheel: the right one depends on the driver.
if ! "$PY" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    print(f"torch {torch.__version__} in {sys.executable} does not see a CUDA GPU (built with CUDA: "
          f"{torch.version.cuda}).", file=sys.stderr)
    sys.exit(1)
print(f"== torch {torch.__version__} (CUDA {torch.version.cuda}) sees {torch.cuda.get_device_name(0)}")
EOF
then
    cat >&2 <<'EOF'

The GPU check needs a CUDA build of torch 2.13.0 in .venv (or in GPU_CHECK_PYTHON). Check the GPU first
(`nvidia-smi`), then install the CUDA build that matches the driver, e.g. for CUDA 12.8:

    .venv/bin/python -m pip install "torch==2.13.0+cu128" --index-url https://download.pytorch.org/whl/cu128

(the local tag +cu128 is needed: plain torch==2.13.0 counts as already installed by the CPU build; other
variants: https://pytorch.org/get-started/locally/). `make setup` keeps it afterwards, since it satisfies
torch==2.13.0. Then run this script again.
EOF
    exit 2
fi

# what `make prepare` runs, without make's check of the venv against requirements.txt (which reinstalls, and
# needs the network, whenever requirements.txt is newer than the venv)
echo "== lab prepare (converts the built-in model once, about 40 s; seconds when already done)"
"$PY" -m lab prepare

echo "== running scripts/gpu_check.py on cuda (limit 480 s)"
# timeout signals the whole process group (the driver, its worker and the job's process); --kill-after ends
# anything that ignored SIGTERM. The driver's own limit (450 s) comes first and reports what finished.
status=0
timeout --kill-after=15 480 "$PY" scripts/gpu_check.py --device cuda --limit-s 450 "$@" || status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "GPU check timed out after 480 s" >&2
    exit 1
fi
exit "$status"
