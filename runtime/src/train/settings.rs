//! Training settings resolved: the file's `train` sections, then the
//! command line's overrides, then defaults (the paper's setup where it has
//! one: He & Hofmann 2023, App. D.1, and the reference code's `train.yaml`). Overrides are checked by the compiler's
//! own rules: `--set key=value` is compiled as a one-line `train` section.

use std::path::Path;

use blkc::graph::{Train, TrainValue};
use blkc::{Diagnostic, SourceMap};
use serde::{Deserialize, Serialize};

use super::optim::{Config, Rule, Schedule};
use super::tokenizer::Kind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub data: String,
    /// The field of a JSON-lines record that holds its text.
    #[serde(default = "text_field")]
    pub data_field: String,
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
    /// The weight products: `auto` (bf16 on CUDA, fp32 elsewhere), `fp32`
    /// or `bf16` (see [`crate::kernels::precision`]). A run recorded
    /// before the setting existed ran in fp32, and resumes so.
    #[serde(default = "fp32")]
    pub precision: String,
    /// Devices training runs on in parallel, each with a copy of the model
    /// and its share of every batch (data parallel). A run recorded before
    /// the setting existed ran on one.
    #[serde(default = "one")]
    pub devices: u64,
    /// How documents' names are hashed for the split (not a setting:
    /// [`Holdout::hash`](super::data::Holdout)). A run recorded before
    /// hash 2 splits, and resumes, by hash 1.
    #[serde(default = "one")]
    pub split_hash: u64,
}

fn one() -> u64 {
    1
}

