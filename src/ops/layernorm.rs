//! Layer normalisation (PyTorch's `LayerNorm`: the trailing dims normalised,
//! elementwise affine) and group normalisation (`GroupNorm`: channel groups
//! of `[n, c, …]`, per-channel affine) on one pair of kernels; both use the
//! biased variance. The affine gradients are per-channel sums of dy·x̂ and dy.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{shape_err, Error, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::bias::bias_grad;
use crate::ops::check_shape;
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("layernorm", include_str!("../../shaders/layernorm.wgsl"));
const BINDINGS: &[crate::kernel::Access] = &[Read, Read, Read, ReadWrite, ReadWrite, ReadWrite, Uniform];
fn work(p: &NormParams) -> Work {
    let n = (p.rows * p.d) as usize;
    Work::f32s(8 * n, 4 * n)
}
pub(crate) static LAYERNORM_FORWARD: Kernel<NormParams> = Kernel::new(&SHADER, "layernorm_forward", &[Read, Read, Read, ReadWrite, ReadWrite, Unused, Uniform]).with_work(work);
pub(crate) static LAYERNORM_BACKWARD: Kernel<NormParams> = Kernel::new(&SHADER, "layernorm_backward", BINDINGS).with_work(work);
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&LAYERNORM_FORWARD.def, &LAYERNORM_BACKWARD.def];

/// Matches `NormParams` in `shaders/layernorm.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct NormParams {
    pub rows: u32,
    pub d: u32,
    pub groups: u32,
    pub inner: u32,
    pub eps: f32,
    pub affine: u32,
    pub _pad: [u32; 2],
}

/// What is normalised together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// The last `dims` axes (affine shape = those axes).
    Layer {
        /// How many trailing axes.
        dims: usize,
    },
    /// `groups` groups of channels of `[n, c, …]` (affine shape = `[c]`).
    Group {
        /// Channel groups (must divide the channels).
        groups: usize,
    },
}

/// Gradients of a normalisation.
pub struct NormGrads {
    /// dL/dx.
    pub dx: Tensor,
    /// dγ and dβ, when the normalisation is affine.
    pub affine: Option<(Tensor, Tensor)>,
}

/// The [rows, d] view, the affine shape and the params.
fn geometry(op: &'static str, shape: &[usize], kind: NormKind, eps: f32, affine: bool) -> Result<(NormParams, Vec<usize>)> {
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::InvalidArgument { op, msg: format!("eps {eps} must be finite and > 0") });
    }
    let numel: usize = shape.iter().product();
    let (rows, d, groups, inner, affine_shape) = match kind {
        NormKind::Layer { dims } if dims >= 1 && dims <= shape.len() => {
            let d: usize = shape[shape.len() - dims..].iter().product();
            (numel / d.max(1), d, 1, 1, shape[shape.len() - dims..].to_vec())
        }
        NormKind::Layer { dims } => return shape_err(op, format!("cannot normalise the last {dims} dims of {shape:?}")),
        NormKind::Group { groups } if shape.len() >= 2 && groups >= 1 && shape[1] % groups == 0 => {
            let (n, c) = (shape[0], shape[1]);
            let hw: usize = shape[2..].iter().product();
            (n * groups, c / groups * hw, groups, hw, vec![c])
        }
        NormKind::Group { groups } => return shape_err(op, format!("{groups} groups must divide the channels of {shape:?}")),
    };
    if numel == 0 {
        return shape_err(op, format!("empty input {shape:?}"));
    }
    let p = NormParams { rows: rows as u32, d: d as u32, groups: groups as u32, inner: inner as u32, eps, affine: affine as u32, _pad: [0; 2] };
    Ok((p, affine_shape))
}

/// `(y, stats)`: the normalised `x` and its per-row mean and 1/σ `[rows, 2]` for backward.
pub fn layernorm_forward(x: &Tensor, affine: Option<(&Tensor, &Tensor)>, kind: NormKind, eps: f32) -> Result<(Tensor, Tensor)> {
    const OP: &str = "layernorm_forward";
    let (p, ashape) = geometry(OP, x.shape(), kind, eps, affine.is_some())?;
    let mut operands = vec![x];
    if let Some((g, b)) = affine {
        check_shape(OP, "weight", g.shape(), &ashape)?;
        check_shape(OP, "bias", b.shape(), &ashape)?;
        operands.extend([g, b]);
    }
    let stats_shape = [p.rows as usize, 2];
    match same_device(OP, &operands)? {
        Device::Cpu => {
            let a = affine.map(|(g, b)| Ok::<_, Error>((g.host(OP)?, b.host(OP)?))).transpose()?;
            let (y, st) = layernorm_forward_cpu(x.host(OP)?, a, &p);
            Ok((Tensor::from_cpu(x.shape(), y), Tensor::from_cpu(&stats_shape, st)))
        }
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, x.shape())?;
            let stats = Tensor::uninit_gpu(&ctx, OP, &stats_shape)?;
            let xb = x.buffer(OP)?;
            let (g, b) = match affine {
                Some((g, b)) => (g.buffer(OP)?, b.buffer(OP)?),
                None => (xb, xb),
            };
            ctx.dispatch(&LAYERNORM_FORWARD, &p, &[xb, g, b, stats.buffer(OP)?, y.buffer(OP)?, ctx.scratch(0)], ctx.grid_1d(p.rows as usize, 64))?;
            Ok((y, stats))
        }
    }
}

