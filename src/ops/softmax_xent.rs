//! Softmax cross-entropy fused with its gradient, and standalone
//! (log-)softmax along the class axis of `[n, c]` logits.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{shape_err, Error, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::reduce::reduce_rows_gpu;
use crate::tensor::Tensor;

const SHADER: Shader = Shader::new("softmax_xent", include_str!("../../shaders/softmax_xent.wgsl"));
const BINDINGS: &[crate::kernel::Access] = &[Read, Read, ReadWrite, ReadWrite, Uniform];
pub(crate) static SOFTMAX_XENT_FORWARD: Kernel<XentParams> = Kernel::new(&SHADER, "softmax_xent_forward", BINDINGS).with_work(|p| Work::f32s((2 * p.n * p.c + 2 * p.n) as usize, 6 * (p.n * p.c) as usize));
pub(crate) static SOFTMAX_XENT_PROBS: Kernel<XentParams> = Kernel::new(&SHADER, "softmax_xent_probs", &[Read, Unused, Unused, ReadWrite, Uniform]).with_work(|p| Work::f32s(2 * (p.n * p.c) as usize, 5 * (p.n * p.c) as usize));
/// The same for a batch that fits one workgroup, adding the loss too.
pub(crate) static SOFTMAX_XENT_FORWARD_ONE: Kernel<XentParams> =
    Kernel::new(&SHADER, "softmax_xent_forward_one", BINDINGS).with_work(|p| Work::f32s((2 * p.n * p.c + 1) as usize, 6 * (p.n * p.c) as usize));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&SOFTMAX_XENT_FORWARD.def, &SOFTMAX_XENT_FORWARD_ONE.def, &SOFTMAX_XENT_PROBS.def];

/// How the per-row losses are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// Mean over the rows that are not ignored (PyTorch's default).
    Mean,
    /// The sum over rows.
    Sum,
}

/// Cross-entropy settings, PyTorch's `CrossEntropyLoss` arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropyConfig {
    /// ε in target = (1 − ε)·onehot + ε/C; in [0, 1].
    pub label_smoothing: f32,
    /// Rows with this label contribute neither loss nor gradient.
    pub ignore_index: Option<i64>,
    /// Mean or sum over the rows.
    pub reduction: Reduction,
}

impl Default for CrossEntropyConfig {
    fn default() -> Self {
        CrossEntropyConfig { label_smoothing: 0.0, ignore_index: None, reduction: Reduction::Mean }
    }
}

/// Matches `XentParams` in `shaders/softmax_xent.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct XentParams {
    pub n: u32,
    pub c: u32,
    pub smoothing: f32,
    pub scale: f32,
    pub ignore_index: u32,
    pub log: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

const NO_IGNORE: u32 = u32::MAX;

/// Checks labels against the logits on the host, before anything is
/// dispatched; returns them as u32 (ignored rows as `NO_IGNORE`'s twin) and the scale.
fn prepare(logits: &Tensor, labels: &[i64], cfg: &CrossEntropyConfig) -> Result<(usize, usize, Vec<u32>, f32)> {
    const OP: &str = "softmax_xent";
    let &[n, c] = logits.shape() else {
        return shape_err(OP, format!("logits must be [batch, classes], got {:?}", logits.shape()));
    };
    if labels.len() != n {
        return shape_err(OP, format!("logits {:?} hold {n} rows but {} labels were given", logits.shape(), labels.len()));
    }
    if !(0.0..=1.0).contains(&cfg.label_smoothing) {
        return Err(Error::InvalidArgument { op: OP, msg: format!("label_smoothing {} must be in [0, 1]", cfg.label_smoothing) });
    }
    let mut out = Vec::with_capacity(n);
    let mut counted = 0usize;
    for (row, &l) in labels.iter().enumerate() {
        if Some(l) == cfg.ignore_index {
            out.push(NO_IGNORE);
            continue;
        }
        if l < 0 || l >= c as i64 {
            return Err(Error::InvalidArgument { op: OP, msg: format!("label {l} at row {row} is out of range for {c} classes (valid: 0..{c})") });
        }
        out.push(l as u32);
        counted += 1;
    }
    let scale = match cfg.reduction {
        Reduction::Sum => 1.0,
        // Every row ignored: PyTorch returns NaN (0/0); we return 0 loss and 0 gradient.
        Reduction::Mean => 1.0 / counted.max(1) as f32,
    };
    Ok((n, c, out, scale))
}

