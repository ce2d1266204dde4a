//! Decoding a token at a time (`blkc_runtime::decode`) gives the logits of
//! a forward pass over the same tokens: every block of `blocks/` with
//! every kind of positions, and attentions with QK-norm, a soft-cap,
//! grouped queries, biases, head dimensions of their own and matrices of
//! any terms; and the window that slides over a text longer than the
//! context reads what it says it reads.

use blkc::graph::Program;
use blkc_runtime::backend::Cpu;
use blkc_runtime::decode::{State, Window};
use blkc_runtime::model::Model;
use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};

type B = Cpu;

const CONTEXT: usize = 10;

fn program(text: &str) -> Program {
    let c = blkc::compile_str("t.blk", text);
    c.program.unwrap_or_else(|| panic!("{text}\n{:?}", c.diagnostics))
}

/// A tiny causal model of `blocks/NAME.blk`'s block (or of `block`, a
/// block's text) with these positions, two blocks deep.
fn tiny(text: &str, block: &str, positions: &str) -> Program {
    tiny_of_depth(text, block, positions, 2)
}

/// [`tiny`], `depth` blocks deep.
fn tiny_of_depth(text: &str, block: &str, positions: &str, depth: u64) -> Program {
    let source = tiny_source(text, block, positions, depth);
    program(&source)
}

/// [`tiny`] as deep as the block needs (from 2 blocks: a block whose
/// layer overrides select layers past the first two needs as many, E2020).
fn tiny_enough(text: &str, block: &str, positions: &str) -> Program {
    let compiles = |d: &u64| blkc::compile_str("t.blk", &tiny_source(text, block, positions, *d)).program.is_some();
    // None up to 16: two deep, whose diagnostics say why.
    let depth = (2..=16).find(compiles).unwrap_or(2);
    tiny_of_depth(text, block, positions, depth)
}

/// The text of [`tiny_of_depth`]'s program.
fn tiny_source(text: &str, block: &str, positions: &str, depth: u64) -> String {
    // The files a block `use`s (`shaped.blk`, `gemma2.blk`) written in.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../blocks");
    let body: String = text
        .lines()
        .map(|l| match l.strip_prefix("use \"").and_then(|f| f.strip_suffix('"')) {
            Some(f) => std::fs::read_to_string(root.join(f)).unwrap_or_default(),
            None => format!("{l}\n"),
        })
        .collect();
    format!(
        "{body}\nmodel {{\n block = {block}\n depth = {depth}\n width = 16\n heads = 4\n context = {CONTEXT}\n vocab = 40\n \
         mask = causal\n positions = {positions}\n}}\n"
    )
}

/// `program`'s model with its queries, keys, biases and gains drawn at
/// random, so that each attention's softmax, identity and centre terms all
/// matter (at init shaped attention is the identity). Drawn from a seed of
/// their own, not the backend's generator, which the tests running beside
/// this one draw from too: the same model every run.
fn built(p: &Program) -> Model<B> {
    let m = p.model.as_ref().expect("model");
    let mut model = Model::<B>::build(p, m, 3, &Default::default());
    let device = Default::default();
    let mut rng = blkc_runtime::rng::Rng::new(4);
    let mut draw = |dims: Vec<usize>, sd: f64| {
        let n = dims.iter().product::<usize>();
        Tensor::<B, 1>::from_data(TensorData::new(rng.normals(n, sd), [n]), &device)
    };
    for blk in &mut model.blocks {
        for a in &mut blk.attention {
            for w in [&mut a.query, &mut a.key].into_iter().flatten() {
                let dims = w.val().dims();
                *w = Param::from_tensor(draw(dims.to_vec(), 0.5).reshape(dims));
            }
            for b in [&mut a.query_bias, &mut a.key_bias].into_iter().flatten() {
                *b = Param::from_tensor(draw(b.val().dims().to_vec(), 0.3));
            }
            for g in &mut a.gains {
                let dims = g.val().dims();
                *g = Param::from_tensor(draw(dims.to_vec(), 1.0) + 1.0);
            }
        }
    }
    model
}

fn tokens(b: usize, t: usize, seed: i64) -> Vec<i64> {
    (0..(b * t) as i64).map(|i| (i * 7 + seed * 13 + i * i) % 40).collect()
}

/// `|a − b|` over `|b|`, at most.
fn gap(a: Tensor<B, 3>, b: Tensor<B, 3>) -> f32 {
    let scale: f32 = b.clone().abs().max().into_scalar();
    let diff: f32 = (a - b).abs().max().into_scalar();
    diff / scale.max(1e-6)
}

