//! col2im: column-matrix gradients back to NCHW input gradients — the adjoint
//! of im2col, in gather form (each input element sums what it fed).

use crate::gpu::Bind;
use crate::device::Device;
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::im2col::{im2col_work, valid_range, Im2colParams};
use crate::shape::Conv2dGeometry;
use crate::tensor::Tensor;

const SHADER: Shader = Shader::new("col2im", include_str!("../../shaders/col2im.wgsl"));
pub(crate) static COL2IM: Kernel<Im2colParams> = Kernel::new(&SHADER, "col2im", &[Read, ReadWrite, Read, Uniform])
    // The same elements as im2col, the other way, plus one add per column entry.
    .with_work(|p| Work { flops: (p.c * p.kh * p.kw * p.n * p.oh * p.ow) as f64, ..im2col_work(p) });
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&COL2IM.def];

/// Input gradients `[n, c, h, w]` from column gradients `[c·kh·kw, n·oh·ow]`.
pub fn col2im(cols: &Tensor, geo: &Conv2dGeometry) -> Result<Tensor> {
    const OP: &str = "col2im";
    let want = [geo.c_in * geo.kh * geo.kw, geo.n * geo.out_pixels()];
    crate::ops::check_shape(OP, "columns", cols.shape(), &want)?;
    match cols.device() {
        Device::Cpu => Ok(Tensor::from_cpu(&geo.input_shape(), col2im_cpu(cols.host(OP)?, geo))),
        Device::Gpu(ctx) => {
            let dx = Tensor::uninit_gpu(&ctx, OP, &geo.input_shape())?;
            col2im_gpu(&ctx, cols.buffer(OP)?, dx.buffer(OP)?, 0, geo, None)?;
            Ok(dx)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// cols: (c·kh·kw, n·oh·ow) → dx: (n, c, h, w), the exact adjoint of
/// `im2col_cpu`: every column entry is added back where im2col read it. (On
/// the CPU the scatter form is the plain one; the GPU kernel gathers instead,
/// which needs no atomics. Each input sums the same few terms either way.)
pub fn col2im_cpu(cols: &[f32], g: &Conv2dGeometry) -> Vec<f32> {
    let mut dx = vec![0f32; g.n * g.c_in * g.h * g.w];
    col2im_cpu_into(cols, g, &mut dx);
    dx
}

/// [`col2im_cpu`] added into `dx` (`g.n` images; zeros for col2im itself).
pub fn col2im_cpu_into(cols: &[f32], g: &Conv2dGeometry, dx: &mut [f32]) {
    let (c, h, w, kh, kw, oh, ow) = (g.c_in, g.h, g.w, g.kh, g.kw, g.oh, g.ow);
    let [sh, sw] = g.cfg.stride;
    let [ph, pw] = g.cfg.padding;
    let [dh, dw] = g.cfg.dilation;
    let ncols = g.n * oh * ow;
    for ci in 0..c {
        for ki in 0..kh {
            let ys = valid_range(oh, h, sh, ph, ki * dh);
            for kj in 0..kw {
                let xs = valid_range(ow, w, sw, pw, kj * dw);
                if xs.is_empty() {
                    continue;
                }
                let row = (ci * kh + ki) * kw + kj;
                for img in 0..g.n {
                    for oy in ys.clone() {
                        let y = oy * sh + ki * dh - ph;
                        let dst = &mut dx[((img * c + ci) * h + y) * w..][..w];
                        let src = &cols[row * ncols + (img * oh + oy) * ow..][..ow];
                        let x0 = xs.start * sw + kj * dw - pw;
                        if sw == 1 {
                            // A plain slice add: vectorised.
                            dst[x0..x0 + xs.len()].iter_mut().zip(&src[xs.clone()]).for_each(|(d, s)| *d += s);
                        } else {
                            for (k, ox) in xs.clone().enumerate() {
                                dst[x0 + k * sw] += src[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- GPU wrapper

/// Records col2im, writing `geo.n` images at element `dx_offset` of `dx`;
/// with `relu_out` (laid out like dx), times `relu_out > 0` as well.
pub(crate) fn col2im_gpu(ctx: &GpuContext, cols: Bind<'_>, dx: Bind<'_>, dx_offset: usize, geo: &Conv2dGeometry, relu_out: Option<Bind<'_>>) -> Result<()> {
    let total = geo.n * geo.c_in * geo.h * geo.w;
    let params = Im2colParams { relu: relu_out.is_some() as u32, ..Im2colParams::new(geo, dx_offset) };
    // Unread without the ReLU: the columns stand in.
    ctx.dispatch(&COL2IM, &params, &[cols, dx, relu_out.unwrap_or(cols)], ctx.grid_1d(total, 256))
}
