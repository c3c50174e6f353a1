#!/usr/bin/env bash
# The whole pipeline in one command: `bash run.sh [CONFIG]`.
# Without CONFIG: real KSDD2 (configs/ksdd2.toml) when ./datasets/KSDD2 exists, otherwise the
# synthetic demo (generated into ./datasets/demo, configs/demo.toml). Rerunning skips what is done.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v segdec-prune >/dev/null 2>&1; then
  echo "segdec-prune is not installed: pip install torch==2.13.0 && pip install -e '.[openvino]'" >&2
  exit 1
fi
config="${1:-}"
if [ -z "$config" ]; then
  if [ -d datasets/KSDD2/train ] && [ -d datasets/KSDD2/test ]; then
    echo "Found datasets/KSDD2: running the paper's settings (configs/ksdd2.toml). A GPU is strongly advised."
    config=configs/ksdd2.toml
  else
    echo "No datasets/KSDD2 found: running the CPU demo on synthetic KSDD2-format data (configs/demo.toml)."
    [ -d datasets/demo/train ] || segdec-prune data synth --out datasets/demo
    config=configs/demo.toml
  fi
fi
shift $(( $# > 0 ? 1 : 0 ))
exec segdec-prune run --config "$config" "$@"
