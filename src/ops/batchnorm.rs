//! Batch normalisation (PyTorch semantics) over `[n, c, …]`: per channel over
//! n and the spatial axes (BatchNorm2d) or over n alone (BatchNorm1d, `[n, c]`).
//! Training normalises with the biased batch variance and updates the running
//! statistics with the unbiased one; eval uses the running statistics.
//! See `shaders/batchnorm.wgsl` for the shifted two-pass statistics.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Bind;
use crate::device::Device;
use crate::error::{shape_err, Error, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::activation::{activation_forward_in_place_cpu, Activation};
use crate::ops::check_shape;
use crate::tensor::{same_device, HalfData, HalfTensor, Tensor};

mod cpu;
pub use cpu::{batchnorm_backward_cpu_tuned, batchnorm_forward_train_cpu_tuned};

const SHADER: Shader = Shader::new("batchnorm", include_str!("../../shaders/batchnorm.wgsl"));
const BACKWARD_REDUCE_BINDINGS: &[crate::kernel::Access] = &[Read, Read, Unused, Unused, ReadWrite, ReadWrite, Unused, ReadWrite, ReadWrite, Uniform];
const BACKWARD_DX_BINDINGS: &[crate::kernel::Access] = &[Read, Read, Read, Unused, ReadWrite, ReadWrite, ReadWrite, ReadWrite, ReadWrite, Uniform];
pub(crate) static BATCHNORM_STATS: Kernel<BnParams> = Kernel::new(&SHADER, "batchnorm_stats", &[Read, Unused, Unused, Unused, ReadWrite, ReadWrite, Unused, Unused, Unused, Uniform]).with_work(|p| Work::f32s(2 * bn_len(p), 4 * bn_len(p)));
pub(crate) static BATCHNORM_FORWARD: Kernel<BnParams> = Kernel::new(&SHADER, "batchnorm_forward", &[Read, Unused, Read, Read, ReadWrite, ReadWrite, ReadWrite, Unused, Unused, Uniform]).with_work(|p| Work::f32s(2 * bn_len(p), 2 * bn_len(p)));
pub(crate) static BATCHNORM_BACKWARD_REDUCE: Kernel<BnParams> = Kernel::new(&SHADER, "batchnorm_backward_reduce", BACKWARD_REDUCE_BINDINGS).with_work(|p| Work::f32s(2 * bn_len(p), 4 * bn_len(p)));
pub(crate) static BATCHNORM_BACKWARD_DX: Kernel<BnParams> = Kernel::new(&SHADER, "batchnorm_backward_dx", BACKWARD_DX_BINDINGS).with_work(|p| Work::f32s(3 * bn_len(p), 5 * bn_len(p)));
// Backward reading x kept in f16 (mixed precision): 2 bytes of x an element, not 4.
pub(crate) static BATCHNORM_BACKWARD_REDUCE_F16: Kernel<BnParams> = Kernel::new(&SHADER, "batchnorm_backward_reduce", BACKWARD_REDUCE_BINDINGS).named("batchnorm_backward_reduce_f16").with_constants(&[("X_HALF", 1.0)]).with_work(|p| Work { flops: 4.0 * bn_len(p) as f64, bytes: 6.0 * bn_len(p) as f64 });
pub(crate) static BATCHNORM_BACKWARD_DX_F16: Kernel<BnParams> = Kernel::new(&SHADER, "batchnorm_backward_dx", BACKWARD_DX_BINDINGS).named("batchnorm_backward_dx_f16").with_constants(&[("X_HALF", 1.0)]).with_work(|p| Work { flops: 5.0 * bn_len(p) as f64, bytes: 10.0 * bn_len(p) as f64 });
/// Elements normalised: each batch-norm kernel streams x (and dy) once or twice.
fn bn_len(p: &BnParams) -> usize {
    (p.n * p.c * p.inner) as usize
}
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] =
    &[&BATCHNORM_STATS.def, &BATCHNORM_FORWARD.def, &BATCHNORM_BACKWARD_REDUCE.def, &BATCHNORM_BACKWARD_DX.def, &BATCHNORM_BACKWARD_REDUCE_F16.def, &BATCHNORM_BACKWARD_DX_F16.def];

