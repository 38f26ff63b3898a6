#!/usr/bin/env bash
# The test command: installs what is missing (idempotent), then runs the
# test suite. Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k vit`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/install.sh"
cd "$ROOT"
exec "${PYTHON:-python3}" -m pytest tests "$@"
