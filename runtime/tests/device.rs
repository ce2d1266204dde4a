//! The GPU path computes what the CPU computes. For every model of
//! `examples/small/` (shrunk to depth 2, width 64, 32 tokens, a vocabulary of
//! 512; SAS-P also bidirectional, with the masked-token objective), with
//! the CPU's weights moved through a safetensors export: the
//! logits, every parameter's gradient, and the losses of AdamW steps on the
//! device equal the CPU's within the tolerances below.
//!
//! It runs on burn's CubeCL backends: `wgpu` on Mesa's software Vulkan
//! (llvmpipe) here and in CI —
//! `cargo test -p blkc-runtime --features wgpu,fusion --test device`, which
//! checks the backend with burn's operation fusion and without it — and
//! `cuda` where a GPU is lent (`bench/gpu-check.sh`, which builds this test
//! binary here and runs it there: `--ignored`).
//!
//! The tolerances, for fp32 on both sides. The two backends add in other
//! orders (blocked products, tree reductions), and each order rounds
//! differently: a sum of n terms carries a relative error of about
//! √n · 2⁻²⁴ ≈ 6·10⁻⁸ · √n, so the largest sums of a step (a weight
//! gradient sums batch × tokens = 128 products of width-long dot products)
//! differ in the 6th–7th digit. Two blocks, a norm and a softmax keep that
//! order: logits within 1e-4 (absolute; they are O(1)), each parameter's
//! gradient within 1e-3 of its own largest entry — or of a thousandth of
//! the model's largest gradient entry, when the parameter's is smaller:
//! such a gradient is a sum that cancels (a gain's at init is Σ dout ⊙
//! branch over batch · tokens · width terms of both signs, 10⁻⁵ where
//! others are 10⁻²), whose relative error has no bound. Measured on
//! llvmpipe: logits 2–4·10⁻⁷; gradients ≤ 10⁻⁶ of their scale, the gains'
//! ≤ 1.5·10⁻⁴ of the floor (absolute differences of 4·10⁻⁹). A product
//! in TF32 (10 bits of mantissa, 2⁻¹¹ ≈ 5·10⁻⁴ relative) misses both by
//! orders of magnitude: this is what tells fp32 from TF32 (burn's own
//! product runs f32 on TF32 tensor cores on CUDA, which made the logits
//! 1.28·10⁻³ apart on an H200; blkc's fp32 products are fp32 FMAs, see
//! `kernels/dense/cube.rs`).
//! Training is chaotic in the small differences: the losses of the steps
//! agree to 1e-3 (relative) over the first steps measured here, and the
//! report prints the gap at every step so its growth is seen.
#![cfg(any(feature = "cuda", feature = "wgpu"))]

use blkc_runtime::backend::Cpu;
use blkc_runtime::bench::random_batch;
use blkc_runtime::checkpoint::{export, import};
use blkc_runtime::kernels::attention::Route;
use blkc_runtime::kernels::precision::{self, Precision};
use blkc_runtime::kernels::TrainKernels;
use blkc_runtime::model::Model;
use blkc_runtime::train::optim::{Config, Optimizer, Rule};
use blkc_runtime::train::{loss, objective_for_mask};
use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};

/// The CPU side: burn's `flex` with blkc's kernels, under autodiff.
type Host = Autodiff<Cpu>;

const MODELS: &[&str] = &[
    "preln",
    "parallel",
    "sas",
    "sas-p",
    "sas-p-nonorm",
    "vskipinit",
    "postln",
    "skipless-naive",
    "sas-p-swiglu",
    "llama",
    "gpt-j",
    // Sliding-window attention, a softmax one and a shaped one (SAS-P's
    // whole block in one kernel, its `centre` over the window); the
    // windows narrower than the 32 tokens, so that they hide keys.
    "mistral local.window=8",
    "sas-p shaped.window=5",
    // Bidirectional: the masked-token objective, whose loss is a weighted
    // sum of the tokens' losses (`kernels::total`).
    "sas-p mask=bidirectional",
    // Soft-caps on the attention (in a window on every other layer) and
    // on the logits, norms on the branches, GeGLU, the embedding scaled.
    "gemma2 alternating.window=8",
    // QK-norm, and a sixth layer with a rotary base of its own.
    "gemma3 depth=6 local_global.window=8",
    // ALiBi's bias in the attention's kernels, with grouped keys and a
    // window.
    "mistral positions=alibi local.window=8",
];
const SHRUNK: &[&str] = &["depth=2", "width=64", "context=32", "vocab=512"];
const LOGITS: f32 = 1e-4;
const GRADIENT: f32 = 1e-3;
const LOSS: f64 = 1e-3;