/// dx and (when affine) dγ, dβ from dy and the forward's stats.
pub fn layernorm_backward(x: &Tensor, dy: &Tensor, gamma: Option<&Tensor>, stats: &Tensor, kind: NormKind, eps: f32) -> Result<NormGrads> {
    const OP: &str = "layernorm_backward";
    let (p, ashape) = geometry(OP, x.shape(), kind, eps, gamma.is_some())?;
    check_shape(OP, "dy", dy.shape(), x.shape())?;
    check_shape(OP, "stats", stats.shape(), &[p.rows as usize, 2])?;
    let mut operands = vec![x, dy, stats];
    if let Some(g) = gamma {
        check_shape(OP, "weight", g.shape(), &ashape)?;
        operands.push(g);
    }
    let (dx, dyxhat) = match same_device(OP, &operands)? {
        Device::Cpu => {
            let g = gamma.map(|g| g.host(OP)).transpose()?;
            let (dx, dyx) = layernorm_backward_cpu(x.host(OP)?, dy.host(OP)?, g, stats.host(OP)?, &p);
            (Tensor::from_cpu(x.shape(), dx), Tensor::from_cpu(x.shape(), dyx))
        }
        Device::Gpu(ctx) => {
            let dx = Tensor::uninit_gpu(&ctx, OP, x.shape())?;
            let dyx = Tensor::uninit_gpu(&ctx, OP, x.shape())?;
            let xb = x.buffer(OP)?;
            let g = gamma.map_or(Ok(xb), |g| g.buffer(OP))?;
            let bufs = [xb, g, dy.buffer(OP)?, stats.buffer(OP)?, dx.buffer(OP)?, dyx.buffer(OP)?];
            ctx.dispatch(&LAYERNORM_BACKWARD, &p, &bufs, ctx.grid_1d(p.rows as usize, 64))?;
            (dx, dyx)
        }
    };
    let affine = match gamma {
        None => None,
        Some(_) => {
            // Per affine element: sum over everything else, as a bias gradient over a [outer, affine, inner] view.
            let view = |t: Tensor| -> Result<Tensor> {
                let a: usize = ashape.iter().product();
                let outer = t.numel() / (a * p.inner as usize);
                t.reshape(&[outer, a, p.inner as usize])
            };
            let dg = bias_grad(&view(dyxhat)?)?.reshape(&ashape)?;
            let db = bias_grad(&view(dy.clone())?)?.reshape(&ashape)?;
            Some((dg, db))
        }
    };
    Ok(NormGrads { dx, affine })
}

// ---------------------------------------------------------------- CPU reference

fn channel(p: &NormParams, row: usize, e: usize) -> usize {
    ((row % p.groups as usize) * p.d as usize + e) / p.inner as usize
}

#[allow(clippy::type_complexity)]
/// (y, per-row mean and 1/σ).
pub fn layernorm_forward_cpu(x: &[f32], affine: Option<(&[f32], &[f32])>, p: &NormParams) -> (Vec<f32>, Vec<f32>) {
    let d = p.d as usize;
    let mut y = vec![0f32; x.len()];
    let mut stats = vec![0f32; 2 * p.rows as usize];
    for row in 0..p.rows as usize {
        let xs = &x[row * d..(row + 1) * d];
        let mean = xs.iter().sum::<f32>() / d as f32;
        let var = xs.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let rstd = 1.0 / (var + p.eps).sqrt();
        (stats[2 * row], stats[2 * row + 1]) = (mean, rstd);
        for e in 0..d {
            let mut v = (xs[e] - mean) * rstd;
            if let Some((g, b)) = affine {
                let c = channel(p, row, e);
                v = v * g[c] + b[c];
            }
            y[row * d + e] = v;
        }
    }
    (y, stats)
}

/// (dx, dy·x̂).
pub fn layernorm_backward_cpu(x: &[f32], dy: &[f32], gamma: Option<&[f32]>, stats: &[f32], p: &NormParams) -> (Vec<f32>, Vec<f32>) {
    let d = p.d as usize;
    let (mut dx, mut dyx) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    for row in 0..p.rows as usize {
        let (mean, rstd) = (stats[2 * row], stats[2 * row + 1]);
        let idx = |e: usize| row * d + e;
        let g = |e: usize| dy[idx(e)] * gamma.map_or(1.0, |g| g[channel(p, row, e)]);
        let xhat = |e: usize| (x[idx(e)] - mean) * rstd;
        let (mut sg, mut sgx) = (0f32, 0f32);
        for e in 0..d {
            sg += g(e);
            sgx += g(e) * xhat(e);
            dyx[idx(e)] = dy[idx(e)] * xhat(e);
        }
        for e in 0..d {
            dx[idx(e)] = rstd * (g(e) - sg / d as f32 - xhat(e) * sgx / d as f32);
        }
    }
    (dx, dyx)
}