/// Settings shared by forward and backward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance (1e-5).
    pub eps: f32,
    /// Weight of the new batch statistic in the running average.
    pub momentum: f32,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig { eps: 1e-5, momentum: 0.1 }
    }
}

/// Matches `BnParams` in `shaders/batchnorm.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct BnParams {
    pub n: u32,
    pub c: u32,
    pub inner: u32,
    pub training: u32,
    pub eps: f32,
    pub momentum: f32,
    pub affine: u32,
    pub update_running: u32,
    /// batchnorm_forward: 1 applies ReLU to the output.
    pub relu: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// The learnable scale and shift, `[c]` each.
#[derive(Clone, Copy)]
pub struct Affine<'a> {
    /// Scale γ, `[c]`.
    pub gamma: &'a Tensor,
    /// Shift β, `[c]`.
    pub beta: &'a Tensor,
}

/// (n, c, inner) of an input `[n, c, …]`, validated.
fn dims(x: &Tensor) -> Result<(usize, usize, usize)> {
    dims_of(x.shape())
}

fn dims_of(s: &[usize]) -> Result<(usize, usize, usize)> {
    if s.len() < 2 {
        return shape_err("batchnorm", format!("input must be [n, c, …], got {s:?}"));
    }
    Ok((s[0], s[1], s[2..].iter().product()))
}

/// Shapes and devices of the operands every phase shares; returns their device.
fn check_operands(x: &Tensor, affine: Option<Affine>, running: &Tensor, c: usize) -> Result<Device> {
    check_shape("batchnorm", "running statistics [mean; var]", running.shape(), &[2, c])?;
    let dev = same_device("batchnorm", &[x, running])?;
    if let Some(a) = affine {
        check_shape("batchnorm", "gamma", a.gamma.shape(), &[c])?;
        check_shape("batchnorm", "beta", a.beta.shape(), &[c])?;
        same_device("batchnorm", &[x, a.gamma, a.beta])?;
    }
    Ok(dev)
}

fn params(n: usize, c: usize, inner: usize, training: bool, affine: bool, cfg: BatchNormConfig) -> BnParams {
    BnParams {
        n: n as u32,
        c: c as u32,
        inner: inner as u32,
        training: training as u32,
        eps: cfg.eps,
        momentum: cfg.momentum,
        affine: affine as u32,
        update_running: training as u32,
        ..BnParams::default()
    }
}

/// Training forward: returns `(y, stats)` (stats `[3, c]` = shift, mean offset,
/// 1/std, kept for backward) and updates `running` (`[2, c]`: mean; var) in place.
pub fn batchnorm_forward_train(x: &Tensor, affine: Option<Affine>, running: &mut Tensor, cfg: BatchNormConfig) -> Result<(Tensor, Tensor)> {
    batchnorm_forward_train_relu(x, affine, running, cfg, false)
}

/// [`batchnorm_forward_train`], with a ReLU on `y` when `relu` (the layer after,
/// fused into the normalising kernel; the statistics are of the input, as without).
pub fn batchnorm_forward_train_relu(x: &Tensor, affine: Option<Affine>, running: &mut Tensor, cfg: BatchNormConfig, relu: bool) -> Result<(Tensor, Tensor)> {
    const OP: &str = "batchnorm_forward_train";
    let (n, c, inner) = dims(x)?;
    let dev = check_operands(x, affine, running, c)?;
    if n * inner < 2 {
        return Err(Error::InvalidArgument {
            op: "batchnorm",
            msg: format!("training needs more than one value per channel to estimate a variance, got input {:?}", x.shape()),
        });
    }
    running.make_unique()?;
    match dev {
        Device::Cpu => {
            let (g, b) = affine_host(OP, affine)?;
            let (y, stats) = batchnorm_forward_train_cpu_tuned(x.host(OP)?, (n, c, inner), g.zip(b), running.host_mut(OP)?, cfg, relu);
            Ok((Tensor::from_cpu(x.shape(), y), Tensor::from_cpu(&[3, c], stats)))
        }
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, x.shape())?;
            let stats = Tensor::uninit_gpu(&ctx, OP, &[3, c])?;
            let p = BnParams { relu: relu as u32, ..params(n, c, inner, true, affine.is_some(), cfg) };
            let xb = x.buffer(OP)?;
            let (gb, bb) = affine_bufs(OP, affine, xb)?;
            let all = [xb, xb, gb, bb, stats.buffer(OP)?, running.buffer(OP)?, y.buffer(OP)?, ctx.scratch(0), ctx.scratch(1)];
            ctx.dispatch(&BATCHNORM_STATS, &p, &all, ctx.grid_1d(c, 1))?;
            ctx.dispatch(&BATCHNORM_FORWARD, &p, &all, ctx.grid_1d(n * c * inner, 256))?;
            Ok((y, stats))
        }
    }
}

