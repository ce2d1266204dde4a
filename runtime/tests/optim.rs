//! The optimiser against the update rule written out on the host: AdamW
//! with bias correction, decoupled decay on matrices only, and clipping by
//! the global gradient norm.

use blkc_runtime::backend::Cpu;
use blkc_runtime::train::optim::{Config, Optimizer, Rule};
use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

type B = Autodiff<Cpu>;

#[derive(Module, Debug)]
struct Two<B: Backend> {
    w: Param<Tensor<B, 2>>,
    g: Param<Tensor<B, 1>>,
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default().into_iter().map(f64::from).collect()
}

#[test]
fn adamw_decays_matrices_only_and_clips_by_the_global_norm() {
    let device = Default::default();
    let w0: [f32; 4] = [0.5, -1.0, 2.0, 0.25];
    let g0: [f32; 2] = [1.0, 0.2];
    let cw: [f32; 4] = [0.3, -0.7, 1.1, 0.05];
    let cg: [f32; 2] = [0.9, -0.4];
    let mut model = Two::<B> {
        w: Param::from_tensor(Tensor::from_data(TensorData::new(w0.to_vec(), [2, 2]), &device)),
        g: Param::from_tensor(Tensor::from_data(TensorData::new(g0.to_vec(), [2]), &device)),
    };
    let config = Config { rule: Rule::AdamW, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, clip: 0.5 };
    let mut opt = Optimizer::<Cpu>::new(config);
    let cw_t = Tensor::<B, 2>::from_data(TensorData::new(cw.to_vec(), [2, 2]), &device);
    let cg_t = Tensor::<B, 1>::from_data(TensorData::new(cg.to_vec(), [2]), &device);

    // The same three steps on the host, in f64.
    let (mut w, mut g) = (w0.map(f64::from).to_vec(), g0.map(f64::from).to_vec());
    let (mut mw, mut vw, mut mg, mut vg) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 2], vec![0.0; 2]);
    let lrs = [0.1, 0.05, 0.02];
    for (t, lr) in lrs.iter().enumerate() {
        // loss = Σ w·cw + Σ g²·cg
        let loss = (model.w.val() * cw_t.clone()).sum() + (model.g.val() * model.g.val() * cg_t.clone()).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (next, norm) = opt.step::<B, _>(model, *lr, grads);
        model = next;

        let dw: Vec<f64> = cw.iter().map(|&c| f64::from(c)).collect();
        let dg: Vec<f64> = g.iter().zip(cg).map(|(x, c)| 2.0 * x * f64::from(c)).collect();
        let host_norm = dw.iter().chain(&dg).map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - host_norm).abs() < 1e-5, "norm {norm} vs {host_norm}");
        let scale = if host_norm > 0.5 { 0.5 / host_norm } else { 1.0 };
        let step = (t + 1) as i32;
        let (bc1, bc2) = (1.0 - 0.9f64.powi(step), 1.0 - 0.999f64.powi(step));
        let adam = |p: &mut [f64], m: &mut [f64], v: &mut [f64], d: &[f64], decay: f64| {
            for i in 0..p.len() {
                let gi = d[i] * scale;
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.999 * v[i] + 0.001 * gi * gi;
                p[i] = p[i] * (1.0 - lr * decay) - lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + 1e-8);
            }
        };
        adam(&mut w, &mut mw, &mut vw, &dw, 0.1);
        adam(&mut g, &mut mg, &mut vg, &dg, 0.0);
        for (a, b) in values(model.w.val()).iter().zip(&w) {
            assert!((a - b).abs() < 1e-5, "step {step}: w {a} vs {b}");
        }
        for (a, b) in values(model.g.val()).iter().zip(&g) {
            assert!((a - b).abs() < 1e-5, "step {step}: g {a} vs {b}");
        }
    }
    // The decay made a difference on the matrix: without it, w would differ.
    assert!(w.iter().zip(w0).any(|(a, b)| (a - f64::from(b)).abs() > 0.01));
}

#[test]
fn optimizer_state_round_trips_exactly() {
    let device = Default::default();
    let mut model = Two::<B> {
        w: Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.5f32, -1.0, 2.0, 0.25], [2, 2]), &device)),
        g: Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, 0.2], [2]), &device)),
    };
    let config = Config { rule: Rule::AdamW, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, clip: 1.0 };
    let mut opt = Optimizer::<Cpu>::new(config);
    let step = |model: Two<B>, opt: &mut Optimizer<Cpu>| {
        let loss = (model.w.val() * model.w.val()).sum() + model.g.val().sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        opt.step::<B, _>(model, 0.01, grads).0
    };
    model = step(model, &mut opt);
    let path = std::env::temp_dir().join(format!("blkc-optim-{}.bin", std::process::id()));
    let sum = opt.save(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut loaded = Optimizer::<Cpu>::load(config, &path, Some(sum), &device).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.check(&model, &path).is_ok());
    assert_eq!(loaded.t, 1);
    let a = step(model.clone(), &mut opt);
    let b = step(model, &mut loaded);
    assert_eq!(values(a.w.val()), values(b.w.val()));
    assert_eq!(values(a.g.val()), values(b.g.val()));
    // A damaged file is an error, not a panic.
    let bytes = std::fs::read(&path).unwrap_or_default();
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap_or_else(|e| panic!("{e}"));
    assert!(Optimizer::<Cpu>::load(config, &path, None, &device).is_err());
    // A flipped bit in a moment is caught by the recorded checksum.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 2;
    flipped[last] ^= 1;
    std::fs::write(&path, &flipped).unwrap_or_else(|e| panic!("{e}"));
    let err = Optimizer::<Cpu>::load(config, &path, Some(sum), &device).err().unwrap_or_default();
    assert!(err.contains("is damaged"), "{err}");
    // Moments of a parameter of another size belong to another model.
    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let other = Two::<B> {
        w: Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.5f32; 6], [2, 3]), &device)),
        g: Param::from_tensor(Tensor::from_data(TensorData::new(vec![1.0f32, 0.2], [2]), &device)),
    };
    let err = loaded.check(&other, &path).err().unwrap_or_default();
    assert!(err.contains("`w`") && err.contains("another model"), "{err}");
    let _ = std::fs::remove_file(&path);
}
