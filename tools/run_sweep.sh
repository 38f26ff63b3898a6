#!/usr/bin/env bash
# The main job: installs what is missing (idempotent), then runs the
# patch-size scaling sweep on Fashion-MNIST (about 6 minutes on 2 vCPUs).
# Extra arguments go to tools/patch_scaling_sweep.py (see its --help).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/install.sh"
cd "$ROOT"
exec "${PYTHON:-python3}" tools/patch_scaling_sweep.py "$@"