fn fp32() -> String {
    "fp32".into()
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data: super::data::PYTHON_STDLIB.into(),
            data_field: text_field(),
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
            precision: "auto".into(),
            devices: 1,
            split_hash: super::data::Holdout::HASH,
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

    /// Applies a file's `train` sections: a relative `data` path is taken
    /// relative to the file that sets it (as `use` paths are), and stored
    /// absolute, so the run reads the same text from any directory.
    pub fn apply_file(&mut self, train: &Train, sources: &SourceMap) {
        self.apply(train);
        let dir_of = |key: &str| {
            let (_, _, span) = train.settings.iter().rev().find(|(k, _, _)| k == key)?;
            Some(sources.get(span.file).path.parent().unwrap_or(Path::new("")).to_path_buf())
        };
        if let Some(dir) = dir_of("data") {
            self.data = resolve(&self.data, &dir);
        }
        if let (Some(dir), true) = (dir_of("tokenizer"), self.tokenizer_is_file()) {
            self.tokenizer = resolve(&self.tokenizer, &dir);
        }
    }

    /// Applies command-line overrides: a relative `data` path is taken
    /// relative to the working directory, and stored absolute.
    pub fn apply_command_line(&mut self, train: &Train) {
        self.apply(train);
        if train.settings.iter().any(|(k, _, _)| k == "data") {
            self.data = resolve(&self.data, Path::new(""));
        }
        if train.settings.iter().any(|(k, _, _)| k == "tokenizer") && self.tokenizer_is_file() {
            self.tokenizer = resolve(&self.tokenizer, Path::new(""));
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
            "data_field" => self.data_field = text,
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
            "precision" => self.precision = text,
            "devices" => self.devices = int,
            _ => {}
        }
    }

    /// The precision of the weight products on this run's device.
    pub fn products(&self) -> crate::kernels::precision::Precision {
        crate::kernels::precision::Precision::resolve(&self.precision, &self.device)
    }

    /// Rows per forward pass on one device: `micro_batch`, or when unset
    /// (or larger) the device's share of the batch.
    pub fn micro(&self) -> u64 {
        let share = (self.batch / self.devices.max(1)).max(1);
        if self.micro_batch == 0 {
            share
        } else {
            self.micro_batch.min(share)
        }
    }

    /// Rows of one forward pass over every device (the rows of an
    /// evaluation batch too, so that a run evaluates the same windows on
    /// any number of devices when `micro_batch` is unset).
    pub fn rows_per_pass(&self) -> u64 {
        self.micro() * self.devices.max(1)
    }

    /// Forward passes per step on each device; an error when the batch
    /// does not split over the devices and into micro-batches.
    pub fn accumulation(&self) -> Result<u64, String> {
        let n = self.devices.max(1);
        if !self.batch.is_multiple_of(n) {
            return Err(format!(
                "batch {} does not split over {n} devices: make it a multiple of {n}, or use fewer devices",
                self.batch
            ));
        }
        let m = self.micro();
        let share = self.batch / n;
        if !share.is_multiple_of(m) {
            return Err(if n == 1 {
                format!("batch {} is not a multiple of micro_batch {m}", self.batch)
            } else {
                format!(
                    "each device's share of the batch ({share} of {}) is not a multiple of micro_batch {m}",
                    self.batch
                )
            });
        }
        Ok(share / m)
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

    /// Whether the tokenizer is an existing file rather than one blkc makes.
    pub fn tokenizer_is_file(&self) -> bool {
        Kind::parse(&self.tokenizer).is_none()
    }

    /// How continuing at `step` with the `new` settings changes the
    /// learning-rate schedule these settings set, if it does.
    pub fn schedule_change(&self, new: &Settings, step: u64) -> Option<String> {
        let key = |s: &Settings| (s.steps, s.lr.to_bits(), s.warmup.to_bits(), s.schedule.clone());
        if key(self) == key(new) {
            return None;
        }
        let rate = |s: &Settings| super::optim::learning_rate(s.lr, step, s.steps, s.warmup, s.schedule());
        let shape = |s: &Settings| {
            format!("{} warm-up and {} decay from {:e} over {} steps", s.warmup, s.schedule, s.lr, s.steps)
        };
        Some(format!(
            "this changes the run's learning-rate schedule ({}) to {}: at step {} the rate becomes {:.3e} instead of {:.3e}",
            shape(self),
            shape(new),
            step + 1,
            rate(new),
            rate(self)
        ))
    }

    /// Every setting as `key=value`, as `--set` takes it (`micro_batch`
    /// only when set). A keyword that is not a plain word is quoted, so
    /// that the compiler rejects it rather than reading it as more syntax.
    pub fn pairs(&self) -> Vec<String> {
        let word = |k: &str, v: &str| {
            let plain = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if plain {
                format!("{k}={v}")
            } else {
                format!("{k}={}", quote(v))
            }
        };
        let int = |k: &str, v: u64| format!("{k}={v}");
        let num = |k: &str, v: f64| format!("{k}={v:?}");
        let mut v = vec![
            format!("data={}", quote(&self.data)),
            format!("data_field={}", quote(&self.data_field)),
            if self.tokenizer_is_file() {
                format!("tokenizer={}", quote(&self.tokenizer))
            } else {
                word("tokenizer", &self.tokenizer)
            },
            int("batch", self.batch),
            int("steps", self.steps),
            num("lr", self.lr),
            num("warmup", self.warmup),
            word("schedule", &self.schedule),
            word("optimizer", &self.optimizer),
            num("beta1", self.beta1),
            num("beta2", self.beta2),
            num("adam_eps", self.adam_eps),
            num("weight_decay", self.weight_decay),
            num("clip", self.clip),
            int("eval_every", self.eval_every),
            int("eval_batches", self.eval_batches),
            int("checkpoint_every", self.checkpoint_every),
            int("log_every", self.log_every),
            int("seed", self.seed),
            num("val_fraction", self.val_fraction),
            num("mask_rate", self.mask_rate),
            word("device", &self.device),
            word("precision", &self.precision),
            int("devices", self.devices),
        ];
        if self.micro_batch != 0 {
            v.push(int("micro_batch", self.micro_batch));
        }
        v
    }

    /// Checks every setting by the rules a file's `train` section and
    /// `--set` obey (settings read back from a run's `run.json` may have
    /// been edited: a zero batch, a negative rate, an unknown optimiser).
    pub fn validate(&self) -> Result<(), String> {
        self.check("run.json")
    }

    /// The typed flags of the command line over these settings (they win
    /// over a `--set` of the same key), checked by the compiler's rules.
    pub fn apply_flags(&mut self, f: &Flags) -> Result<(), String> {
        if f.data.is_none()
            && f.steps.is_none()
            && f.device.is_none()
            && f.seed.is_none()
            && f.precision.is_none()
            && f.devices.is_none()
        {
            return Ok(());
        }
        if let Some(n) = f.seed {
            self.seed = n;
        }
        if let Some(d) = &f.data {
            self.data = resolve(d, Path::new(""));
        }
        if let Some(n) = f.steps {
            self.steps = n;
        }
        if let Some(d) = &f.device {
            self.device = d.clone();
        }
        if let Some(p) = &f.precision {
            self.precision = p.clone();
        }
        if let Some(n) = f.devices {
            self.devices = n;
        }
        self.check("<command line>")
    }

    /// A new run's settings: the defaults, the file's `train` section (its
    /// paths relative to it), the command line's `--set` section, then its
    /// typed flags.
    pub fn of_run(file: Option<(&Train, &SourceMap)>, extra: Option<&Train>, f: &Flags) -> Result<Self, String> {
        let mut s = Settings::default();
        if let Some((t, sources)) = file {
            s.apply_file(t, sources);
        }
        s.overridden(extra, f)
    }

    /// These settings with the command line's `--set` section and typed
    /// flags over them.
    pub fn overridden(mut self, extra: Option<&Train>, f: &Flags) -> Result<Self, String> {
        if let Some(t) = extra {
            self.apply_command_line(t);
        }
        self.apply_flags(f)?;
        Ok(self)
    }

    /// The settings compiled as a `train` section named `origin`: the
    /// compiler's diagnostics, rendered, when a value breaks its rules.
    fn check(&self, origin: &str) -> Result<(), String> {
        let pairs = self.pairs();
        let c = compile_pairs(&pairs, origin);
        let errors: Vec<Diagnostic> = c.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
        if errors.is_empty() {
            return Ok(());
        }
        Err(blkc::diag::render_plain(&errors, &c.sources))
    }
}

/// A data path relative to `dir`, made absolute (globs too) without `.`
/// and `..`; the named corpus is left as it is.
fn resolve(data: &str, dir: &Path) -> String {
    if data == super::data::PYTHON_STDLIB {
        return data.to_string();
    }
    let joined = dir.join(data);
    let absolute = std::path::absolute(&joined).unwrap_or(joined);
    blkc::source::normalise(&absolute).display().to_string()
}

fn text_field() -> String {
    "text".into()
}

/// `v` as a `.blk` string literal.
fn quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `key=value` pairs compiled as one `train` section named `name`.
fn compile_pairs(pairs: &[String], name: &str) -> blkc::Compilation {
    let mut text = String::from("train {\n");
    for p in pairs {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let (k, v) = (k.trim(), v.trim());
        let path = k == "data" || k == "data_field" || (k == "tokenizer" && Kind::parse(v).is_none());
        let needs_quotes = path && !v.starts_with('"');
        let v = if needs_quotes { quote(v) } else { v.to_string() };
        text.push_str(&format!("    {k} = {v}\n"));
    }
    text.push_str("}\n");
    blkc::compile_str(name, &text)
}

/// The flags of `blkc train` and `blkc compare` that name a setting, as
/// typed values.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub data: Option<String>,
    pub steps: Option<u64>,
    pub device: Option<String>,
    pub seed: Option<u64>,
    pub precision: Option<String>,
    pub devices: Option<u64>,
}

