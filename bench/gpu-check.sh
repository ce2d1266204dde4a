#!/usr/bin/env bash
# The GPU checks of blkc, for a machine with an NVIDIA GPU (CUDA 13) but no
# Rust. Run `bench/gpu-check.sh build` here: it builds the device test binary
# and the blkc binary into target-gpu/ (carry that folder to the GPU machine
# with the checkout), then `bench/gpu-check.sh run` there: every small model's
# logits, every parameter's gradient and 100 AdamW steps on CUDA against the
# CPU (runtime/tests/device.rs), 50 training steps of the small SAS-P on the GPU
# (bytes tokenizer, this checkout's sources as data; the loss must fall), and
# `blkc bench` of the four canonical blocks on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  build)
    export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
    bin=$(cargo test -p blkc-runtime --release --features cuda --test device --no-run --message-format=json \
      | python3 -c 'import json,sys; print([json.loads(l)["executable"] for l in sys.stdin if "\"executable\":\"" in l][-1])')
    mkdir -p target-gpu && cp "$bin" target-gpu/device-test
    cargo build -p blkc-runtime --release --features cuda
    cp "${CARGO_TARGET_DIR:-target}/release/blkc" target-gpu/blkc
    echo "built target-gpu/device-test and target-gpu/blkc"
    ;;
  run)
    (cd runtime && ../target-gpu/device-test --ignored --nocapture)
    out="${OUT:-/tmp}/gpu-train"
    rm -rf "$out"
    target-gpu/blkc train examples/quick/sas-p.blk --device cuda --out "$out" --steps 50 \
      --data compiler/src --set eval_every=25 --set log_every=5 2>&1 | tail -5 || true
    target-gpu/blkc bench blocks/preln.blk blocks/parallel.blk blocks/sas.blk blocks/sas-p.blk --device cuda --steps 20
    ;;
  *)
    echo "usage: bench/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
