#!/usr/bin/env bash
# The GPU checks and timings of blkc, for a machine with an NVIDIA GPU
# (CUDA 13) and PyTorch but no Rust.
#
#   bench/gpu-check.sh build   # here: builds into target-gpu/ (carry it)
#   bench/gpu-check.sh run     # there: results as files under $OUT
#
# `build` makes the device test binary (and again with fusion) and two
# blkc binaries: `blkc` (burn's CUDA backend as blkc's default build has
# it) and `blkc-fused` (burn's operation fusion and autotuning, blkc's
# kernels as custom operations of the fusion streams), stripped and
# xz-compressed. `blkc-fused` with BLKC_FUSION=off is what the results
# call `blkc-tuned` (burn's kernel autotuning on: its products chosen per
# shape by timing, blkc's kernels as in `blkc`).
#
# `run`, most important first, each result written as soon as it exists
# (a run cut short still leaves what it finished; none is started after
# GPU_CHECK_SECONDS, default 500, so that one device call of 10 minutes
# holds it):
#   device.txt     every small model's logits, every parameter's gradient
#                  and 100 AdamW steps on CUDA against the CPU, and the
#                  bench's device memory (runtime/tests/device.rs)
#   blkc-*.json    `blkc bench` of the CodeParrot Pre-LN and SAS-P, bf16 and
#                  fp32, batch 32 (every binary) and 128; tf32 at batch 32;
#                  bf16 with the attention by rows (`blkc-rows-*`:
#                  BLKC_ATTENTION=rows, blkc's row kernels, where bf16's
#                  default runs it as tensor-core products) and fp32 with
#                  it as products (`blkc-products-*`: cubek's fp32 unit
#                  matmuls, where fp32's default runs the row kernels)
#   profile-*.txt  where blkc's training step spends its time, by GPU kernel
#                  (`blkc bench --profile`): Pre-LN and SAS-P, bf16, batch 32
#   torch-*.jsonl  the same models in PyTorch (bench/torch_ref.py): eager
#                  bf16 autocast and fp32 (TF32 off) at batch 32 and 128,
#                  fp32 with TF32 on at batch 32;
#                  torch.compile bf16, then fp32, at batch 32
#   curve-*.jsonl  100 steps of the quick SAS-P on CUDA in fp32 and in bf16
#   device-resume.txt  a short run on CUDA twice, and stopped and resumed:
#                  the same losses bit for bit (cuda_resumes_exactly)
#   device-fused.txt  the device checks again, built with burn's fusion
#   parallel-*.jsonl  where the machine has two GPUs or more: 30 steps of
#                  the quick SAS-P (batch 32) on one GPU and in data parallel
#                  on two, fp32 (the losses agree but for rounding; the
#                  tokens/s says what the second GPU buys)
#   table.md       bench/gpu_table.py over all of it (run it again here on
#                  the files if the call was cut short)
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
    bin=$(cargo test -p blkc-runtime --release --features cuda,fusion,autotune --test device --no-run --message-format=json \
      | python3 -c 'import json,sys; print([json.loads(l)["executable"] for l in sys.stdin if "\"executable\":\"" in l][-1])')
    cp "$bin" target-gpu/device-test-fused
    for f in device-test device-test-fused blkc blkc-fused; do
      strip "target-gpu/$f"
      xz -T0 -f "target-gpu/$f"
    done
    ls -la target-gpu
    ;;
  run)
    out="${OUT:-/tmp/gpu-check}"
    mkdir -p "$out"
    # Stop starting new work after this many seconds (the table is still
    # written from what finished).
    budget="${GPU_CHECK_SECONDS:-500}"
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    for f in target-gpu/*.xz; do [ -e "$f" ] && xz -dkf "$f"; done
    chmod +x target-gpu/* 2>/dev/null
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$out/gpu.csv" 2>&1
    say() { echo "[$(date +%T) ${SECONDS}s] $*" | tee -a "$out/log.txt"; }
    due() { [ "$SECONDS" -lt "$budget" ] || { say "skipped (budget): $*"; return 1; }; }
    bench() { # binary precision batch [attention route]
      local name="$1${4:+-$4}" bin="$1" fusion=()
      # blkc-tuned: the fused build's binary with fusion off.
      [ "$1" = blkc-tuned ] && bin=blkc-fused fusion=(BLKC_FUSION=off)
      due "$name $2 b$3" || return 0
      say "$name bench $2 batch $3"
      env "${fusion[@]}" BLKC_ATTENTION="${4:-auto}" timeout 150 "target-gpu/$bin" bench examples/codeparrot/preln.blk \
        examples/codeparrot/sas-p.blk --device cuda --precision "$2" --batch "$3" --steps 8 --warmup 3 \
        --format json > "$out/$name-$2-b$3.json" 2> "$out/$name-$2-b$3.err"
      say "  exit $?"
    }
    torch() { # dtype batch [--only-compile]
      due "torch $*" || return 0
      say "torch $*"
      timeout 200 python3 bench/torch_ref.py --device cuda --shape codeparrot --dtype "$1" --batch "$2" \
        --steps 8 ${3:-} > "$out/torch-$1-b$2${3:+-compile}.jsonl" 2> "$out/torch-$1-b$2${3:+-compile}.err"
      say "  exit $?"
    }
    profile() { # model precision batch
      due "profile $1 $2 b$3" || return 0
      say "profile $1 $2 batch $3"
      timeout 120 target-gpu/blkc bench "examples/codeparrot/$1.blk" --device cuda --precision "$2" --batch "$3" \
        --steps 3 --warmup 1 --profile > "$out/profile-$1-$2-b$3.txt" 2>&1
      say "  exit $?"
    }
    say "device checks"
    (cd runtime && timeout 150 ../target-gpu/device-test --ignored --nocapture --test-threads 1 --skip resumes) \
      > "$out/device.txt" 2>&1
    say "  exit $?"
    for p in bf16 fp32; do bench blkc $p 32; torch $p 32; bench blkc-tuned $p 32; bench blkc-fused $p 32; done
    bench blkc bf16 32 rows
    bench blkc fp32 32 products
    profile sas-p bf16 32
    profile preln bf16 32
    bench blkc tf32 32; torch tf32 32
    for p in bf16 fp32; do bench blkc $p 128; torch $p 128; done
    bench blkc bf16 128 rows
    torch bf16 32 --only-compile
    if due "curves"; then
      say "quick SAS-P, 100 steps, fp32 and bf16"
      for p in fp32 bf16; do
        rm -rf "/tmp/curve-$p"
        timeout 60 target-gpu/blkc train examples/quick/sas-p.blk --device cuda --precision "$p" --out "/tmp/curve-$p" \
          --steps 100 --data compiler/src --set eval_every=50 --set log_every=10 -q > "$out/curve-$p.txt" 2>&1
        cp "/tmp/curve-$p/metrics.jsonl" "$out/curve-$p.jsonl" 2>/dev/null
      done
    fi
    if due "resume check"; then
      say "a run twice, and stopped and resumed: the same losses bit for bit"
      (cd runtime && timeout 120 ../target-gpu/device-test --ignored --nocapture --exact cuda_resumes_exactly) \
        > "$out/device-resume.txt" 2>&1
      say "  exit $?"
    fi
    torch fp32 32 --only-compile
    for p in bf16 fp32; do bench blkc-fused $p 128; done
    if due "device checks, fused"; then
      say "device checks with burn's fusion (blkc's kernels as its custom operations)"
      (cd runtime && timeout 150 ../target-gpu/device-test-fused fused --ignored --nocapture --test-threads 1 --skip resumes) \
        > "$out/device-fused.txt" 2>&1
      say "  exit $?"
    fi
    gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
    if [ "$gpus" -ge 2 ] && due "data parallel"; then
      for n in 1 2; do
        say "quick SAS-P on $n GPU(s)"
        rm -rf "/tmp/parallel-$n"
        timeout 90 target-gpu/blkc train examples/quick/sas-p.blk --device cuda --devices "$n" --precision fp32 \
          --out "/tmp/parallel-$n" --steps 30 --data compiler/src --set batch=32 --set log_every=1 -q \
          > "$out/parallel-$n.txt" 2>&1
        say "  exit $?"
        cp "/tmp/parallel-$n/metrics.jsonl" "$out/parallel-$n.jsonl" 2>/dev/null
      done
    else
      say "data parallel: skipped ($gpus GPU)"
    fi
    python3 bench/gpu_table.py "$out" > "$out/table.md" 2> "$out/table.err"
    cat "$out/table.md"
    say "done"
    ;;
  *)
    echo "usage: bench/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
