//! Mixed precision: in a bf16 scope the weight products take bf16
//! operands while the weights, their gradients and everything outside the
//! products stay fp32 — the logits and gradients are those of fp32 to
//! bf16's precision (and not equal: the products are bf16).

use blkc_runtime::backend::Cpu;
use blkc_runtime::bench::random_batch;
use blkc_runtime::kernels::precision::{scope, Precision};
use blkc_runtime::model::Model;
use blkc_runtime::train::{loss, objective_for_mask};
use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Int, Tensor};

type B = Autodiff<Cpu>;

fn program(name: &str) -> blkc::Program {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sets: Vec<String> = ["depth=2", "width=64", "context=32", "vocab=512"].iter().map(|s| s.to_string()).collect();
    let path = root.join(format!("examples/small/{name}.blk"));
    let c = blkc::compile_with(&path, &blkc::FsLoader, &sets).unwrap_or_else(|e| panic!("{e}"));
    c.program.unwrap_or_else(|| panic!("{:?}", c.diagnostics))
}

/// Every gradient, flattened, with its dtype.
struct Grads<'a> {
    grads: &'a <B as AutodiffBackend>::Gradients,
    values: Vec<f32>,
    dtypes: Vec<DType>,
}

impl ModuleVisitor<B> for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = param.grad(self.grads) {
            self.dtypes.push(g.dtype());
            self.values.extend(g.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default());
        }
    }
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let n: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    (d / n).sqrt()
}

#[test]
fn bf16_products_give_fp32_results_to_bf16_precision() {
    for name in ["preln", "sas-p", "llama"] {
        let p = program(name);
        let m = p.model.as_ref().expect("model");
        let device = Default::default();
        let model = Model::<B>::build(&p, m, 3, &device);
        let batch = random_batch(m, 4, 5);
        let tokens = Tensor::<B, 1, Int>::from_ints(batch.inputs.as_slice(), &device).reshape([4, 32]);
        let logits = |precision| {
            let y = scope(precision, || model.forward(tokens.clone()));
            assert_eq!(y.dtype(), DType::F32, "{name}: logits are fp32");
            y.into_data().to_vec::<f32>().unwrap_or_default()
        };
        let (full, half) = (logits(Precision::Fp32), logits(Precision::Bf16));
        // The CPU has no TF32: tf32 there is fp32, to the bit.
        assert_eq!(logits(Precision::Tf32), full, "{name}: tf32 on the CPU is fp32");
        let r = relative(&full, &half);
        // bf16 keeps 8 bits: a rounding of 2⁻⁹ relative per operand.
        assert!(r > 1e-5 && r < 2e-2, "{name}: logits differ by {r:e} (relative, in norm)");

        let obj = objective_for_mask(m.mask, m.vocab as u32);
        let gradients = |precision| {
            let l = scope(precision, || loss(&model, &batch, obj, None, &device));
            let g = l.backward();
            let mut v = Grads { grads: &g, values: Vec::new(), dtypes: Vec::new() };
            model.visit(&mut v);
            assert!(v.dtypes.iter().all(|d| *d == DType::F32), "{name}: fp32 gradients of fp32 weights");
            v.values
        };
        let (full, half) = (gradients(Precision::Fp32), gradients(Precision::Bf16));
        let r = relative(&full, &half);
        assert!(r > 1e-5 && r < 0.1, "{name}: gradients differ by {r:e} (relative, in norm)");
        println!("{name}: bf16 against fp32: gradients {r:.2e}");
    }
}
