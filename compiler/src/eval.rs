//! Evaluation of symbolic gains ([`Scalar`]) for a given model and layer.

use crate::graph::{Func, Scalar, Var};
use crate::syntax::ast::BinOp;

/// Values of the variables a gain may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Env {
    pub depth: f64,
    pub width: f64,
    pub heads: f64,
    pub layer: f64,
    /// The head a `per_head` param's initial value is evaluated for.
    pub head: f64,
}

impl Env {
    pub fn get(&self, v: Var) -> f64 {
        match v {
            Var::Depth => self.depth,
            Var::Width => self.width,
            Var::Heads => self.heads,
            Var::Layer => self.layer,
            Var::Head => self.head,
        }
    }
}

/// Why a gain has no value.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    DivisionByZero,
    NotFinite(f64),
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::DivisionByZero => f.write_str("division by zero"),
            EvalError::NotFinite(v) => write!(f, "the result is {v}"),
        }
    }
}

/// Evaluates `s`; `param` gives the current value of param `i`.
pub fn eval(s: &Scalar, env: &Env, param: &dyn Fn(usize) -> f64) -> Result<f64, EvalError> {
    let v = match s {
        Scalar::Const(c) => *c,
        Scalar::Param(i) => param(*i),
        Scalar::Var(v) => env.get(*v),
        Scalar::Neg(a) => -eval(a, env, param)?,
        Scalar::Bin(op, a, b) => {
            let (a, b) = (eval(a, env, param)?, eval(b, env, param)?);
            match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div if b == 0.0 => return Err(EvalError::DivisionByZero),
                BinOp::Div => a / b,
                BinOp::Pow => a.powf(b),
            }
        }
        Scalar::Call(f, args) => {
            let a: Vec<f64> = args.iter().map(|x| eval(x, env, param)).collect::<Result<_, _>>()?;
            let x = a.first().copied().unwrap_or(f64::NAN);
            let y = a.get(1).copied().unwrap_or(f64::NAN);
            match f {
                Func::Sqrt => x.sqrt(),
                Func::Exp => x.exp(),
                Func::Log => x.ln(),
                Func::Abs => x.abs(),
                Func::Min => x.min(y),
                Func::Max => x.max(y),
            }
        }
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(EvalError::NotFinite(v))
    }
}

/// The initial values of `params` (0 where a value is not finite; the
/// checker has already reported those).
pub fn param_values(params: &[crate::graph::ParamDef], env: &Env) -> Vec<f64> {
    params.iter().map(|p| eval_const(&p.init, env).unwrap_or(0.0)).collect()
}

/// Evaluates a scalar that may not refer to params.
pub fn eval_const(s: &Scalar, env: &Env) -> Result<f64, EvalError> {
    eval(s, env, &|_| f64::NAN)
}
