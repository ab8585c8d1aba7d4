#!/usr/bin/env bash
# Install, then compile the bundled example: traffic classification on real captures (nDPI test
# suite, fetched through apt and cached), for a Tofino-class switch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/homunculus compile examples/traffic/spec.yaml -o out/traffic "$@"
echo "artefacts: $(pwd)/out/traffic (open report.html)"
