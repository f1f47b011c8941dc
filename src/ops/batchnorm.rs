//! Batch normalisation (PyTorch semantics) over `[n, c, …]`: per channel over
//! n and the spatial axes (BatchNorm2d) or over n alone (BatchNorm1d, `[n, c]`).
//! Training normalises with the biased batch variance and updates the running
//! statistics with the unbiased one; eval uses the running statistics.
//! See `shaders/batchnorm.wgsl` for the shifted two-pass statistics.

use bytemuck::{Pod, Zeroable};

use crate::error::{shape_err, Error, Result};
use crate::kernel::KernelId;
use crate::ops::check_shape;
use crate::tensor::{same_device, Data, Tensor};

/// Settings shared by forward and backward.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
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
}

/// The learnable scale and shift, `[c]` each.
#[derive(Clone, Copy)]
pub struct Affine<'a> {
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
}

/// (n, c, inner) of an input `[n, c, …]`, validated.
fn dims(x: &Tensor) -> Result<(usize, usize, usize)> {
    let s = x.shape();
    if s.len() < 2 {
        return shape_err("batchnorm", format!("input must be [n, c, …], got {s:?}"));
    }
    Ok((s[0], s[1], s[2..].iter().product()))
}

fn check_operands(x: &Tensor, affine: Option<Affine>, running: &Tensor, c: usize) -> Result<()> {
    check_shape("batchnorm", "running statistics [mean; var]", running.shape(), &[2, c])?;
    same_device("batchnorm", &[x, running])?;
    if let Some(a) = affine {
        check_shape("batchnorm", "gamma", a.gamma.shape(), &[c])?;
        check_shape("batchnorm", "beta", a.beta.shape(), &[c])?;
        same_device("batchnorm", &[x, a.gamma, a.beta])?;
    }
    Ok(())
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
    }
}

/// Training forward: returns `(y, stats)` (stats `[3, c]` = shift, mean offset,
/// 1/std, kept for backward) and updates `running` (`[2, c]`: mean; var) in place.
pub fn batchnorm_forward_train(x: &Tensor, affine: Option<Affine>, running: &mut Tensor, cfg: BatchNormConfig) -> Result<(Tensor, Tensor)> {
    let (n, c, inner) = dims(x)?;
    check_operands(x, affine, running, c)?;
    if n * inner < 2 {
        return Err(Error::InvalidArgument {
            op: "batchnorm",
            msg: format!("training needs more than one value per channel to estimate a variance, got input {:?}", x.shape()),
        });
    }
    running.make_unique()?;
    let dev = x.device();
    let mut y = Tensor::uninit(&dev, "batchnorm", x.shape())?;
    let mut stats = Tensor::uninit(&dev, "batchnorm", &[3, c])?;
    match (&x.data, &mut running.data) {
        (Data::Cpu(xs), Data::Cpu(rs)) => {
            let (g, b) = affine_host(affine)?;
            let (yv, sv) = forward_train_cpu(xs.as_slice().unwrap(), (n, c, inner), g.as_deref().zip(b.as_deref()), rs.as_slice_mut().unwrap(), cfg);
            y.write(&yv)?;
            stats.write(&sv)?;
        }
        (Data::Gpu(xb), Data::Gpu(rb)) => {
            let ctx = xb.context();
            let p = params(n, c, inner, true, affine.is_some(), cfg);
            let (gb, bb) = affine_bufs(affine, xb.buffer());
            let (yb, sb) = (y.gpu().unwrap().buffer(), stats.gpu().unwrap().buffer());
            let all = [xb.buffer(), xb.buffer(), gb, bb, sb, rb.buffer(), yb, ctx.scratch(0)];
            ctx.dispatch(KernelId::BatchnormStats, &p, &all, ctx.grid_1d(c, 1))?;
            ctx.dispatch(KernelId::BatchnormForward, &p, &all, ctx.grid_1d(n * c * inner, 256))?;
        }
        _ => unreachable!("same_device checked"),
    }
    Ok((y, stats))
}

/// Eval forward with the running statistics.
pub fn batchnorm_forward_eval(x: &Tensor, affine: Option<Affine>, running: &Tensor, cfg: BatchNormConfig) -> Result<Tensor> {
    let (n, c, inner) = dims(x)?;
    check_operands(x, affine, running, c)?;
    let dev = x.device();
    let mut y = Tensor::uninit(&dev, "batchnorm", x.shape())?;
    match (&x.data, &running.data) {
        (Data::Cpu(xs), Data::Cpu(rs)) => {
            let (g, b) = affine_host(affine)?;
            y.write(&forward_eval_cpu(xs.as_slice().unwrap(), (n, c, inner), g.as_deref().zip(b.as_deref()), rs.as_slice().unwrap(), cfg))?;
        }
        (Data::Gpu(xb), Data::Gpu(rb)) => {
            let ctx = xb.context();
            let p = params(n, c, inner, false, affine.is_some(), cfg);
            let (gb, bb) = affine_bufs(affine, xb.buffer());
            let all = [xb.buffer(), xb.buffer(), gb, bb, ctx.scratch(0), rb.buffer(), y.gpu().unwrap().buffer(), ctx.scratch(1)];
            ctx.dispatch(KernelId::BatchnormForward, &p, &all, ctx.grid_1d(n * c * inner, 256))?;
        }
        _ => unreachable!("same_device checked"),
    }
    Ok(y)
}

