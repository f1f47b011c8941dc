//! Row sums of a `[rows, len]` matrix (bias gradients, per-channel
//! statistics) and squared norms (gradient clipping and checking).

use bytemuck::{Pod, Zeroable};

use crate::gpu::Bind;
use crate::device::Device;
use crate::error::{shape_err, Result};
use crate::gpu::GpuContext;
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("reduce", include_str!("../../shaders/reduce.wgsl"));
pub(crate) static REDUCE_ROWS: Kernel<ReduceParams> = Kernel::new(&SHADER, "reduce_rows", &[Read, ReadWrite, Uniform])
    .with_work(|p| Work::f32s((p.rows * p.len + p.rows) as usize, (p.rows * p.len * (1 + p.square)) as usize));
pub(crate) static REDUCE_COLS: Kernel<ReduceParams> = Kernel::new(&SHADER, "reduce_cols", &[Read, ReadWrite, Uniform])
    .with_work(|p| Work::f32s((p.rows * p.len + p.len) as usize, (p.rows * p.len * (1 + p.square)) as usize));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&REDUCE_ROWS.def, &REDUCE_COLS.def];

/// Matches `ReduceParams` in `shaders/reduce.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
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
pub fn reduce_rows(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "reduce_rows";
    let s = x.shape();
    if s.is_empty() {
        return shape_err(OP, "needs at least one axis, got a scalar");
    }
    let (rows, len) = (s[0], s[1..].iter().product::<usize>());
    match x.device() {
        Device::Cpu => Ok(Tensor::from_cpu(&[rows], reduce_rows_cpu(x.host(OP)?, rows, len))),
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, OP, &[rows])?;
            reduce_rows_gpu(&ctx, x.buffer(OP)?, out.buffer(OP)?, rows, len, 0.0)?;
            Ok(out)
        }
    }
}

/// `[rows, rest…] → [rest…]`: the sum over the first axis.
pub fn reduce_cols(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "reduce_cols";
    let s = x.shape();
    if s.len() < 2 {
        return shape_err(OP, format!("needs a leading axis and at least one more, got {s:?}"));
    }
    let (rows, len) = (s[0], s[1..].iter().product::<usize>());
    match x.device() {
        Device::Cpu => Ok(Tensor::from_cpu(&s[1..], reduce_cols_cpu(x.host(OP)?, rows, len))),
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, OP, &s[1..])?;
            reduce_cols_gpu_at(&ctx, x.buffer(OP)?, out.buffer(OP)?, 0, rows, len, 0.0)?;
            Ok(out)
        }
    }
}

/// Σ x² of each tensor, read back in one go (one readback on the GPU). The
/// trainer's gradient check uses it; a non-finite entry means a NaN or
/// infinity (or a norm past f32's range) somewhere in that tensor.
pub fn reduce_sum_squares(tensors: &[&Tensor]) -> Result<Vec<f32>> {
    const OP: &str = "reduce_sum_squares";
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    match same_device(OP, tensors)? {
        Device::Cpu => tensors.iter().map(|t| Ok(reduce_sum_squares_cpu(t.host(OP)?))).collect(),
        Device::Gpu(ctx) => {
            let slots = ctx.alloc(OP, tensors.len())?;
            for (i, t) in tensors.iter().enumerate() {
                reduce_sum_squares_gpu(&ctx, t.buffer(OP)?, t.numel(), slots.buffer(), i)?;
            }
            ctx.read(slots.buffer(), tensors.len())
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// x: (rows, len) → (rows,). Summed in f64: the reference should not be the
/// less accurate side of a comparison.
pub fn reduce_rows_cpu(x: &[f32], rows: usize, len: usize) -> Vec<f32> {
    (0..rows).map(|r| x[r * len..(r + 1) * len].iter().map(|&v| v as f64).sum::<f64>() as f32).collect()
}

/// x: (rows, len) → (len,), summed in f64.
pub fn reduce_cols_cpu(x: &[f32], rows: usize, len: usize) -> Vec<f32> {
    (0..len).map(|e| (0..rows).map(|r| x[r * len + e] as f64).sum::<f64>() as f32).collect()
}

/// Σ x², summed in f64.
pub fn reduce_sum_squares_cpu(x: &[f32]) -> f32 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() as f32
}

// ---------------------------------------------------------------- GPU wrapper

/// Records `out = beta·out + Σ_j x[r, j]`; beta = 1 accumulates.
pub(crate) fn reduce_rows_gpu(ctx: &GpuContext, x: Bind<'_>, out: Bind<'_>, rows: usize, len: usize, beta: f32) -> Result<()> {
    reduce_rows_gpu_at(ctx, x, out, 0, rows, len, beta)
}

/// [`reduce_rows_gpu`] writing rows from element `out_offset` of `out` on.
pub(crate) fn reduce_rows_gpu_at(ctx: &GpuContext, x: Bind<'_>, out: Bind<'_>, out_offset: usize, rows: usize, len: usize, beta: f32) -> Result<()> {
    let params = ReduceParams { rows: rows as u32, len: len as u32, beta, out_offset: out_offset as u32, ..Default::default() };
    // One workgroup per row.
    ctx.dispatch(&REDUCE_ROWS, &params, &[x, out], ctx.grid_1d(rows, 1))
}

/// Records `out[out_offset + e] = beta·out[…] + Σ_r x[r, e]` for x `[rows, len]`.
pub(crate) fn reduce_cols_gpu_at(ctx: &GpuContext, x: Bind<'_>, out: Bind<'_>, out_offset: usize, rows: usize, len: usize, beta: f32) -> Result<()> {
    let params = ReduceParams { rows: rows as u32, len: len as u32, beta, out_offset: out_offset as u32, ..Default::default() };
    ctx.dispatch(&REDUCE_COLS, &params, &[x, out], ctx.grid_1d(len, 64))
}

/// Records `out[slot] = Σ x²` over the first `len` elements of `x`.
pub(crate) fn reduce_sum_squares_gpu(ctx: &GpuContext, x: Bind<'_>, len: usize, out: Bind<'_>, slot: usize) -> Result<()> {
    let params = ReduceParams { rows: 1, len: len as u32, square: 1, out_offset: slot as u32, ..Default::default() };
    ctx.dispatch(&REDUCE_ROWS, &params, &[x, out], [1, 1, 1])
}