/// The [`gap`] of next-token logits `got` to those of a forward pass over
/// `seen` at its last token.
fn gap_to_forward(model: &Model<B>, got: &[f32], seen: &[u32]) -> f32 {
    let device = Default::default();
    let n = seen.len();
    let ids: Vec<i64> = seen.iter().map(|&x| i64::from(x)).collect();
    let want = model.forward(Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &device));
    let want = want.slice([0..1, n - 1..n]);
    let got = Tensor::<B, 1>::from_floats(got, &device).reshape([1, 1, want.dims()[2]]);
    gap(got, want)
}

/// Three tokens at once, then one at a time up to the context: each
/// step's logits against the forward pass over the whole sequence.
fn decodes_as_the_forward_pass(p: &Program, what: &str) {
    let model = built(p);
    let device = Default::default();
    let ids = tokens(2, CONTEXT, 1);
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [2, CONTEXT]), &device);
    let full = model.forward(input.clone());
    let vocab = full.dims()[2];
    let mut state = State::new(&model);
    let mut at = 0;
    for n in [3].into_iter().chain(std::iter::repeat_n(1, CONTEXT - 3)) {
        let step = model.decode(input.clone().slice([0..2, at..at + n]), &mut state);
        let step = step.unwrap_or_else(|e| panic!("{what}: {e}"));
        let want = full.clone().slice([0..2, at..at + n, 0..vocab]);
        let g = gap(step, want);
        assert!(g < 2e-5, "{what}: positions {at}..{}: logits {g} of their scale apart", at + n);
        at += n;
        assert_eq!(state.len(), at, "{what}");
    }
    let past = model.decode(input.slice([0..2, 0..1]), &mut state);
    if p.model.as_ref().is_some_and(|m| matches!(m.positions, blkc::graph::Positions::Learned { .. })) {
        assert!(past.is_err_and(|e| e.contains("learned positions")), "{what}: past the table");
    }
}

#[test]
fn every_block_decodes_as_its_forward_pass() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../blocks");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".blk") && n != "shaped.blk")
        .collect();
    names.sort();
    assert!(names.len() >= 11, "{names:?}");
    for name in names {
        let text = std::fs::read_to_string(root.join(&name)).unwrap_or_default();
        let block = name.trim_end_matches(".blk").replace('-', "_");
        for positions in ["learned", "sinusoidal", "rope", "rope(base = 500, fraction = 0.5)", "alibi", "none"] {
            // A block that sets a rotary base needs rotary positions (E2026).
            if text.contains("rope_base") && !positions.starts_with("rope") {
                continue;
            }
            // Gemma 3's first global layer is its sixth: six deep.
            let p = tiny_enough(&text, &block, positions);
            decodes_as_the_forward_pass(&p, &format!("{name}, positions {positions}"));
        }
    }
}

#[test]
fn attentions_of_every_form_decode_as_their_forward_pass() {
    let attention = [
        "qk_norm = rmsnorm\n softcap = 5",
        "qk_norm = layernorm\n kv_heads = 1\n value = linear(normal(0.3))",
        "head_dim = 3\n matrix = 0.5 * softmax + 0.7 * centre - 0.2 * I\n dropout = 0.1",
        "matrix = softmax + softmax - centre\n bias = false",
        "matrix = 0.3 * I + centre\n value = linear(normal(0.3))",
        "matrix = a * I + b * softmax - c * centre\n param a = 1 trainable per_head\n param b = 2 trainable\n \
         param c = 1 trainable per_head\n softcap = 3",
        "window = 3\n matrix = 0.5 * I + softmax - 0.3 * centre\n kv_heads = 2",
        "window = 1\n qk_norm = rmsnorm",
    ];
    for (i, body) in attention.iter().enumerate() {
        let text = format!(
            "attention odd {{\n {body}\n}}\nblock b {{\n n = rmsnorm(x)\n out = x + 0.5 * attn(n, odd) + mlp(n)\n}}"
        );
        for positions in ["learned", "rope", "alibi"] {
            decodes_as_the_forward_pass(&tiny(&text, "b", positions), &format!("attention {i} ({body}), {positions}"));
        }
    }
}

