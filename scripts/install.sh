#!/usr/bin/env bash
# Install what Homunculus needs on a fresh Debian 12 machine (as root): Python venv + packages.
# Idempotent; creates .venv in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Python, gcc (C target), clang/llvm/libbpf/bpftool (XDP target), iproute2
# (network namespaces for the live XDP tests), libndpi-bin (ndpiReader: the DPI labelling agent
# of homunculus adapt). Installed only when something is missing.
APT_PACKAGES="gcc make clang llvm libbpf-dev bpftool iproute2 libndpi-bin"
missing=""
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
  missing="$missing python3 python3-venv python3-pip"
fi
if [ -n "$missing" ]; then
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
echo "installed: $(.venv/bin/homunculus --help >/dev/null && echo homunculus) in $(pwd)/.venv"
