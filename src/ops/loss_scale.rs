//! Dynamic loss scaling on the device: the loss's gradient scaled, the
//! gradients unscaled with a flag for non-finite values, and the state
//! update that gates the optimiser's dispatches (see `shaders/loss_scale.wgsl`
//! and [`crate::train::LossScale`]). The CPU path decides on the host
//! (`LossScaleState::after_step`); these are its GPU twins, checked against it
//! by the trainer's tests on both devices.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::Bind;
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::tensor::Tensor;
use crate::train::LossScale;

const SHADER: Shader = Shader::new("loss_scale", include_str!("../../shaders/loss_scale.wgsl"));
pub(crate) static LOSS_SCALE_APPLY: Kernel<LossScaleParams> = Kernel::new(&SHADER, "loss_scale_apply", &[ReadWrite, Read, ReadWrite, Unused, Unused, Uniform]).with_work(|p| Work::f32s(2 * p.len as usize, p.len as usize));
pub(crate) static LOSS_SCALE_UNSCALE: Kernel<LossScaleParams> = Kernel::new(&SHADER, "loss_scale_unscale", &[ReadWrite, Unused, ReadWrite, Unused, Unused, Uniform]).with_work(|p| Work::f32s(2 * p.len as usize, p.len as usize));
pub(crate) static LOSS_SCALE_UPDATE: Kernel<LossScaleParams> = Kernel::new(&SHADER, "loss_scale_update", &[ReadWrite, Unused, Unused, Read, ReadWrite, Uniform]).with_work(|_| Work::f32s(8, 0));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&LOSS_SCALE_APPLY.def, &LOSS_SCALE_UNSCALE.def, &LOSS_SCALE_UPDATE.def];

/// Matches `LossScaleParams` in `shaders/loss_scale.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct LossScaleParams {
    pub len: u32,
    pub alpha: f32,
    pub growth: f32,
    pub backoff: f32,
    pub interval: u32,
    pub _pad: [u32; 3],
}

const OP: &str = "loss_scale";

fn gpu_of(t: &Tensor) -> Result<std::sync::Arc<crate::gpu::GpuContext>> {
    t.device().gpu_context().cloned().ok_or_else(|| Error::InvalidArgument { op: OP, msg: "the device loss scaler runs on the GPU; the CPU path decides on the host".into() })
}

/// `alpha·scale·x`, the scale read from `state` on the device.
pub(crate) fn loss_scale_apply(x: &Tensor, state: &Tensor, alpha: f32) -> Result<Tensor> {
    let ctx = gpu_of(x)?;
    let out = Tensor::uninit_gpu(&ctx, OP, x.shape())?;
    let p = LossScaleParams { len: x.numel() as u32, alpha, ..Default::default() };
    let xb = x.buffer(OP)?;
    ctx.dispatch(&LOSS_SCALE_APPLY, &p, &[state.buffer(OP)?, xb, out.buffer(OP)?, xb, xb], ctx.grid_1d(x.numel(), 256))?;
    Ok(out)
}

/// Divides `g` by the scale in place, flagging a value that is not finite in
/// `state`; a gradient larger than one binding (VGG-16's fc6) in windows.
pub(crate) fn loss_scale_unscale(g: &mut Tensor, state: &Tensor) -> Result<()> {
    let ctx = gpu_of(g)?;
    g.make_unique()?;
    let (s, gb) = (state.buffer(OP)?, g.buffer(OP)?);
    let len = g.numel();
    let align = ctx.binding_alignment().max(4);
    let per = ((ctx.max_binding_bytes() / align * align) / 4) as usize;
    for start in (0..len).step_by(per) {
        let n = per.min(len - start);
        let w = if n == len { gb } else { gb.window((start * 4) as u64, (n * 4) as u64) };
        let p = LossScaleParams { len: n as u32, ..Default::default() };
        ctx.dispatch(&LOSS_SCALE_UNSCALE, &p, &[s, w, w, w, w], ctx.grid_1d(n, 256))?;
    }
    Ok(())
}

/// The state's update after a step, writing the gated dispatches' indirect
/// arguments (`template` → `args`: zeros when the step is skipped).
pub(crate) fn loss_scale_update(state: &Tensor, cfg: &LossScale, template: Bind<'_>, args: Bind<'_>) -> Result<()> {
    let ctx = gpu_of(state)?;
    let p = LossScaleParams { len: 1, growth: cfg.growth_factor, backoff: cfg.backoff_factor, interval: cfg.growth_interval, ..Default::default() };
    let s = state.buffer(OP)?;
    ctx.dispatch(&LOSS_SCALE_UPDATE, &p, &[s, s, s, template, args], [1, 1, 1])
}
