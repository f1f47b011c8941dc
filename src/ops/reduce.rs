//! Row sums of a `[rows, len]` matrix (bias gradients, per-channel statistics).

use bytemuck::{Pod, Zeroable};

use crate::error::{shape_err, Result};
use crate::gpu::GpuContext;
use crate::kernel::KernelId;
use crate::tensor::{Data, Tensor};

/// Matches `ReduceParams` in `shaders/reduce.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ReduceParams {
    pub rows: u32,
    pub len: u32,
    pub beta: f32,
    pub square: u32,
    pub out_offset: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// `[rows, rest…] → [rows]`: the sum over everything after the first axis.
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    let s = x.shape();
    if s.is_empty() {
        return shape_err("reduce", "sum_rows needs at least one axis, got a scalar");
    }
    let (rows, len) = (s[0], s[1..].iter().product::<usize>());
    let mut out = Tensor::uninit(&x.device(), "reduce", &[rows])?;
    match (&x.data, &mut out.data) {
        (Data::Cpu(xs), Data::Cpu(o)) => {
            let v = sum_rows_cpu(xs.as_slice().unwrap(), rows, len);
            o.as_slice_mut().unwrap().copy_from_slice(&v);
        }
        (Data::Gpu(xb), Data::Gpu(ob)) => sum_rows_gpu(xb.context(), xb.buffer(), ob.buffer(), rows, len, 0.0)?,
        _ => unreachable!(),
    }
    Ok(out)
}

// ---------------------------------------------------------------- CPU reference

/// x: (rows, len) → (rows,). Summed in f64: the reference should not be the
/// less accurate side of a comparison.
pub fn sum_rows_cpu(x: &[f32], rows: usize, len: usize) -> Vec<f32> {
    (0..rows).map(|r| x[r * len..(r + 1) * len].iter().map(|&v| v as f64).sum::<f64>() as f32).collect()
}

// ---------------------------------------------------------------- GPU wrapper

/// Records `out = beta·out + Σ_j x[r, j]`; beta = 1 accumulates.
pub(crate) fn sum_rows_gpu(ctx: &GpuContext, x: &wgpu::Buffer, out: &wgpu::Buffer, rows: usize, len: usize, beta: f32) -> Result<()> {
    let params = ReduceParams { rows: rows as u32, len: len as u32, beta, ..Default::default() };
    // One workgroup per row.
    ctx.dispatch(KernelId::ReduceRows, &params, &[x, out], ctx.grid_1d(rows, 1))
}

/// [`sum_rows_gpu`] writing rows from element `out_offset` of `out` on.
pub(crate) fn sum_rows_gpu_at(ctx: &GpuContext, x: &wgpu::Buffer, out: &wgpu::Buffer, out_offset: usize, rows: usize, len: usize, beta: f32) -> Result<()> {
    let params = ReduceParams { rows: rows as u32, len: len as u32, beta, out_offset: out_offset as u32, ..Default::default() };
    ctx.dispatch(KernelId::ReduceRows, &params, &[x, out], ctx.grid_1d(rows, 1))
}

/// Records `out[slot] = Σ x²` over the first `len` elements of `x`.
pub(crate) fn sum_squares_gpu(ctx: &GpuContext, x: &wgpu::Buffer, len: usize, out: &wgpu::Buffer, slot: usize) -> Result<()> {
    let params = ReduceParams { rows: 1, len: len as u32, square: 1, out_offset: slot as u32, ..Default::default() };
    ctx.dispatch(KernelId::ReduceRows, &params, &[x, out], [1, 1, 1])
}
