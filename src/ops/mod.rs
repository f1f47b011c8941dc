//! The ops: one file per op stem, each holding the CPU reference (the spec)
//! and the GPU wrapper side by side, matching `shaders/<stem>.wgsl` and
//! `tests/parity/<stem>.rs`. `conv2d` composes im2col, GEMM, permute, reduce
//! and col2im.

pub mod activation;
pub mod avgpool;
pub mod batchnorm;
pub mod col2im;
pub mod conv2d;
pub mod dropout;
pub mod elementwise;
pub mod gemm;
pub mod im2col;
pub mod maxpool;
pub mod optim;
pub mod permute;
pub mod reduce;
pub mod softmax_xent;

use crate::error::{shape_err, Result};

/// An operand must have exactly the expected shape.
pub(crate) fn check_shape(op: &'static str, what: &str, got: &[usize], want: &[usize]) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        shape_err(op, format!("{what} has shape {got:?}, expected {want:?}"))
    }
}
