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
        clip::KERNELS,
        col2im::KERNELS,
        concat::KERNELS,
        dropout::KERNELS,
        elementwise::KERNELS,
        gemm::KERNELS,
        im2col::KERNELS,
        layernorm::KERNELS,
        loss::KERNELS,
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

/// Σ x in f64, in 8 interleaved partial sums (one dependent chain of adds
/// ran 4 cycles a value: a third of a wide convolution's bias gradient).
pub(crate) fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    for c in chunks {
        acc.iter_mut().zip(c).for_each(|(a, &v)| *a += v as f64);
    }
    acc.iter().sum::<f64>() + tail
}

/// `f` on each item, spread over the cores (item i on thread i mod T, the
/// first of them this one); the results in item order.
pub(crate) fn parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = crate::cores().min(items.len()).max(1);
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let mut queues: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        queues[i % threads].push((i, item));
    }
    let f = &f;
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let mut queues = queues.into_iter();
        let mine = queues.next().unwrap_or_default();
        let others: Vec<_> = queues.map(|q| s.spawn(move || q.into_iter().map(|(i, t)| (i, f(t))).collect::<Vec<_>>())).collect();
        let mut out: Vec<(usize, R)> = mine.into_iter().map(|(i, t)| (i, f(t))).collect();
        for h in others {
            out.extend(h.join().expect("CPU worker panicked"));
        }
        out
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
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
