//! Average pooling, forward and backward (gather form), with PyTorch's two
//! divisor rules; global average pooling is the window covering the plane.

use crate::error::Result;
use crate::kernel::KernelId;
use crate::ops::maxpool::{window, PoolParams};
use crate::shape::{Pool2dConfig, Pool2dGeometry};
use crate::tensor::{Data, Tensor};

/// Forward: `[n, c, h, w] → [n, c, oh, ow]`.
pub fn avgpool_forward(x: &Tensor, cfg: Pool2dConfig) -> Result<Tensor> {
    let g = Pool2dGeometry::new("avgpool", x.shape(), cfg)?;
    run(x, &g, true)
}

/// Backward: `dx [n, c, h, w]` from `dy [n, c, oh, ow]`.
pub fn avgpool_backward(dy: &Tensor, input_shape: &[usize], cfg: Pool2dConfig) -> Result<Tensor> {
    let g = Pool2dGeometry::new("avgpool", input_shape, cfg)?;
    crate::ops::check_shape("avgpool", "dy", dy.shape(), &g.output_shape())?;
    run(dy, &g, false)
}

/// Global average pooling: `[n, c, h, w] → [n, c, 1, 1]`.
pub fn global_avg_pool_forward(x: &Tensor) -> Result<Tensor> {
    run(x, &Pool2dGeometry::global(x.shape())?, true)
}

/// Backward of [`global_avg_pool_forward`].
pub fn global_avg_pool_backward(dy: &Tensor, input_shape: &[usize]) -> Result<Tensor> {
    let g = Pool2dGeometry::global(input_shape)?;
    crate::ops::check_shape("global_avg_pool", "dy", dy.shape(), &g.output_shape())?;
    run(dy, &g, false)
}

fn run(src: &Tensor, g: &Pool2dGeometry, forward: bool) -> Result<Tensor> {
    let out_shape = if forward { g.output_shape() } else { [g.n, g.c, g.h, g.w] };
    let mut out = Tensor::uninit(&src.device(), "avgpool", &out_shape)?;
    let total = out.numel();
    match (&src.data, &mut out.data) {
        (Data::Cpu(s), Data::Cpu(o)) => {
            let s = s.as_slice().unwrap();
            let v = if forward { avgpool_forward_cpu(s, g) } else { avgpool_backward_cpu(s, g) };
            o.as_slice_mut().unwrap().copy_from_slice(&v);
        }
        (Data::Gpu(sb), Data::Gpu(ob)) => {
            let ctx = sb.context();
            let id = if forward { KernelId::AvgpoolForward } else { KernelId::AvgpoolBackward };
            ctx.dispatch(id, &PoolParams::new(g), &[sb.buffer(), ob.buffer()], ctx.grid_1d(total, 256))?;
        }
        _ => unreachable!(),
    }
    Ok(out)
}

// ---------------------------------------------------------------- CPU reference

/// The divisor of output (oy, ox): the window clipped to the padded input
/// (count_include_pad) or to the input itself.
fn divisor(g: &Pool2dGeometry, oy: usize, ox: usize) -> f32 {
    let c = &g.cfg;
    if c.count_include_pad {
        let span = |o: usize, k: usize, s: usize, p: usize, len: usize| {
            let start = (o * s) as isize - p as isize;
            (start + k as isize).min((len + p) as isize) - start
        };
        (span(oy, c.kernel[0], c.stride[0], c.padding[0], g.h) * span(ox, c.kernel[1], c.stride[1], c.padding[1], g.w)) as f32
    } else {
        let (ys, ye) = window(oy, c.kernel[0], c.stride[0], c.padding[0], g.h);
        let (xs, xe) = window(ox, c.kernel[1], c.stride[1], c.padding[1], g.w);
        ((ye - ys) * (xe - xs)) as f32
    }
}

/// x: (n·c, h, w) → (n·c, oh, ow).
pub fn avgpool_forward_cpu(x: &[f32], g: &Pool2dGeometry) -> Vec<f32> {
    let c = &g.cfg;
    let mut y = vec![0f32; g.n * g.c * g.oh * g.ow];
    for plane in 0..g.n * g.c {
        for oy in 0..g.oh {
            let (ys, ye) = window(oy, c.kernel[0], c.stride[0], c.padding[0], g.h);
            for ox in 0..g.ow {
                let (xs, xe) = window(ox, c.kernel[1], c.stride[1], c.padding[1], g.w);
                let mut acc = 0f32;
                for yy in ys..ye {
                    for xx in xs..xe {
                        acc += x[(plane * g.h + yy) * g.w + xx];
                    }
                }
                y[(plane * g.oh + oy) * g.ow + ox] = acc / divisor(g, oy, ox);
            }
        }
    }
    y
}

/// dy: (n·c, oh, ow) → dx: (n·c, h, w); each window spreads dy/divisor over its inputs.
pub fn avgpool_backward_cpu(dy: &[f32], g: &Pool2dGeometry) -> Vec<f32> {
    let c = &g.cfg;
    let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
    for plane in 0..g.n * g.c {
        for oy in 0..g.oh {
            let (ys, ye) = window(oy, c.kernel[0], c.stride[0], c.padding[0], g.h);
            for ox in 0..g.ow {
                let (xs, xe) = window(ox, c.kernel[1], c.stride[1], c.padding[1], g.w);
                let share = dy[(plane * g.oh + oy) * g.ow + ox] / divisor(g, oy, ox);
                for yy in ys..ye {
                    for xx in xs..xe {
                        dx[(plane * g.h + yy) * g.w + xx] += share;
                    }
                }
            }
        }
    }
    dx
}