fn program(name: &str) -> blkc::Program {
    // Relative to the crate directory, where cargo (and gpu-check.sh) run
    // the test, so the binary also works from another checkout.
    // A name is a file of examples/small/, then any settings.
    let mut words = name.split_whitespace();
    let file = words.next().unwrap_or(name);
    let path = std::path::Path::new("..").join(format!("examples/small/{file}.blk"));
    // A model's own settings replace the shrunk ones of the same key.
    let own: Vec<&str> = words.collect();
    let key = |s: &str| s.split('=').next().unwrap_or(s).to_string();
    let shrunk = SHRUNK.iter().copied().filter(|s| own.iter().all(|o| key(o) != key(s)));
    let sets: Vec<String> = shrunk.chain(own.iter().copied()).map(str::to_string).collect();
    let c = blkc::compile_with(&path, &blkc::FsLoader, &sets).unwrap_or_else(|e| panic!("{e}"));
    c.program.unwrap_or_else(|| panic!("{name}: {:?}", c.diagnostics))
}

/// Every parameter's gradient, by path, read back to the host.
struct Gradients<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    path: Vec<String>,
    out: Vec<(String, Vec<f32>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gradients<'_, B> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let values = param.grad(self.grads).map(|g| g.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default());
        self.out.push((self.path.join("."), values.unwrap_or_default()));
    }
}

fn gradients<B: TrainKernels>(model: &Model<B>, grads: &B::Gradients) -> Vec<(String, Vec<f32>)> {
    let mut v = Gradients::<B> { grads, path: Vec::new(), out: Vec::new() };
    model.visit(&mut v);
    v.out
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "the same shapes");
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// What one model's comparison found.
struct Found {
    logits: f32,
    /// The parameter whose gradient differs most, relative to its largest
    /// entry, and that ratio.
    worst: (String, f32),
    /// Per step: (CPU loss, device loss).
    losses: Vec<(f64, f64)>,
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    f64::from(t.into_scalar().elem::<f32>())
}

/// The comparison of one model between the CPU and device `D`.
fn compare<D: TrainKernels>(name: &str, device: &D::Device, steps: usize) -> Found {
    let p = program(name);
    let m = p.model.as_ref().expect("a model");
    let host_device = Default::default();
    let cpu = Model::<Host>::build(&p, m, 7, &host_device);
    // A file of its own: the checks of several backends run at once.
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("blkc-device-{name}-{}-{n}.safetensors", std::process::id()));
    export(&cpu, &file).expect("export");
    // Other weights at first, replaced by the CPU's: the import is tested too.
    let dev = import(Model::<D>::build(&p, m, 8, device), &file).expect("import");
    let _ = std::fs::remove_file(&file);

    let batch = random_batch(m, 4, 3);
    let obj = objective_for_mask(m.mask, m.vocab as u32);
    let tokens: Vec<i64> = batch.inputs.clone();
    let shape = [batch.rows, batch.context];
    let a: Vec<f32> = cpu
        .forward(Tensor::<Host, 1, Int>::from_ints(tokens.as_slice(), &host_device).reshape(shape))
        .into_data()
        .to_vec()
        .unwrap_or_default();
    let b: Vec<f32> = dev
        .forward(Tensor::<D, 1, Int>::from_ints(tokens.as_slice(), device).reshape(shape))
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    let logits = max_diff(&a, &b);

    let (lc, ld) = (loss(&cpu, &batch, obj, None, &host_device), loss(&dev, &batch, obj, None, device));
    let (gc, gd) = (lc.backward(), ld.backward());
    let (gc, gd) = (gradients(&cpu, &gc), gradients(&dev, &gd));
    assert_eq!(gc.len(), gd.len(), "{name}: the same parameters");
    // A gradient far below the model's largest is a sum that cancels; it
    // is judged on a thousandth of that largest entry (see the top).
    let floor = 1e-3 * gc.iter().map(|(_, c)| max_abs(c)).fold(0.0f32, f32::max);
    let mut worst = (String::new(), 0.0f32);
    for ((path, c), (_, d)) in gc.iter().zip(&gd) {
        let ratio = max_diff(c, d) / max_abs(c).max(floor).max(1e-30);
        if ratio > worst.1 {
            worst = (path.clone(), ratio);
        }
    }

    let config = Config { rule: Rule::AdamW, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, clip: 1.0 };
    let (mut oc, mut od) = (Optimizer::new(config), Optimizer::new(config));
    let (mut cpu, mut dev) = (cpu, dev);
    let mut losses = Vec::new();
    for s in 0..steps {
        let b = random_batch(m, 4, 100 + s as u64);
        let (lc, ld) = (loss(&cpu, &b, obj, None, &host_device), loss(&dev, &b, obj, None, device));
        let (vc, vd) = (scalar(lc.clone().inner()), scalar(ld.clone().inner()));
        let (gc, gd) =
            (GradientsParams::from_grads(lc.backward(), &cpu), GradientsParams::from_grads(ld.backward(), &dev));
        cpu = oc.step::<Host, _>(cpu, 1e-3, gc).0;
        dev = od.step::<D, _>(dev, 1e-3, gd).0;
        losses.push((vc, vd));
    }
    Found { logits, worst, losses }
}

