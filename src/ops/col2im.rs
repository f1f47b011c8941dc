//! col2im: column-matrix gradients back to NCHW input gradients — the adjoint
//! of im2col, in gather form (each input element sums what it fed).

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::kernel::KernelId;
use crate::ops::im2col::Im2colParams;
use crate::shape::Conv2dGeometry;
use crate::tensor::{Data, Tensor};

/// Input gradients `[n, c, h, w]` from column gradients `[c·kh·kw, n·oh·ow]`.
pub fn col2im(cols: &Tensor, geo: &Conv2dGeometry) -> Result<Tensor> {
    let want = [geo.c_in * geo.kh * geo.kw, geo.n * geo.out_pixels()];
    crate::ops::check_shape("col2im", "columns", cols.shape(), &want)?;
    let dev = cols.device();
    let mut dx = Tensor::uninit(&dev, "col2im", &geo.input_shape())?;
    match (&cols.data, &mut dx.data) {
        (Data::Cpu(c), Data::Cpu(out)) => {
            let v = col2im_cpu(c.as_slice().expect("contiguous"), geo);
            out.as_slice_mut().unwrap().copy_from_slice(&v);
        }
        (Data::Gpu(cb), Data::Gpu(xb)) => col2im_gpu(cb.context(), cb.buffer(), xb.buffer(), 0, geo)?,
        _ => unreachable!(),
    }
    Ok(dx)
}

// ---------------------------------------------------------------- CPU reference

/// cols: (c·kh·kw, n·oh·ow) → dx: (n, c, h, w). Each input element gathers
/// every column entry im2col copied from it, in the same order as the GPU.
pub fn col2im_cpu(cols: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let (c, h, w, kh, kw, oh, ow) = (g.c_in, g.h, g.w, g.kh, g.kw, g.oh, g.ow);
    let [sh, sw] = g.cfg.stride;
    let [ph, pw] = g.cfg.padding;
    let [dh, dw] = g.cfg.dilation;
    let ncols = g.n * oh * ow;
    let mut dx = vec![0f32; g.n * c * h * w];
    for img in 0..g.n {
        for ci in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0f32;
                    for ki in 0..kh {
                        // y = oy·sh − ph + ki·dh
                        let ty = (y + ph) as isize - (ki * dh) as isize;
                        if ty < 0 || ty as usize % sh != 0 || ty as usize / sh >= oh {
                            continue;
                        }
                        let oy = ty as usize / sh;
                        for kj in 0..kw {
                            let tx = (x + pw) as isize - (kj * dw) as isize;
                            if tx < 0 || tx as usize % sw != 0 || tx as usize / sw >= ow {
                                continue;
                            }
                            let ox = tx as usize / sw;
                            acc += cols[((ci * kh + ki) * kw + kj) * ncols + (img * oh + oy) * ow + ox];
                        }
                    }
                    dx[((img * c + ci) * h + y) * w + x] = acc;
                }
            }
        }
    }
    dx
}

// ---------------------------------------------------------------- GPU wrapper

/// Records col2im, writing `geo.n` images at element `dx_offset` of `dx`.
pub(crate) fn col2im_gpu(ctx: &GpuContext, cols: &wgpu::Buffer, dx: &wgpu::Buffer, dx_offset: usize, geo: &Conv2dGeometry) -> Result<()> {
    let total = geo.n * geo.c_in * geo.h * geo.w;
    ctx.dispatch(KernelId::Col2im, &Im2colParams::new(geo, dx_offset), &[cols, dx], ctx.grid_1d(total, 256))
}