/// Eval forward with the running statistics.
pub fn batchnorm_forward_eval(x: &Tensor, affine: Option<Affine>, running: &Tensor, cfg: BatchNormConfig) -> Result<Tensor> {
    batchnorm_forward_eval_relu(x, affine, running, cfg, false)
}

/// [`batchnorm_forward_eval`], with a ReLU on the output when `relu`.
pub fn batchnorm_forward_eval_relu(x: &Tensor, affine: Option<Affine>, running: &Tensor, cfg: BatchNormConfig, relu: bool) -> Result<Tensor> {
    const OP: &str = "batchnorm_forward_eval";
    let (n, c, inner) = dims(x)?;
    match check_operands(x, affine, running, c)? {
        Device::Cpu => {
            let (g, b) = affine_host(OP, affine)?;
            let mut y = batchnorm_forward_eval_cpu(x.host(OP)?, (n, c, inner), g.zip(b), running.host(OP)?, cfg);
            if relu {
                activation_forward_in_place_cpu(Activation::Relu, &mut y);
            }
            Ok(Tensor::from_cpu(x.shape(), y))
        }
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, x.shape())?;
            let p = BnParams { relu: relu as u32, ..params(n, c, inner, false, affine.is_some(), cfg) };
            let xb = x.buffer(OP)?;
            let (gb, bb) = affine_bufs(OP, affine, xb)?;
            let all = [xb, xb, gb, bb, ctx.scratch(0), running.buffer(OP)?, y.buffer(OP)?, ctx.scratch(1), ctx.scratch(2)];
            ctx.dispatch(&BATCHNORM_FORWARD, &p, &all, ctx.grid_1d(n * c * inner, 256))?;
            Ok(y)
        }
    }
}

/// Gradients of batch-norm.
pub struct BatchNormGrads {
    /// dL/dx.
    pub dx: Tensor,
    /// `[c]`; also meaningful without an affine part (Σ dy·x̂).
    pub dgamma: Tensor,
    /// `[c]`: Σ dy.
    pub dbeta: Tensor,
}

/// Backward through the batch statistics (training) or the running ones
/// (`training = false`).
pub fn batchnorm_backward(
    x: &Tensor,
    dy: &Tensor,
    affine: Option<Affine>,
    stats: &Tensor,
    running: &Tensor,
    training: bool,
    cfg: BatchNormConfig,
) -> Result<BatchNormGrads> {
    backward(SavedX::F32(x), dy, affine, stats, running, training, cfg)
}

/// [`batchnorm_backward`] from x kept in f16 (mixed precision): the GPU
/// reads the halves in its kernels (no f32 copy of x); the CPU twin reads
/// them back exactly first.
pub fn batchnorm_backward_half(
    x: &HalfTensor,
    dy: &Tensor,
    affine: Option<Affine>,
    stats: &Tensor,
    running: &Tensor,
    training: bool,
    cfg: BatchNormConfig,
) -> Result<BatchNormGrads> {
    backward(SavedX::F16(x), dy, affine, stats, running, training, cfg)
}