/// The models whose attention runs as products too (`Route::Products`:
/// the softmax, the shaped mix and the products kernels of their own).
const AS_PRODUCTS: &[&str] = &["preln", "sas", "sas-p", "sas-p mask=bidirectional", "llama"];

/// Every model of `models` on device `D`: prints the report, then asserts.
fn check<D: TrainKernels>(device: &D::Device, label: &str, steps: usize, models: &[&str]) {
    let found: Vec<(&str, Found)> = models.iter().map(|n| (*n, compare::<D>(n, device, steps))).collect();
    println!("{label} against the CPU (fp32; depth 2, width 64, 4 × 32 tokens):");
    println!("{:<40} {:>12} {:>12}  {:<44} {:>12}", "model", "logits", "gradient", "(worst parameter)", "loss gap");
    for (name, f) in &found {
        let gap = f.losses.iter().map(|(c, d)| ((c - d) / c).abs()).fold(0.0f64, f64::max);
        println!("{name:<40} {:>12.3e} {:>12.3e}  {:<44} {gap:>12.3e}", f.logits, f.worst.1, f.worst.0);
    }
    for (name, f) in &found {
        let gaps: Vec<String> = f.losses.iter().map(|(c, d)| format!("{:.1e}", ((c - d) / c).abs())).collect();
        println!("{name}: loss gap per step {}", gaps.join(" "));
    }
    for (name, f) in &found {
        assert!(f.logits < LOGITS, "{name}: logits differ by {:e}", f.logits);
        assert!(
            f.worst.1 < GRADIENT,
            "{name}: the gradient of {} differs by {:e} of its largest",
            f.worst.0,
            f.worst.1
        );
        for (s, (c, d)) in f.losses.iter().enumerate() {
            assert!(((c - d) / c).abs() < LOSS, "{name}: step {}: loss {c} on the CPU, {d} on the device", s + 1);
        }
    }
}

