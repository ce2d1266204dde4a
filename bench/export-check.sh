#!/usr/bin/env bash
# Holds `blkc export --format pytorch` to blkc itself: trains tiny models of
# every canonical block and of a block that uses every other construct (QK
# norm, soft-cap, a sliding window, query/key bias, fixed and per-head gains, gains that depend
# on `layer`, dense maps with bias, reparam maps, GELU and leaky-ReLU MLPs,
# sinusoidal positions, an untied head, a bidirectional mask) for a few
# steps — and Llama (rotary, grouped-query, SwiGLU), Mistral (Llama's block
# with a window, through blkc's attention kernels), GPT-J (partial rotary),
# the gated SAS-P, SAS-P with a window (its shaped kernel's `centre` over
# the window), Gemma 2 (norms on the branches' outputs, soft-capped
# attention in a window, GeGLU, the embedding scaled, the logits soft-capped),
# Gemma 3 (QK-norm, five windowed layers to a global one whose rotary base
# is its own) and Pre-LN with ALiBi — exports each, and compares the PyTorch model's logits with blkc's,
# and the loss and every parameter's gradient on the same tokens (bench/export_check.py). Needs PyTorch in $PYTHON (default python3).
#
#   bench/export-check.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/blkc/target}"
PYTHON="${PYTHON:-python3}"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cargo build --release -p blkc-runtime --example logits --example grads -q
cargo build --release -p blkc-runtime -q
blkc="$CARGO_TARGET_DIR/release/blkc"
logits="$CARGO_TARGET_DIR/release/examples/logits"
grads="$CARGO_TARGET_DIR/release/examples/grads"
cp blocks/*.blk "$work/"
cat > "$work/everything.blk" <<'BLK'
# Every construct the export must carry.
attention wide {
    query   = normal(0.2)
    key     = normal(0.2)
    bias    = true
    qk_norm = layernorm
    softcap = 5
    window  = 5
    value   = linear(normal(0.02), bias = true)
    proj    = reparam(skip = 0.5, resid = 1, init = orthogonal, trainable)
    matrix  = a * I + softmax - c * centre
    param a = 0.5 + 0.1 * head trainable per_head
    param c = 0.25 per_head
    dropout = 0.1
}
mlp act {
    activation = leaky_relu(0.1)
    width      = 2
    bias       = true
}
block everything {
    param g = 1 / sqrt(layer + 1)
    param t = 0.3 trainable
    n   = layernorm(x)
    h   = x + g * attn(n, wide)
    out = h + t * mlp(rmsnorm(h), act)
    layer last { out = h + t * mlp(rmsnorm(h), gelu_mlp) }
}
mlp gelu_mlp {
    activation = gelu
}
BLK
cat > "$work/mistral.blk" <<'BLK'
use "llama.blk"
attention local {
    kv_heads = 2
    bias     = false
    window   = 5
}
block mistral {
    h   = x + attn(rmsnorm(x), local)
    out = h + mlp(rmsnorm(h), swiglu)
}
BLK
fail=0
dirs=()
for spec in preln:preln postln:postln parallel:parallel sas:sas sas-p:sas_p sas-p-nonorm:sas_p_nonorm \
            vskipinit:vskipinit skipless-naive:skipless_naive everything:everything everything-mlm:everything \
            llama:llama mistral:mistral gpt-j:gpt_j sas-p-swiglu:sas_p_swiglu preln-alibi:preln \
            sas-p-local:sas_p gemma2:gemma2 gemma3:gemma3; do
    file="${spec%%:*}"; block="${spec##*:}"
    src="$file"; [ "$file" = everything-mlm ] && src=everything
    [ "$file" = preln-alibi ] && src=preln
    sets=()
    [ "$file" = sas-p-local ] && src=sas-p && sets=(--set shaped.window=5)
    extra=""; depth=3
    mask=causal; positions=learned; tied=true
    if [ "$file" = gemma2 ]; then
        positions=rope; sets=(--set gemma.window=5); extra="embed_scale = 8
    logit_softcap = 3"
    fi
    # Gemma 3's sixth layer is its first global one (its rotary base 1e6).
    if [ "$file" = gemma3 ]; then
        positions="rope(base = 10000)"; depth=6; sets=(--set interleaved.window=5); extra="embed_scale = 8"
    fi
    if [ "$file" = everything-mlm ]; then mask=bidirectional; positions=sinusoidal; tied=false; fi
    [ "$file" = llama ] || [ "$file" = mistral ] && positions=rope && tied=false
    [ "$file" = gpt-j ] && positions="rope(fraction = 0.25)" && tied=false
    [ "$file" = preln-alibi ] && positions=alibi
    cat > "$work/m-$file.blk" <<BLK
use "$src.blk"
model m {
    block = $block
    depth = $depth
    width = 64
    heads = 4
    context = 16
    vocab = 258
    mask = $mask
    positions = $positions
    tied_embeddings = $tied
    final_norm = layernorm
    $extra
}
train {
    data = "$PWD/compiler/src"
    tokenizer = bytes
    batch = 4
    steps = 6
    lr = 3e-3
    log_every = 6
    eval_every = 6
}
BLK
    (cd "$work" && rm -rf "run-$file" && "$blkc" train "m-$file.blk" --out "run-$file" --no-check -q "${sets[@]}")
    out="$work/run-$file/export"
    "$blkc" export "$work/run-$file" --format pytorch > /dev/null
    tokens="72,101,108,108,111,32,119,111,114,108,100,33,10,100,101,102"
    loss=$("$grads" "$work/run-$file" "$tokens" "$out/grads.safetensors")
    printf '{"tokens": [%s], "logits": %s, "loss": %s}\n' "$tokens" "$("$logits" "$work/run-$file" "$tokens")" "$loss" \
      > "$out/expected.json"
    dirs+=("$out")
done
"$PYTHON" bench/export_check.py "${dirs[@]}" || fail=1
exit $fail
