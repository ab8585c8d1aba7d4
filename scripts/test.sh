#!/usr/bin/env bash
# Install, then run the whole test suite and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The XDP tests load programs and pin maps: they need root and a mounted bpffs.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest "$@"
