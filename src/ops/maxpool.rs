//! Max pooling with argmax masks. Forward keeps, per output, the flat index
//! (`y·w + x`) of the winning input within its plane; backward routes each
//! gradient through it (gather form, summing where windows chose the same element).

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::shape::{Pool2dConfig, Pool2dGeometry};
use crate::tensor::{HalfData, HalfTensor, IndexData, Indices, Tensor};

const SHADER: Shader = Shader::new("maxpool", include_str!("../../shaders/maxpool.wgsl"));
const BINDINGS: &[crate::kernel::Access] = &[Read, ReadWrite, ReadWrite, Read, Uniform];
pub(crate) static MAXPOOL_FORWARD: Kernel<PoolParams> = Kernel::new(&SHADER, "maxpool_forward", &[Read, ReadWrite, ReadWrite, Unused, Uniform]).with_work(pool_work);
pub(crate) static MAXPOOL_BACKWARD: Kernel<PoolParams> = Kernel::new(&SHADER, "maxpool_backward", &[Read, ReadWrite, ReadWrite, Unused, Uniform]).with_work(pool_work);
pub(crate) static MAXPOOL_BACKWARD_RELU: Kernel<PoolParams> = Kernel::new(&SHADER, "maxpool_backward_relu", BINDINGS).with_work(pool_work);
/// The ReLU's output kept in f16 (mixed precision).
pub(crate) static MAXPOOL_BACKWARD_RELU_F16: Kernel<PoolParams> = Kernel::new(&SHADER, "maxpool_backward_relu", BINDINGS).named("maxpool_backward_relu_f16").with_constants(&[("X_HALF", 1.0)]).with_work(pool_work);
/// Pooling, either way: the input plane once, the output and its mask (or divisor) once,
/// a compare or add per window element.
pub(crate) fn pool_work(p: &PoolParams) -> Work {
    let (input, output) = ((p.planes * p.h * p.w) as usize, (p.planes * p.oh * p.ow) as usize);
    Work::f32s(input + 2 * output, output * (p.kh * p.kw) as usize)
}
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&MAXPOOL_FORWARD.def, &MAXPOOL_BACKWARD.def, &MAXPOOL_BACKWARD_RELU.def, &MAXPOOL_BACKWARD_RELU_F16.def];

/// Matches `PoolParams` in `shaders/maxpool.wgsl` and `shaders/avgpool.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
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
    /// Params for `g`.
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
    const OP: &str = "maxpool_forward";
    let g = Pool2dGeometry::new(OP, x.shape(), cfg)?;
    let out_shape = g.output_shape();
    match x.device() {
        Device::Cpu => {
            let (y, mask) = maxpool_forward_cpu(x.host(OP)?, &g);
            Ok((Tensor::from_cpu(&out_shape, y), Indices::new(&out_shape, IndexData::Cpu(mask))))
        }
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, &out_shape)?;
            let mask = ctx.alloc(OP, y.numel())?;
            ctx.dispatch(&MAXPOOL_FORWARD, &PoolParams::new(&g), &[x.buffer(OP)?, mask.buffer(), y.buffer(OP)?, ctx.scratch(0)], ctx.grid_1d(y.numel(), 256))?;
            Ok((y, Indices::new(&out_shape, IndexData::Gpu(mask))))
        }
    }
}

/// Backward: `dx [n, c, h, w]` from `dy` and the forward's argmax mask.
pub fn maxpool_backward(dy: &Tensor, mask: &Indices, input_shape: &[usize], cfg: Pool2dConfig) -> Result<Tensor> {
    backward(dy, mask, input_shape, cfg, None)
}

/// [`maxpool_backward`] followed by the backward of the ReLU that produced
/// the pooling's input `x`: `dx · (x > 0)`, in one kernel.
pub fn maxpool_backward_relu(dy: &Tensor, mask: &Indices, x: &Tensor, cfg: Pool2dConfig) -> Result<Tensor> {
    backward(dy, mask, x.shape(), cfg, Some(x))
}

