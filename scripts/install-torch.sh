#!/usr/bin/env bash
# Install PyTorch "the right way for the machine" into the given pip:
# - a GPU machine (nvidia-smi answers): the default CUDA build;
# - a machine whose pip find-links folder holds a CPU torch wheel: exactly that version
#   (an unpinned torch would pull gigabytes of CUDA packages);
# - otherwise: the CPU build from PyTorch's own index.
set -euo pipefail
pip="$1"
if "$pip" show torch >/dev/null 2>&1; then
  echo "torch already installed: $("$pip" show torch | sed -n 's/^Version: //p')"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  exec "$pip" install torch
fi
links=$("$pip" config get global.find-links 2>/dev/null || true)
for dir in $links; do
  wheel=$(ls "$dir"/torch-*.whl 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$wheel" ]; then
    version=$(basename "$wheel" | cut -d- -f2 | cut -d+ -f1)
    exec "$pip" install "torch==$version"
  fi
done
exec "$pip" install torch --index-url https://download.pytorch.org/whl/cpu
