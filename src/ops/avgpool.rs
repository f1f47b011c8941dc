//! Average pooling, forward and backward (gather form), with PyTorch's two
//! divisor rules; global average pooling is the window covering the plane.

use crate::device::Device;
use crate::error::Result;
use crate::kernel::{Access::*, Kernel, Shader};
use crate::ops::maxpool::{pool_work, window, PoolParams};
use crate::shape::{Pool2dConfig, Pool2dGeometry};
use crate::tensor::Tensor;

const SHADER: Shader = Shader::new("avgpool", include_str!("../../shaders/avgpool.wgsl"));
pub(crate) static AVGPOOL_FORWARD: Kernel<PoolParams> = Kernel::new(&SHADER, "avgpool_forward", &[Read, ReadWrite, Uniform]).with_work(pool_work);
pub(crate) static AVGPOOL_BACKWARD: Kernel<PoolParams> = Kernel::new(&SHADER, "avgpool_backward", &[Read, ReadWrite, Uniform]).with_work(pool_work);
pub(crate) static AVGPOOL_ADAPTIVE_FORWARD: Kernel<PoolParams> = Kernel::new(&SHADER, "avgpool_adaptive_forward", &[Read, ReadWrite, Uniform]).with_work(pool_work);
pub(crate) static AVGPOOL_ADAPTIVE_BACKWARD: Kernel<PoolParams> = Kernel::new(&SHADER, "avgpool_adaptive_backward", &[Read, ReadWrite, Uniform]).with_work(pool_work);
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&AVGPOOL_FORWARD.def, &AVGPOOL_BACKWARD.def, &AVGPOOL_ADAPTIVE_FORWARD.def, &AVGPOOL_ADAPTIVE_BACKWARD.def];

/// Forward: `[n, c, h, w] → [n, c, oh, ow]`.
pub fn avgpool_forward(x: &Tensor, cfg: Pool2dConfig) -> Result<Tensor> {
    let g = Pool2dGeometry::new("avgpool_forward", x.shape(), cfg)?;
    run("avgpool_forward", x, &g, true)
}

/// Backward: `dx [n, c, h, w]` from `dy [n, c, oh, ow]`.
pub fn avgpool_backward(dy: &Tensor, input_shape: &[usize], cfg: Pool2dConfig) -> Result<Tensor> {
    let g = Pool2dGeometry::new("avgpool_backward", input_shape, cfg)?;
    crate::ops::check_shape("avgpool_backward", "dy", dy.shape(), &g.output_shape())?;
    run("avgpool_backward", dy, &g, false)
}

/// Global average pooling: `[n, c, h, w] → [n, c, 1, 1]`.
pub fn avgpool_global_forward(x: &Tensor) -> Result<Tensor> {
    run("avgpool_global_forward", x, &Pool2dGeometry::global(x.shape())?, true)
}

/// Backward of [`avgpool_global_forward`].
pub fn avgpool_global_backward(dy: &Tensor, input_shape: &[usize]) -> Result<Tensor> {
    let g = Pool2dGeometry::global(input_shape)?;
    crate::ops::check_shape("avgpool_global_backward", "dy", dy.shape(), &g.output_shape())?;
    run("avgpool_global_backward", dy, &g, false)
}

/// Adaptive average pooling (PyTorch's `AdaptiveAvgPool2d`): `[n, c, h, w] → [n, c, oh, ow]`
/// for any output size, smaller or larger than the input.
pub fn avgpool_adaptive_forward(x: &Tensor, output: [usize; 2]) -> Result<Tensor> {
    run_adaptive("avgpool_adaptive_forward", x, &Pool2dGeometry::adaptive("avgpool_adaptive_forward", x.shape(), output)?, true)
}

/// Backward of [`avgpool_adaptive_forward`].
pub fn avgpool_adaptive_backward(dy: &Tensor, input_shape: &[usize], output: [usize; 2]) -> Result<Tensor> {
    let g = Pool2dGeometry::adaptive("avgpool_adaptive_backward", input_shape, output)?;
    crate::ops::check_shape("avgpool_adaptive_backward", "dy", dy.shape(), &g.output_shape())?;
    run_adaptive("avgpool_adaptive_backward", dy, &g, false)
}

fn run(op: &'static str, src: &Tensor, g: &Pool2dGeometry, forward: bool) -> Result<Tensor> {
    let kernels = if forward { (&AVGPOOL_FORWARD, avgpool_forward_cpu as CpuFn) } else { (&AVGPOOL_BACKWARD, avgpool_backward_cpu as CpuFn) };
    dispatch(op, src, g, forward, kernels)
}

fn run_adaptive(op: &'static str, src: &Tensor, g: &Pool2dGeometry, forward: bool) -> Result<Tensor> {
    let kernels = if forward { (&AVGPOOL_ADAPTIVE_FORWARD, avgpool_adaptive_forward_cpu as CpuFn) } else { (&AVGPOOL_ADAPTIVE_BACKWARD, avgpool_adaptive_backward_cpu as CpuFn) };
    dispatch(op, src, g, forward, kernels)
}

type CpuFn = fn(&[f32], &Pool2dGeometry) -> Vec<f32>;

fn dispatch(op: &'static str, src: &Tensor, g: &Pool2dGeometry, forward: bool, (kernel, cpu): (&'static Kernel<PoolParams>, CpuFn)) -> Result<Tensor> {
    let out_shape = if forward { g.output_shape() } else { [g.n, g.c, g.h, g.w] };
    match src.device() {
        Device::Cpu => Ok(Tensor::from_cpu(&out_shape, cpu(src.host(op)?, g))),
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, op, &out_shape)?;
            ctx.dispatch(kernel, &PoolParams::new(g), &[src.buffer(op)?, out.buffer(op)?], ctx.grid_1d(out.numel(), 256))?;
            Ok(out)
        }
    }
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

/// Rows `[start, end)` of adaptive cell `o` of `out` over `len`.
fn adaptive_window(o: usize, len: usize, out: usize) -> (usize, usize) {
    (o * len / out, ((o + 1) * len).div_ceil(out))
}

/// x: (n·c, h, w) → (n·c, oh, ow), each cell the mean of its adaptive window.
pub fn avgpool_adaptive_forward_cpu(x: &[f32], g: &Pool2dGeometry) -> Vec<f32> {
    let mut y = vec![0f32; g.n * g.c * g.oh * g.ow];
    for plane in 0..g.n * g.c {
        for oy in 0..g.oh {
            let (ys, ye) = adaptive_window(oy, g.h, g.oh);
            for ox in 0..g.ow {
                let (xs, xe) = adaptive_window(ox, g.w, g.ow);
                let mut acc = 0f32;
                for yy in ys..ye {
                    for xx in xs..xe {
                        acc += x[(plane * g.h + yy) * g.w + xx];
                    }
                }
                y[(plane * g.oh + oy) * g.ow + ox] = acc / ((ye - ys) * (xe - xs)) as f32;
            }
        }
    }
    y
}

/// dy: (n·c, oh, ow) → dx: (n·c, h, w); each cell spreads its share over its window.
pub fn avgpool_adaptive_backward_cpu(dy: &[f32], g: &Pool2dGeometry) -> Vec<f32> {
    let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
    for plane in 0..g.n * g.c {
        for oy in 0..g.oh {
            let (ys, ye) = adaptive_window(oy, g.h, g.oh);
            for ox in 0..g.ow {
                let (xs, xe) = adaptive_window(ox, g.w, g.ow);
                let share = dy[(plane * g.oh + oy) * g.ow + ox] / ((ye - ys) * (xe - xs)) as f32;
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
