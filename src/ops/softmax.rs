//! Softmax and log-softmax along any axis of any-rank tensor (PyTorch's
//! `softmax(x, dim)` / `log_softmax`), forward and backward. The fused
//! cross-entropy of `[n, c]` logits stays in `softmax_xent`.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{shape_err, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::check_shape;
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("softmax", include_str!("../../shaders/softmax.wgsl"));
fn work(p: &SoftmaxParams) -> Work {
    let n = (p.outer * p.dim * p.inner) as usize;
    Work::f32s(4 * n, 3 * n)
}
pub(crate) static SOFTMAX_FORWARD: Kernel<SoftmaxParams> = Kernel::new(&SHADER, "softmax_forward", &[Read, Unused, ReadWrite, Uniform]).with_work(work);
pub(crate) static SOFTMAX_BACKWARD: Kernel<SoftmaxParams> = Kernel::new(&SHADER, "softmax_backward", &[Read, Read, ReadWrite, Uniform]).with_work(work);
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&SOFTMAX_FORWARD.def, &SOFTMAX_BACKWARD.def];

/// Matches `SoftmaxParams` in `shaders/softmax.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SoftmaxParams {
    pub outer: u32,
    pub dim: u32,
    pub inner: u32,
    pub log: u32,
}

/// The axis `dim` (negative counts from the end) of `shape` as [outer, dim, inner].
fn params(op: &'static str, shape: &[usize], dim: isize, log: bool) -> Result<SoftmaxParams> {
    let rank = shape.len() as isize;
    let d = if dim < 0 { dim + rank } else { dim };
    if rank == 0 || d < 0 || d >= rank {
        return shape_err(op, format!("dim {dim} is out of range for shape {shape:?}"));
    }
    let d = d as usize;
    let (outer, inner) = (shape[..d].iter().product::<usize>(), shape[d + 1..].iter().product::<usize>());
    Ok(SoftmaxParams { outer: outer as u32, dim: shape[d] as u32, inner: inner as u32, log: log as u32 })
}

/// Softmax (`log`: log-softmax) of `x` along `dim`.
pub fn softmax_forward(x: &Tensor, dim: isize, log: bool) -> Result<Tensor> {
    const OP: &str = "softmax_forward";
    let p = params(OP, x.shape(), dim, log)?;
    match x.device() {
        Device::Cpu => Ok(Tensor::from_cpu(x.shape(), softmax_forward_cpu(x.host(OP)?, &p))),
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, x.shape())?;
            let xb = x.buffer(OP)?;
            ctx.dispatch(&SOFTMAX_FORWARD, &p, &[xb, xb, y.buffer(OP)?], ctx.grid_1d((p.outer * p.inner) as usize, 64))?;
            Ok(y)
        }
    }
}

/// dL/dx from the forward's output `y` and dL/dy.
pub fn softmax_backward(y: &Tensor, dy: &Tensor, dim: isize, log: bool) -> Result<Tensor> {
    const OP: &str = "softmax_backward";
    check_shape(OP, "dy", dy.shape(), y.shape())?;
    let p = params(OP, y.shape(), dim, log)?;
    match same_device(OP, &[y, dy])? {
        Device::Cpu => Ok(Tensor::from_cpu(y.shape(), softmax_backward_cpu(y.host(OP)?, dy.host(OP)?, &p))),
        Device::Gpu(ctx) => {
            let dx = Tensor::uninit_gpu(&ctx, OP, y.shape())?;
            ctx.dispatch(&SOFTMAX_BACKWARD, &p, &[y.buffer(OP)?, dy.buffer(OP)?, dx.buffer(OP)?], ctx.grid_1d((p.outer * p.inner) as usize, 64))?;
            Ok(dx)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// Index of element `k` of line `line` in the [outer, dim, inner] view.
fn at(p: &SoftmaxParams, line: usize, k: usize) -> usize {
    let inner = p.inner as usize;
    (line / inner) * p.dim as usize * inner + line % inner + k * inner
}

/// Softmax or log-softmax along the params' axis.
pub fn softmax_forward_cpu(x: &[f32], p: &SoftmaxParams) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    for line in 0..(p.outer * p.inner) as usize {
        let m = (0..p.dim as usize).map(|k| x[at(p, line, k)]).fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = (0..p.dim as usize).map(|k| (x[at(p, line, k)] - m).exp()).sum();
        for k in 0..p.dim as usize {
            let z = x[at(p, line, k)] - m;
            y[at(p, line, k)] = if p.log != 0 { z - s.ln() } else { z.exp() / s };
        }
    }
    y
}

/// The backward of [`softmax_forward_cpu`].
pub fn softmax_backward_cpu(y: &[f32], dy: &[f32], p: &SoftmaxParams) -> Vec<f32> {
    let mut dx = vec![0f32; y.len()];
    for line in 0..(p.outer * p.inner) as usize {
        let idx = |k| at(p, line, k);
        let s: f32 = (0..p.dim as usize).map(|k| if p.log != 0 { dy[idx(k)] } else { dy[idx(k)] * y[idx(k)] }).sum();
        for k in 0..p.dim as usize {
            let i = idx(k);
            dx[i] = if p.log != 0 { dy[i] - y[i].exp() * s } else { y[i] * (dy[i] - s) };
        }
    }
    dx
}
