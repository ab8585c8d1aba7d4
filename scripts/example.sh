#!/usr/bin/env bash
# Install, then compile the bundled example (IoT device classification on a Tofino-class switch).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/homunculus compile examples/iot/spec.yaml -o out/iot "$@"
echo "artefacts: $(pwd)/out/iot (open report.html)"
