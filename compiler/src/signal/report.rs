//! The signal report of one block: what `blkc check` prints and what
//! `--format json` emits (schema in docs/check.md), built from an
//! [`super::verdict::Analysis`].

use std::fmt::Write;

use serde::Serialize;

use super::verdict::{self, contraction, Finding, Status, Thresholds};
use super::{analyse, deepest_passing, Dims, LayerStats, Options};
use crate::diag::{Code, Diagnostic};
use crate::graph::params::{count, flops_per_token};
use crate::graph::{Mask, Model, Program};
use crate::span::FileId;

/// Per-input summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputSummary {
    pub input: String,
    pub verdict: Status,
    pub cosine: f64,
    pub effective_rank: f64,
    pub scale: f64,
    /// Per-layer contraction of 1 − cosine over the second half.
    pub kappa: Option<f64>,
}

/// Version of the JSON schema (docs/check.md); bumped on any change that
/// is not a pure addition.
pub const SCHEMA_VERSION: u32 = 1;

/// The report of one block.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub block: String,
    pub model: Option<String>,
    /// A block without a model, analysed in the small CPU model.
    pub bare: bool,
    pub depth: u64,
    pub context: usize,
    pub width: u64,
    pub heads: u64,
    pub mask: Mask,
    pub verdict: Status,
    pub thresholds: Thresholds,
    /// The input whose layers are reported (the worst).
    pub input: String,
    pub layers: Vec<LayerStats>,
    pub inputs: Vec<InputSummary>,
    pub findings: Vec<Finding>,
    /// Bare blocks: the deepest stack that still passes (`null`: every
    /// depth up to `search_limit` passes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deepest_passing: Option<Option<u64>>,
    pub search_limit: u64,
    pub parameters: u128,
    pub flops_per_token: u128,
    pub attention_mode: &'static str,
    /// The block drops values in training, which the analysis leaves out
    /// (it describes the network at init, whose forward has no dropout).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dropout_ignored: bool,
    /// The final kernel of the reported input (`--emit-kernel`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Vec<Vec<f64>>>,
    #[serde(skip)]
    pub diagnostics: Vec<Diagnostic>,
}

/// What to analyse, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub depth: Option<u64>,
    pub context: Option<usize>,
    pub inputs: Option<Vec<super::Input>>,
    pub mode: Option<super::AttentionMode>,
    pub samples: Option<usize>,
    pub emit_kernel: bool,
}

/// Reports for a checked program: the model's block, or every block
/// defined in the root file analysed bare in the small model.
pub fn reports(p: &Program, root: FileId, req: &Request) -> Vec<Report> {
    p.analysed_models(root).iter().map(|(m, bare)| report(p, m, *bare, req)).collect()
}

/// The dimensions and options of the analysis of model `m` that `req` asks
/// for.
pub fn setup(m: &Model, req: &Request) -> (Dims, Options) {
    let depth = req.depth.unwrap_or(m.depth).max(1);
    let context = req.context.unwrap_or((m.context as usize).min(super::DEFAULT_CONTEXT));
    let mut opts = Options::new(depth, context);
    if let Some(i) = &req.inputs {
        opts.inputs = i.clone();
    }
    opts.mode = req.mode.unwrap_or(opts.mode);
    opts.samples = req.samples.unwrap_or(opts.samples);
    (Dims::of(m), opts)
}

