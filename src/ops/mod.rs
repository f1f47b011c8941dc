//! The ops: one file per op stem, each holding its kernels (typed
//! declarations of `shaders/<stem>.wgsl`'s entry points), the CPU reference
//! (the spec) and the GPU wrapper side by side, matching
//! `tests/parity/<stem>.rs`. `conv2d` composes im2col, GEMM, permute, reduce
//! and col2im; it has no shader of its own.
//!
//! Every public op has one shape: validate the operands, then
//! `match same_device(..)? { Cpu => <stem>_<phase>_cpu(..), Gpu(ctx) => allocate; dispatch }`.

pub mod activation;
pub mod avgpool;
pub mod batchnorm;
pub mod bias;
pub mod cast;
pub mod clip;
pub mod col2im;
pub mod concat;
pub mod conv2d;
pub mod dropout;
pub mod elementwise;
pub mod gemm;
pub mod im2col;
pub mod layernorm;
pub mod loss;
pub(crate) mod loss_scale;
pub mod maxpool;
pub mod optim;
pub mod pad;
pub mod permute;
pub mod reduce;
pub mod softmax;
pub mod softmax_xent;
pub mod upsample;

use crate::error::{shape_err, Result};
use crate::kernel::KernelDef;

/// Every kernel the library declares, op by op (`tests/shaders.rs` checks
/// each against its WGSL, and that every shader file is covered).
pub fn kernels() -> Vec<&'static KernelDef> {
    [
        activation::KERNELS,
        avgpool::KERNELS,
        batchnorm::KERNELS,
        bias::KERNELS,
        cast::KERNELS,
        clip::KERNELS,
        col2im::KERNELS,
        concat::KERNELS,
        dropout::KERNELS,
        elementwise::KERNELS,
        gemm::KERNELS,
        im2col::KERNELS,
        layernorm::KERNELS,
        loss::KERNELS,
        loss_scale::KERNELS,
        maxpool::KERNELS,
        optim::KERNELS,
        pad::KERNELS,
        permute::KERNELS,
        reduce::KERNELS,
        softmax::KERNELS,
        softmax_xent::KERNELS,
        upsample::KERNELS,
    ]
    .concat()
}

/// An operand must have exactly the expected shape.
pub(crate) fn check_shape(op: &'static str, what: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        shape_err(op, format!("{what} has shape {got:?}, expected {want:?}"))
    }
}

// ---------------------------------------------------------------- CPU path helpers

/// Σ f(a[i], b[i]) in f64 over eight partial sums (so it vectorises), compiled
/// for the widest vectors the CPU has (pulp's dispatch: AVX2 here, where the
/// crate's baseline build has SSE2 only).
pub(crate) fn sum8(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    struct Sum8<'a, F> {
        a: &'a [f32],
        b: &'a [f32],
        f: F,
    }
    impl<F: Fn(f32, f32) -> f64> pulp::WithSimd for Sum8<'_, F> {
        type Output = f64;

        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _: S) -> f64 {
            let Sum8 { a, b, f } = self;
            let mut acc = [0f64; 8];
            let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
            let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(&x, &y)| f(x, y)).sum();
            for (xa, xb) in ca.zip(cb) {
                for l in 0..8 {
                    acc[l] += f(xa[l], xb[l]);
                }
            }
            acc.iter().sum::<f64>() + tail
        }
    }
    pulp::Arch::new().dispatch(Sum8 { a, b, f })
}

/// `f` on each item, spread over the cores by rayon's pool (threads kept
/// for the process); the results in item order. Callers sum per item, never
/// per thread, so what they compute does not depend on the core count.
pub(crate) fn parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    use rayon::prelude::*;
    if crate::cores() < 2 || items.len() < 2 {
        return items.into_iter().map(f).collect();
    }
    items.into_par_iter().with_max_len(1).map(&f).collect()
}

/// `items` in `parts` contiguous runs of near-equal length.
pub(crate) fn runs<T>(items: Vec<T>, parts: usize) -> Vec<Vec<T>> {
    let (len, parts) = (items.len(), parts.clamp(1, items.len().max(1)));
    let mut out: Vec<Vec<T>> = (0..parts).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        out[i * parts / len.max(1)].push(item);
    }
    out
}
