//! Training settings resolved: the file's `train` sections, then the
//! command line's overrides, then defaults (the paper's setup where it has
//! one, `reference/paper.md` §5.3). Overrides are checked by the compiler's
//! own rules: `--set key=value` is compiled as a one-line `train` section.

use blkc::graph::{Train, TrainValue};
use blkc::Diagnostic;
use serde::{Deserialize, Serialize};

use super::optim::{Config, Rule, Schedule};
use super::tokenizer::Kind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub data: String,
    pub tokenizer: String,
    pub batch: u64,
    pub micro_batch: u64,
    pub steps: u64,
    pub lr: f64,
    pub warmup: f64,
    pub schedule: String,
    pub optimizer: String,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
    pub clip: f64,
    pub eval_every: u64,
    pub eval_batches: u64,
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub seed: u64,
    pub val_fraction: f64,
    pub mask_rate: f64,
    pub device: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data: super::data::PYTHON_STDLIB.into(),
            tokenizer: "bpe".into(),
            batch: 16,
            micro_batch: 0,
            steps: 1000,
            lr: 1e-3,
            warmup: 0.05,
            schedule: "linear".into(),
            optimizer: "adamw".into(),
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.1,
            clip: 1.0,
            eval_every: 200,
            eval_batches: 8,
            checkpoint_every: 200,
            log_every: 10,
            seed: 0,
            val_fraction: 0.05,
            mask_rate: 0.25,
            device: "cpu".into(),
        }
    }
}

impl Settings {
    /// Applies checked settings (later ones win).
    pub fn apply(&mut self, train: &Train) {
        for (key, value, _) in &train.settings {
            self.set(key, value);
        }
    }

    fn set(&mut self, key: &str, v: &TrainValue) {
        let num = match v {
            TrainValue::Number(x) => *x,
            TrainValue::Text(_) => f64::NAN,
        };
        let text = match v {
            TrainValue::Text(s) => s.clone(),
            TrainValue::Number(x) => x.to_string(),
        };
        let int = num as u64;
        match key {
            "data" => self.data = text,
            "tokenizer" => self.tokenizer = text,
            "batch" => self.batch = int,
            "micro_batch" => self.micro_batch = int,
            "steps" => self.steps = int,
            "lr" => self.lr = num,
            "warmup" => self.warmup = num,
            "schedule" => self.schedule = text,
            "optimizer" => self.optimizer = text,
            "beta1" => self.beta1 = num,
            "beta2" => self.beta2 = num,
            "adam_eps" => self.adam_eps = num,
            "weight_decay" => self.weight_decay = num,
            "clip" => self.clip = num,
            "eval_every" => self.eval_every = int,
            "eval_batches" => self.eval_batches = int,
            "checkpoint_every" => self.checkpoint_every = int,
            "log_every" => self.log_every = int,
            "seed" => self.seed = int,
            "val_fraction" => self.val_fraction = num,
            "mask_rate" => self.mask_rate = num,
            "device" => self.device = text,
            _ => {}
        }
    }

    /// Rows per forward pass (the batch when `micro_batch` is unset).
    pub fn micro(&self) -> u64 {
        if self.micro_batch == 0 {
            self.batch
        } else {
            self.micro_batch.min(self.batch)
        }
    }

    /// Forward passes per step; an error when the batch does not split.
    pub fn accumulation(&self) -> Result<u64, String> {
        let m = self.micro();
        if !self.batch.is_multiple_of(m) {
            return Err(format!("batch {} is not a multiple of micro_batch {m}", self.batch));
        }
        Ok(self.batch / m)
    }

    pub fn optimizer_config(&self) -> Config {
        Config {
            rule: Rule::parse(&self.optimizer).unwrap_or(Rule::AdamW),
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
            clip: self.clip,
        }
    }

    pub fn schedule(&self) -> Schedule {
        Schedule::parse(&self.schedule).unwrap_or(Schedule::Linear)
    }

    pub fn tokenizer_kind(&self) -> Kind {
        Kind::parse(&self.tokenizer).unwrap_or(Kind::Bpe)
    }
}

/// Checks `key=value` overrides with the compiler's rules for `train`
/// settings; the diagnostics (rendered) when one is wrong.
pub fn overrides(pairs: &[String]) -> Result<Option<Train>, String> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut text = String::from("train {\n");
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            return Err(format!("`--set {p}`: write KEY=VALUE, e.g. `--set lr=3e-4`"));
        };
        let (k, v) = (k.trim(), v.trim());
        let quoted = k == "data" && !v.starts_with('"');
        let v = if quoted { format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")) } else { v.to_string() };
        text.push_str(&format!("    {k} = {v}\n"));
    }
    text.push_str("}\n");
    let c = blkc::compile_str("<command line>", &text);
    let errors: Vec<Diagnostic> = c.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
    if !errors.is_empty() {
        return Err(blkc::diag::render_plain(&errors, &c.sources));
    }
    Ok(c.program.and_then(|p| p.train))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_checked_by_the_compiler() {
        let t = overrides(&["lr=3e-4".into(), "steps=20".into(), "data=some/dir".into()])
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no train section"));
        let mut s = Settings::default();
        s.apply(&t);
        assert_eq!((s.lr, s.steps, s.data.as_str()), (3e-4, 20, "some/dir"));
        let bad = overrides(&["lr=-1".into()]).err().unwrap_or_default();
        assert!(bad.contains("lr"), "{bad}");
        assert!(overrides(&["colour=red".into()]).is_err());
        assert!(overrides(&["steps".into()]).is_err());
    }

    #[test]
    fn accumulation_must_divide() {
        let s = Settings { batch: 16, micro_batch: 4, ..Settings::default() };
        assert_eq!(s.accumulation(), Ok(4));
        let s = Settings { batch: 16, micro_batch: 6, ..Settings::default() };
        assert!(s.accumulation().is_err());
    }
}
