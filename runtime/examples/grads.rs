//! Writes the gradient of a run's newest checkpoint's mean next-token
//! cross-entropy on one token sequence (each token predicts the next) as
//! safetensors named as the weights are, and prints the loss: what
//! `bench/export-check.sh` holds PyTorch's autograd on the exported model
//! to. A tensor that does not train (a reparameterised map's `W_init`) is
//! written as zeros.
//!
//! `cargo run --release -p blkc-runtime --example grads -- RUN 3,1,4,1,5 OUT`

use burn::backend::autodiff::grads::Gradients;
use burn::backend::Autodiff;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Int, Tensor, TensorData};

use blkc_runtime::backend::Cpu;

type Ad = Autodiff<Cpu>;

/// Every float parameter replaced by its gradient (zeros where it has none).
struct GradientOf<'a>(&'a Gradients);

impl ModuleMapper<Ad> for GradientOf<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<Ad, D>>) -> Param<Tensor<Ad, D>> {
        let (id, tensor, mapper) = param.consume();
        let grad = tensor.grad(self.0).unwrap_or_else(|| tensor.clone().inner().zeros_like());
        Param::from_mapped_value(id, Tensor::from_inner(grad), mapper)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(run), Some(tokens), Some(out)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: grads RUN TOKENS (comma-separated ids, at least two) OUT");
        std::process::exit(2);
    };
    let ids: Vec<i64> = tokens.split(',').filter_map(|t| t.trim().parse().ok()).collect();
    if ids.len() < 2 {
        eprintln!("error: give at least two tokens (each predicts the next)");
        std::process::exit(2);
    }
    let device = Default::default();
    let opened = match blkc_runtime::train::open::open::<Ad>(std::path::Path::new(run), &device) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let t = ids.len() - 1;
    let inputs = Tensor::<Ad, 2, Int>::from_data(TensorData::new(ids[..t].to_vec(), [1, t]), &device);
    let targets = Tensor::<Ad, 1, Int>::from_data(TensorData::new(ids[1..].to_vec(), [t]), &device);
    // As training takes it: the head's logits, soft-capped (where the
    // model caps them) by the loss's own kernel.
    let logits = opened.model.head_with(inputs, None);
    let v = logits.dims()[2];
    let loss = blkc_runtime::kernels::nll_mean(logits.reshape([t, v]), targets, opened.model.logit_softcap);
    let value: f32 = loss.clone().into_scalar();
    let grads = loss.backward();
    let model = opened.model.map(&mut GradientOf(&grads));
    let written = blkc_runtime::checkpoint::export(&model, std::path::Path::new(out));
    if let Err(e) = written {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!("{value}");
}
