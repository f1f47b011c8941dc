//! Inverted dropout with a counter-based RNG: the mask is a pure function of
//! (seed, step, index), identical on every device, regenerated for backward.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::tensor::Tensor;

const SHADER: Shader = Shader::new("dropout", include_str!("../../shaders/dropout.wgsl"));
pub(crate) static DROPOUT_APPLY: Kernel<DropoutParams> = Kernel::new(&SHADER, "dropout_apply", &[Read, ReadWrite, Uniform]).with_work(|p| Work::f32s(2 * p.len as usize, 20 * p.len as usize));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&DROPOUT_APPLY.def];

/// Matches `DropoutParams` in `shaders/dropout.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct DropoutParams {
    pub len: u32,
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub step: u32,
    pub threshold: u32,
    pub scale: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// Which mask to draw: the same (seed, step) gives the same mask everywhere.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutConfig {
    /// Probability of zeroing an element, in [0, 1).
    pub p: f32,
    /// Seeds the masks (with `step`, a counter-based RNG: no state on the device).
    pub seed: u64,
    /// Advance it every training step for a fresh mask.
    pub step: u32,
}

fn params(cfg: &DropoutConfig, len: usize) -> Result<DropoutParams> {
    if !(0.0..1.0).contains(&cfg.p) {
        return Err(Error::InvalidArgument { op: "dropout_apply", msg: format!("p = {} must be in [0, 1)", cfg.p) });
    }
    Ok(DropoutParams {
        len: len as u32,
        seed_lo: cfg.seed as u32,
        seed_hi: (cfg.seed >> 32) as u32,
        step: cfg.step,
        threshold: (cfg.p as f64 * (1u64 << 24) as f64).round() as u32,
        scale: 1.0 / (1.0 - cfg.p),
        ..Default::default()
    })
}

/// Training: `x·mask/(1 − p)`; eval (`training = false`): `x` unchanged.
pub fn dropout_forward(x: &Tensor, cfg: DropoutConfig, training: bool) -> Result<Tensor> {
    let p = params(&cfg, x.numel())?;
    if !training {
        return Ok(x.clone());
    }
    apply(x, p)
}

/// `dy·mask/(1 − p)` with the forward's mask, regenerated from (seed, step).
pub fn dropout_backward(dy: &Tensor, cfg: DropoutConfig) -> Result<Tensor> {
    apply(dy, params(&cfg, dy.numel())?)
}

fn apply(src: &Tensor, p: DropoutParams) -> Result<Tensor> {
    const OP: &str = "dropout_apply";
    match src.device() {
        Device::Cpu => Ok(Tensor::from_cpu(src.shape(), dropout_apply_cpu(src.host(OP)?, &p))),
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, OP, src.shape())?;
            ctx.dispatch(&DROPOUT_APPLY, &p, &[src.buffer(OP)?, out.buffer(OP)?], ctx.grid_1d(src.numel(), 256))?;
            Ok(out)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// PCG-RXS-M-XS, as in the shader (wrapping u32 arithmetic).
fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

fn keep(p: &DropoutParams, i: u32) -> bool {
    let h = pcg(pcg(pcg(pcg(p.seed_hi) ^ p.seed_lo) ^ p.step) ^ i);
    (h >> 8) >= p.threshold
}

/// x·mask/(1 − p), elementwise.
fn dropout_apply_cpu(x: &[f32], p: &DropoutParams) -> Vec<f32> {
    x.iter().enumerate().map(|(i, v)| if keep(p, i as u32) { v * p.scale } else { 0.0 }).collect()
}

/// The keep-mask of `len` elements for this configuration.
pub fn dropout_mask_cpu(cfg: &DropoutConfig, len: usize) -> Result<Vec<bool>> {
    let p = params(cfg, len)?;
    Ok((0..len as u32).map(|i| keep(&p, i)).collect())
}
