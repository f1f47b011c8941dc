//! Upsampling (PyTorch's `Upsample` / `F.interpolate`, nearest and bilinear
//! with `align_corners = false`) to any output size, and its backward in gather
//! form. The source index is computed from the sizes (`in/out`), which is
//! PyTorch's map for integer scale factors and for `size=`.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{shape_err, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::check_shape;
use crate::shape::check_nonempty;
use crate::tensor::Tensor;

const SHADER: Shader = Shader::new("upsample", include_str!("../../shaders/upsample.wgsl"));
fn work(p: &UpsampleParams) -> Work {
    let (small, big) = ((p.planes * p.h * p.w) as usize, (p.planes * p.oh * p.ow) as usize);
    Work::f32s(4 * big, small + big)
}
pub(crate) static UPSAMPLE_FORWARD: Kernel<UpsampleParams> = Kernel::new(&SHADER, "upsample_forward", &[Read, ReadWrite, Uniform]).with_work(work);
pub(crate) static UPSAMPLE_BACKWARD: Kernel<UpsampleParams> = Kernel::new(&SHADER, "upsample_backward", &[Read, ReadWrite, Uniform]).with_work(work);
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&UPSAMPLE_FORWARD.def, &UPSAMPLE_BACKWARD.def];

/// Nearest or bilinear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsampleMode {
    /// Each output takes its nearest input (floor of `o·in/out`).
    Nearest,
    /// Bilinear, `align_corners = false` (PyTorch's default).
    Bilinear,
}

/// Matches `UpsampleParams` in `shaders/upsample.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct UpsampleParams {
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub bilinear: u32,
    pub _pad: [u32; 2],
}

fn params(op: &'static str, input: &[usize], size: [usize; 2], mode: UpsampleMode) -> Result<UpsampleParams> {
    let &[n, c, h, w] = input else { return shape_err(op, format!("input must be NCHW (4-D), got {input:?}")) };
    check_nonempty(op, "the input", input)?;
    if size.contains(&0) {
        return shape_err(op, format!("output size {size:?} must be at least 1×1"));
    }
    Ok(UpsampleParams { planes: (n * c) as u32, h: h as u32, w: w as u32, oh: size[0] as u32, ow: size[1] as u32, bilinear: (mode == UpsampleMode::Bilinear) as u32, _pad: [0; 2] })
}

/// `[n, c, h, w] → [n, c, size[0], size[1]]`.
pub fn upsample_forward(x: &Tensor, size: [usize; 2], mode: UpsampleMode) -> Result<Tensor> {
    const OP: &str = "upsample_forward";
    let p = params(OP, x.shape(), size, mode)?;
    let out_shape = [x.shape()[0], x.shape()[1], size[0], size[1]];
    match x.device() {
        Device::Cpu => Ok(Tensor::from_cpu(&out_shape, upsample_forward_cpu(x.host(OP)?, &p))),
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, &out_shape)?;
            ctx.dispatch(&UPSAMPLE_FORWARD, &p, &[x.buffer(OP)?, y.buffer(OP)?], ctx.grid_1d(y.numel(), 256))?;
            Ok(y)
        }
    }
}

/// dx `[n, c, h, w]` from dy `[n, c, size[0], size[1]]`.
pub fn upsample_backward(dy: &Tensor, input_shape: &[usize], mode: UpsampleMode) -> Result<Tensor> {
    const OP: &str = "upsample_backward";
    let s = dy.shape();
    if s.len() != 4 {
        return shape_err(OP, format!("dy must be NCHW (4-D), got {s:?}"));
    }
    let p = params(OP, input_shape, [s[2], s[3]], mode)?;
    check_shape(OP, "dy", s, &[input_shape[0], input_shape[1], s[2], s[3]])?;
    match dy.device() {
        Device::Cpu => Ok(Tensor::from_cpu(input_shape, upsample_backward_cpu(dy.host(OP)?, &p))),
        Device::Gpu(ctx) => {
            let dx = Tensor::uninit_gpu(&ctx, OP, input_shape)?;
            ctx.dispatch(&UPSAMPLE_BACKWARD, &p, &[dy.buffer(OP)?, dx.buffer(OP)?], ctx.grid_1d(dx.numel(), 256))?;
            Ok(dx)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// The inputs output `o` reads along one axis, with their weights.
fn taps(o: usize, len: usize, out: usize, bilinear: bool) -> [(usize, f32); 2] {
    if !bilinear {
        return [((o * len / out).min(len - 1), 1.0), (0, 0.0)];
    }
    let s = ((o as f32 + 0.5) * len as f32 / out as f32 - 0.5).max(0.0);
    let i0 = (s.floor() as usize).min(len - 1);
    let i1 = (i0 + 1).min(len - 1);
    let lam = s - i0 as f32;
    [(i0, 1.0 - lam), (i1, lam)]
}

/// x: (planes, h, w) → (planes, oh, ow).
pub fn upsample_forward_cpu(x: &[f32], p: &UpsampleParams) -> Vec<f32> {
    let (h, w, oh, ow) = (p.h as usize, p.w as usize, p.oh as usize, p.ow as usize);
    let mut y = vec![0f32; p.planes as usize * oh * ow];
    for plane in 0..p.planes as usize {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0f32;
                for (iy, wy) in taps(oy, h, oh, p.bilinear != 0) {
                    for (ix, wx) in taps(ox, w, ow, p.bilinear != 0) {
                        acc += wy * wx * x[(plane * h + iy) * w + ix];
                    }
                }
                y[(plane * oh + oy) * ow + ox] = acc;
            }
        }
    }
    y
}

/// dy: (planes, oh, ow) → dx: (planes, h, w), each output spreading its gradient over its taps.
pub fn upsample_backward_cpu(dy: &[f32], p: &UpsampleParams) -> Vec<f32> {
    let (h, w, oh, ow) = (p.h as usize, p.w as usize, p.oh as usize, p.ow as usize);
    let mut dx = vec![0f32; p.planes as usize * h * w];
    for plane in 0..p.planes as usize {
        for oy in 0..oh {
            for ox in 0..ow {
                let g = dy[(plane * oh + oy) * ow + ox];
                for (iy, wy) in taps(oy, h, oh, p.bilinear != 0) {
                    for (ix, wx) in taps(ox, w, ow, p.bilinear != 0) {
                        dx[(plane * h + iy) * w + ix] += wy * wx * g;
                    }
                }
            }
        }
    }
    dx
}