/// Backward's x, as the forward kept it.
#[derive(Clone, Copy)]
enum SavedX<'a> {
    F32(&'a Tensor),
    F16(&'a HalfTensor),
}

fn backward(x: SavedX, dy: &Tensor, affine: Option<Affine>, stats: &Tensor, running: &Tensor, training: bool, cfg: BatchNormConfig) -> Result<BatchNormGrads> {
    const OP: &str = "batchnorm_backward";
    let (shape, x_dev) = match x {
        SavedX::F32(t) => (t.shape(), t.device()),
        SavedX::F16(h) => (h.shape(), h.device()),
    };
    let (n, c, inner) = dims_of(shape)?;
    // dy has x's shape and sits beside the other operands: checked in x's place.
    check_shape("batchnorm", "dy", dy.shape(), shape)?;
    check_operands(dy, affine, running, c)?;
    check_shape("batchnorm", "saved statistics", stats.shape(), &[3, c])?;
    let dev = same_device("batchnorm", &[dy, stats])?;
    if !dev.same(&x_dev) {
        return Err(Error::DeviceMismatch { op: OP, a: x_dev.to_string(), b: dev.to_string() });
    }
    match dev {
        Device::Cpu => {
            let decoded;
            let xh = match x {
                SavedX::F32(t) => t.host(OP)?,
                SavedX::F16(h) => {
                    decoded = h.to_f32()?;
                    decoded.host(OP)?
                }
            };
            let (g, _) = affine_host(OP, affine)?;
            let (dx, grads) = batchnorm_backward_cpu_tuned(xh, dy.host(OP)?, (n, c, inner), g, stats.host(OP)?, running.host(OP)?, training, cfg);
            Ok(BatchNormGrads { dx: Tensor::from_cpu(shape, dx), dgamma: Tensor::from_cpu(&[c], grads[..c].to_vec()), dbeta: Tensor::from_cpu(&[c], grads[c..].to_vec()) })
        }
        Device::Gpu(ctx) => {
            let (xb, half) = match x {
                SavedX::F32(t) => (t.buffer(OP)?, false),
                SavedX::F16(h) => match &h.data {
                    HalfData::Gpu(buf) => (buf.buffer(), true),
                    HalfData::Cpu(_) => unreachable!("x is on the GPU (checked above)"),
                },
            };
            let dx = Tensor::uninit_gpu(&ctx, OP, shape)?;
            let (dgamma, dbeta) = (Tensor::uninit_gpu(&ctx, OP, &[c])?, Tensor::uninit_gpu(&ctx, OP, &[c])?);
            let mut p = params(n, c, inner, training, affine.is_some(), cfg);
            p.update_running = 0;
            let (gb, bb) = affine_bufs(OP, affine, xb)?;
            // `stats` and `running` are only read here; the layout declares them
            // read-write, and binding read-only data that way is allowed.
            // dγ and dβ go to their own tensors (no [2, c] buffer to split after).
            let all = [xb, dy.buffer(OP)?, gb, bb, stats.buffer(OP)?, running.buffer(OP)?, dx.buffer(OP)?, dgamma.buffer(OP)?, dbeta.buffer(OP)?];
            let (reduce, dxk) = if half { (&BATCHNORM_BACKWARD_REDUCE_F16, &BATCHNORM_BACKWARD_DX_F16) } else { (&BATCHNORM_BACKWARD_REDUCE, &BATCHNORM_BACKWARD_DX) };
            ctx.dispatch(reduce, &p, &all, ctx.grid_1d(c, 1))?;
            ctx.dispatch(dxk, &p, &all, ctx.grid_1d(n * c * inner, 256))?;
            Ok(BatchNormGrads { dx, dgamma, dbeta })
        }
    }
}

/// γ and β on the host (CPU tensors).
type HostAffine<'a> = (Option<&'a [f32]>, Option<&'a [f32]>);

fn affine_host<'a>(op: &'static str, affine: Option<Affine<'a>>) -> Result<HostAffine<'a>> {
    Ok(match affine {
        Some(a) => (Some(a.gamma.host(op)?), Some(a.beta.host(op)?)),
        None => (None, None),
    })
}

/// γ and β buffers, or `x` (read-only, never read) when there is no affine part.
fn affine_bufs<'a>(op: &'static str, affine: Option<Affine<'a>>, x: Bind<'a>) -> Result<(Bind<'a>, Bind<'a>)> {
    Ok(match affine {
        Some(a) => (a.gamma.buffer(op)?, a.beta.buffer(op)?),
        None => (x, x),
    })
}

// ---------------------------------------------------------------- CPU reference

/// The indices of channel `ch` in an (n, c, inner) tensor.
fn channel(ch: usize, (n, c, inner): (usize, usize, usize)) -> impl Iterator<Item = usize> {
    (0..n).flat_map(move |i| (0..inner).map(move |t| (i * c + ch) * inner + t))
}

