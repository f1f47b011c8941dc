//! im2col: NCHW images → the column matrix `[C·kH·kW, N·OH·OW]` that turns a
//! convolution into one GEMM. Images are folded into the columns so that a
//! whole batch (chunk) is a single matrix.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::kernel::KernelId;
use crate::shape::Conv2dGeometry;
use crate::tensor::{Data, Tensor};

/// Matches `Im2colParams` in `shaders/im2col.wgsl` and `shaders/col2im.wgsl`
/// (`offset` is `in_offset` for im2col, `out_offset` for col2im).
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
    pub _pad0: u32,
}

impl Im2colParams {
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
            _pad0: 0,
        }
    }
}

/// The column matrix of `x` (`[n, c, h, w]` as described by `geo`):
/// shape `[c·kh·kw, n·oh·ow]`.
pub fn im2col(x: &Tensor, geo: &Conv2dGeometry) -> Result<Tensor> {
    crate::ops::check_shape("im2col", "input", x.shape(), &geo.input_shape())?;
    let dev = x.device();
    let shape = [geo.c_in * geo.kh * geo.kw, geo.n * geo.out_pixels()];
    let mut cols = Tensor::uninit(&dev, "im2col", &shape)?;
    match (&x.data, &mut cols.data) {
        (Data::Cpu(x), Data::Cpu(out)) => {
            let v = im2col_cpu(x.as_slice().expect("contiguous"), geo);
            out.as_slice_mut().unwrap().copy_from_slice(&v);
        }
        (Data::Gpu(xb), Data::Gpu(cb)) => im2col_gpu(xb.context(), xb.buffer(), 0, cb.buffer(), geo)?,
        _ => unreachable!(),
    }
    Ok(cols)
}

// ---------------------------------------------------------------- CPU reference

/// x: (n, c, h, w) → cols: (c·kh·kw, n·oh·ow); zeros where the window covers padding.
pub fn im2col_cpu(x: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let (c, h, w, kh, kw, oh, ow) = (g.c_in, g.h, g.w, g.kh, g.kw, g.oh, g.ow);
    let [sh, sw] = g.cfg.stride;
    let [ph, pw] = g.cfg.padding;
    let [dh, dw] = g.cfg.dilation;
    let ncols = g.n * oh * ow;
    let mut cols = vec![0f32; c * kh * kw * ncols];
    for ci in 0..c {
        for ki in 0..kh {
            for kj in 0..kw {
                let row = (ci * kh + ki) * kw + kj;
                for img in 0..g.n {
                    for oy in 0..oh {
                        let y = (oy * sh + ki * dh) as isize - ph as isize;
                        if y < 0 || y >= h as isize {
                            continue;
                        }
                        for ox in 0..ow {
                            let x_ = (ox * sw + kj * dw) as isize - pw as isize;
                            if x_ < 0 || x_ >= w as isize {
                                continue;
                            }
                            cols[row * ncols + (img * oh + oy) * ow + ox] = x[((img * c + ci) * h + y as usize) * w + x_ as usize];
                        }
                    }
                }
            }
        }
    }
    cols
}

// ---------------------------------------------------------------- GPU wrapper

/// Records im2col of the `geo.n` images starting at element `x_offset` of `x`.
pub(crate) fn im2col_gpu(ctx: &GpuContext, x: &wgpu::Buffer, x_offset: usize, cols: &wgpu::Buffer, geo: &Conv2dGeometry) -> Result<()> {
    let total = geo.c_in * geo.kh * geo.kw * geo.n * geo.out_pixels();
    ctx.dispatch(KernelId::Im2col, &Im2colParams::new(geo, x_offset), &[x, cols], ctx.grid_1d(total, 256))
}