// Each check runs on the backend without burn's operation fusion, and
// again under it in a build with the `fusion` feature (`*_fused_*`: blkc's
// kernels as custom operations of fusion's streams). One build holds both
// (`backend::fusion`).
#[cfg(all(feature = "cuda", feature = "fusion"))]
use blkc_runtime::backend::Cuda;
#[cfg(feature = "cuda")]
use blkc_runtime::backend::CudaUnfused;
#[cfg(all(feature = "wgpu", feature = "fusion"))]
use blkc_runtime::backend::Wgpu;
#[cfg(feature = "wgpu")]
use blkc_runtime::backend::WgpuUnfused;

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matches_the_cpu() {
    check::<Autodiff<WgpuUnfused>>(&Default::default(), "wgpu", 5, MODELS);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_matches_the_cpu_as_products() {
    Route::Products
        .scope(|| check::<Autodiff<WgpuUnfused>>(&Default::default(), "wgpu, attention as products", 5, AS_PRODUCTS));
}

#[cfg(all(feature = "wgpu", feature = "fusion"))]
#[test]
fn wgpu_fused_matches_the_cpu() {
    check::<Autodiff<Wgpu>>(&Default::default(), "wgpu under fusion", 5, MODELS);
    Route::Products.scope(|| {
        check::<Autodiff<Wgpu>>(&Default::default(), "wgpu under fusion, attention as products", 5, AS_PRODUCTS)
    });
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_matches_the_cpu() {
    let device = Default::default();
    check::<Autodiff<CudaUnfused>>(&device, "cuda", 100, MODELS);
    Route::Products.scope(|| check::<Autodiff<CudaUnfused>>(&device, "cuda, attention as products", 20, AS_PRODUCTS));
}

#[cfg(all(feature = "cuda", feature = "fusion"))]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_fused_matches_the_cpu() {
    let device = Default::default();
    check::<Autodiff<Cuda>>(&device, "cuda under fusion", 100, MODELS);
    Route::Products
        .scope(|| check::<Autodiff<Cuda>>(&device, "cuda under fusion, attention as products", 20, AS_PRODUCTS));
}

/// The two routes of an attention (by rows, as products) agree on one
/// device in `precision`: for the small Pre-LN and SAS-P (and SAS-P
/// without its mask), the loss within `loss_tol` relative and every
/// parameter's gradient within `grad_tol` of the model's largest entry.
/// In fp32 both are fp32 maths; in bf16 the products route multiplies in
/// bf16 where the rows multiply in fp32 (the tolerances say how far that
/// may move them: bf16 keeps 8 bits, 4·10⁻³ relative per rounding).
fn routes_agree<D: TrainKernels>(device: &D::Device, precision: Precision, (loss_tol, grad_tol): (f64, f32)) {
    for name in ["preln", "sas-p", "sas-p mask=bidirectional"] {
        let p = program(name);
        let m = p.model.as_ref().expect("a model");
        let obj = objective_for_mask(m.mask, m.vocab as u32);
        // Two large steps first, so that the shaped attention's query is
        // off its init (zero: uniform weights, whose softmax term the
        // centre cancels).
        let mut model = Model::<D>::build(&p, m, 7, device);
        let config = Config { rule: Rule::AdamW, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, clip: 0.0 };
        let mut opt = Optimizer::new(config);
        for s in 0..2 {
            let g = GradientsParams::from_grads(
                loss(&model, &random_batch(m, 4, 50 + s), obj, None, device).backward(),
                &model,
            );
            model = opt.step::<D, _>(model, 3e-2, g).0;
        }
        let batch = random_batch(m, 4, 3);
        let run = |route: Route| {
            route.scope(|| {
                precision::scope(precision, || {
                    let l = loss(&model, &batch, obj, None, device);
                    let value = scalar(l.clone().inner());
                    (value, gradients(&model, &l.backward()))
                })
            })
        };
        let ((lr, gr), (lp, gp)) = (run(Route::Rows), run(Route::Products));
        let largest = gr.iter().map(|(_, g)| max_abs(g)).fold(0.0f32, f32::max);
        let (worst, gap) = gr
            .iter()
            .zip(&gp)
            .map(|((path, a), (_, b))| (path.clone(), max_diff(a, b) / largest))
            .fold((String::new(), 0.0f32), |w, x| if x.1 > w.1 { x } else { w });
        let loss_gap = ((lr - lp) / lr).abs();
        println!("{name} in {}: losses {lr} and {lp} by rows and as products; gradients {gap:.1e} of the largest apart ({worst})", precision.name());
        assert!(loss_gap < loss_tol, "{name}: the losses differ by {loss_gap:e}");
        assert!(gap < grad_tol, "{name}: the gradient of {worst} differs by {gap:e} of the largest");
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_routes_agree() {
    routes_agree::<Autodiff<WgpuUnfused>>(&Default::default(), Precision::Fp32, (1e-6, 1e-5));
}

#[cfg(all(feature = "wgpu", feature = "fusion"))]
#[test]
fn wgpu_fused_routes_agree() {
    routes_agree::<Autodiff<Wgpu>>(&Default::default(), Precision::Fp32, (1e-6, 1e-5));
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_routes_agree() {
    routes_agree::<Autodiff<CudaUnfused>>(&Default::default(), Precision::Fp32, (1e-6, 1e-5));
    routes_agree::<Autodiff<CudaUnfused>>(&Default::default(), Precision::Bf16, (1e-2, 5e-2));
}

#[cfg(all(feature = "cuda", feature = "fusion"))]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_fused_routes_agree() {
    routes_agree::<Autodiff<Cuda>>(&Default::default(), Precision::Fp32, (1e-6, 1e-5));
    routes_agree::<Autodiff<Cuda>>(&Default::default(), Precision::Bf16, (1e-2, 5e-2));
}

/// Decoding a token at a time on the device (`blkc sample`'s path: each
/// attention's cache of keys and values, its rotations and masks from an
/// offset, the running centre) gives the logits of the device's forward
/// pass over the same tokens: for models with learned and rotary
/// positions, grouped queries, the shaped and the standard attention, with
/// their queries and keys drawn at random (at init the shaped attention's
/// softmax is uniform). Three tokens, then one at a time to twelve.
fn decodes_as_the_forward_pass<D: blkc_runtime::kernels::Kernels>(device: &D::Device) {
    use blkc_runtime::decode::State;
    use burn::tensor::Distribution;
    for name in ["preln", "sas-p", "llama", "gpt-j"] {
        let p = program(name);
        let m = p.model.as_ref().expect("a model");
        let mut model = Model::<D>::build(&p, m, 7, device);
        for a in model.blocks.iter_mut().flat_map(|b| b.attention.iter_mut()) {
            for w in [&mut a.query, &mut a.key].into_iter().flatten() {
                let dims = w.val().dims();
                *w = Param::from_tensor(Tensor::random(dims, Distribution::Normal(0.0, 0.3), device));
            }
        }
        let (b, n) = (2, 12);
        let ids: Vec<i64> = (0..(b * n) as i64).map(|i| (i * 37 + i * i) % m.vocab as i64).collect();
        let tokens = Tensor::<D, 1, Int>::from_ints(ids.as_slice(), device).reshape([b, n]);
        let whole = model.forward(tokens.clone());
        let mut state = State::new(&model);
        let mut steps = vec![model.decode(tokens.clone().slice([0..b, 0..3]), &mut state).expect("decodes")];
        for i in 3..n {
            steps.push(model.decode(tokens.clone().slice([0..b, i..i + 1]), &mut state).expect("decodes"));
        }
        let decoded: Vec<f32> = Tensor::cat(steps, 1).into_data().convert::<f32>().to_vec().unwrap_or_default();
        let whole: Vec<f32> = whole.into_data().convert::<f32>().to_vec().unwrap_or_default();
        let gap = max_diff(&decoded, &whole);
        println!("{name}: decoded logits {gap:.1e} from the forward pass's (largest {:.2})", max_abs(&whole));
        assert!(gap < LOGITS, "{name}: decoding differs from the forward pass by {gap:e}");
    }
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_decodes_as_the_forward_pass() {
    decodes_as_the_forward_pass::<WgpuUnfused>(&Default::default());
}

#[cfg(all(feature = "wgpu", feature = "fusion"))]
#[test]
fn wgpu_fused_decodes_as_the_forward_pass() {
    decodes_as_the_forward_pass::<Wgpu>(&Default::default());
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_decodes_as_the_forward_pass() {
    decodes_as_the_forward_pass::<CudaUnfused>(&Default::default());
}

#[cfg(all(feature = "cuda", feature = "fusion"))]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_fused_decodes_as_the_forward_pass() {
    decodes_as_the_forward_pass::<Cuda>(&Default::default());
}

/// `blkc bench` on a GPU backend counts the device's bytes (not the
/// host's) and gives the MFU against the device's own product rate.
fn bench_reports_device_memory<D: TrainKernels>(device: &D::Device) {
    use blkc_runtime::bench::{run, Plan, Subject};
    let program = program("sas-p");
    let model = program.model.clone().unwrap_or_else(|| panic!("examples/small/sas-p.blk has a model"));
    let subjects = [Subject { file: "sas-p".into(), program, model, bare: false }];
    let plan = Plan { batch: 4, warmup: 2, steps: 2, precision: Precision::Fp32, steps_only: false };
    let records = run::<D>(&subjects, plan, device, &mut |_, _| {});
    let r = &records[0];
    println!("{r:?}");
    assert_eq!(r.memory, "device");
    // The weights and Adam's moments live on the device between steps
    // (f32; at least the weights and one moment).
    let state = 2.0 * r.params as f64 * 4.0 / (1024.0 * 1024.0);
    assert!(r.resident_mib.is_some_and(|m| m >= state), "{:?} MiB resident, {state:.2} MiB of state", r.resident_mib);
    assert!(
        r.peak_mib >= r.resident_mib,
        "the pool holds the live tensors: {:?} MiB, {:?}",
        r.peak_mib,
        r.resident_mib
    );
    assert!(r.mfu.is_some_and(|m| m > 0.0 && m < 2.0), "MFU {:?}", r.mfu);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_bench_counts_device_memory() {
    bench_reports_device_memory::<Autodiff<WgpuUnfused>>(&Default::default());
}

#[cfg(all(feature = "wgpu", feature = "fusion"))]
#[test]
fn wgpu_fused_bench_counts_device_memory() {
    bench_reports_device_memory::<Autodiff<Wgpu>>(&Default::default());
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_bench_counts_device_memory() {
    bench_reports_device_memory::<Autodiff<CudaUnfused>>(&Default::default());
}

#[cfg(all(feature = "cuda", feature = "fusion"))]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_fused_bench_counts_device_memory() {
    bench_reports_device_memory::<Autodiff<Cuda>>(&Default::default());
}

/// `blkc args` under burn's operation fusion or without it (`fused`; on
/// only in a build with the `fusion` feature), run from the crate's
/// directory (the paths of the tests are relative to it).
fn blkc(fused: bool, args: &[&str]) -> std::process::Output {
    blkc_with(fused, args, &[])
}

/// [`blkc`] with environment variables `vars` set.
fn blkc_with(fused: bool, args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_blkc"))
        .args(args)
        .env("BLKC_FUSION", if fused { "on" } else { "off" })
        .envs(vars.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("blkc runs: {e}"))
}

/// A run on the device is reproducible and resumes exactly: the same
/// command twice logs the same losses bit for bit, and a run stopped at a
/// step and resumed logs the losses of the run that was not stopped (its
/// checkpoint holds the weights, the moments, the data's place and the
/// random state).
fn resumes_exactly(device: &str, fused: bool) {
    let dir = std::env::temp_dir().join(format!("blkc-{device}-{fused}-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |name: &str, extra: &[&str]| -> Vec<String> {
        let out = dir.join(name).to_string_lossy().to_string();
        let mut args = vec!["train", "../examples/small/sas-p.blk", "--device", device, "--steps", "6"];
        args.extend(["--data", "../compiler/src", "-q", "--out", &out]);
        for s in ["depth=1", "width=64", "context=32", "batch=4", "eval_batches=1", "eval_every=3", "log_every=1"] {
            args.extend(["--set", s]);
        }
        args.extend(extra);
        let o = blkc(fused, &args);
        assert!(o.status.success(), "blkc {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        logged(&dir.join(name))
    };
    let whole = run("whole", &[]);
    assert_eq!(whole.len(), 6, "{whole:?}");
    assert_eq!(run("again", &[]), whole, "the same run twice on {device}");
    let first = run("parts", &["--stop-at", "4"]);
    assert_eq!(first.len(), 4, "{first:?}");
    let out = dir.join("parts").to_string_lossy().to_string();
    let o = blkc(fused, &["train", "--resume", &out, "-q"]);
    assert!(o.status.success(), "resume on {device}: {}", String::from_utf8_lossy(&o.stderr));
    println!("{device}: losses {whole:?}");
    assert_eq!(logged(&dir.join("parts")), whole, "a run resumed on {device} differs from the one not stopped");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The training and validation losses a run logged, as their decimal text
/// (serde_json writes the shortest text that reads back to the same f64:
/// equal text is equal bits).
fn logged(run: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            format!("{} {}", v["loss"], v["eval_loss"])
        })
        .collect()
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_resumes_exactly() {
    resumes_exactly("wgpu", false);
}

#[cfg(all(feature = "wgpu", feature = "fusion"))]
#[test]
fn wgpu_fused_resumes_exactly() {
    resumes_exactly("wgpu", true);
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_resumes_exactly() {
    resumes_exactly("cuda", false);
}

#[cfg(all(feature = "cuda", feature = "fusion"))]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_fused_resumes_exactly() {
    resumes_exactly("cuda", true);
}

// The kernels' checks call `CubeBackend` itself (fusion or not).
#[path = "device/attention.rs"]
mod attention;
#[path = "device/kernels.rs"]
mod kernels;

/// `blkc train --device wgpu` trains and checkpoints from the command
/// line, and the checkpoint is the device's weights: evaluated on wgpu and
/// on the CPU, the validation loss is the same.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_trains_from_the_command_line() {
    trains_from_the_command_line(false);
}

#[cfg(all(feature = "wgpu", feature = "fusion"))]
#[test]
fn wgpu_fused_trains_from_the_command_line() {
    trains_from_the_command_line(true);
}

#[cfg(feature = "wgpu")]
fn trains_from_the_command_line(fused: bool) {
    let dir = std::env::temp_dir().join(format!("blkc-wgpu-{fused}-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = dir.join("run");
    let run = run.to_string_lossy().to_string();
    let ok = |args: &[&str]| {
        let o = blkc(fused, args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "blkc {args:?}: {err}");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let sets = ["depth=1", "width=64", "context=32", "batch=4", "eval_batches=2"];
    let mut train = vec!["train", "../examples/small/sas-p.blk", "--device", "wgpu", "--out", &run, "--steps", "3"];
    train.extend(["--data", "../compiler/src", "-q"]);
    for s in &sets {
        train.extend(["--set", s]);
    }
    ok(&train);
    let loss = |device: &str| {
        let out = ok(&["eval", &run, "--device", device, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["eval_loss"].as_f64().unwrap_or(f64::NAN)
    };
    let (gpu, cpu) = (loss("wgpu"), loss("cpu"));
    println!("validation loss of a wgpu run: {gpu} on wgpu, {cpu} on the CPU");
    assert!(gpu.is_finite() && (gpu - cpu).abs() < 1e-4 * cpu.abs().max(1.0), "{gpu} on wgpu, {cpu} on the CPU");
    // Greedy decoding picks the same tokens on the device as on the CPU
    // (past the context of 32, so the window restarts too).
    let sample = |device: &str| ok(&["sample", &run, "--device", device, "--tokens", "40", "--temperature", "0"]);
    let (gpu, cpu) = (sample("wgpu"), sample("cpu"));
    assert!(!cpu.is_empty() && gpu == cpu, "sampled on wgpu: {gpu:?}, on the CPU: {cpu:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under burn's fusion, whose streams sum the copies' gradients wrongly,
/// data parallel is refused before the run starts.
#[cfg(all(feature = "wgpu", feature = "fusion"))]
#[test]
fn wgpu_fused_refuses_data_parallel() {
    let run = std::env::temp_dir().join(format!("blkc-wgpu-refused-{}", std::process::id()));
    let run = run.to_string_lossy().to_string();
    let o = blkc(true, &["train", "../examples/small/sas-p.blk", "--device", "wgpu", "--devices", "2", "--out", &run]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("operation fusion") && err.contains("BLKC_FUSION=off"), "{err}");
    assert!(!std::path::Path::new(&run).exists(), "{err}");
}

/// Data parallel on a CubeCL backend: two copies of a model on the wgpu
/// adapter, each with half of every batch, their gradients summed by
/// burn's collective on the device, train as one copy does (the same
/// losses but for the order of the sums).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_trains_in_data_parallel() {
    let dir = std::env::temp_dir().join(format!("blkc-wgpu-parallel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let losses = |devices: &str| {
        let run = dir.join(format!("run-{devices}")).to_string_lossy().to_string();
        let mut args = vec!["train", "../examples/small/sas-p.blk", "--device", "wgpu", "--out", &run, "--steps", "4"];
        args.extend(["--devices", devices, "--data", "../compiler/src", "-q"]);
        for s in ["depth=1", "width=64", "context=32", "batch=4", "eval_batches=2", "log_every=1"] {
            args.extend(["--set", s]);
        }
        let o = blkc(false, &args);
        assert!(o.status.success(), "blkc {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        let text = std::fs::read_to_string(std::path::Path::new(&run).join("metrics.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_default()["loss"].as_f64().unwrap_or(f64::NAN)
            })
            .collect::<Vec<f64>>()
    };
    let (one, two) = (losses("1"), losses("2"));
    println!("losses on one copy {one:?}, on two {two:?}");
    assert_eq!(one.len(), 4);
    assert_eq!(one.len(), two.len());
    for (a, b) in one.iter().zip(&two) {
        assert!((a - b).abs() < LOSS * a.abs(), "{a} on one copy, {b} on two");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `blkc bench --profile` on wgpu: a training step's time by GPU kernel,
/// in which blkc's own kernels are seen running (the attention, the
/// norms, the loss, the embedding's gradient and AdamW), each launched as
/// often as the model says.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_profile_names_blkcs_kernels() {
    profile_names_blkcs_kernels(false);
}

#[cfg(all(feature = "wgpu", feature = "fusion"))]
#[test]
fn wgpu_fused_profile_names_blkcs_kernels() {
    profile_names_blkcs_kernels(true);
}

#[cfg(feature = "wgpu")]
fn profile_names_blkcs_kernels(fused: bool) {
    for (file, depth) in [("../examples/small/sas-p.blk", 2), ("../examples/small/preln.blk", 1)] {
        let set_depth = format!("depth={depth}");
        let mut args = vec!["bench", file, "--device", "wgpu", "--profile", "--format", "json", "--batch", "2"];
        args.extend(["--steps", "2", "--warmup", "1", "--set", &set_depth, "--set", "width=64"]);
        let o = blkc(fused, &args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{file}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        assert_eq!(v["fusion"], fused, "{file}: whether the bench ran under fusion, in its JSON");
        let rows = v["profile"].as_array().cloned().unwrap_or_default();
        let launches = |kernel: &str| {
            rows.iter()
                .find(|r| r["kernel"] == kernel)
                .and_then(|r| r["launches_per_step"].as_f64())
                .unwrap_or_else(|| panic!("{file}: no `{kernel}` in the profile {rows:?}"))
        };
        let share: f64 = rows.iter().filter_map(|r| r["share"].as_f64()).sum();
        assert!((share - 1.0).abs() < 1e-9, "{file}: shares sum to {share}");
        // Per block one attention (forward, and two backward kernels);
        // one loss with its gradient per step.
        let d = f64::from(depth);
        for kernel in ["ShapedForward | f32", "ShapedRows | f32", "ShapedColumns | f32"] {
            assert_eq!(launches(kernel), d, "{file}: {kernel}");
        }
        assert_eq!(launches("LossWithGrad | f32"), 1.0, "{file}");
        // The embedding's gradient summed by token once per step.
        let embed = rows.iter().find(|r| r["kernel"].as_str().is_some_and(|k| k.starts_with("SumByToken |")));
        assert_eq!(embed.and_then(|r| r["launches_per_step"].as_f64()), Some(1.0), "{file}: SumByToken in {rows:?}");
        assert!(launches("NormForward | f32") >= d && launches("NormRows | f32") >= d, "{file}");
        // AdamW and the clipping norm, several parameters per launch (as
        // many as the device binds buffers for).
        assert!(launches("AdamGroup | f32") >= 1.0 && launches("Squares | f32") >= 1.0, "{file}");
        println!("{file}: {} kernels profiled", rows.len());
    }
}

/// The attention as products in the profile: the softmax (and the shaped
/// mix) one kernel each way per block, no row kernel.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_profile_names_the_products_kernels() {
    profile_names_the_products_kernels(false);
}

#[cfg(all(feature = "wgpu", feature = "fusion"))]
#[test]
fn wgpu_fused_profile_names_the_products_kernels() {
    profile_names_the_products_kernels(true);
}

#[cfg(feature = "wgpu")]
fn profile_names_the_products_kernels(fused: bool) {
    for (file, mixed) in [("../examples/small/sas-p.blk", true), ("../examples/small/preln.blk", false)] {
        let args = ["bench", file, "--device", "wgpu", "--profile", "--format", "json", "--batch", "2"];
        let more = ["--steps", "2", "--warmup", "1", "--set", "depth=2", "--set", "width=64"];
        let all: Vec<&str> = args.iter().chain(&more).copied().collect();
        let o = blkc_with(fused, &all, &[("BLKC_ATTENTION", "products")]);
        assert!(o.status.success(), "{file}: {}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        assert_eq!(v["attention"], "products", "{file}: the route the bench ran, in its JSON");
        let rows = v["profile"].as_array().cloned().unwrap_or_default();
        let launches = |kernel: &str| {
            rows.iter().find(|r| r["kernel"] == kernel).and_then(|r| r["launches_per_step"].as_f64()).unwrap_or(0.0)
        };
        assert_eq!(launches("SoftmaxRows | f32"), 2.0, "{file}: {rows:?}");
        assert_eq!(launches("SoftmaxRowsGrad | f32"), 2.0, "{file}: {rows:?}");
        let mixes = if mixed { 2.0 } else { 0.0 };
        assert!(launches("MixForward | f32") >= mixes && launches("MixBackward | f32") == mixes, "{file}: {rows:?}");
        assert_eq!(launches("ShapedForward | f32"), 0.0, "{file}: no row kernel");
    }
}
