//! The CPU kernels' only `unsafe` code, each use with its SAFETY argument:
//! the dispatch to the widest instruction set this CPU runs ([`widest`],
//! behind `multiversion!`), the cache hints and streaming stores of
//! x86-64, the `gemm` calls (whose clock lives here), outputs allocated
//! and not zeroed, and the raw rows of a tensor that several threads
//! write apart. The op folders call the safe functions here.

#![allow(unsafe_code)]

use std::mem::MaybeUninit;

mod mat;
mod out;

pub use mat::*;
pub use out::*;

/// The instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Level {
    Avx512,
    Avx2,
    Baseline,
}

#[cfg(target_arch = "x86_64")]
fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512vl") && has!("avx2") && has!("fma") {
            Level::Avx512
        } else if has!("avx2") && has!("fma") {
            Level::Avx2
        } else {
            Level::Baseline
        }
    })
}

/// A loop to compile once per instruction set: a function of `A` that
/// is always inlined (what `multiversion!` makes of a body).
pub trait Body<A> {
    type Out;
    fn run(args: A) -> Self::Out;
}

/// `K::run(args)` compiled for the widest instruction set this CPU runs:
/// the body is inlined into a copy of this function per set — AVX-512,
/// AVX2 + FMA, baseline x86-64 — and the widest one that `level` found
/// is called.
#[inline(always)]
pub fn widest<K: Body<A>, A>(args: A) -> K::Out {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn avx512<K: Body<A>, A>(args: A) -> K::Out {
            K::run(args)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<K: Body<A>, A>(args: A) -> K::Out {
            K::run(args)
        }
        match level() {
            // SAFETY: `level` found these features on this CPU.
            Level::Avx512 => return unsafe { avx512::<K, A>(args) },
            // SAFETY: as above.
            Level::Avx2 => return unsafe { avx2::<K, A>(args) },
            Level::Baseline => {}
        }
    }
    K::run(args)
}

/// `fn name(args) -> ret { body }`, the body compiled once per instruction
/// set and the widest this CPU runs called (see [`widest`]). The crate is
/// built for baseline x86-64, where the kernels' loops would be 4-lane SSE
/// and a float-to-int cast, element by element; so they are 16-lane.
macro_rules! multiversion {
    (@out) => { () };
    (@out $ret:ty) => { $ret };
    ($(#[$meta:meta])* pub fn $name:ident $(<$($lt:lifetime),*>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        pub fn $name $(<$($lt),*>)? ($($arg: $ty),*) $(-> $ret)? {
            struct Loop;
            impl $(<$($lt),*>)? $crate::kernels::cpu::raw::Body<($($ty,)*)> for Loop {
                type Out = multiversion!(@out $($ret)?);
                #[inline(always)]
                #[allow(unused_parens)]
                fn run(($($arg,)*): ($($ty,)*)) -> Self::Out $body
            }
            $crate::kernels::cpu::raw::widest::<Loop, _>(($($arg,)*))
        }
    };
}
pub(crate) use multiversion;

/// Asks the processor to bring the cache lines of `xs` in ahead of use: a
/// hint, without effect on any result. For streams the hardware prefetcher
/// does not follow, such as rows taken last to first.
#[inline(always)]
pub fn prefetch(xs: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in xs.chunks(16) {
        // SAFETY: a prefetch reads nothing architecturally and cannot
        // fault; the address lies within `xs`.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = xs;
}

/// Copies `src` into `dst` (the shorter's length) with stores that bypass
/// the cache: no read of the destination's lines first (the
/// read-for-ownership a plain store makes), for an output written once
/// here and read by another kernel later. [`fence`] before it is read.
pub fn stream(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_stream_ps};
        // Plain stores up to a 16-byte boundary and after the last whole
        // group of four.
        let head = dst.as_ptr().align_offset(16).min(n);
        let body = head + (n - head) / 4 * 4;
        for (d, &s) in dst[..head].iter_mut().zip(&src[..head]) {
            d.write(s);
        }
        for i in (head..body).step_by(4) {
            // SAFETY: `i + 3 < n`; `dst + i` is 16-byte aligned (`head`
            // aligns it, steps of four f32 keep it so).
            unsafe { _mm_stream_ps(dst.as_mut_ptr().add(i).cast(), _mm_loadu_ps(src.as_ptr().add(i))) };
        }
        for (d, &s) in dst[body..].iter_mut().zip(&src[body..]) {
            d.write(s);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

/// Orders the [`stream`] stores of this thread before its later stores:
/// what makes them visible to a thread that learns of them afterwards.
pub fn fence() {
    // SAFETY: SSE, which `_mm_sfence` needs, is part of x86-64.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}