/// A prompt longer than the context keeps its last `context` tokens; the
/// window then grows a token at a time and, full, restarts at the last
/// `context / 2`; each token's logits are those of a forward pass over the
/// window.
#[test]
fn the_window_slides_over_a_long_text() {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../blocks/llama.blk"))
        .unwrap_or_default();
    let p = tiny(&text, "llama", "rope");
    let model = built(&p);
    let device = Default::default();
    let ids: Vec<u32> = tokens(1, 40, 2).into_iter().map(|x| x as u32).collect();
    for prompt in [3, 14] {
        let mut window = Window::new(&model, CONTEXT, &device);
        let mut starts = Vec::new();
        for len in prompt..ids.len() {
            let got = window.next(&ids[..len]).unwrap_or_else(|e| panic!("{e}"));
            let start = window.start();
            assert!(len - start <= CONTEXT && len - start >= (CONTEXT / 2).min(len), "window {start}..{len}");
            let g = gap_to_forward(&model, &got, &ids[start..len]);
            assert!(g < 2e-5, "prompt {prompt}, window {start}..{len}: {g}");
            if starts.last() != Some(&start) {
                starts.push(start);
            }
        }
        // The restarts: by half a context once full.
        let first = prompt.saturating_sub(CONTEXT);
        let mut want = vec![first];
        let mut s = first;
        let mut len = prompt;
        while len < ids.len() {
            if len - s > CONTEXT {
                s = len - CONTEXT / 2;
                want.push(s);
            }
            len += 1;
        }
        assert_eq!(starts, want, "prompt {prompt}");
    }
    let mut window = Window::new(&model, CONTEXT, &device);
    assert!(window.next(&[]).is_err(), "an empty text");
    assert!(window.next(&ids[..5]).is_ok());
    assert!(window.next(&ids[..4]).is_err(), "a shorter text than before");
}

/// A model whose every attention has a window, with relative positions
/// (rotary, ALiBi), reads a text past its context without restarting, at
/// a bounded cost: its attentions keep `window − 1` tokens, and each
/// token's logits are those of a forward pass over the tokens that reach
/// it — `depth · (window − 1)` before it, here 4, within the context — as
/// over the whole text. A long prompt is read a context at a time. With
/// learned positions, or one attention without a window, it slides. The
/// same for SAS-P's block with a window.
#[test]
fn a_windowed_model_rolls_past_its_context() {
    let text = "attention local {\n window = 3\n kv_heads = 2\n}\n\
                block b {\n h = x + attn(rmsnorm(x), local)\n out = h + mlp(rmsnorm(h))\n}\n";
    // SAS-P's block with a window: its forward is the shaped kernel, its
    // decoding the terms, `centre` averaging the window in the cache.
    let shaped = "attention local {\n window = 3\n value = identity\n proj = identity\n \
                  matrix = alpha * I + beta * softmax - gamma * centre\n param alpha = 1 trainable per_head\n \
                  param beta = 1 trainable per_head\n param gamma = 1 trainable per_head\n}\n\
                  block s {\n param beta_sa = 1 trainable\n param beta_ff = 0.1 trainable\n n = rmsnorm(x)\n \
                  out = beta_sa * attn(n, local) + beta_ff * mlp(n)\n}\n";
    let device = Default::default();
    let ids: Vec<u32> = tokens(1, 40, 2).into_iter().map(|x| x as u32).collect();
    for (positions, (text, block)) in ["rope", "alibi"].into_iter().flat_map(|p| [(p, (text, "b")), (p, (shaped, "s"))])
    {
        let model = built(&tiny(text, block, positions));
        assert!(model.rolls(CONTEXT) && !model.rolls(2), "{positions}: within the context only");
        for prompt in [3, 14] {
            let mut window = Window::new(&model, CONTEXT, &device);
            for len in prompt..ids.len() {
                let got = window.next(&ids[..len]).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(window.start(), 0, "never restarts");
                let g = gap_to_forward(&model, &got, &ids[len.saturating_sub(2 * (3 - 1) + 1)..len]);
                assert!(g < 2e-5, "{block}, {positions}, prompt {prompt}, {len} tokens: {g}");
            }
        }
        // One token at a time: the caches hold the window's 2 latest.
        let mut state = State::new(&model);
        for (i, &id) in ids.iter().enumerate() {
            let input = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![i64::from(id)], [1, 1]), &device);
            model.decode(input, &mut state).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((state.len(), state.kept()), (i + 1, (i + 1).min(2)));
        }
    }
    // What does not roll: learned positions, or a layer without a window.
    assert!(!built(&tiny(text, "b", "learned")).rolls(CONTEXT));
    let global = text.replace(" kv_heads = 2\n", " kv_heads = 2\n layer last { window = none }\n");
    let model = built(&tiny(&global, "b", "rope"));
    assert!(!model.rolls(CONTEXT));
    let mut window = Window::new(&model, CONTEXT, &device);
    window.next(&ids[..30]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(window.start(), 30 - CONTEXT, "slides");
}

