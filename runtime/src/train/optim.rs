//! The optimiser, written here rather than taken from burn so that it can
//! do what the paper's setup needs in one pass per parameter: AdamW with
//! weight decay only on matrices (never on gains, norm scales or biases),
//! clipping by the global gradient norm, the global norm itself for the
//! metrics, and a state keyed by module path that is saved exactly and
//! reloaded into a rebuilt model.
//!
//! Moments live flattened (`[n]`) on the device, in the inner (non-autodiff)
//! backend.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{ElementConversion, Tensor, TensorData, TensorPrimitive};

use crate::kernels::{AdamStep, Kernels};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Adam with decoupled weight decay (Loshchilov & Hutter).
    AdamW,
    /// Adam with L2 weight decay added to the gradient.
    Adam,
    /// Plain stochastic gradient descent (L2 decay in the gradient).
    Sgd,
}

impl Rule {
    pub fn parse(s: &str) -> Option<Rule> {
        match s {
            "adamw" => Some(Rule::AdamW),
            "adam" => Some(Rule::Adam),
            "sgd" => Some(Rule::Sgd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Rule::AdamW => "adamw",
            Rule::Adam => "adam",
            Rule::Sgd => "sgd",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub rule: Rule,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub clip: f64,
}

/// Whether a parameter of rank `rank` is decayed: matrices (embeddings,
/// projections, ΔW of reparameterised maps) are; vectors (gains, norm
/// scales, biases) are not.
pub fn decays(rank: usize) -> bool {
    rank >= 2
}

#[derive(Debug)]
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// Optimiser state: step count and per-parameter moments.
#[derive(Debug)]
pub struct Optimizer<B: Backend> {
    pub config: Config,
    /// Updates applied so far.
    pub t: u64,
    moments: HashMap<String, Moments<B>>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(config: Config) -> Self {
        Optimizer { config, t: 0, moments: HashMap::new() }
    }

    /// A copy of this state on `device` (for another device's copy of the
    /// model, in data-parallel training).
    pub fn to_device(&self, device: &B::Device) -> Self {
        let moments = self
            .moments
            .iter()
            .map(|(k, s)| (k.clone(), Moments { m: s.m.clone().to_device(device), v: s.v.clone().to_device(device) }))
            .collect();
        Optimizer { config: self.config, t: self.t, moments }
    }

    /// Whether no parameter has moments yet.
    pub fn is_empty(&self) -> bool {
        self.moments.is_empty()
    }

    /// Writes the state to `path` (little-endian f32, names sorted);
    /// returns its checksum.
    pub fn save(&self, path: &Path) -> Result<u32, String> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.t.to_le_bytes());
        let mut names: Vec<&String> = self.moments.keys().collect();
        names.sort();
        out.extend_from_slice(&(names.len() as u64).to_le_bytes());
        for name in names {
            let st = &self.moments[name];
            let m = floats(&st.m)?;
            let v = floats(&st.v)?;
            out.extend_from_slice(&(name.len() as u64).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(m.len() as u64).to_le_bytes());
            for x in m.iter().chain(&v) {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        crate::durable::write_atomic(path, &out)?;
        Ok(crate::durable::checksum(&out))
    }

    /// Reads a state written by [`save`](Self::save), verifying its
    /// checksum when one was recorded.
    pub fn load(config: Config, path: &Path, checksum: Option<u32>, device: &B::Device) -> Result<Self, String> {
        let bad = |why: &str| format!("`{}` is not an optimiser state: {why}", path.display());
        let bytes = crate::durable::read_verified(path, checksum)?;
        let mut r = Reader { bytes: &bytes, at: 0 };
        if r.take(MAGIC.len()).ok_or_else(|| bad("too short"))? != MAGIC {
            return Err(bad("wrong header"));
        }
        let t = r.u64().ok_or_else(|| bad("truncated"))?;
        let count = r.u64().ok_or_else(|| bad("truncated"))?;
        let mut moments = HashMap::new();
        for _ in 0..count {
            let len = r.u64().ok_or_else(|| bad("truncated"))? as usize;
            let name = String::from_utf8(r.take(len).ok_or_else(|| bad("truncated"))?.to_vec())
                .map_err(|_| bad("bad name"))?;
            let n = r.u64().ok_or_else(|| bad("truncated"))? as usize;
            if n.checked_mul(8).is_none_or(|b| b > r.left()) {
                return Err(bad("truncated"));
            }
            let m = r.floats(n).ok_or_else(|| bad("truncated"))?;
            let v = r.floats(n).ok_or_else(|| bad("truncated"))?;
            let tensor = |x: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(x, [n]), device);
            moments.insert(name, Moments { m: tensor(m), v: tensor(v) });
        }
        if r.at != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(Optimizer { config, t, moments })
    }

    /// Checks the state against the model it is to update: every moment
    /// belongs to a parameter of that path and size. Loading another
    /// model's state is then an error naming the parameter, not a silent
    /// partial update.
    pub fn check<AB: Backend, M: Module<AB>>(&self, model: &M, path: &Path) -> Result<(), String> {
        let mut sizes = Sizes { path: Vec::new(), sizes: HashMap::new() };
        model.visit(&mut sizes);
        let mut names: Vec<&String> = self.moments.keys().collect();
        names.sort();
        for name in names {
            let have = self.moments[name].m.shape().num_elements();
            match sizes.sizes.get(name) {
                None => return Err(format!("`{}` holds moments for `{name}`, which this model does not have; it belongs to another model", path.display())),
                Some(&want) if want != have => {
                    return Err(format!("`{}` holds {have} moments for `{name}`, which has {want} weights in this model; it belongs to another model", path.display()))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Every float parameter's path and size.
struct Sizes {
    path: Vec<String>,
    sizes: HashMap<String, usize>,
}

impl<AB: Backend> ModuleVisitor<AB> for Sizes {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        self.sizes.insert(self.path.join("."), param.lazy_shape().num_elements());
    }
}

impl<B: Kernels> Optimizer<B> {
    /// One update of `model` with `grads` at learning rate `lr`. Returns
    /// the model and the global gradient norm before clipping.
    pub fn step<AB, M>(&mut self, model: M, lr: f64, mut grads: GradientsParams) -> (M, f64)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        let mut norm = SquaredNorm::<AB> { grads: &grads, all: Vec::new(), device: None };
        model.visit(&mut norm);
        let norm = match norm.device {
            Some(device) => {
                let total: Tensor<B, 1> =
                    Tensor::from_primitive(TensorPrimitive::Float(B::squared_norm(norm.all, &device)));
                f64::from(total.into_scalar().elem::<f32>()).sqrt()
            }
            None => 0.0,
        };
        let scale = if self.config.clip > 0.0 && norm > self.config.clip { self.config.clip / norm } else { 1.0 };
        self.t += 1;
        let model = match self.config.rule {
            Rule::Sgd => model.map(&mut Sgd { config: self.config, grads: &mut grads, lr, scale }),
            Rule::AdamW | Rule::Adam => {
                let mut gather = Gather::<AB> { grads: &mut grads, path: Vec::new(), items: Vec::new() };
                model.visit(&mut gather);
                let updated = self.adam(gather.items, lr, scale);
                model.map(&mut Apply::<AB> { updated })
            }
        };
        (model, norm)
    }

    /// Adam(W) of every gathered parameter, those with weight decay and
    /// those without each in one [`AdamOps::adam_many`](crate::kernels::AdamOps::adam_many):
    /// the new values by parameter.
    fn adam(&mut self, items: Vec<Gathered<B>>, lr: f64, scale: f64) -> HashMap<ParamId, FloatTensor<B>> {
        let c = self.config;
        let t = self.t as i32;
        let adamw = c.rule == Rule::AdamW;
        let step = |wd: f64| AdamStep {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            bc1: 1.0 - c.beta1.powi(t),
            bc2: 1.0 - c.beta2.powi(t),
            grad_scale: scale,
            l2: if adamw { 0.0 } else { wd },
            decay: if adamw { lr * wd } else { 0.0 },
        };
        let mut updated = HashMap::new();
        let (decayed, kept): (Vec<_>, Vec<_>) = items.into_iter().partition(|it| it.decays);
        for (items, wd) in [(decayed, c.weight_decay), (kept, 0.0)] {
            let mut names = Vec::with_capacity(items.len());
            let operands = items
                .into_iter()
                .map(|it| {
                    let n = it.p.shape().num_elements();
                    let device = it.p.device();
                    let st = self
                        .moments
                        .remove(&it.name)
                        .unwrap_or_else(|| Moments { m: Tensor::zeros([n], &device), v: Tensor::zeros([n], &device) });
                    names.push((it.id, it.name));
                    [it.p, it.g, st.m, st.v].map(|x| x.into_primitive().tensor())
                })
                .collect();
            let tensor = |x| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(x));
            for ((id, name), [p, m, v]) in names.into_iter().zip(B::adam_many(operands, step(wd))) {
                self.moments.insert(name, Moments { m: tensor(m), v: tensor(v) });
                updated.insert(id, p);
            }
        }
        updated
    }
}

const MAGIC: &[u8] = b"blkc-optimizer-1";

fn floats<B: Backend>(t: &Tensor<B, 1>) -> Result<Vec<f32>, String> {
    t.clone().into_data().convert::<f32>().to_vec::<f32>().map_err(|e| format!("cannot read optimiser state: {e:?}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }

    fn floats(&mut self, n: usize) -> Option<Vec<f32>> {
        let b = self.take(n.checked_mul(4)?)?;
        Some(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

/// Sums the squared gradients of every parameter (one tensor, read once).
struct SquaredNorm<'a, AB: AutodiffBackend> {
    grads: &'a GradientsParams,
    /// Every gradient, for one [`crate::kernels::AdamOps::squared_norm`].
    all: Vec<FloatTensor<AB::InnerBackend>>,
    device: Option<burn::tensor::Device<AB::InnerBackend>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for SquaredNorm<'_, AB> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        if let Some(g) = self.grads.get::<AB::InnerBackend, D>(param.id) {
            self.device.get_or_insert_with(|| g.device());
            self.all.push(g.into_primitive().tensor());
        }
    }
}

/// A parameter to update, flattened, with its gradient.
struct Gathered<B: Backend> {
    id: ParamId,
    name: String,
    decays: bool,
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
}

/// Takes every parameter that has a gradient, with the gradient.
struct Gather<'a, AB: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    path: Vec<String>,
    items: Vec<Gathered<AB::InnerBackend>>,
}

impl<AB: AutodiffBackend> ModuleVisitor<AB> for Gather<'_, AB> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
        let Some(g) = self.grads.remove::<AB::InnerBackend, D>(param.id) else { return };
        let p = param.val().inner();
        let n = p.shape().num_elements();
        self.items.push(Gathered {
            id: param.id,
            name: self.path.join("."),
            decays: decays(D),
            p: p.reshape([n]),
            g: g.reshape([n]),
        });
    }
}

/// Puts the updated values in their parameters' places.
struct Apply<AB: AutodiffBackend> {
    updated: HashMap<ParamId, FloatTensor<AB::InnerBackend>>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Apply<AB> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper): (ParamId, _, _) = param.consume();
        let Some(p) = self.updated.remove(&id) else { return Param::from_mapped_value(id, tensor, mapper) };
        Param::from_mapped_value(id, replaced(tensor, p), mapper)
    }
}

/// `old`'s place (shape, whether it takes gradients) holding `new` (flat).
fn replaced<AB: AutodiffBackend, const D: usize>(
    old: Tensor<AB, D>,
    new: FloatTensor<AB::InnerBackend>,
) -> Tensor<AB, D> {
    let new = Tensor::<AB::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(new)).reshape(old.dims());
    let t = Tensor::<AB, D>::from_inner(new);
    if old.is_require_grad() {
        t.require_grad()
    } else {
        t
    }
}

