#!/usr/bin/env bash
# The GPU checks and timings of blkc, for a machine with an NVIDIA GPU
# (CUDA 13) and PyTorch but no Rust.
#
#   bench/gpu-check.sh build   # here: builds into target-gpu/ (carry it)
#   bench/gpu-check.sh run     # there: results as files under $OUT
#
# `build` makes the device test binary and two blkc binaries: `blkc` (burn's
# CUDA backend as blkc's default build has it) and `blkc-fused` (with burn's
# operation fusion and kernel autotuning), stripped and xz-compressed.
#
# `run`, most important first, each result written as soon as it exists
# (a run cut short still leaves what it finished):
#   1. device.txt     every small model's logits, every parameter's gradient
#                     and 100 AdamW steps on CUDA against the CPU, and the
#                     bench's device memory (runtime/tests/device.rs)
#   2. blkc-*.json    `blkc bench` of the CodeParrot Pre-LN and SAS-P, fp32
#                     and bf16, batch 32 and 128, both binaries
#   3. torch-*.jsonl  the same models in PyTorch (bench/torch_ref.py): eager
#                     fp32 (TF32 off) and bf16 autocast, batch 32 and 128;
#                     torch.compile at batch 32
#   4. curve-*.jsonl  200 steps of the quick SAS-P in fp32 and in bf16
#   5. table.md       bench/gpu_table.py over all of it
# Record table.md in bench/NOTES.md.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  build)
    set -e
    export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
    target="${CARGO_TARGET_DIR:-target}"
    mkdir -p target-gpu
    bin=$(cargo test -p blkc-runtime --release --features cuda --test device --no-run --message-format=json \
      | python3 -c 'import json,sys; print([json.loads(l)["executable"] for l in sys.stdin if "\"executable\":\"" in l][-1])')
    cp "$bin" target-gpu/device-test
    cargo build -p blkc-runtime --release --features cuda
    cp "$target/release/blkc" target-gpu/blkc
    cargo build -p blkc-runtime --release --features cuda,fusion,autotune
    cp "$target/release/blkc" target-gpu/blkc-fused
    for f in device-test blkc blkc-fused; do
      strip "target-gpu/$f"
      xz -T0 -f "target-gpu/$f"
    done
    ls -la target-gpu
    ;;
  run)
    out="${OUT:-/tmp/gpu-check}"
    mkdir -p "$out"
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    for f in target-gpu/*.xz; do [ -e "$f" ] && xz -dkf "$f"; done
    chmod +x target-gpu/* 2>/dev/null
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/gpu.csv" 2>&1
    say() { echo "[$(date +%T)] $*" | tee -a "$out/log.txt"; }
    say "device checks"
    (cd runtime && timeout 240 ../target-gpu/device-test --ignored --nocapture --test-threads 1) > "$out/device.txt" 2>&1
    say "device checks: exit $?"
    for batch in 32 128; do
      for p in bf16 fp32; do
        for bin in blkc blkc-fused; do
          say "$bin bench $p batch $batch"
          timeout 180 "target-gpu/$bin" bench examples/codeparrot/preln.blk examples/codeparrot/sas-p.blk \
            --device cuda --precision "$p" --batch "$batch" --steps 10 --warmup 3 --format json \
            > "$out/$bin-$p-b$batch.json" 2> "$out/$bin-$p-b$batch.err"
          say "  exit $?"
        done
      done
    done
    for batch in 32 128; do
      for d in bf16 fp32; do
        say "torch eager $d batch $batch"
        timeout 180 python3 bench/torch_ref.py --device cuda --shape codeparrot --dtype "$d" --batch "$batch" \
          --steps 10 > "$out/torch-$d-b$batch.jsonl" 2> "$out/torch-$d-b$batch.err"
      done
    done
    say "quick SAS-P, 200 steps, fp32 and bf16"
    for p in fp32 bf16; do
      rm -rf "/tmp/curve-$p"
      timeout 120 target-gpu/blkc train examples/quick/sas-p.blk --device cuda --precision "$p" --out "/tmp/curve-$p" \
        --steps 200 --data compiler/src --set eval_every=50 --set log_every=10 -q > "$out/curve-$p.txt" 2>&1
      cp "/tmp/curve-$p/metrics.jsonl" "$out/curve-$p.jsonl" 2>/dev/null
    done
    for d in bf16 fp32; do
      say "torch.compile $d batch 32"
      timeout 240 python3 bench/torch_ref.py --device cuda --shape codeparrot --dtype "$d" --batch 32 \
        --steps 10 --only-compile > "$out/torch-$d-b32-compile.jsonl" 2> "$out/torch-$d-b32-compile.err"
    done
    python3 bench/gpu_table.py "$out" > "$out/table.md" 2> "$out/table.err"
    cat "$out/table.md"
    say "done"
    ;;
  *)
    echo "usage: bench/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