/// x: (n, c, inner) → (y, stats [shift; mean_lo; invstd]); updates running (2, c).
/// Sums in f64 over the same shifted values as the GPU.
pub fn batchnorm_forward_train_cpu(
    x: &[f32],
    dims: (usize, usize, usize),
    affine: Option<(&[f32], &[f32])>,
    running: &mut [f32],
    cfg: BatchNormConfig,
) -> (Vec<f32>, Vec<f32>) {
    let (n, c, inner) = dims;
    let count = (n * inner) as f64;
    let mut stats = vec![0f32; 3 * c];
    for ch in 0..c {
        let shift = channel(ch, dims).next().map_or(0.0, |i| x[i]);
        let mean_lo = (channel(ch, dims).map(|i| (x[i] - shift) as f64).sum::<f64>() / count) as f32;
        let var = channel(ch, dims).map(|i| (((x[i] - shift) - mean_lo) as f64).powi(2)).sum::<f64>() / count;
        stats[ch] = shift;
        stats[c + ch] = mean_lo;
        stats[2 * c + ch] = (1.0 / (var + cfg.eps as f64).sqrt()) as f32;
        let m = cfg.momentum;
        running[ch] = (1.0 - m) * running[ch] + m * (shift + mean_lo);
        running[c + ch] = (1.0 - m) * running[c + ch] + m * (var * count / (count - 1.0)) as f32;
    }
    let mut y = vec![0f32; x.len()];
    for ch in 0..c {
        for i in channel(ch, dims) {
            let h = ((x[i] - stats[ch]) - stats[c + ch]) * stats[2 * c + ch];
            y[i] = affine.map_or(h, |(g, b)| g[ch] * h + b[ch]);
        }
    }
    (y, stats)
}

/// Eval: y = γ·(x − running_mean)/sqrt(running_var + eps) + β.
pub fn batchnorm_forward_eval_cpu(x: &[f32], dims: (usize, usize, usize), affine: Option<(&[f32], &[f32])>, running: &[f32], cfg: BatchNormConfig) -> Vec<f32> {
    let c = dims.1;
    let mut y = vec![0f32; x.len()];
    for ch in 0..c {
        let invstd = 1.0 / (running[c + ch] + cfg.eps).sqrt();
        for i in channel(ch, dims) {
            let h = (x[i] - running[ch]) * invstd;
            y[i] = affine.map_or(h, |(g, b)| g[ch] * h + b[ch]);
        }
    }
    y
}

/// Returns (dx, [dγ; dβ]). Training: dx = γ·invstd/m·(m·dy − Σdy − x̂·Σ(dy·x̂)).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_cpu(
    x: &[f32],
    dy: &[f32],
    dims: (usize, usize, usize),
    gamma: Option<&[f32]>,
    stats: &[f32],
    running: &[f32],
    training: bool,
    cfg: BatchNormConfig,
) -> (Vec<f32>, Vec<f32>) {
    let (n, c, inner) = dims;
    let m = (n * inner) as f32;
    let mut dx = vec![0f32; x.len()];
    let mut grads = vec![0f32; 2 * c];
    for ch in 0..c {
        let x_hat = |i: usize| {
            if training {
                ((x[i] - stats[ch]) - stats[c + ch]) * stats[2 * c + ch]
            } else {
                (x[i] - running[ch]) / (running[c + ch] + cfg.eps).sqrt()
            }
        };
        let sum_dy = channel(ch, dims).map(|i| dy[i] as f64).sum::<f64>() as f32;
        let sum_dy_xhat = channel(ch, dims).map(|i| (dy[i] * x_hat(i)) as f64).sum::<f64>() as f32;
        grads[ch] = sum_dy_xhat;
        grads[c + ch] = sum_dy;
        let g = gamma.map_or(1.0, |g| g[ch]);
        for i in channel(ch, dims) {
            dx[i] = if training {
                g * stats[2 * c + ch] / m * (m * dy[i] - sum_dy - x_hat(i) * sum_dy_xhat)
            } else {
                dy[i] * g / (running[c + ch] + cfg.eps).sqrt()
            };
        }
    }
    (dx, grads)
}
