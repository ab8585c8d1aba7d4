#!/usr/bin/env bash
# Install, then run the whole test suite and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest "$@"