/// Checks `key=value` overrides with the compiler's rules for `train`
/// settings; the diagnostics (rendered) when one is wrong. `flags` (from
/// `--data`, `--steps`, `--device`) win over a `--set` of the same key.
pub fn overrides(all: &[String]) -> Result<Option<Train>, String> {
    if all.is_empty() {
        return Ok(None);
    }
    if let Some(p) = all.iter().find(|p| !p.contains('=')) {
        return Err(format!("`--set {p}`: write KEY=VALUE, e.g. `--set lr=3e-4`"));
    }
    let c = compile_pairs(all, "<command line>");
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
    fn a_flag_wins_over_a_set_of_the_same_key_and_is_checked() {
        let t = overrides(&["steps=3".into(), "lr=0.01".into()])
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no train section"));
        let mut s = Settings::default();
        s.apply(&t);
        let flags = Flags { steps: Some(2), ..Flags::default() };
        s.apply_flags(&flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.steps, s.lr), (2, 0.01));
        let zero = Flags { steps: Some(0), ..Flags::default() };
        let e = s.apply_flags(&zero).err().unwrap_or_default();
        assert!(e.contains("steps"), "{e}");
        let gpu = Flags { device: Some("tpu".into()), ..Flags::default() };
        assert!(s.apply_flags(&gpu).is_err());
    }

    #[test]
    fn data_paths_follow_the_file_that_sets_them() {
        let c = blkc::compile_str("examples/small/train.blk", "train {\n    data = \"../corpus\"\n}\n");
        let t = c.program.and_then(|p| p.train).unwrap_or_else(|| panic!("no train section"));
        let mut s = Settings::default();
        s.apply_file(&t, &c.sources);
        let cwd = std::env::current_dir().unwrap_or_default();
        assert_eq!(Path::new(&s.data), cwd.join("examples/corpus"));
        let t = overrides(&["data=texts/*.txt".into()]).ok().flatten().unwrap_or_else(|| panic!("no section"));
        s.apply_command_line(&t);
        assert_eq!(Path::new(&s.data), cwd.join("texts/*.txt"));
        let t = overrides(&["data=python-stdlib".into()]).ok().flatten().unwrap_or_else(|| panic!("no section"));
        s.apply_command_line(&t);
        assert_eq!(s.data, "python-stdlib");
    }

    #[test]
    fn a_changed_schedule_is_described_with_the_rates() {
        let old = Settings { steps: 50, lr: 1e-3, ..Settings::default() };
        assert_eq!(old.schedule_change(&old.clone(), 50), None);
        let longer = Settings { steps: 60, ..old.clone() };
        let change = old.schedule_change(&longer, 50).unwrap_or_default();
        assert!(change.contains("over 50 steps") && change.contains("over 60 steps"), "{change}");
        assert!(change.contains("step 51 the rate becomes 1.754e-4 instead of 0.000e0"), "{change}");
    }

    #[test]
    fn settings_read_back_are_validated_as_set_would_be() {
        assert_eq!(Settings::default().validate(), Ok(()));
        let s = Settings { micro_batch: 4, data: "a \"quoted\" dir\\x".into(), adam_eps: 1e-8, ..Settings::default() };
        assert_eq!(s.validate(), Ok(()));
        for (bad, key) in [
            (Settings { batch: 0, ..Settings::default() }, "batch"),
            (Settings { eval_every: 0, ..Settings::default() }, "eval_every"),
            (Settings { checkpoint_every: 0, ..Settings::default() }, "checkpoint_every"),
            (Settings { lr: -1e-3, ..Settings::default() }, "lr"),
            (Settings { optimizer: "lion".into(), ..Settings::default() }, "optimizer"),
            (Settings { device: "tpu".into(), ..Settings::default() }, "device"),
            (Settings { precision: "fp8".into(), ..Settings::default() }, "precision"),
        ] {
            let err = bad.validate().err().unwrap_or_default();
            assert!(err.contains(key) && err.contains("run.json"), "{key}: {err}");
        }
    }

    #[test]
    fn a_run_recorded_before_precision_existed_resumes_in_fp32() {
        let cuda = Settings { device: "cuda".into(), ..Settings::default() };
        let mut json = serde_json::to_value(&cuda).unwrap_or_default();
        assert_eq!(json["precision"], "auto");
        json.as_object_mut().map(|o| o.remove("precision"));
        let old: Settings = serde_json::from_value(json).unwrap_or_default();
        assert_eq!((old.precision.as_str(), old.products().name()), ("fp32", "fp32"));
        assert_eq!(cuda.products().name(), "bf16");
    }

    #[test]
    fn a_run_recorded_before_the_mixed_split_keeps_its_split() {
        let new = Settings::default();
        let mut json = serde_json::to_value(&new).unwrap_or_default();
        assert_eq!(json["split_hash"], 2);
        json.as_object_mut().map(|o| o.remove("split_hash"));
        let old: Settings = serde_json::from_value(json).unwrap_or_default();
        assert_eq!((old.split_hash, super::super::data::Holdout::of(&old).hash), (1, 1));
    }

    #[test]
    fn accumulation_must_divide() {
        let s = Settings { batch: 16, micro_batch: 4, ..Settings::default() };
        assert_eq!(s.accumulation(), Ok(4));
        let s = Settings { batch: 16, micro_batch: 6, ..Settings::default() };
        assert!(s.accumulation().is_err());
    }

    #[test]
    fn the_batch_splits_over_the_devices() {
        // Unset micro_batch: each of 4 devices takes a quarter in one pass.
        let s = Settings { batch: 16, devices: 4, ..Settings::default() };
        assert_eq!((s.micro(), s.accumulation(), s.rows_per_pass()), (4, Ok(1), 16));
        // micro_batch 2: two passes of 2 rows on each device.
        let s = Settings { batch: 16, devices: 4, micro_batch: 2, ..Settings::default() };
        assert_eq!((s.micro(), s.accumulation(), s.rows_per_pass()), (2, Ok(2), 8));
        // A micro_batch above a device's share is that share.
        let s = Settings { batch: 16, devices: 2, micro_batch: 16, ..Settings::default() };
        assert_eq!((s.micro(), s.accumulation()), (8, Ok(1)));
        let e = Settings { batch: 10, devices: 4, ..Settings::default() }.accumulation().err().unwrap_or_default();
        assert!(e.contains("does not split over 4 devices"), "{e}");
        let e = Settings { batch: 16, devices: 2, micro_batch: 3, ..Settings::default() }
            .accumulation()
            .err()
            .unwrap_or_default();
        assert!(e.contains("share of the batch (8 of 16)"), "{e}");
        // A run.json written before the setting existed ran on one device.
        let mut json = serde_json::to_value(Settings::default()).unwrap_or_default();
        json.as_object_mut().map(|o| o.remove("devices"));
        let old: Settings = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.devices, 1);
    }
}
