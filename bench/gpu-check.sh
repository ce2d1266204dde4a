#!/usr/bin/env bash
# The GPU checks of blkc, for a machine with an NVIDIA GPU (CUDA 13) but no
# Rust. Run `bench/gpu-check.sh build` here: it builds the CUDA test binary
# into target-gpu/ (carry that folder to the GPU machine with the checkout),
# then `bench/gpu-check.sh run` there.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  build)
    export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
    bin=$(cargo test -p blkc-runtime --release --features cuda --test cuda --no-run --message-format=json \
      | python3 -c 'import json,sys; print([json.loads(l)["executable"] for l in sys.stdin if "\"executable\":\"" in l][-1])')
    mkdir -p target-gpu && cp "$bin" target-gpu/cuda-test
    echo "built target-gpu/cuda-test"
    ;;
  run)
    cd runtime && ../target-gpu/cuda-test --ignored --nocapture
    ;;
  *)
    echo "usage: bench/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