/// Plain SGD of every parameter that has a gradient (L2 decay in the
/// gradient, on matrices).
struct Sgd<'a> {
    config: Config,
    grads: &'a mut GradientsParams,
    lr: f64,
    scale: f64,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for Sgd<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper): (ParamId, _, _) = param.consume();
        let Some(g) = self.grads.remove::<AB::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let wd = if decays(D) { self.config.weight_decay } else { 0.0 };
        let p = tensor.clone().inner();
        let g = g.mul_scalar(self.scale);
        let g = if wd > 0.0 { g + p.clone().mul_scalar(wd) } else { g };
        let p = p - g.mul_scalar(self.lr);
        let n = p.shape().num_elements();
        Param::from_mapped_value(id, replaced(tensor, p.reshape([n]).into_primitive().tensor()), mapper)
    }
}

/// The learning rate after `done` of `total` steps: linear warm-up over
/// `warmup` (a fraction of `total`), then the schedule down to 0.
pub fn learning_rate(peak: f64, done: u64, total: u64, warmup: f64, schedule: Schedule) -> f64 {
    let total = total.max(1);
    let warm = (warmup * total as f64).ceil() as u64;
    if done < warm {
        return peak * (done + 1) as f64 / warm as f64;
    }
    let progress = (done - warm) as f64 / (total - warm).max(1) as f64;
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => peak * (1.0 - progress).max(0.0),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
}

impl Schedule {
    pub fn parse(s: &str) -> Option<Schedule> {
        match s {
            "linear" => Some(Schedule::Linear),
            "cosine" => Some(Schedule::Cosine),
            "constant" => Some(Schedule::Constant),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
            Schedule::Constant => "constant",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_linear_decay_to_zero() {
        let lr = |s| learning_rate(1.0, s, 100, 0.05, Schedule::Linear);
        assert!((lr(0) - 0.2).abs() < 1e-12);
        assert!((lr(4) - 1.0).abs() < 1e-12);
        assert!(lr(50) < lr(10));
        assert!(lr(99) > 0.0 && lr(99) < 0.02);
        assert!(
            (learning_rate(1.0, 60, 100, 0.0, Schedule::Cosine) - 0.5 * (1.0 + (0.6 * std::f64::consts::PI).cos()))
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn only_matrices_decay() {
        assert!(decays(2));
        assert!(!decays(1));
    }
}
