//! Zero padding by `[top, bottom, left, right]` (PyTorch's `ZeroPad2d`), and
//! its backward (a crop). Convolutions with per-side or `same` padding that is
//! not symmetric pad with this first (see `nn::Padding`).

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{shape_err, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::check_shape;
use crate::shape::check_nonempty;
use crate::tensor::Tensor;

const SHADER: Shader = Shader::new("pad", include_str!("../../shaders/pad.wgsl"));
fn work(p: &PadParams) -> Work {
    let big = (p.planes * (p.h + p.top + p.bottom) * (p.w + p.left + p.right)) as usize;
    Work::f32s(0, big + (p.planes * p.h * p.w) as usize)
}
pub(crate) static PAD_FORWARD: Kernel<PadParams> = Kernel::new(&SHADER, "pad_forward", &[Read, ReadWrite, Uniform]).with_work(work);
pub(crate) static PAD_BACKWARD: Kernel<PadParams> = Kernel::new(&SHADER, "pad_backward", &[Read, ReadWrite, Uniform]).with_work(work);
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&PAD_FORWARD.def, &PAD_BACKWARD.def];

/// Matches `PadParams` in `shaders/pad.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PadParams {
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub top: u32,
    pub bottom: u32,
    pub left: u32,
    pub right: u32,
    pub _pad0: u32,
}

fn params(op: &'static str, input: &[usize], [top, bottom, left, right]: [usize; 4]) -> Result<(PadParams, [usize; 4])> {
    let &[n, c, h, w] = input else { return shape_err(op, format!("input must be NCHW (4-D), got {input:?}")) };
    check_nonempty(op, "the input", input)?;
    let p = PadParams { planes: (n * c) as u32, h: h as u32, w: w as u32, top: top as u32, bottom: bottom as u32, left: left as u32, right: right as u32, _pad0: 0 };
    Ok((p, [n, c, h + top + bottom, w + left + right]))
}

/// `[n, c, h, w] → [n, c, top + h + bottom, left + w + right]`, zeros around.
pub fn pad_forward(x: &Tensor, sides: [usize; 4]) -> Result<Tensor> {
    const OP: &str = "pad_forward";
    let (p, out_shape) = params(OP, x.shape(), sides)?;
    match x.device() {
        Device::Cpu => Ok(Tensor::from_cpu(&out_shape, pad_forward_cpu(x.host(OP)?, &p))),
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, &out_shape)?;
            ctx.dispatch(&PAD_FORWARD, &p, &[x.buffer(OP)?, y.buffer(OP)?], ctx.grid_1d(y.numel(), 256))?;
            Ok(y)
        }
    }
}

/// dx `input_shape` from dy (the padded shape): the inner region.
pub fn pad_backward(dy: &Tensor, input_shape: &[usize], sides: [usize; 4]) -> Result<Tensor> {
    const OP: &str = "pad_backward";
    let (p, padded) = params(OP, input_shape, sides)?;
    check_shape(OP, "dy", dy.shape(), &padded)?;
    match dy.device() {
        Device::Cpu => Ok(Tensor::from_cpu(input_shape, pad_backward_cpu(dy.host(OP)?, &p))),
        Device::Gpu(ctx) => {
            let dx = Tensor::uninit_gpu(&ctx, OP, input_shape)?;
            ctx.dispatch(&PAD_BACKWARD, &p, &[dy.buffer(OP)?, dx.buffer(OP)?], ctx.grid_1d(dx.numel(), 256))?;
            Ok(dx)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// x: (planes, h, w) → padded planes.
pub fn pad_forward_cpu(x: &[f32], p: &PadParams) -> Vec<f32> {
    let (h, w) = (p.h as usize, p.w as usize);
    let (ph, pw) = (h + (p.top + p.bottom) as usize, w + (p.left + p.right) as usize);
    let mut y = vec![0f32; p.planes as usize * ph * pw];
    for plane in 0..p.planes as usize {
        for r in 0..h {
            let dst = (plane * ph + r + p.top as usize) * pw + p.left as usize;
            y[dst..dst + w].copy_from_slice(&x[(plane * h + r) * w..(plane * h + r + 1) * w]);
        }
    }
    y
}

/// dy: padded planes → dx: (planes, h, w).
pub fn pad_backward_cpu(dy: &[f32], p: &PadParams) -> Vec<f32> {
    let (h, w) = (p.h as usize, p.w as usize);
    let (ph, pw) = (h + (p.top + p.bottom) as usize, w + (p.left + p.right) as usize);
    let mut dx = Vec::with_capacity(p.planes as usize * h * w);
    for plane in 0..p.planes as usize {
        for r in 0..h {
            let src = (plane * ph + r + p.top as usize) * pw + p.left as usize;
            dx.extend_from_slice(&dy[src..src + w]);
        }
    }
    dx
}
