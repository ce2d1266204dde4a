//! Memory a training run will need, estimated from the model and settings
//! before anything is allocated, against what the machine has: a run that
//! cannot fit is refused with the numbers and what to change, instead of
//! being killed by the kernel after minutes (or aborting mid-allocation).
//!
//! The estimate is deliberately simple and on the high side: weights,
//! gradients (and their accumulation), the two Adam moments and the
//! updated weights (five copies of the parameters); per micro-batch row
//! and token, what backward keeps of every node of every layer (its
//! outputs, an MLP's hidden layer twice, an attention's scores and
//! weights — or, where blkc's CPU kernels run it, its weights on the band
//! of keys its queries see, and where its row kernels run it on a GPU, a
//! statistic per row in their place); the logits and their gradient.
//! Measured peaks of the step (`blkc bench`'s `peak_mib` beside its
//! `estimate_mib`, bench/NOTES.md) lie below it.

use blkc::graph::{AttentionSpec, BlockIr, MatrixTerm, Model as ModelIr, Op, Program};

use crate::kernels::attention::products_in;
use crate::kernels::precision::Precision;

/// What an attention keeps for its backward, besides its operands and
/// output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Its scores and weights, a row of `context` each per token and
    /// head: the products route, the composed weights of dropout.
    Weights,
    /// Its weights on the band of keys its queries see (blkc's CPU
    /// kernels, `attention::cpu::band`): under a causal mask about half a
    /// row of `context` per token and head, under a window a few blocks of
    /// keys; and, while its backward runs, a head's band of score
    /// gradients (and, soft-capped, of scores) on each of `threads`.
    Band { threads: usize },
    /// A log-sum-exp per token and head: blkc's row kernels on the CubeCL
    /// backends, for the attentions they take (all but those with dropout
    /// on the weights, which keep their weights).
    Rows,
}

impl Kept {
    /// What attentions over `tokens` tokens keep on `device` (`cpu`,
    /// `cuda`, `wgpu`) with products in `precision`, on this thread's
    /// route (`BLKC_ATTENTION`).
    pub fn on(device: &str, precision: Precision, tokens: u64) -> Kept {
        let products = products_in(precision, usize::try_from(tokens).unwrap_or(usize::MAX));
        match (device, products) {
            // blkc's CPU kernels are flex's; on ndarray, the reference.
            ("cpu", _) if crate::backend::cpu_name() == "flex" => Kept::Band { threads: rayon::current_num_threads() },
            ("cpu", _) | (_, true) => Kept::Weights,
            (_, false) => Kept::Rows,
        }
    }
}

/// Bytes of an f32.
const F32: u128 = 4;
/// What the process needs besides the model: code, the allocator's slack,
/// the token streams of a small corpus.
pub const BASE: u128 = 256 << 20;

/// The estimate, in bytes, with its parts for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Weights, gradients, optimiser moments, updated weights.
    pub parameters: u128,
    /// Activations kept for backward, per micro-batch (with the
    /// backward's scratch, where a kernel's is large).
    pub activations: u128,
    /// Logits and their gradient, per micro-batch.
    pub logits: u128,
}

impl Estimate {
    /// What one training step allocates: its activations and logits, and
    /// two of the parameters' five copies (the gradients, the updated
    /// weights); the weights and the optimiser's moments are in use
    /// before it.
    pub fn step(&self) -> u128 {
        self.activations + self.logits + self.parameters * 2 / 5
    }
}

/// The estimate for training `model` with micro-batches of `rows`, its
/// attentions keeping what `kept` says.
pub fn estimate(program: &Program, model: &ModelIr, rows: u64, kept: Kept) -> Estimate {
    let block = &program.blocks[model.block];
    let params = blkc::graph::params::count(model, block).total;
    let tokens = u128::from(rows) * u128::from(model.context);
    let per_token: u128 = (0..model.depth).map(|l| layer_floats(block, model, l, kept)).sum();
    Estimate {
        parameters: 5 * F32 * params,
        activations: F32 * (tokens * per_token + scratch(block, model, rows, kept)),
        logits: 3 * F32 * tokens * u128::from(model.vocab),
    }
}