/// [`maxpool_backward_relu`] with the ReLU's output kept in f16 (mixed
/// precision): the GPU tests the halves' bits in its kernel (no f32 copy);
/// the CPU twin reads them back exactly first.
pub fn maxpool_backward_relu_half(dy: &Tensor, mask: &Indices, x: &HalfTensor, cfg: Pool2dConfig) -> Result<Tensor> {
    const OP: &str = "maxpool_backward_relu";
    let HalfData::Gpu(xb) = &x.data else {
        return maxpool_backward_relu(dy, mask, &x.to_f32()?, cfg);
    };
    let g = Pool2dGeometry::new(OP, x.shape(), cfg)?;
    crate::ops::check_shape(OP, "dy", dy.shape(), &g.output_shape())?;
    crate::ops::check_shape(OP, "argmax mask", mask.shape(), &g.output_shape())?;
    match (dy.device(), &mask.data) {
        (Device::Gpu(ctx), IndexData::Gpu(mb)) if std::sync::Arc::ptr_eq(&ctx, xb.context()) => {
            let dx = Tensor::uninit_gpu(&ctx, OP, x.shape())?;
            ctx.dispatch(&MAXPOOL_BACKWARD_RELU_F16, &PoolParams::new(&g), &[dy.buffer(OP)?, mb.buffer(), dx.buffer(OP)?, xb.buffer()], ctx.grid_1d(dx.numel(), 256))?;
            Ok(dx)
        }
        (dev, _) => Err(Error::DeviceMismatch { op: OP, a: dev.to_string(), b: x.device().to_string() }),
    }
}

fn backward(dy: &Tensor, mask: &Indices, input_shape: &[usize], cfg: Pool2dConfig, relu_out: Option<&Tensor>) -> Result<Tensor> {
    let op = if relu_out.is_some() { "maxpool_backward_relu" } else { "maxpool_backward" };
    let g = Pool2dGeometry::new(op, input_shape, cfg)?;
    crate::ops::check_shape(op, "dy", dy.shape(), &g.output_shape())?;
    crate::ops::check_shape(op, "argmax mask", mask.shape(), &g.output_shape())?;
    if let Some(x) = relu_out {
        crate::tensor::same_device(op, &[dy, x])?;
    }
    match (dy.device(), &mask.data) {
        (Device::Cpu, IndexData::Cpu(m)) => {
            let mut dx = maxpool_backward_cpu(dy.host(op)?, m, &g);
            if let Some(x) = relu_out {
                crate::ops::activation::activation_relu_backward_cpu(&mut dx, x.host(op)?);
            }
            Ok(Tensor::from_cpu(input_shape, dx))
        }
        (Device::Gpu(ctx), IndexData::Gpu(mb)) => {
            let dx = Tensor::uninit_gpu(&ctx, op, input_shape)?;
            let (kernel, relu) = match relu_out {
                Some(x) => (&MAXPOOL_BACKWARD_RELU, x.buffer(op)?),
                None => (&MAXPOOL_BACKWARD, ctx.scratch(0)),
            };
            ctx.dispatch(kernel, &PoolParams::new(&g), &[dy.buffer(op)?, mb.buffer(), dx.buffer(op)?, relu], ctx.grid_1d(dx.numel(), 256))?;
            Ok(dx)
        }
        (dev, _) => Err(Error::DeviceMismatch { op, a: dev.to_string(), b: "the mask's device".into() }),
    }
}

// ---------------------------------------------------------------- CPU reference

/// x: (n·c, h, w) → (y, argmax): (n·c, oh, ow). In-bounds elements only; the
/// first maximum in row-major window order wins ties.
pub fn maxpool_forward_cpu(x: &[f32], g: &Pool2dGeometry) -> (Vec<f32>, Vec<u32>) {
    let (h, w, oh, ow) = (g.h, g.w, g.oh, g.ow);
    let c = &g.cfg;
    let mut y = vec![0f32; g.n * g.c * oh * ow];
    let mut arg = vec![0u32; y.len()];
    if y.is_empty() {
        return (y, arg);
    }
    // Planes are independent: runs of them on each core.
    let planes: Vec<(usize, (&mut [f32], &mut [u32]))> = y.chunks_mut(oh * ow).zip(arg.chunks_mut(oh * ow)).enumerate().collect();
    crate::ops::parallel(crate::ops::runs(planes, crate::cores()), |run| {
        for (plane, (yp, ap)) in run {
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
                    yp[oy * ow + ox] = xp[best_i];
                    ap[oy * ow + ox] = best_i as u32;
                }
            }
        }
    });
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
