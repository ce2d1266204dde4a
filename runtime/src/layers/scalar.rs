//! Gains as tensors: a [`Scalar`] of the IR evaluated with trainable params
//! as tensors (so gradients reach them) and everything else as constants.

use blkc::eval::{eval_const, Env};
use blkc::graph::{Func, ParamDef, Scalar};
use blkc::syntax::ast::BinOp;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::tables::Kept;

/// Where a param's value lives.
#[derive(Debug, Clone)]
pub enum Slot {
    /// Index into the module's trainable gains (`[1]`, or `[heads]` per head).
    Trainable(usize),
    Fixed(f64),
    /// A fixed per-head gain whose heads start at different values (its
    /// initial value uses `head`).
    FixedHeads(Vec<f64>),
}

/// Trainable gains for the trainable params of `defs` (initial values
/// evaluated at `env`), and a slot per param.
pub fn gains<B: Backend>(
    defs: &[ParamDef],
    heads: usize,
    env: &Env,
    device: &B::Device,
) -> (Vec<Param<Tensor<B, 1>>>, Vec<Slot>) {
    let mut params = Vec::new();
    let slots = defs
        .iter()
        .map(|p| {
            // One value per head for a per-head param (its init may use `head`).
            let n = if p.per_head { heads } else { 1 };
            let values: Vec<f64> =
                (0..n).map(|h| eval_const(&p.init, &Env { head: h as f64, ..*env }).unwrap_or(0.0)).collect();
            if p.trainable {
                let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                params.push(super::init::param(Tensor::from_floats(data.as_slice(), device)));
                Slot::Trainable(params.len() - 1)
            } else if values.iter().all(|&v| v == values[0]) {
                Slot::Fixed(values[0])
            } else {
                Slot::FixedHeads(values)
            }
        })
        .collect();
    (params, slots)
}

/// Names of the trainable params of `defs`, in the order [`gains`] makes them.
pub fn trainable_names(defs: &[ParamDef]) -> Vec<String> {
    defs.iter().filter(|p| p.trainable).map(|p| p.name.clone()).collect()
}

/// `s` as a tensor of shape `[1]` (or `[heads]` when it involves a per-head
/// gain).
pub fn value<B: Backend>(
    s: &Scalar,
    slots: &[Slot],
    gains: &[Param<Tensor<B, 1>>],
    env: &Env,
    device: &B::Device,
) -> Tensor<B, 1> {
    let rec = |x: &Scalar| value(x, slots, gains, env, device);
    match s {
        Scalar::Param(i) => match slots.get(*i) {
            Some(Slot::Trainable(j)) => gains[*j].val(),
            Some(Slot::Fixed(v)) => Tensor::full([1], *v, device),
            Some(Slot::FixedHeads(vs)) => {
                let data: Vec<f32> = vs.iter().map(|&v| v as f32).collect();
                Tensor::from_floats(data.as_slice(), device)
            }
            None => Tensor::zeros([1], device),
        },
        Scalar::Neg(a) => rec(a).neg(),
        Scalar::Bin(op, a, b) => {
            let (a, b) = (rec(a), rec(b));
            match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
                BinOp::Pow => a.powf(b),
            }
        }
        Scalar::Call(f, args) => {
            let mut a: Vec<Tensor<B, 1>> = args.iter().map(rec).collect();
            let x = a.remove(0);
            match f {
                Func::Sqrt => x.sqrt(),
                Func::Exp => x.exp(),
                Func::Log => x.log(),
                Func::Abs => x.abs(),
                Func::Min => x.min_pair(a.remove(0)),
                Func::Max => x.max_pair(a.remove(0)),
            }
        }
        Scalar::Const(_) | Scalar::Var(_) => Tensor::full([1], eval_const(s, env).unwrap_or(0.0), device),
    }
}

/// A plan's constant gains as tensors, made on first use per backend and
/// device and read by every forward after: each would otherwise be a fill
/// (a kernel launch on a GPU) in every step. Keyed by the expression, which
/// within one plan (its slots and variables fixed) names one value. Shared
/// by a plan's clones.
#[derive(Debug, Clone, Default)]
pub struct Constants(Kept<String>);

impl Constants {
    /// [`value`] of `s`, from the cache when it involves no trainable
    /// param (computed the same way the first time, so the same numbers).
    pub fn value<B: Backend>(
        &self,
        s: &Scalar,
        slots: &[Slot],
        gains: &[Param<Tensor<B, 1>>],
        env: &Env,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        if trainable(s, slots) {
            return value(s, slots, gains, env, device);
        }
        self.0.held::<B, _>(format!("{s:?}"), device, |_| true, || value(s, slots, gains, env, device))
    }
}

/// Whether `s` reads a trainable param.
fn trainable(s: &Scalar, slots: &[Slot]) -> bool {
    match s {
        Scalar::Param(i) => matches!(slots.get(*i), Some(Slot::Trainable(_))),
        Scalar::Neg(a) => trainable(a, slots),
        Scalar::Bin(_, a, b) => trainable(a, slots) || trainable(b, slots),
        Scalar::Call(_, args) => args.iter().any(|a| trainable(a, slots)),
        Scalar::Const(_) | Scalar::Var(_) => false,
    }
}

/// Whether `s` is a constant (no trainable param), and its value.
pub fn constant(s: &Scalar, slots: &[Slot], env: &Env) -> Option<f64> {
    let fixed = |i: usize| match slots.get(i) {
        Some(Slot::Fixed(v)) => *v,
        _ => f64::NAN,
    };
    blkc::eval::eval(s, env, &fixed).ok()
}
