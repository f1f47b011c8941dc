//! Shape arithmetic shared by the CPU path, the GPU path and the layers.

use crate::error::{shape_err, Result};

/// Number of elements of a shape (1 for a scalar shape `[]`).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Checks that no dimension is zero and that the element count fits the
/// `u32` indices the kernels use.
pub fn check_nonempty(op: &'static str, what: &str, shape: &[usize]) -> Result<usize> {
    if shape.contains(&0) {
        return shape_err(op, format!("{what} has shape {shape:?}, with a zero-size dimension"));
    }
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= u32::MAX as usize);
    match n {
        Some(n) => Ok(n),
        None => shape_err(op, format!("{what} has shape {shape:?}, more than 2^32-1 elements")),
    }
}
