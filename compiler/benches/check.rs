//! Timing of the front end and of the signal analysis (criterion):
//! `cargo bench -p blkc-compiler`. Figures are recorded in the closing
//! notes of the issues; no test depends on them.

use std::path::{Path, PathBuf};

use blkc::signal::{analyse, AttentionMode, Dims, Options};
use blkc::{compile, MemLoader};
use criterion::{criterion_group, criterion_main, Criterion};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every file the examples need, in memory (no disk in the timed loop).
fn loader() -> (MemLoader, Vec<String>) {
    let mut l = MemLoader::default();
    let mut roots = Vec::new();
    for dir in ["blocks", "examples/codeparrot"] {
        let mut names: Vec<String> = std::fs::read_dir(repo().join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".blk"))
            .collect();
        names.sort();
        for n in names {
            let path = format!("{dir}/{n}");
            let text = std::fs::read_to_string(repo().join(&path)).unwrap_or_default();
            l = l.with(&path, &text);
            if dir == "blocks" {
                roots.push(path);
            }
        }
    }
    (l, roots)
}

fn front_end(c: &mut Criterion) {
    let (l, roots) = loader();
    c.bench_function("compile every file of blocks/", |b| {
        b.iter(|| roots.iter().map(|r| compile(Path::new(r), &l).map_or(0, |c| c.diagnostics.len())).sum::<usize>())
    });
}

fn analysis(c: &mut Criterion) {
    let (l, _) = loader();
    let mut g = c.benchmark_group("analyse CodeParrot model, depth 72, T = 128, two inputs");
    g.sample_size(10);
    for name in ["preln", "sas-p", "skipless-naive"] {
        let path = format!("examples/codeparrot/{name}.blk");
        let Some(p) = compile(Path::new(&path), &l).ok().and_then(|c| c.program) else { continue };
        let Some(m) = p.model.clone() else { continue };
        let opts = Options::new(72, 128);
        g.bench_function(name, |b| b.iter(|| analyse(&p.blocks[m.block], Dims::of(&m), &opts).status));
    }
    g.finish();
    let mut g = c.benchmark_group("analyse Pre-LN, Monte Carlo attention (64 draws), T = 128, two inputs");
    g.sample_size(10);
    let path = "examples/codeparrot/preln.blk";
    if let Some(p) = compile(Path::new(path), &l).ok().and_then(|c| c.program) {
        if let Some(m) = p.model.clone() {
            for depth in [18u64, 72] {
                let mut opts = Options::new(depth, 128);
                opts.mode = AttentionMode::MonteCarlo;
                g.bench_function(format!("depth {depth}"), |b| {
                    b.iter(|| analyse(&p.blocks[m.block], Dims::of(&m), &opts).status)
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, front_end, analysis);
criterion_main!(benches);