/// Floats the CPU kernels' attention backward holds at once besides what
/// the forward kept, for micro-batches of `rows`: a head's band of score
/// gradients (and of scores, soft-capped) on each thread that runs a head,
/// for the largest attention of the stack.
fn scratch(block: &BlockIr, m: &ModelIr, rows: u64, kept: Kept) -> u128 {
    let Kept::Band { threads } = kept else { return 0 };
    let heads = u128::from(rows) * u128::from(m.heads);
    let per_head = (0..m.depth)
        .flat_map(|l| &block.graph_at(l, m.depth).nodes)
        .filter_map(|n| match &n.op {
            Op::Attention { spec, .. } if spec.uses(MatrixTerm::Softmax) && !composed(spec) => {
                Some(band_entries(m, spec.window) * if spec.softcap.is_some() { 2 } else { 1 })
            }
            _ => None,
        })
        .max()
        .unwrap_or(0);
    per_head * heads.min(threads as u128)
}

/// Floats kept per token by layer `layer`: an attention's scores and
/// weights where it keeps them (a softmax's), or its weights on their
/// band (the band's entries per query, rounded up), else two per head.
fn layer_floats(block: &BlockIr, m: &ModelIr, layer: u64, kept: Kept) -> u128 {
    let (d, h, t) = (u128::from(m.width), u128::from(m.heads), u128::from(m.context));
    block
        .graph_at(layer, m.depth)
        .nodes
        .iter()
        .map(|n| match &n.op {
            Op::Input | Op::Sum { .. } => d,
            Op::Norm { .. } => 2 * d,
            Op::Attention { spec, .. } => {
                let composed = composed(spec);
                let per_head = match (spec.uses(MatrixTerm::Softmax), kept) {
                    (false, _) => 0,
                    (true, Kept::Rows) if !composed => 2,
                    (true, Kept::Band { .. }) if !composed => band_entries(m, spec.window).div_ceil(t.max(1)),
                    (true, _) => 2 * t,
                };
                6 * d + h * per_head
            }
            Op::Mlp { spec, .. } => 2 * d + 2 * (d as f64 * spec.width).ceil() as u128,
        })
        .sum()
}

/// Whether an attention's weights are composed (dropout on them writes
/// them out), not run by blkc's kernels.
fn composed(spec: &AttentionSpec) -> bool {
    spec.dropout.inner > 0.0
}

/// The entries of one head's band that blkc's CPU kernels keep of an
/// attention's weights: under `model`'s mask and the attention's
/// `window`, its context's band.
#[cfg(feature = "flex")]
fn band_entries(model: &ModelIr, window: Option<u64>) -> u128 {
    use crate::kernels::attention::{cpu::band, Keys};
    let t = usize::try_from(model.context).unwrap_or(usize::MAX);
    let window = window.map(|w| usize::try_from(w).unwrap_or(usize::MAX));
    let keys = Keys { causal: model.mask == blkc::graph::Mask::Causal, window };
    band(keys, t).entries() as u128
}

/// Without flex, no kernel keeps a band ([`Kept::on`] never says so): the
/// weights and scores whole.
#[cfg(not(feature = "flex"))]
fn band_entries(model: &ModelIr, _: Option<u64>) -> u128 {
    2 * u128::from(model.context) * u128::from(model.context)
}

