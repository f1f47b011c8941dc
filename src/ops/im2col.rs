//! im2col: NCHW images → the column matrix `[C·kH·kW, N·OH·OW]` that turns a
//! convolution into one GEMM. Images are folded into the columns so that a
//! whole batch (chunk) is a single matrix.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Bind;
use crate::device::Device;
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::shape::Conv2dGeometry;
use crate::tensor::Tensor;

const SHADER: Shader = Shader::new("im2col", include_str!("../../shaders/im2col.wgsl"));
pub(crate) static IM2COL: Kernel<Im2colParams> = Kernel::new(&SHADER, "im2col", &[Read, ReadWrite, Uniform]).with_work(im2col_work);
/// Reads the images once, writes every column entry.
pub(crate) fn im2col_work(p: &Im2colParams) -> Work {
    Work::f32s((p.n * p.c * p.h * p.w + p.c * p.kh * p.kw * p.n * p.oh * p.ow) as usize, 0)
}
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&IM2COL.def];

/// Matches `Im2colParams` in `shaders/im2col.wgsl` and `shaders/col2im.wgsl`
/// (`offset` is `in_offset` for im2col, `out_offset` for col2im; im2col's
/// WGSL calls `relu` `_pad0`).
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Im2colParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub kh: u32,
    pub kw: u32,
    pub oh: u32,
    pub ow: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub dil_h: u32,
    pub dil_w: u32,
    pub offset: u32,
    /// col2im only: non-zero applies the backward of the ReLU before the convolution.
    pub relu: u32,
}

impl Im2colParams {
    /// Params for `g`, reading the input from element `offset`.
    pub fn new(g: &Conv2dGeometry, offset: usize) -> Im2colParams {
        let c = &g.cfg;
        Im2colParams {
            n: g.n as u32,
            c: g.c_in as u32,
            h: g.h as u32,
            w: g.w as u32,
            kh: g.kh as u32,
            kw: g.kw as u32,
            oh: g.oh as u32,
            ow: g.ow as u32,
            stride_h: c.stride[0] as u32,
            stride_w: c.stride[1] as u32,
            pad_h: c.padding[0] as u32,
            pad_w: c.padding[1] as u32,
            dil_h: c.dilation[0] as u32,
            dil_w: c.dilation[1] as u32,
            offset: offset as u32,
            relu: 0,
        }
    }
}

/// The column matrix of `x` (`[n, c, h, w]` as described by `geo`):
/// shape `[c·kh·kw, n·oh·ow]`.
pub fn im2col(x: &Tensor, geo: &Conv2dGeometry) -> Result<Tensor> {
    const OP: &str = "im2col";
    crate::ops::check_shape(OP, "input", x.shape(), &geo.input_shape())?;
    let shape = [geo.c_in * geo.kh * geo.kw, geo.n * geo.out_pixels()];
    match x.device() {
        Device::Cpu => Ok(Tensor::from_cpu(&shape, im2col_cpu(x.host(OP)?, geo))),
        Device::Gpu(ctx) => {
            let cols = Tensor::uninit_gpu(&ctx, OP, &shape)?;
            im2col_gpu(&ctx, x.buffer(OP)?, 0, cols.buffer(OP)?, geo)?;
            Ok(cols)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// The output columns `ox` whose input column `ox·s − p + k·d` lies in `0..len`, as a range.
pub(crate) fn valid_range(out: usize, len: usize, s: usize, p: usize, kd: usize) -> std::ops::Range<usize> {
    // ox·s + kd ≥ p  and  ox·s + kd < len + p
    let lo = p.saturating_sub(kd).div_ceil(s);
    let hi = if len + p > kd { (len + p - kd).div_ceil(s) } else { 0 };
    lo.min(out)..hi.clamp(lo.min(out), out)
}

/// x: (n, c, h, w) → cols: (c·kh·kw, n·oh·ow); zeros where the window covers padding.
/// Row segments are copied whole; a stride of 1 is a plain slice copy.
pub fn im2col_cpu(x: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let mut cols = Vec::new();
    im2col_cpu_into(x, g, &mut cols);
    cols
}

/// [`im2col_cpu`] into a reused buffer (its old contents are overwritten).
pub fn im2col_cpu_into(x: &[f32], g: &Conv2dGeometry, cols: &mut Vec<f32>) {
    let (c, h, w, kh, kw, oh, ow) = (g.c_in, g.h, g.w, g.kh, g.kw, g.oh, g.ow);
    let [sh, sw] = g.cfg.stride;
    let [ph, pw] = g.cfg.padding;
    let [dh, dw] = g.cfg.dilation;
    let ncols = g.n * oh * ow;
    // Every element is written below (padding as zeros), so a reused buffer
    // needs no zero-fill pass first.
    cols.resize(c * kh * kw * ncols, 0.0);
    for ci in 0..c {
        for ki in 0..kh {
            let ys = valid_range(oh, h, sh, ph, ki * dh);
            for kj in 0..kw {
                let xs = valid_range(ow, w, sw, pw, kj * dw);
                let row = (ci * kh + ki) * kw + kj;
                for img in 0..g.n {
                    let plane = &mut cols[row * ncols + img * oh * ow..][..oh * ow];
                    for (oy, dst) in plane.chunks_mut(ow).enumerate() {
                        if !ys.contains(&oy) || xs.is_empty() {
                            dst.fill(0.0);
                            continue;
                        }
                        let y = oy * sh + ki * dh - ph;
                        let src = &x[((img * c + ci) * h + y) * w..][..w];
                        let x0 = xs.start * sw + kj * dw - pw;
                        dst[..xs.start].fill(0.0);
                        dst[xs.end..].fill(0.0);
                        if sw == 1 {
                            dst[xs.clone()].copy_from_slice(&src[x0..x0 + xs.len()]);
                        } else {
                            for (k, ox) in xs.clone().enumerate() {
                                dst[ox] = src[x0 + k * sw];
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- GPU wrapper

/// Records im2col of the `geo.n` images starting at element `x_offset` of `x`.
pub(crate) fn im2col_gpu(ctx: &GpuContext, x: Bind<'_>, x_offset: usize, cols: Bind<'_>, geo: &Conv2dGeometry) -> Result<()> {
    // One invocation per row segment (ow entries): see the shader.
    let segments = geo.c_in * geo.kh * geo.kw * geo.n * geo.oh;
    ctx.dispatch(&IM2COL, &Im2colParams::new(geo, x_offset), &[x, cols], ctx.grid_1d(segments, 256))
}
