//! Each CubeCL kernel family against its reference maths on the same
//! device (`kernels/*/cube.rs`), on inputs drawn on the host; the dense
//! products against an f64 product; the attention families' checks are in
//! `device/attention.rs`. Part of the device test
//! (`runtime/tests/device.rs`), which runs whole models against the CPU.

use super::attention::*;
use super::*;

/// The largest difference of `a` and `b` over the largest entry of `b`.
pub(super) fn gap_of_scale(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(f32::MIN_POSITIVE, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

pub(super) fn values<B: Backend>(t: burn::tensor::ops::FloatTensor<B>) -> Vec<f32> {
    let n = burn::tensor::TensorMetadata::shape(&t).num_elements();
    let t = Tensor::<B, 1>::from_primitive(burn::tensor::TensorPrimitive::Float(t)).reshape([n]);
    t.into_data().to_vec::<f32>().unwrap_or_default()
}

/// The AdamW kernel (`kernels/adam/cube.rs`) against the reference:
/// decoupled decay from zero moments (`v` is `(1 − β₂) g²` alone), an L2
/// term, a clipped gradient, early and late bias corrections.
fn adam_kernel_is_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::adam::reference;
    use blkc_runtime::kernels::AdamStep;
    let draws = Draws::new(15);
    let random = |n: usize, lo: f64, hi: f64| draws.uniform::<B>(n, lo, hi, device);
    let n = 10_007;
    for (t, decay, l2, grad_scale) in [(1, 0.01, 0.0, 1.0), (50, 0.0, 0.1, 0.5), (1000, 1e-4, 0.0, 0.25)] {
        let (beta1, beta2) = (0.9f64, 0.999f64);
        let k = AdamStep {
            lr: 1e-3,
            beta1,
            beta2,
            eps: 1e-8,
            bc1: 1.0 - beta1.powi(t),
            bc2: 1.0 - beta2.powi(t),
            grad_scale,
            l2,
            decay,
        };
        let (p, g) = (random(n, -1.0, 1.0), random(n, -1.0, 1.0));
        let (m, v) = if t == 1 {
            (Tensor::zeros([n], device), Tensor::zeros([n], device))
        } else {
            (random(n, -0.1, 0.1), random(n, 0.0, 0.01))
        };
        let [p, g, m, v] = [p, g, m, v].map(|x| x.into_primitive().tensor());
        let ours = B::adam(p.clone(), g.clone(), m.clone(), v.clone(), k);
        let theirs = reference::adam::<B>(p, g, m, v, k);
        for (name, a, b) in [("p", ours.0, theirs.0), ("m", ours.1, theirs.1), ("v", ours.2, theirs.2)] {
            let e = gap_of_scale(&values::<B>(a), &values::<B>(b));
            assert!(e < 1e-6, "step {t}: {name} differs by {e:e} of its largest entry");
        }
    }
    // Many parameters at once (more than one launch's group, of sizes from
    // one entry up), each against the reference alone.
    let k = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        bc1: 0.5,
        bc2: 0.1,
        grad_scale: 0.7,
        l2: 0.0,
        decay: 1e-3,
    };
    let sizes: Vec<usize> = (0..37).map(|i| [1, 3, 768, 10_007, 1][i % 5] + i).collect();
    let items: Vec<[_; 4]> = sizes
        .iter()
        .map(|&n| [random(n, -1.0, 1.0), random(n, -1.0, 1.0), random(n, -0.1, 0.1), random(n, 0.0, 0.01)])
        .map(|t| t.map(|x| x.into_primitive().tensor()))
        .collect();
    let ours = B::adam_many(items.clone(), k);
    assert_eq!(ours.len(), items.len());
    for (i, ([p, g, m, v], ours)) in items.into_iter().zip(ours).enumerate() {
        let theirs = reference::adam::<B>(p, g, m, v, k);
        for (name, a, b) in [("p", &ours[0], theirs.0), ("m", &ours[1], theirs.1), ("v", &ours[2], theirs.2)] {
            let (a, b) = (values::<B>(a.clone()), values::<B>(b));
            assert_eq!(a.len(), sizes[i], "parameter {i}: {name}'s size");
            let e = gap_of_scale(&a, &b);
            assert!(e < 1e-6, "parameter {i} of {}: {name} differs by {e:e} of its largest entry", sizes.len());
        }
    }
    // The gradients' squared norm: tensors of one entry to more than the
    // most cubes one is spread over hold, and more tensors than one launch
    // takes.
    let mut xs: Vec<_> = [1, 300, 10_007, 2_000_000].map(|n| random(n, -1.0, 1.0).into_primitive().tensor()).into();
    xs.extend((0..40).map(|i| random(1 + 97 * i, -1.0, 1.0).into_primitive().tensor()));
    let ours = values::<B>(B::squared_norm(xs.clone(), device));
    let theirs = values::<B>(reference::squared_norm::<B>(xs, device));
    assert_eq!(ours.len(), 1);
    let e = ((ours[0] - theirs[0]) / theirs[0]).abs();
    assert!(e < 1e-5, "squared norms {ours:?} and {theirs:?}: {e:e} apart");
    let none = values::<B>(B::squared_norm(Vec::new(), device));
    assert_eq!(none, vec![0.0], "no gradient, no norm");
}