/// Bytes free for this process: the smaller of the system's available
/// memory and what its control group still allows. `None` where neither
/// can be read.
pub fn available() -> Option<u128> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| meminfo_available(&t));
    let cgroup = cgroup_left();
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn meminfo_available(text: &str) -> Option<u128> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What a cgroup-v2 limit leaves (`memory.max` − `memory.current`).
fn cgroup_left() -> Option<u128> {
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let max: u128 = read("memory.max")?.trim().parse().ok()?;
    let current: u128 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// Refuses a run whose estimate exceeds `have` bytes free in `what`, where
/// `copies` copies of the model (data-parallel devices that share that
/// memory, as on the CPU) each need the estimate's parameters,
/// activations and logits, and the process its base once; says what
/// would fit. `per_copy(d)` is what one copy needs with `d` devices (each
/// device's share of the batch, and so its activations, depends on `d`),
/// `None` where the batch does not split over `d` devices.
pub fn check(
    e: &Estimate,
    have: u128,
    what: &str,
    rows: u64,
    model: &ModelIr,
    copies: u64,
    per_copy: &dyn Fn(u64) -> Option<u128>,
) -> Result<(), String> {
    let copies = copies.max(1);
    let need = BASE + u128::from(copies) * (e.parameters + e.activations + e.logits);
    if need <= have {
        return Ok(());
    }
    // What one copy has, with the process's base counted once.
    let share = have.saturating_sub(BASE) / u128::from(copies);
    let per_row = (e.activations + e.logits) / u128::from(rows.max(1));
    let fits = share.saturating_sub(e.parameters) / per_row.max(1);
    let fewer = (1..copies).rev().find(|&d| per_copy(d).is_some_and(|p| BASE + u128::from(d) * p <= have));
    let hint = if let Some(d) = fewer {
        format!("use fewer devices: `--devices {d}` fits")
    } else if e.parameters > share {
        format!(
            "the parameters alone need {}: choose a smaller width ({}) or depth ({})",
            gib(e.parameters),
            model.width,
            model.depth
        )
    } else if fits >= 1 {
        format!(
            "set micro_batch to {} or less (`--set micro_batch={}`; gradients are accumulated to the same batch)",
            fits,
            pow2_floor(fits)
        )
    } else {
        format!(
            "even one sequence of {} tokens needs {}: lower the context ({}) or the model's size",
            model.context,
            gib(per_row),
            model.context
        )
    };
    let each = if copies > 1 { format!(" for each of {copies} devices") } else { String::new() };
    Err(format!(
        "this run needs about {} of memory but {what} has {} free: parameters, gradients and optimiser state {}, \
         activations {} and logits {} for micro-batches of {rows}{each}, and {} for the process; {hint}",
        gib(need),
        gib(have),
        gib(e.parameters),
        gib(e.activations),
        gib(e.logits),
        gib(BASE)
    ))
}

fn pow2_floor(n: u128) -> u128 {
    1 << (127 - n.max(1).leading_zeros())
}

/// Bytes in GiB (or MiB below one), for messages.
pub fn gib(bytes: u128) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(width: u64, context: u64) -> Program {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let block = std::fs::read_to_string(root.join("blocks/preln.blk")).unwrap_or_default();
        let c = blkc::compile_str(
            "m.blk",
            &format!("{block}\nmodel m {{\n block = preln\n depth = 6\n width = {width}\n heads = 4\n context = {context}\n vocab = 4096\n}}\n"),
        );
        c.program.unwrap_or_else(|| panic!("{}", blkc::diag::render_plain(&c.diagnostics, &c.sources)))
    }

    /// A model of 6 layers (width 256, 4 heads, vocab 4096) whose block is
    /// one attention on a norm, its section's lines `attention`, and the
    /// model's further lines `model`.
    fn one_attention(attention: &str, model: &str) -> (Program, ModelIr) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let block = std::fs::read_to_string(root.join("blocks/preln.blk")).unwrap_or_default();
        let text = format!(
            "{block}\nattention one {{\n{attention}}}\n\
             block b {{\n out = x + attn(rmsnorm(x), one)\n}}\n\
             model m {{\n block = b\n depth = 6\n width = 256\n heads = 4\n vocab = 4096\n{model}}}\n"
        );
        let c = blkc::compile_str("one.blk", &text);
        let p = c.program.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        let m = p.model.clone().unwrap_or_else(|| panic!("no model"));
        (p, m)
    }

    #[test]
    fn a_model_that_cannot_fit_is_refused_with_a_hint() {
        let p = program(256, 128);
        let m = p.model.clone().unwrap_or_else(|| panic!("no model"));
        let none = |_: u64| None;
        let small = estimate(&p, &m, 16, Kept::Weights);
        assert!(check(&small, 8 << 30, "this machine", 16, &m, 1, &none).is_ok(), "{small:?}");
        let big = estimate(&p, &m, 100_000, Kept::Weights);
        let err = check(&big, 8 << 30, "this machine", 100_000, &m, 1, &none).err().unwrap_or_default();
        assert!(err.contains("needs about") && err.contains("micro_batch"), "{err}");
        // The parts the message names add up to its total.
        let need = BASE + small.parameters + small.activations + small.logits;
        let err = check(&small, need - 1, "this machine", 16, &m, 1, &none).err().unwrap_or_default();
        assert!(
            err.contains(&format!("needs about {}", gib(need))) && err.contains("256 MiB for the process"),
            "{err}"
        );
        // Copies sharing the memory: the base once, the rest for each.
        let two = need + small.parameters + small.activations + small.logits;
        let same = |_: u64| Some(small.parameters + small.activations + small.logits);
        assert!(check(&small, two, "this machine", 16, &m, 2, &same).is_ok());
        let err = check(&small, two - 1, "this machine", 16, &m, 2, &same).err().unwrap_or_default();
        assert!(err.contains("for each of 2 devices") && err.contains("`--devices 1` fits"), "{err}");
        // The hint names a device count that splits the batch and fits with
        // its larger share of it: of 4 devices sharing a batch of 20 rows
        // (5 each), 3 do not split it, 2 (10 rows each) need less than 4
        // (two copies of the parameters fewer) and more than 1.
        let rows = |d: u64| 20_u64.is_multiple_of(d).then(|| estimate(&p, &m, 20 / d, Kept::Weights));
        let bytes = |e: Estimate| e.parameters + e.activations + e.logits;
        let per_copy = |d: u64| rows(d).map(bytes);
        let four = rows(4).unwrap_or_else(|| panic!("4 split 20"));
        let one = BASE + bytes(estimate(&p, &m, 20, Kept::Weights));
        let two = BASE + 2 * bytes(estimate(&p, &m, 10, Kept::Weights));
        assert!(BASE + 4 * bytes(four) > two && two > one, "each copy of the parameters counts");
        let err = check(&four, one, "this machine", 5, &m, 4, &per_copy).err().unwrap_or_default();
        assert!(err.contains("`--devices 1` fits"), "only one device fits in {}: {err}", gib(one));
        let err = check(&four, two, "this machine", 5, &m, 4, &per_copy).err().unwrap_or_default();
        assert!(err.contains("`--devices 2` fits"), "{err}");
        let err = check(&four, BASE + bytes(four), "this machine", 5, &m, 4, &per_copy).err().unwrap_or_default();
        assert!(!err.contains("--devices"), "no count fits: {err}");
        // Width 16384: the parameters alone do not fit.
        let p = program(16384, 128);
        let m = p.model.clone().unwrap_or_else(|| panic!("no model"));
        let err = check(&estimate(&p, &m, 1, Kept::Weights), 24 << 30, "this machine", 1, &m, 1, &none)
            .err()
            .unwrap_or_default();
        assert!(err.contains("parameters alone"), "{err}");
        // Context 131072: one sequence's attention does not fit.
        let p = program(256, 131_072);
        let m = p.model.clone().unwrap_or_else(|| panic!("no model"));
        let err = check(&estimate(&p, &m, 1, Kept::Weights), 24 << 30, "this machine", 1, &m, 1, &none)
            .err()
            .unwrap_or_default();
        assert!(err.contains("lower the context"), "{err}");
    }

    /// blkc's row kernels keep a statistic per row where the weights
    /// were kept: a long context that fits a GPU so is not refused for
    /// the weights it never writes. Attentions the kernels do not take
    /// keep their weights.
    #[test]
    fn row_kernels_keep_no_weights() {
        use crate::kernels::attention::Route;
        let threads = rayon::current_num_threads();
        let cpu = if crate::backend::cpu_name() == "flex" { Kept::Band { threads } } else { Kept::Weights };
        assert_eq!(Kept::on("cpu", Precision::Fp32, 4096), cpu);
        assert_eq!(Kept::on("cuda", Precision::Fp32, 128), Kept::Rows);
        assert_eq!(Kept::on("cuda", Precision::Bf16, 128), Kept::Weights, "bf16 runs short ones as products");
        assert_eq!(Kept::on("cuda", Precision::Bf16, 4096), Kept::Rows);
        assert_eq!(Route::Rows.scope(|| Kept::on("wgpu", Precision::Bf16, 128)), Kept::Rows);
        assert_eq!(Route::Products.scope(|| Kept::on("cuda", Precision::Fp32, 4096)), Kept::Weights);
        // Pre-LN, 6 layers of 4 heads, 32768 tokens: the weights alone are
        // 4 bytes × 32768² × 2 × 4 heads × 6 layers = 192 GiB.
        let p = program(256, 32_768);
        let m = p.model.clone().unwrap_or_else(|| panic!("no model"));
        let (weights, rows) = (estimate(&p, &m, 1, Kept::Weights), estimate(&p, &m, 1, Kept::Rows));
        let (t, h, depth) = (32_768u128, 4u128, 6u128);
        assert_eq!(weights.activations - rows.activations, F32 * t * depth * h * (2 * t - 2));
        assert_eq!(weights.parameters, rows.parameters);
        let none = |_: u64| None;
        assert!(check(&weights, 80 << 30, "the GPU", 1, &m, 1, &none).is_err());
        assert!(check(&rows, 80 << 30, "the GPU", 1, &m, 1, &none).is_ok(), "{rows:?}");
        // A soft-capped attention is blkc's kernel, which keeps rows, with
        // ALiBi's bias too; with dropout on its weights, it writes them.
        let model = |positions: &str, dropout: f64| {
            let (p, m) = one_attention(
                &format!(" softcap = 30\n dropout = {dropout}\n"),
                &format!(" context = 1024\n positions = {positions}\n"),
            );
            (estimate(&p, &m, 1, Kept::Rows), estimate(&p, &m, 1, Kept::Weights))
        };
        for positions in ["learned", "alibi"] {
            let (rows, weights) = model(positions, 0.0);
            assert!(rows.activations < weights.activations, "{positions}: {rows:?}");
            let (rows, weights) = model(positions, 0.1);
            assert_eq!(rows, weights, "{positions}");
        }
    }

    /// The CPU's kernels keep the weights on their band: under a causal
    /// mask about half of those of the products route, under a window of
    /// 128 a few hundred floats per query however long the context; and
    /// their backward holds a head's band on each thread that runs a head.
    #[test]
    #[cfg(feature = "flex")]
    fn the_cpu_keeps_the_weights_band() {
        // Per query and head, what the forward keeps; per head, the
        // backward's scratch on each thread: 6 layers of 4 heads, 1 row.
        let band = |window: Option<u64>, t: u128| {
            let local = window.map_or(String::new(), |w| format!(" window = {w}\n"));
            let (p, m) = one_attention(&local, &format!(" context = {t}\n"));
            let on = |threads| estimate(&p, &m, 1, Kept::Band { threads }).activations;
            let rows = estimate(&p, &m, 1, Kept::Rows).activations;
            let entries = (on(4) - on(1)) / (3 * F32);
            assert_eq!(on(8), on(4), "threads beyond the heads of a micro-batch hold nothing");
            ((on(1) - F32 * entries - rows) / (F32 * t * 6 * 4) + 2, entries)
        };
        let t = 32_768u128;
        let (per_query, entries) = band(None, t);
        assert!((t / 2..=t / 2 + 64).contains(&per_query), "{per_query} of {t} keys");
        assert!((t * t / 2..=t * t / 2 + 64 * t).contains(&entries), "{entries} of {t} × {t}");
        for t in [1024, 32_768] {
            let (per_query, entries) = band(Some(128), t);
            assert!((128..=128 + 64).contains(&per_query), "{per_query} of {t} keys");
            assert!((128 * t..=(128 + 64) * t).contains(&entries), "{entries} for {t} queries");
        }
    }

    #[test]
    fn available_memory_is_read() {
        assert_eq!(meminfo_available("MemTotal: 100 kB\nMemAvailable:   2048 kB\n"), Some(2 << 20));
        if cfg!(target_os = "linux") {
            assert!(available().is_some_and(|b| b > 0));
        }
    }
}