/// `blkc eval --stride`: the summed loss of a sliding evaluation is each
/// target's loss under a forward pass over the earliest window that holds
/// it (one row at a time, worked out here apart from the windows' code),
/// every target counted once.
#[test]
fn a_sliding_evaluation_scores_each_token_from_its_window() {
    use blkc_runtime::train::batch::{Objective, Sliding, Stream};
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../blocks/preln.blk"))
        .unwrap_or_default();
    let model = built(&tiny(&text, "preln", "learned"));
    let device = Default::default();
    let ids: Vec<u32> = tokens(1, 37, 4).into_iter().map(|x| x as u32).collect();
    let stream = Stream::new(ids.clone(), CONTEXT, true);
    let last = ids.len() - CONTEXT - 1;
    for stride in [1, 4, CONTEXT] {
        let sliding = Sliding::new(&stream, stride);
        let mut heard = Vec::new();
        let (total, count) =
            blkc_runtime::train::evaluate_all(&model, &stream, &sliding, 3, Objective::Causal, 0, &device, |i, n| {
                heard.push((i, n))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(count as usize, ids.len() - 1, "stride {stride}: every target once");
        let n = sliding.count().div_ceil(3);
        assert_eq!(heard, (1..=n).map(|i| (i, n)).collect::<Vec<_>>());
        let mut want = 0.0;
        for target in 1..ids.len() {
            // The earliest window that holds the target: the first start
            // at a multiple of the stride, or the stream's last window.
            let k = (target.saturating_sub(CONTEXT)).div_ceil(stride);
            let start = (k * stride).min(last);
            assert!(target - start > CONTEXT - stride || start == 0, "stride {stride}: target {target}");
            let window: Vec<i64> = ids[start..start + CONTEXT].iter().map(|&x| i64::from(x)).collect();
            let logits = model.forward(Tensor::<B, 2, Int>::from_data(TensorData::new(window, [1, CONTEXT]), &device));
            let row = logits.slice([0..1, target - start - 1..target - start]).reshape([-1]);
            let logp = burn::tensor::activation::log_softmax(row, 0);
            let logp = logp.into_data().to_vec::<f32>().unwrap_or_default();
            want -= f64::from(logp[ids[target] as usize]);
        }
        assert!((total - want).abs() < 1e-4 * want, "stride {stride}: {total} against {want}");
    }
}

/// Sliding-window attention: a token's logits depend on the `depth ·
/// (window − 1)` tokens before it and no others (each layer reaches
/// `window − 1` further back), so with relative positions the last
/// token's logits over a long text are its logits over just those tokens,
/// and differ over one fewer.
#[test]
fn a_window_bounds_what_a_token_reads() {
    let text = "attention local {\n window = 3\n matrix = 0.5 * I + softmax - 0.2 * centre\n}\n\
                block b {\n n = rmsnorm(x)\n out = x + attn(n, local) + mlp(n)\n}";
    let model = built(&tiny(text, "b", "rope"));
    let device = Default::default();
    let ids = tokens(1, CONTEXT, 3);
    let last = |from: usize| {
        let seen: Vec<i64> = ids[from..].to_vec();
        let n = seen.len();
        let logits = model.forward(Tensor::<B, 2, Int>::from_data(TensorData::new(seen, [1, n]), &device));
        logits.slice([0..1, n - 1..n])
    };
    let reach = 2 * (3 - 1) + 1;
    let whole = last(0);
    let g = gap(last(CONTEXT - reach), whole.clone());
    assert!(g < 2e-5, "the last {reach} tokens give the logits of all {CONTEXT}: {g} apart");
    let g = gap(last(CONTEXT - reach + 1), whole);
    assert!(g > 1e-3, "one token fewer changes them: only {g} apart");
    // A window as long as the text is no window (the same model; blkc's
    // kernels without one, burn's masked attention with it).
    let logits = |window: Option<usize>| {
        let mut m = model.clone();
        for a in m.blocks.iter_mut().flat_map(|b| &mut b.attention) {
            a.plan.window = window;
        }
        m.forward(Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, CONTEXT]), &device))
    };
    let g = gap(logits(Some(CONTEXT)), logits(None));
    assert!(g < 2e-5, "a window of the whole context: {g} from none");
    assert!(gap(logits(Some(2)), logits(None)) > 1e-3, "a short window matters");
}
