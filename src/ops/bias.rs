//! Per-channel bias: adding it (broadcast over axis 1 of `[n, c, …]`) and its
//! gradient (the sum over every axis but 1).

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{shape_err, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::check_shape;
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("bias", include_str!("../../shaders/bias.wgsl"));
const BINDINGS: &[crate::kernel::Access] = &[Read, Read, ReadWrite, Uniform];
pub(crate) static BIAS_ADD: Kernel<BiasParams> = Kernel::new(&SHADER, "bias_add", BINDINGS).with_work(|p| Work::f32s(2 * p.len as usize, p.len as usize));
pub(crate) static BIAS_GRAD: Kernel<BiasParams> = Kernel::new(&SHADER, "bias_grad", &[Read, Unused, ReadWrite, Uniform]).with_work(|p| {
    let n = (p.outer * p.channels * p.inner) as usize;
    Work::f32s(n + p.channels as usize, n)
});
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&BIAS_ADD.def, &BIAS_GRAD.def];

/// Matches `BiasParams` in `shaders/bias.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BiasParams {
    pub len: u32,
    pub inner: u32,
    pub channels: u32,
    pub outer: u32,
    pub beta: f32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

impl BiasParams {
    fn new((outer, channels, inner): (usize, usize, usize), len: usize) -> BiasParams {
        BiasParams { len: len as u32, inner: inner as u32, channels: channels as u32, outer: outer as u32, ..Default::default() }
    }
}

/// `x + bias` with bias `[c]` broadcast over axis 1 of `x` `[n, c, …]`.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    const OP: &str = "bias_add";
    let dims = channel_dims(OP, x)?;
    check_shape(OP, "bias", bias.shape(), &[dims.1])?;
    match same_device(OP, &[x, bias])? {
        Device::Cpu => Ok(Tensor::from_cpu(x.shape(), bias_add_cpu(x.host(OP)?, bias.host(OP)?, dims))),
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, OP, x.shape())?;
            let p = BiasParams::new(dims, x.numel());
            ctx.dispatch(&BIAS_ADD, &p, &[x.buffer(OP)?, bias.buffer(OP)?, out.buffer(OP)?], ctx.grid_1d(x.numel(), 256))?;
            Ok(out)
        }
    }
}

/// The bias gradient: `dy` `[n, c, …]` summed over every axis but 1 → `[c]`.
pub fn bias_grad(dy: &Tensor) -> Result<Tensor> {
    const OP: &str = "bias_grad";
    let dims = channel_dims(OP, dy)?;
    let c = dims.1;
    match dy.device() {
        Device::Cpu => Ok(Tensor::from_cpu(&[c], bias_grad_cpu(dy.host(OP)?, dims))),
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, OP, &[c])?;
            let d = dy.buffer(OP)?;
            ctx.dispatch(&BIAS_GRAD, &BiasParams::new(dims, c), &[d, d, out.buffer(OP)?], ctx.grid_1d(c, 256))?;
            Ok(out)
        }
    }
}

/// `(outer, c, inner)` of an `[n, c, …]` tensor.
fn channel_dims(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize)> {
    let s = x.shape();
    if s.len() < 2 {
        return shape_err(op, format!("input must be [n, c, …], got {s:?}"));
    }
    Ok((s[0], s[1], s[2..].iter().product()))
}

// ---------------------------------------------------------------- CPU reference

/// x: (outer, c, inner), bias: (c) → x + bias per channel.
pub fn bias_add_cpu(x: &[f32], bias: &[f32], (_, c, inner): (usize, usize, usize)) -> Vec<f32> {
    x.iter().enumerate().map(|(i, v)| v + bias[(i / inner) % c]).collect()
}

/// dy: (outer, c, inner) → (c): the sum over outer and inner.
pub fn bias_grad_cpu(dy: &[f32], (outer, c, inner): (usize, usize, usize)) -> Vec<f32> {
    (0..c).map(|ch| (0..outer).flat_map(|n| (0..inner).map(move |t| (n * c + ch) * inner + t)).map(|i| dy[i]).sum()).collect()
}
