//! Max pooling with argmax masks. Forward keeps, per output, the flat index
//! (`y·w + x`) of the winning input within its plane; backward routes each
//! gradient through it (gather form, summing where windows chose the same element).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::kernel::KernelId;
use crate::shape::{Pool2dConfig, Pool2dGeometry};
use crate::tensor::{Data, IndexData, Indices, Tensor};

/// Matches `PoolParams` in `shaders/maxpool.wgsl` and `shaders/avgpool.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PoolParams {
    pub planes: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub count_include_pad: u32,
}

impl PoolParams {
    pub fn new(g: &Pool2dGeometry) -> PoolParams {
        PoolParams {
            planes: (g.n * g.c) as u32,
            h: g.h as u32,
            w: g.w as u32,
            oh: g.oh as u32,
            ow: g.ow as u32,
            kh: g.cfg.kernel[0] as u32,
            kw: g.cfg.kernel[1] as u32,
            stride_h: g.cfg.stride[0] as u32,
            stride_w: g.cfg.stride[1] as u32,
            pad_h: g.cfg.padding[0] as u32,
            pad_w: g.cfg.padding[1] as u32,
            count_include_pad: g.cfg.count_include_pad as u32,
        }
    }
}

/// The input range `[start, end)` one window covers along an axis, clipped to the input.
pub(crate) fn window(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> (usize, usize) {
    let start = (o * stride) as isize - pad as isize;
    (start.max(0) as usize, ((start + k as isize).min(len as isize)) as usize)
}

/// Forward: `(y [n, c, oh, ow], argmax [n, c, oh, ow])`.
pub fn maxpool_forward(x: &Tensor, cfg: Pool2dConfig) -> Result<(Tensor, Indices)> {
    let g = Pool2dGeometry::new("maxpool", x.shape(), cfg)?;
    let dev = x.device();
    let out_shape = g.output_shape();
    let mut y = Tensor::uninit(&dev, "maxpool", &out_shape)?;
    let total = y.numel();
    let mask = match (&x.data, &mut y.data) {
        (Data::Cpu(xs), Data::Cpu(ys)) => {
            let (v, m) = maxpool_forward_cpu(xs.as_slice().unwrap(), &g);
            ys.as_slice_mut().unwrap().copy_from_slice(&v);
            IndexData::Cpu(m)
        }
        (Data::Gpu(xb), Data::Gpu(yb)) => {
            let ctx = xb.context();
            let mask = ctx.alloc("maxpool", total)?;
            let groups = ctx.grid_1d(total, 256);
            ctx.dispatch(KernelId::MaxpoolForward, &PoolParams::new(&g), &[xb.buffer(), mask.buffer(), yb.buffer()], groups)?;
            IndexData::Gpu(mask)
        }
        _ => unreachable!(),
    };
    Ok((y, Indices::new(&out_shape, mask)))
}

/// Backward: `dx [n, c, h, w]` from `dy` and the forward's argmax mask.
pub fn maxpool_backward(dy: &Tensor, mask: &Indices, input_shape: &[usize], cfg: Pool2dConfig) -> Result<Tensor> {
    let g = Pool2dGeometry::new("maxpool", input_shape, cfg)?;
    crate::ops::check_shape("maxpool", "dy", dy.shape(), &g.output_shape())?;
    crate::ops::check_shape("maxpool", "argmax mask", mask.shape(), &g.output_shape())?;
    let dev = dy.device();
    let mut dx = Tensor::uninit(&dev, "maxpool", input_shape)?;
    let total = dx.numel();
    match (&dy.data, &mask.data, &mut dx.data) {
        (Data::Cpu(d), IndexData::Cpu(m), Data::Cpu(o)) => {
            let v = maxpool_backward_cpu(d.as_slice().unwrap(), m, &g);
            o.as_slice_mut().unwrap().copy_from_slice(&v);
        }
        (Data::Gpu(db), IndexData::Gpu(mb), Data::Gpu(ob)) => {
            let ctx = db.context();
            let groups = ctx.grid_1d(total, 256);
            ctx.dispatch(KernelId::MaxpoolBackward, &PoolParams::new(&g), &[db.buffer(), mb.buffer(), ob.buffer()], groups)?;
        }
        _ => {
            return Err(crate::Error::DeviceMismatch { op: "maxpool", a: dy.device().to_string(), b: "the mask's device".into() });
        }
    }
    Ok(dx)
}

// ---------------------------------------------------------------- CPU reference

/// x: (n·c, h, w) → (y, argmax): (n·c, oh, ow). In-bounds elements only; the
/// first maximum in row-major window order wins ties.
pub fn maxpool_forward_cpu(x: &[f32], g: &Pool2dGeometry) -> (Vec<f32>, Vec<u32>) {
    let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
    let c = &g.cfg;
    let mut y = vec![0f32; g.n * g.c * oh * ow];
    let mut arg = vec![0u32; y.len()];
    for plane in 0..g.n * g.c {
        let xp = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..oh {
            let (ys, ye) = window(oy, c.kernel[0], c.stride[0], c.padding[0], h);
            for ox in 0..ow {
                let (xs, xe) = window(ox, c.kernel[1], c.stride[1], c.padding[1], w);
                let mut best_i = ys * w + xs;
                for yy in ys..ye {
                    for xx in xs..xe {
                        let (v, best) = (xp[yy * w + xx], xp[best_i]);
                        if v > best || (v.is_nan() && !best.is_nan()) {
                            best_i = yy * w + xx;
                        }
                    }
                }
                let o = (plane * oh + oy) * ow + ox;
                y[o] = xp[best_i];
                arg[o] = best_i as u32;
            }
        }
    }
    (y, arg)
}

/// dy, argmax: (n·c, oh, ow) → dx: (n·c, h, w), scattered through the mask.
pub fn maxpool_backward_cpu(dy: &[f32], arg: &[u32], g: &Pool2dGeometry) -> Vec<f32> {
    let (hw, ohw) = (g.h * g.w, g.oh * g.ow);
    let mut dx = vec![0f32; g.n * g.c * hw];
    // Scatter in output order; each input sums the same terms in the same
    // (row-major output) order as the GPU's gather.
    for plane in 0..g.n * g.c {
        for o in 0..ohw {
            dx[plane * hw + arg[plane * ohw + o] as usize] += dy[plane * ohw + o];
        }
    }
    dx
}
