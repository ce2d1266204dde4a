//! Prints the logits of a run's newest checkpoint for one token sequence,
//! as JSON (`[[f32; vocab]; T]`): what `bench/export-check.sh` holds the
//! exported PyTorch model to.
//!
//! `cargo run --release -p blkc-runtime --example logits -- RUN 3,1,4,1,5`

use blkc_runtime::backend::Cpu;
use burn::tensor::{Int, Tensor, TensorData};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(run), Some(tokens)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: logits RUN TOKENS (comma-separated ids)");
        std::process::exit(2);
    };
    let ids: Vec<i64> = tokens.split(',').filter_map(|t| t.trim().parse().ok()).collect();
    let device = Default::default();
    let opened = match blkc_runtime::train::open::open::<Cpu>(std::path::Path::new(run), &device) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let t = ids.len();
    let input = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
    let logits = opened.model.forward(input);
    let v = logits.dims()[2];
    let flat: Vec<f32> = logits.into_data().to_vec().unwrap_or_default();
    let rows: Vec<&[f32]> = flat.chunks(v).collect();
    println!("{}", serde_json::to_string(&rows).unwrap_or_default());
}
