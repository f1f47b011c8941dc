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