/// A kernel test's random inputs: a fixed sequence drawn on the host and
/// uploaded, so that they are the same whatever other tests draw from the
/// device's generator meanwhile (the tests of one binary run in parallel).
pub(super) struct Draws(std::cell::Cell<u64>);

impl Draws {
    pub(super) fn new(seed: u64) -> Self {
        Draws(std::cell::Cell::new(seed))
    }

    /// Uniform in [0, 1) (SplitMix64).
    pub(super) fn next(&self) -> f64 {
        let s = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` draws from U(lo, hi) on `device`.
    pub(super) fn uniform<B: Backend>(&self, n: usize, lo: f64, hi: f64, device: &B::Device) -> Tensor<B, 1> {
        let xs: Vec<f32> = (0..n).map(|_| (lo + (hi - lo) * self.next()) as f32).collect();
        Tensor::from_floats(xs.as_slice(), device)
    }

    /// A tensor of `shape` drawn from N(0, 1) (Box–Muller) on `device`.
    pub(super) fn normal<B: Backend>(&self, device: &B::Device, shape: &[usize]) -> burn::tensor::ops::FloatTensor<B> {
        let n: usize = shape.iter().product();
        let xs: Vec<f32> = (0..n)
            .map(|_| {
                let (u, v) = (1.0 - self.next(), self.next());
                ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
            })
            .collect();
        let t = Tensor::<B, 1>::from_floats(xs.as_slice(), device);
        B::float_reshape(t.into_primitive().tensor(), burn::tensor::Shape::from(shape.to_vec()))
    }
}

/// The dense family's products (`kernels/dense/cube.rs`) against a product
/// in f64 on the host: in fp32 every multiply-add is fp32 (a gap of the
/// order of 2⁻²⁴ of the output's scale, where TF32's 10-bit mantissa
/// leaves 10⁻⁴–10⁻³); 2-D, batched, operands read through transposed
/// views (also of permuted batches, as attention's `q · kᵀ` reads them),
/// a short inner dimension, sizes that are not multiples of any tile, a
/// 512-term sum, an empty inner dimension. Returns the largest gaps in fp32 and in tf32.
fn dense_products_are_exact<B: blkc_runtime::kernels::Kernels>(device: &B::Device) -> (f32, f32) {
    use blkc_runtime::kernels::precision::{scope, Precision};
    let draws = Draws::new(31);
    let (mut fp32, mut tf32) = (0.0f32, 0.0f32);
    // (a's shape, b's shape, a drawn with its last two dimensions swapped,
    // b likewise): the swapped ones are read through a transposed view.
    let cases: [(&[usize], &[usize], bool, bool); 7] = [
        (&[2, 3, 7, 8], &[2, 3, 8, 7], true, true),
        (&[37, 53], &[53, 29], false, false),
        (&[3, 17, 64], &[3, 64, 40], false, false),
        (&[64, 96], &[96, 48], false, true),
        (&[2, 3, 16, 8], &[2, 3, 8, 16], true, false),
        (&[256, 512], &[512, 384], false, false),
        (&[4, 0], &[0, 5], false, false),
    ];
    for (case, (sa, sb, ta, tb)) in cases.into_iter().enumerate() {
        let draw = |shape: &[usize], swapped: bool| {
            let r = shape.len();
            let mut drawn = shape.to_vec();
            if swapped {
                drawn.swap(r - 2, r - 1);
                B::float_swap_dims(draws.normal::<B>(device, &drawn), r - 2, r - 1)
            } else {
                draws.normal::<B>(device, &drawn)
            }
        };
        let (a, b) = (draw(sa, ta), draw(sb, tb));
        let r = sa.len();
        let (m, k, n) = (sa[r - 2], sa[r - 1], sb[r - 1]);
        if k == 0 {
            let ours = B::matmul(a, b);
            assert_eq!(burn::tensor::TensorMetadata::shape(&ours).as_slice(), [m, n], "case {case}: the shape");
            assert!(values::<B>(ours).iter().all(|&x| x == 0.0), "case {case}: an empty sum is 0");
            continue;
        }
        let (ha, hb) = (values::<B>(a.clone()), values::<B>(b.clone()));
        let batch: usize = sa[..r - 2].iter().product();
        let mut exact = vec![0.0f32; batch * m * n];
        for (p, e) in exact.iter_mut().enumerate() {
            let (t, i, j) = (p / (m * n), p / n % m, p % n);
            let s: f64 = (0..k).map(|l| ha[(t * m + i) * k + l] as f64 * hb[(t * k + l) * n + j] as f64).sum();
            *e = s as f32;
        }
        let ours = values::<B>(B::matmul(a.clone(), b.clone()));
        let tensor_cores = values::<B>(scope(Precision::Tf32, || B::matmul(a, b)));
        assert_eq!(ours.len(), exact.len(), "case {case}: the product's size");
        let (e, t) = (gap_of_scale(&ours, &exact), gap_of_scale(&tensor_cores, &exact));
        assert!(e < 1e-5, "case {case}: the fp32 product differs by {e:e} of scale");
        fp32 = fp32.max(e);
        tf32 = tf32.max(t);
    }
    assert!(fp32 > 0.0, "the products ran");
    println!("dense products against f64: largest gap {fp32:.1e} of scale in fp32, {tf32:.1e} in tf32");
    (fp32, tf32)
}

/// The unit matmuls that `exact` chooses among by timing give the same
/// bits on every shape the dense products test: the choice (which may
/// differ from one run, or machine, to the next) never changes a run's
/// numbers, so a resumed run retraces the one it continues.
fn unit_strategies_agree_to_the_bit<R: burn_cubecl::CubeRuntime>(device: &R::Device) {
    type Cube<R> = burn_cubecl::CubeBackend<R, f32, i32, u32>;
    let draws = Draws::new(32);
    let shapes: [(&[usize], &[usize]); 5] = [
        (&[2, 3, 7, 8], &[2, 3, 8, 7]),
        (&[37, 53], &[53, 29]),
        (&[3, 17, 64], &[3, 64, 40]),
        (&[128, 64], &[64, 192]),
        (&[256, 512], &[512, 384]),
    ];
    for (case, (sa, sb)) in shapes.into_iter().enumerate() {
        let (a, b) = (draws.normal::<Cube<R>>(device, sa), draws.normal::<Cube<R>>(device, sb));
        let outs = blkc_runtime::kernels::dense::cube::exact_by_each(a, b);
        assert!(outs.len() == 2, "case {case}: both strategies take the shape ({} did)", outs.len());
        let bits = |t| values::<Cube<R>>(t).iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let [first, second] = [outs[0].clone(), outs[1].clone()].map(bits);
        let differ = first.iter().zip(&second).filter(|(x, y)| x != y).count();
        assert_eq!(differ, 0, "case {case}: {differ} of {} entries differ between the strategies", first.len());
    }
    println!("unit matmul strategies agree to the bit on {} shapes", shapes.len());
}

/// The ReLU's backward (`kernels/dense/cube.rs`) against the reference: a
/// gradient held nowhere else is written over, one that is held elsewhere
/// (or read through a transposed view) is left as it was.
fn relu_grad_is_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::dense::reference;
    use blkc_runtime::kernels::ReluMask;
    let draws = Draws::new(32);
    for (case, shape) in [[33usize, 65], [4, 8], [1, 1]].into_iter().enumerate() {
        let y = B::relu(draws.normal::<B>(device, &shape));
        let dy = draws.normal::<B>(device, &shape);
        let before = values::<B>(dy.clone());
        let theirs = values::<B>(reference::relu_grad::<B>(ReluMask::Output(y.clone()), dy.clone()));
        // `dy` is held here too: the kernel must not write over it.
        let held = values::<B>(B::relu_grad(ReluMask::Output(y.clone()), dy.clone()));
        assert_eq!(held, theirs, "case {case}: a held gradient");
        assert_eq!(values::<B>(dy.clone()), before, "case {case}: the held gradient is unchanged");
        let own = values::<B>(B::relu_grad(ReluMask::Output(y.clone()), dy));
        assert_eq!(own, theirs, "case {case}: a gradient held nowhere else");
        let [r, c] = shape;
        let view = B::float_swap_dims(draws.normal::<B>(device, &[c, r]), 0, 1);
        let theirs = values::<B>(reference::relu_grad::<B>(ReluMask::Output(y.clone()), view.clone()));
        assert_eq!(values::<B>(B::relu_grad(ReluMask::Output(y), view)), theirs, "case {case}: a transposed view");
        assert!(theirs.contains(&0.0) || shape == [1, 1], "case {case}: some outputs were not positive");
    }
    println!("ReLU backward: equal to the reference");
}

/// The gated units' and activations' kernels (`kernels/dense/cube.rs`)
/// against the reference, for every gate the family has: the value and
/// both gradients, on sizes read as vectors of 4 and one by one, with
/// inputs large enough to saturate tanh and the sigmoid; an incoming
/// gradient held elsewhere is left as it was.
fn gate_kernels_are_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::dense::reference;
    use blkc_runtime::kernels::dense::Gate;
    let draws = Draws::new(44);
    let gates = [Gate::Relu, Gate::LeakyRelu(0.1), Gate::Silu, Gate::Gelu, Gate::GeluTanh, Gate::Tanh, Gate::Identity];
    let mut worst = 0.0f32;
    for gate in gates {
        for shape in [[4usize, 8], [33, 65], [1, 1]] {
            // Normal draws, three of them ±40 (where tanh and the sigmoid
            // are flat to f32).
            let spread = |t| B::float_mul_scalar(t, 3.0.into());
            let mut xs = values::<B>(spread(draws.normal::<B>(device, &shape)));
            for (k, v) in xs.iter_mut().take(3).enumerate() {
                *v = if k % 2 == 0 { 40.0 } else { -40.0 };
            }
            let g = Tensor::<B, 1>::from_floats(xs.as_slice(), device).reshape(shape).into_primitive().tensor();
            let h = draws.normal::<B>(device, &shape);
            let dz = draws.normal::<B>(device, &shape);
            let case = format!("{gate:?} {shape:?}");
            let mut check = |what: &str, ours: Vec<f32>, theirs: Vec<f32>| {
                assert!(ours.iter().all(|x| x.is_finite()), "{case} {what}: not finite");
                let gap = gap_of_scale(&ours, &theirs);
                assert!(gap < 1e-5, "{case} {what}: {gap:e} of scale from the reference");
                worst = worst.max(gap);
            };
            check(
                "act",
                values::<B>(B::activate(g.clone(), gate)),
                values::<B>(reference::activate::<B>(g.clone(), gate)),
            );
            let before = values::<B>(dz.clone());
            let ours = values::<B>(B::activate_backward(g.clone(), dz.clone(), gate));
            check("act'", ours, values::<B>(reference::activate_backward::<B>(g.clone(), dz.clone(), gate)));
            assert_eq!(values::<B>(dz.clone()), before, "{case}: a held gradient is unchanged");
            let ours = values::<B>(B::gated(g.clone(), h.clone(), gate));
            check("gated", ours, values::<B>(reference::gated::<B>(g.clone(), h.clone(), gate)));
            let (dg, dh) = reference::gated_backward::<B>(g.clone(), h.clone(), dz.clone(), gate);
            let (theirs_g, theirs_h) = (values::<B>(dg), values::<B>(dh));
            // `dz` held nowhere else: written over.
            let fresh = B::float_mul_scalar(dz.clone(), 1.0.into());
            let (dg, dh) = B::gated_backward(g.clone(), h.clone(), fresh, gate);
            check("gated dg", values::<B>(dg), theirs_g);
            check("gated dh", values::<B>(dh), theirs_h);
            assert_eq!(values::<B>(dz), before, "{case}: a held gradient is unchanged");
        }
    }
    println!("gated units and activations against the reference: largest gap {worst:.1e} of scale");
}

/// Rotary positions' kernel (`kernels/rope/cube.rs`) against the
/// reference: all of each head turned or its first part (GPT-J's partial
/// rotary), halves read as vectors of 4 and one by one, `x` token-major
/// (as the products leave it), contiguous, or another view; the backward's
/// opposite turn undoes the forward.
fn rope_kernel_is_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::rope::reference;
    let draws = Draws::new(45);
    let (b, h, t) = (2, 3, 5);
    let mut worst = 0.0f32;
    for (d, half) in [(16usize, 8usize), (16, 4), (12, 3), (8, 2), (6, 3)] {
        for layout in 0..3 {
            let x = match layout {
                0 => B::float_swap_dims(draws.normal::<B>(device, &[b, t, h, d]), 1, 2),
                1 => draws.normal::<B>(device, &[b, h, t, d]),
                _ => B::float_swap_dims(draws.normal::<B>(device, &[h, b, t, d]), 0, 1),
            };
            let angles: Vec<f32> = (0..t * half).map(|k| (k / half) as f32 * (0.3 + k as f32 * 0.01)).collect();
            let a = Tensor::<B, 1>::from_floats(angles.as_slice(), device).reshape([t, half]);
            let (cos, sin) = (a.clone().cos().into_primitive().tensor(), a.sin().into_primitive().tensor());
            let ours = B::rope(x.clone(), cos.clone(), sin.clone());
            let theirs = values::<B>(reference::rope::<B>(x.clone(), cos.clone(), sin.clone()));
            let gap = gap_of_scale(&values::<B>(ours.clone()), &theirs);
            assert!(gap < 1e-6, "d {d}, half {half}, layout {layout}: {gap:e} of scale from the reference");
            let back = B::rope(ours, cos, B::float_neg(sin));
            let undone = gap_of_scale(&values::<B>(back), &values::<B>(x));
            assert!(undone < 1e-5, "d {d}, half {half}, layout {layout}: turned back {undone:e} off");
            worst = worst.max(gap);
        }
    }
    println!("rotary positions against the reference: largest gap {worst:.1e} of scale");
}

/// The norms' CubeCL kernels (`kernels/norm/cube.rs`) against the
/// reference: LayerNorm and RMSNorm, with a shift or not, the input's
/// gradient added into one from elsewhere or not; rows wider than a cube
/// (each unit striding over several entries) and narrower, and rows that
/// are not a whole number of the column kernel's chunks.
fn norm_kernels_are_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::norm::reference;
    let draws = Draws::new(20);
    let mut worst = 0.0f32;
    for (case, (rows, width)) in [(70, 600), (33, 24), (128, 64)].into_iter().enumerate() {
        for variant in 0..4 {
            let (centred, shifted) = (variant & 1 == 0, variant & 2 == 0);
            // An offset mean, as a residual stream has: centring must
            // not cancel.
            let x = B::float_add_scalar(draws.normal::<B>(device, &[rows, width]), 3.0.into());
            let scale = draws.normal::<B>(device, &[width]);
            let bias = shifted.then(|| draws.normal::<B>(device, &[width]));
            let (y, rstd) = B::norm(x.clone(), scale.clone(), bias.clone(), 1e-5, centred);
            let (y2, rstd2) = reference::norm::<B>(x.clone(), scale.clone(), bias, 1e-5, centred);
            let mut pairs = vec![("y", y, y2), ("rstd", rstd.clone(), rstd2)];
            let dy = draws.normal::<B>(device, &[rows, width]);
            let acc = (variant < 2).then(|| draws.normal::<B>(device, &[rows, width]));
            let (dx, ds, db) =
                B::norm_backward(x.clone(), scale.clone(), rstd.clone(), dy.clone(), centred, acc.clone());
            let (dx2, ds2, db2) = reference::norm_backward::<B>(x, scale, rstd, dy, centred);
            let dx2 = acc.map_or(dx2.clone(), |a| B::float_add(dx2, a));
            pairs.extend([("dx", dx, dx2), ("dscale", ds, ds2), ("dbias", db, db2)]);
            for (name, a, b) in pairs {
                let e = gap_of_scale(&values::<B>(a), &values::<B>(b));
                // The scale's and shift's gradients sum over the rows.
                let tolerance = if name.starts_with("d") && name != "dx" { 1e-4 } else { 1e-5 };
                assert!(e < tolerance, "case {case}.{variant}: {name} differs by {e:e} of scale");
                worst = worst.max(e);
            }
        }
    }
    // The kernels ran (a fallback to the reference would equal it exactly).
    assert!(worst > 0.0, "the norm kernels ran");
    println!("norm kernels against the reference: largest gap {worst:.1e} of scale");
}

/// The gained sum's CubeCL kernels (`kernels/gains/cube.rs`) against the
/// reference: one gain or one per head on either branch, rows that are
/// not a whole number of the backward's chunks, `b` a strided view.
fn gains_kernels_are_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::gains::reference;
    let draws = Draws::new(22);
    let mut worst = 0.0f32;
    for (case, (shape, na, nb)) in
        [([2, 37, 48], 4, 1), ([3, 5, 12], 1, 12), ([1, 64, 64], 8, 8)].into_iter().enumerate()
    {
        let a = draws.normal::<B>(device, &shape);
        let [x, y, z] = shape;
        let b = B::float_swap_dims(draws.normal::<B>(device, &[y, x, z]), 0, 1);
        let (ga, gb) = (draws.normal::<B>(device, &[na]), draws.normal::<B>(device, &[nb]));
        let dy = draws.normal::<B>(device, &shape);
        let ours = B::scaled_sum(a.clone(), b.clone(), ga.clone(), gb.clone());
        let theirs = reference::scaled_sum::<B>(a.clone(), b.clone(), ga.clone(), gb.clone());
        let mut pairs = vec![("y", ours, theirs)];
        let g = B::scaled_sum_backward(a.clone(), b.clone(), ga.clone(), gb.clone(), dy.clone());
        let r = reference::scaled_sum_backward::<B>(a, b, ga, gb, dy);
        for (name, (x, y)) in ["da", "db", "dga", "dgb"].into_iter().zip(g.into_iter().zip(r)) {
            pairs.push((name, x, y));
        }
        for (name, a, b) in pairs {
            let shapes = (burn::tensor::TensorMetadata::shape(&a), burn::tensor::TensorMetadata::shape(&b));
            assert_eq!(shapes.0, shapes.1, "case {case}: {name}'s shape");
            let e = gap_of_scale(&values::<B>(a), &values::<B>(b));
            // The gains' gradients sum over every row of their columns.
            let tolerance = if name.starts_with("dg") { 1e-4 } else { 1e-5 };
            assert!(e < tolerance, "case {case}: {name} differs by {e:e} of scale");
            worst = worst.max(e);
        }
    }
    assert!(worst > 0.0, "the gains kernels ran");
    println!("gains kernels against the reference: largest gap {worst:.1e} of scale");
}

/// The loss's CubeCL kernels (`kernels/loss/cube.rs`) against the
/// reference: the cross-entropy and its log-sum-exp per row, its backward
/// from a gradient per row, and the mean with its gradient written over
/// the logits (shared logits are left as they were), the logits
/// soft-capped or not; vocabularies wider than a cube and narrower, large
/// logits (the online maximum matters).
fn loss_kernels_are_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::loss::reference;
    let draws = Draws::new(21);
    let mut worst = 0.0f32;
    for (rows, vocab, cap) in
        [(37, 1000, None), (16, 5, None), (64, 512, None), (37, 1000, Some(5.0)), (16, 5, Some(30.0))]
    {
        let logits = B::float_mul_scalar(draws.normal::<B>(device, &[rows, vocab]), 8.0.into());
        let draw = draws.uniform::<B>(rows, 0.0, vocab as f64, device);
        let targets = draw.int().clamp(0, vocab as i64 - 1).into_primitive();
        let (nll, lse) = B::cross_entropy(logits.clone(), targets.clone());
        let (nll2, lse2) = reference::cross_entropy::<B>(logits.clone(), targets.clone());
        let g = draws.normal::<B>(device, &[rows]);
        let d = B::cross_entropy_backward(logits.clone(), lse.clone(), targets.clone(), g.clone());
        let d2 = reference::cross_entropy_backward::<B>(logits.clone(), lse2.clone(), targets.clone(), g);
        let before = values::<B>(logits.clone());
        let (mean, grad) = B::nll_mean_with_grad(logits.clone(), targets.clone(), cap);
        let targets2 = targets.clone();
        let (mean2, grad2) = reference::nll_mean_with_grad::<B>(logits.clone(), targets, cap);
        assert_eq!(values::<B>(logits.clone()), before, "{rows}×{vocab}: the shared logits are unchanged");
        // Logits held nowhere else (a training step's) take the gradient
        // in their own memory.
        let alone = B::float_add_scalar(logits, 0.0.into());
        let (mean3, grad3) = B::nll_mean_with_grad(alone, targets2.clone(), cap);
        let pairs = [
            ("nll", nll, nll2),
            ("lse", lse, lse2),
            ("dlogits", d, d2),
            ("mean", mean, mean2.clone()),
            ("grad", grad, grad2.clone()),
            ("mean in place", mean3, mean2),
            ("grad in place", grad3, grad2),
        ];
        for (name, a, b) in pairs {
            let e = gap_of_scale(&values::<B>(a), &values::<B>(b));
            assert!(e < 1e-5, "{rows}×{vocab}, cap {cap:?}: {name} differs by {e:e} of scale");
            worst = worst.max(e);
        }
    }
    // The kernels ran (a fallback to the reference would equal it exactly).
    assert!(worst > 0.0, "the loss kernels ran");
    println!("loss kernels against the reference: largest gap {worst:.1e} of scale");
}

/// The embedding's gradient kernel (`kernels/embed/cube.rs`) against the
/// reference (burn's `select_add`): tokens repeated a few times and a few
/// tokens repeated hundreds of times, rows read as vectors of 4 and one by
/// one, with the positions' gradient, added into a table gradient from
/// elsewhere (which, held elsewhere too, is left as it was) or into zeros.
fn embed_kernel_is_the_reference<B: blkc_runtime::kernels::Kernels>(device: &B::Device) {
    use blkc_runtime::kernels::embed::{groups, reference};
    let draws = Draws::new(47);
    let mut worst = 0.0f32;
    for (n, vocab, d, t, spread) in
        [(24usize, 11usize, 8usize, 6usize, 11usize), (600, 50, 16, 40, 5), (35, 7, 6, 5, 7)]
    {
        let ids: Vec<i32> = (0..n).map(|_| (draws.next() * spread as f64) as i32).collect();
        let tokens = Tensor::<B, 1, Int>::from_ints(ids.as_slice(), device).into_primitive();
        let dy = draws.normal::<B>(device, &[n, d]);
        let g = Some(groups::<B>(&tokens, vocab));
        for with_acc in [false, true] {
            let acc = with_acc.then(|| draws.normal::<B>(device, &[vocab, d]));
            let before = acc.clone().map(values::<B>);
            let (table, pos) = B::embed_backward(dy.clone(), tokens.clone(), g.clone(), vocab, Some(t), acc.clone());
            let (table2, pos2) =
                reference::embed_backward::<B>(dy.clone(), tokens.clone(), vocab, Some(t), acc.clone());
            if let (Some(a), Some(before)) = (acc, before) {
                assert_eq!(values::<B>(a), before, "{n} tokens: a table gradient held elsewhere is unchanged");
            }
            let e = gap_of_scale(&values::<B>(table), &values::<B>(table2));
            assert!(e < 1e-5, "{n} tokens, d {d}, acc {with_acc}: the table's gradient differs by {e:e} of scale");
            let p = gap_of_scale(&values::<B>(pos.expect("positions")), &values::<B>(pos2.expect("positions")));
            assert!(p < 1e-5, "{n} tokens: the positions' gradient differs by {p:e} of scale");
            worst = worst.max(e);
        }
    }
    // The kernel ran (the reference adds row by row into the table; the
    // kernel sums a token's rows first, which rounds otherwise).
    assert!(worst > 0.0, "the embedding's kernel ran");
    println!("embedding gradient against the reference: largest gap {worst:.1e} of scale");
}

/// The rotary kernel ran (the reference concatenates into a contiguous
/// tensor): a token-major input gives a token-major output, as the
/// attention kernels read the products' output.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn rope_keeps_the_token_major_layout<R: burn_cubecl::CubeRuntime>(device: &R::Device) {
    type Cube<R> = burn_cubecl::CubeBackend<R, f32, i32, u32>;
    let draws = Draws::new(46);
    let (b, h, t, d, half) = (2, 3, 5, 8, 4);
    use blkc_runtime::kernels::RopeOps;
    use burn::tensor::ops::FloatTensorOps;
    let x = <Cube<R>>::float_swap_dims(draws.normal::<Cube<R>>(device, &[b, t, h, d]), 1, 2);
    let table = |f: fn(f32) -> f32| {
        let v: Vec<f32> = (0..t * half).map(|k| f(k as f32 * 0.1)).collect();
        Tensor::<Cube<R>, 1>::from_floats(v.as_slice(), device).reshape([t, half]).into_primitive().tensor()
    };
    let y = <Cube<R>>::rope(x, table(f32::cos), table(f32::sin));
    assert_eq!(y.meta.strides().to_vec(), vec![t * h * d, d, h * d, 1], "the output is token-major");
}

/// burn's wgpu backend without operation fusion: where blkc's CubeCL
/// kernels run.
#[cfg(feature = "wgpu")]
type WgpuKernels = blkc_runtime::backend::WgpuUnfused;

// In three tests, which the harness runs side by side.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_kernels_are_the_reference() {
    dense_products_are_exact::<WgpuKernels>(&Default::default());
    unit_strategies_agree_to_the_bit::<burn::cubecl::wgpu::WgpuRuntime>(&Default::default());
    relu_grad_is_the_reference::<WgpuKernels>(&Default::default());
    gate_kernels_are_the_reference::<WgpuKernels>(&Default::default());
    rope_kernel_is_the_reference::<WgpuKernels>(&Default::default());
    rope_keeps_the_token_major_layout::<burn::cubecl::wgpu::WgpuRuntime>(&Default::default());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_attention_kernels_are_the_reference() {
    shaped_kernels_are_the_reference::<WgpuKernels>(&Default::default());
    attention_kernels_are_the_reference::<WgpuKernels>(&Default::default());
    softmax_kernels_are_the_reference::<WgpuKernels>(&Default::default());
    mix_kernels_are_the_reference::<WgpuKernels>(&Default::default());
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_row_and_update_kernels_are_the_reference() {
    norm_kernels_are_the_reference::<WgpuKernels>(&Default::default());
    gains_kernels_are_the_reference::<WgpuKernels>(&Default::default());
    loss_kernels_are_the_reference::<WgpuKernels>(&Default::default());
    embed_kernel_is_the_reference::<WgpuKernels>(&Default::default());
    adam_kernel_is_the_reference::<WgpuKernels>(&Default::default());
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_kernels_are_the_reference() {
    type CudaKernels = blkc_runtime::backend::CudaUnfused;
    let (fp32, tf32) = dense_products_are_exact::<CudaKernels>(&Default::default());
    unit_strategies_agree_to_the_bit::<burn::cubecl::cuda::CudaRuntime>(&Default::default());
    relu_grad_is_the_reference::<CudaKernels>(&Default::default());
    gate_kernels_are_the_reference::<CudaKernels>(&Default::default());
    rope_kernel_is_the_reference::<CudaKernels>(&Default::default());
    rope_keeps_the_token_major_layout::<burn::cubecl::cuda::CudaRuntime>(&Default::default());
    // Where the GPU has TF32 (Ampere and later), tf32 is what it asks for.
    use burn_cubecl::cubecl::prelude::{CubePrimitive, Runtime};
    let client = burn::cubecl::cuda::CudaRuntime::client(&Default::default());
    if client.properties().supports_type(burn_cubecl::cubecl::tf32::as_type_native_unchecked().storage_type()) {
        assert!(tf32 > 10.0 * fp32, "tf32 products ({tf32:e}) are not TF32's (fp32: {fp32:e})");
    }
    shaped_kernels_are_the_reference::<CudaKernels>(&Default::default());
    attention_kernels_are_the_reference::<CudaKernels>(&Default::default());
    norm_kernels_are_the_reference::<CudaKernels>(&Default::default());
    gains_kernels_are_the_reference::<CudaKernels>(&Default::default());
    loss_kernels_are_the_reference::<CudaKernels>(&Default::default());
    embed_kernel_is_the_reference::<CudaKernels>(&Default::default());
    softmax_kernels_are_the_reference::<CudaKernels>(&Default::default());
    mix_kernels_are_the_reference::<CudaKernels>(&Default::default());
    adam_kernel_is_the_reference::<CudaKernels>(&Default::default());
}
