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
use crate::ops::optim::slot_layout;
use crate::tensor::Tensor;
use crate::train::LossScale;

const SHADER: Shader = Shader::new("loss_scale", include_str!("../../shaders/loss_scale.wgsl"));
/// Gradients one `loss_scale_unscale` dispatch takes (`SLOTS` in the WGSL).
const SLOTS: usize = 7;
const NO_SLOTS: [crate::kernel::Access; SLOTS] = [Unused; SLOTS];
const GRAD_SLOTS: [crate::kernel::Access; SLOTS] = [ReadWrite; SLOTS];
const fn bindings(head: [crate::kernel::Access; 6], slots: [crate::kernel::Access; SLOTS]) -> [crate::kernel::Access; 6 + SLOTS] {
    let mut out = [Unused; 6 + SLOTS];
    let mut i = 0;
    while i < 6 + SLOTS {
        out[i] = if i < 6 { head[i] } else { slots[i - 6] };
        i += 1;
    }
    out
}
const APPLY: [crate::kernel::Access; 6 + SLOTS] = bindings([ReadWrite, Read, ReadWrite, Unused, Unused, Uniform], NO_SLOTS);
const UNSCALE: [crate::kernel::Access; 6 + SLOTS] = bindings([ReadWrite, Unused, Unused, Unused, Unused, Uniform], GRAD_SLOTS);
const UPDATE: [crate::kernel::Access; 6 + SLOTS] = bindings([ReadWrite, Unused, Unused, Read, ReadWrite, Uniform], NO_SLOTS);
pub(crate) static LOSS_SCALE_APPLY: Kernel<LossScaleParams> = Kernel::new(&SHADER, "loss_scale_apply", &APPLY).with_work(|p| Work::f32s(2 * p.len as usize, p.len as usize));
pub(crate) static LOSS_SCALE_UNSCALE: Kernel<LossScaleParams> = Kernel::new(&SHADER, "loss_scale_unscale", &UNSCALE).with_work(|p| Work::f32s(2 * p.len as usize, p.len as usize));
pub(crate) static LOSS_SCALE_UPDATE: Kernel<LossScaleParams> = Kernel::new(&SHADER, "loss_scale_update", &UPDATE).with_work(|_| Work::f32s(8, 0));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&LOSS_SCALE_APPLY.def, &LOSS_SCALE_UNSCALE.def, &LOSS_SCALE_UPDATE.def];

/// Matches `LossScaleParams` in `shaders/loss_scale.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct LossScaleParams {
    pub slot_len: [u32; 8],
    pub first: [u32; 8],
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
    let mut binds = vec![state.buffer(OP)?, xb, out.buffer(OP)?];
    binds.resize(5 + SLOTS, xb);
    ctx.dispatch(&LOSS_SCALE_APPLY, &p, &binds, ctx.grid_1d(x.numel(), 256))?;
    Ok(out)
}

/// Divides every gradient by the scale in place, flagging a value that is
/// not finite in `state`: up to seven tensors a dispatch, one larger than a
/// binding (VGG-16's fc6) in windows.
pub(crate) fn loss_scale_unscale(grads: &mut [&mut Tensor], state: &Tensor) -> Result<()> {
    let Some(first) = grads.first() else { return Ok(()) };
    let ctx = gpu_of(first)?;
    for g in grads.iter_mut() {
        g.make_unique()?;
    }
    let s = state.buffer(OP)?;
    let mut pieces: Vec<(usize, Bind)> = Vec::new();
    for g in grads.iter() {
        let (len, gb) = (g.numel(), g.buffer(OP)?);
        pieces.extend(ctx.binding_windows(len).map(|(start, n)| (n, gb.elements(start, n, len))));
    }
    for chunk in pieces.chunks(SLOTS) {
        let mut p = LossScaleParams::default();
        let groups;
        (p.first, p.slot_len, groups) = slot_layout(chunk.iter().map(|(n, _)| *n), SLOTS);
        // Five bindings before the slots: the state, then ones this entry does not use.
        // An unused slot is never touched: the first gradient stands in.
        let mut binds: Vec<Bind> = vec![s; 5];
        binds.extend((0..SLOTS).map(|k| chunk.get(k).unwrap_or(&chunk[0]).1));
        p.len = groups * 256;
        ctx.dispatch(&LOSS_SCALE_UNSCALE, &p, &binds, ctx.grid_1d(groups as usize * 256, 256))?;
    }
    Ok(())
}

/// The state's update after a step, writing the gated dispatches' indirect
/// arguments (`template` → `args`: zeros when the step is skipped).
pub(crate) fn loss_scale_update(state: &Tensor, cfg: &LossScale, template: Bind<'_>, args: Bind<'_>) -> Result<()> {
    let ctx = gpu_of(state)?;
    let p = LossScaleParams { len: 1, growth: cfg.growth_factor, backoff: cfg.backoff_factor, interval: cfg.growth_interval, ..Default::default() };
    let s = state.buffer(OP)?;
    let mut binds = vec![s, s, s, template, args];
    binds.resize(5 + SLOTS, s);
    ctx.dispatch(&LOSS_SCALE_UPDATE, &p, &binds, [1, 1, 1])
}