/// Gradients of batch-norm.
pub struct BatchNormGrads {
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
    let (n, c, inner) = dims(x)?;
    check_operands(x, affine, running, c)?;
    check_shape("batchnorm", "dy", dy.shape(), x.shape())?;
    check_shape("batchnorm", "saved statistics", stats.shape(), &[3, c])?;
    same_device("batchnorm", &[x, dy, stats])?;
    let dev = x.device();
    let mut dx = Tensor::uninit(&dev, "batchnorm", x.shape())?;
    let mut grads = Tensor::uninit(&dev, "batchnorm", &[2, c])?;
    match (&x.data, &dy.data, &stats.data, &running.data) {
        (Data::Cpu(xs), Data::Cpu(ds), Data::Cpu(ss), Data::Cpu(rs)) => {
            let (g, _) = affine_host(affine)?;
            let (dxv, gv) = backward_cpu(
                xs.as_slice().unwrap(),
                ds.as_slice().unwrap(),
                (n, c, inner),
                g.as_deref(),
                ss.as_slice().unwrap(),
                rs.as_slice().unwrap(),
                training,
                cfg,
            );
            dx.write(&dxv)?;
            grads.write(&gv)?;
        }
        (Data::Gpu(xb), Data::Gpu(db), Data::Gpu(sb), Data::Gpu(rb)) => {
            let ctx = xb.context();
            let mut p = params(n, c, inner, training, affine.is_some(), cfg);
            p.update_running = 0;
            let (gb, bb) = affine_bufs(affine, xb.buffer());
            // `stats` and `running` are only read here; the layout declares them
            // read-write, and binding read-only data that way is allowed.
            let all = [xb.buffer(), db.buffer(), gb, bb, sb.buffer(), rb.buffer(), dx.gpu().unwrap().buffer(), grads.gpu().unwrap().buffer()];
            ctx.dispatch(KernelId::BatchnormBackwardReduce, &p, &all, ctx.grid_1d(c, 1))?;
            ctx.dispatch(KernelId::BatchnormBackwardDx, &p, &all, ctx.grid_1d(n * c * inner, 256))?;
        }
        _ => unreachable!("same_device checked"),
    }
    let dgamma = grads.narrow(0, 1)?.reshape(&[c])?;
    let dbeta = grads.narrow(1, 1)?.reshape(&[c])?;
    Ok(BatchNormGrads { dx, dgamma, dbeta })
}

type HostAffine = (Option<Vec<f32>>, Option<Vec<f32>>);

fn affine_host(affine: Option<Affine>) -> Result<HostAffine> {
    Ok(match affine {
        Some(a) => (Some(a.gamma.to_vec()?), Some(a.beta.to_vec()?)),
        None => (None, None),
    })
}

/// γ and β buffers, or `x` (read-only, never read) when there is no affine part.
fn affine_bufs<'a>(affine: Option<Affine<'a>>, x: &'a wgpu::Buffer) -> (&'a wgpu::Buffer, &'a wgpu::Buffer) {
    match affine {
        Some(a) => (a.gamma.gpu().unwrap().buffer(), a.beta.gpu().unwrap().buffer()),
        None => (x, x),
    }
}

// ---------------------------------------------------------------- CPU reference

/// The indices of channel `ch` in an (n, c, inner) tensor.
fn channel(ch: usize, (n, c, inner): (usize, usize, usize)) -> impl Iterator<Item = usize> {
    (0..n).flat_map(move |i| (0..inner).map(move |t| (i * c + ch) * inner + t))
}

/// x: (n, c, inner) → (y, stats [shift; mean_lo; invstd]); updates running (2, c).
/// Sums in f64 over the same shifted values as the GPU.
pub fn forward_train_cpu(
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
        let shift = x[channel(ch, dims).next().unwrap()];
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
pub fn forward_eval_cpu(x: &[f32], dims: (usize, usize, usize), affine: Option<(&[f32], &[f32])>, running: &[f32], cfg: BatchNormConfig) -> Vec<f32> {
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
pub fn backward_cpu(
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