/// Loss (a `[1]` tensor, left on the device) and dL/dlogits `[n, c]` in one pass.
/// `labels` are class indices; any out of range is an error before any GPU work.
pub fn softmax_xent(logits: &Tensor, labels: &[i64], cfg: CrossEntropyConfig) -> Result<(Tensor, Tensor)> {
    const OP: &str = "softmax_xent";
    let (n, c, labels, scale) = prepare(logits, labels, &cfg)?;
    match logits.device() {
        Device::Cpu => {
            let (l, g) = softmax_xent_cpu(logits.host(OP)?, n, c, &labels, cfg.label_smoothing, scale);
            Ok((Tensor::from_cpu(&[1], vec![l]), Tensor::from_cpu(&[n, c], g)))
        }
        Device::Gpu(ctx) => {
            let loss = Tensor::uninit_gpu(&ctx, OP, &[1])?;
            let grad = Tensor::uninit_gpu(&ctx, OP, &[n, c])?;
            let label_buf = ctx.upload_new(OP, n, bytemuck::cast_slice(&labels))?;
            let p = XentParams { n: n as u32, c: c as u32, smoothing: cfg.label_smoothing, scale, ignore_index: NO_IGNORE, ..Default::default() };
            // A batch that fits one workgroup adds its loss in the same kernel.
            if n <= SOFTMAX_XENT_FORWARD_ONE.def.constant("WG", 64) as usize {
                let bufs = [logits.buffer(OP)?, label_buf.buffer(), loss.buffer(OP)?, grad.buffer(OP)?];
                ctx.dispatch(&SOFTMAX_XENT_FORWARD_ONE, &p, &bufs, [1, 1, 1])?;
                return Ok((loss, grad));
            }
            let rows = ctx.alloc(OP, n)?;
            let bufs = [logits.buffer(OP)?, label_buf.buffer(), rows.buffer(), grad.buffer(OP)?];
            ctx.dispatch(&SOFTMAX_XENT_FORWARD, &p, &bufs, ctx.grid_1d(n, 64))?;
            reduce_rows_gpu(&ctx, rows.buffer(), loss.buffer(OP)?, 1, n, 0.0)?;
            Ok((loss, grad))
        }
    }
}

/// Softmax (or log-softmax) along the last axis of `[n, c]`.
pub fn softmax_xent_probs(x: &Tensor, log: bool) -> Result<Tensor> {
    const OP: &str = "softmax_xent_probs";
    let &[n, c] = x.shape() else {
        return shape_err(OP, format!("input must be [batch, classes], got {:?}", x.shape()));
    };
    match x.device() {
        Device::Cpu => Ok(Tensor::from_cpu(&[n, c], softmax_xent_probs_cpu(x.host(OP)?, n, c, log))),
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, &[n, c])?;
            let p = XentParams { n: n as u32, c: c as u32, log: log as u32, ignore_index: NO_IGNORE, ..Default::default() };
            let xb = x.buffer(OP)?;
            ctx.dispatch(&SOFTMAX_XENT_PROBS, &p, &[xb, xb, ctx.scratch(0), y.buffer(OP)?], ctx.grid_1d(n, 64))?;
            Ok(y)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// logits: (n, c), labels: (n) with u32::MAX for ignored rows → (loss, grad (n, c)).
pub fn softmax_xent_cpu(x: &[f32], n: usize, c: usize, labels: &[u32], smoothing: f32, scale: f32) -> (f32, Vec<f32>) {
    let mut grad = vec![0f32; n * c];
    let mut loss = 0f64;
    for r in 0..n {
        if labels[r] == NO_IGNORE {
            continue;
        }
        let row = &x[r * c..(r + 1) * c];
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // (x − max) − ln Σ: never round max + ln Σ at large |x| (see the shader).
        let log_sum = row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        for j in 0..c {
            let t = smoothing / c as f32 + if j as u32 == labels[r] { 1.0 - smoothing } else { 0.0 };
            let logp = (row[j] - m) - log_sum;
            loss -= (t * logp) as f64;
            grad[r * c + j] = scale * (logp.exp() - t);
        }
    }
    ((loss * scale as f64) as f32, grad)
}

/// x: (n, c) → softmax or log-softmax per row.
pub fn softmax_xent_probs_cpu(x: &[f32], n: usize, c: usize, log: bool) -> Vec<f32> {
    let mut y = vec![0f32; n * c];
    for r in 0..n {
        let row = &x[r * c..(r + 1) * c];
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let log_sum = row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        for j in 0..c {
            let logp = (row[j] - m) - log_sum;
            y[r * c + j] = if log { logp } else { logp.exp() };
        }
    }
    y
}