fn report(p: &Program, m: &Model, bare: bool, req: &Request) -> Report {
    let block = &p.blocks[m.block];
    let (dims, opts) = setup(m, req);
    let depth = opts.depth;
    let a = analyse(block, dims, &opts);
    let mut diagnostics = verdict::diagnostics(block, dims, &opts, &a);
    let deepest = bare.then(|| deepest_passing(block, dims, &opts));
    if let Some(Some(d)) = deepest {
        if a.status != Status::Reject && d < 18 {
            diagnostics.push(
                Diagnostic::new(
                    Code::W3003,
                    block.span_name(),
                    format!("`{}` passes at depth {depth} but is rejected at depth {}", block.name, d + 1),
                )
                .label(format!("keeps tokens apart at init only up to depth {d}"))
                .help("check it at the depth you will train: `blkc check --depth N`, or in a model file"),
            );
        }
    }
    let worst = &a.traces[a.worst];
    let inputs = a
        .traces
        .iter()
        .map(|t| {
            let last = t.layers.last();
            InputSummary {
                input: t.input.clone(),
                verdict: verdict::judge_prefix(t, t.layers.len(), &opts.thresholds).status,
                cosine: last.map_or(f64::NAN, |l| l.cosine),
                effective_rank: last.map_or(f64::NAN, |l| l.effective_rank),
                scale: last.map_or(f64::NAN, |l| l.scale),
                kappa: contraction(t, t.layers.len()),
            }
        })
        .collect();
    let kernel = req.emit_kernel.then(|| worst.kernel.row_iter().map(|r| r.iter().copied().collect()).collect());
    Report {
        schema_version: SCHEMA_VERSION,
        block: block.name.clone(),
        model: if bare { None } else { m.name.clone().or(Some(String::new())) },
        bare,
        depth,
        context: opts.context,
        width: m.width,
        heads: m.heads,
        mask: m.mask,
        verdict: a.status,
        thresholds: opts.thresholds,
        input: worst.input.clone(),
        layers: worst.layers.clone(),
        inputs,
        findings: a.findings.clone(),
        deepest_passing: deepest,
        search_limit: super::MAX_SEARCH_DEPTH,
        parameters: count(m, block).total,
        flops_per_token: flops_per_token(m, block, m.context),
        attention_mode: match opts.mode {
            super::AttentionMode::Auto => "auto",
            super::AttentionMode::ZeroQuery => "zero-query",
            super::AttentionMode::MonteCarlo => "monte-carlo",
        },
        dropout_ignored: block.has_dropout(),
        kernel,
        diagnostics,
    }
}

/// Layers shown in the human table: the first three, about eight evenly
/// spaced, the first rejected one and the last.
fn shown_layers(r: &Report) -> Vec<usize> {
    let n = r.layers.len();
    let step = (n / 8).max(1);
    let mut rows: Vec<usize> = (0..n).filter(|&i| i < 3 || (i + 1) % step == 0 || i + 1 == n).collect();
    for f in &r.findings {
        if let Finding::Collapse { layer, .. } | Finding::Scale { layer, .. } = f {
            rows.push(*layer as usize - 1);
        }
    }
    rows.sort_unstable();
    rows.dedup();
    rows.retain(|&i| i < n);
    rows
}

/// The compact human table.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let model = if r.bare {
        format!("bare, in the small model: width {}, {} heads", r.width, r.heads)
    } else {
        format!("width {}, {} heads", r.width, r.heads)
    };
    let mask = if r.mask == Mask::Causal { "causal" } else { "bidirectional" };
    let _ =
        writeln!(s, "block `{}` ({model}), depth {}, {mask}, T = {}, input {}", r.block, r.depth, r.context, r.input);
    let _ = writeln!(s, "  {:>5}  {:>8}  {:>9}  {:>10}", "layer", "cosine", "eff.rank", "scale");
    for i in shown_layers(r) {
        let l = &r.layers[i];
        let _ = writeln!(s, "  {:>5}  {:>8.4}  {:>9.2}  {:>10.4}", l.layer, l.cosine, l.effective_rank, l.scale);
    }
    for i in &r.inputs {
        let kappa = i.kappa.map_or(String::from("–"), |k| format!("{k:.2}"));
        let _ = writeln!(
            s,
            "  input {:<9} {:?}: cosine {:.4}, eff.rank {:.2}, κ {kappa}",
            i.input, i.verdict, i.cosine, i.effective_rank
        );
    }
    let verdict = match r.verdict {
        Status::Pass => "pass",
        Status::Warn => "warn",
        Status::Reject => "reject",
    };
    let depth_note = match r.deepest_passing {
        Some(Some(d)) => format!("; keeps tokens apart at init up to depth {d}"),
        Some(None) => format!("; keeps tokens apart at init at every depth up to {}", r.search_limit),
        None => String::new(),
    };
    let _ = writeln!(
        s,
        "  verdict: {verdict}{depth_note} ({:.2}M parameters, {:.2} GFLOP/token forward)",
        r.parameters as f64 / 1e6,
        r.flops_per_token as f64 / 1e9
    );
    if r.dropout_ignored {
        let _ = writeln!(s, "  dropout: left out of this check (it acts in training only, not at init)");
    }
    s
}
