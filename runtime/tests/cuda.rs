//! The CUDA path computes what the CPU computes: the small SAS-P and
//! Pre-LN models, with the CPU's weights (moved through a safetensors
//! export), give the same logits on the GPU to 1e-4. Needs a CUDA GPU:
//! `cargo test -p blkc-runtime --features cuda --test cuda -- --ignored`
//! (or `bench/gpu-check.sh`, which builds the test binary here and runs it
//! on a machine with a GPU and no Rust).
#![cfg(feature = "cuda")]

use blkc_runtime::backend::{Cpu, Cuda};
use blkc_runtime::checkpoint::{export, import};
use blkc_runtime::model::Model;
use burn::tensor::{Int, Tensor};

fn program(name: &str) -> blkc::Program {
    // Relative to the crate directory, where cargo (and gpu-check.sh) run
    // the test, so the binary also works from another checkout.
    let path = std::path::Path::new("..").join(format!("examples/small/{name}.blk"));
    let c = blkc::compile(&path, &blkc::FsLoader).unwrap_or_else(|e| panic!("{e}"));
    c.program.unwrap_or_else(|| panic!("{:?}", c.diagnostics))
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_forward_matches_the_cpu() {
    let dir = std::env::temp_dir().join(format!("blkc-cuda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for name in ["preln", "sas-p"] {
        let p = program(name);
        let m = p.model.as_ref().expect("model");
        let cpu = Model::<Cpu>::build(&p, m, 7, &Default::default());
        let file = dir.join(format!("{name}.safetensors"));
        export(&cpu, &file).expect("export");
        let gpu_device = Default::default();
        let gpu = import(Model::<Cuda>::build(&p, m, 8, &gpu_device), &file).expect("import");
        let ids: Vec<i64> = (0..2 * 128).map(|i| (i * 37 % 4096) as i64).collect();
        let t_cpu = Tensor::<Cpu, 1, Int>::from_ints(ids.as_slice(), &Default::default()).reshape([2, 128]);
        let t_gpu = Tensor::<Cuda, 1, Int>::from_ints(ids.as_slice(), &gpu_device).reshape([2, 128]);
        let a: Vec<f32> = cpu.forward(t_cpu).into_data().to_vec().unwrap_or_default();
        let b: Vec<f32> = gpu.forward(t_gpu).into_data().to_vec().unwrap_or_default();
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        println!("{name}: max |cpu − cuda| = {diff:e}");
        assert!(diff < 1e-4, "{name}: {diff}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
