//! Gradient clipping by global norm (PyTorch's `clip_grad_norm_`): the
//! squared norms are summed by `reduce` kernels and the scale applied by
//! `clip_scale`, so on the GPU the norm never leaves the device.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::reduce::{reduce_rows_gpu, reduce_sum_squares_cpu, reduce_sum_squares_gpu};
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("clip", include_str!("../../shaders/clip.wgsl"));
pub(crate) static CLIP_SCALE: Kernel<ClipParams> = Kernel::new(&SHADER, "clip_scale", &[Read, ReadWrite, Uniform]).with_work(|p| Work::f32s(2 * p.len as usize, p.len as usize));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&CLIP_SCALE.def];

/// Matches `ClipParams` in `shaders/clip.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ClipParams {
    pub len: u32,
    pub max_norm: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// Scales the tensors together so their global L2 norm is at most `max_norm`
/// (factor `max_norm / (norm + 1e-6)` capped at 1). Returns nothing: reading
/// the norm would cost a readback per step.
pub fn clip_global_norm(tensors: &mut [&mut Tensor], max_norm: f32) -> Result<()> {
    const OP: &str = "clip_global_norm";
    if !(max_norm > 0.0) {
        return Err(Error::InvalidArgument { op: OP, msg: format!("max_norm {max_norm} must be > 0") });
    }
    let all: Vec<&Tensor> = tensors.iter().map(|t| &**t).collect();
    if all.is_empty() {
        return Ok(());
    }
    match same_device(OP, &all)? {
        Device::Cpu => {
            let norm2: f64 = all.iter().map(|t| Ok(reduce_sum_squares_cpu(t.host(OP)?) as f64)).sum::<Result<f64>>()?;
            let scale = clip_scale_cpu(norm2, max_norm);
            for t in tensors.iter_mut() {
                t.host_mut(OP)?.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Device::Gpu(ctx) => {
            let slots = ctx.alloc(OP, all.len())?;
            for (i, t) in all.iter().enumerate() {
                reduce_sum_squares_gpu(&ctx, t.buffer(OP)?, t.numel(), slots.buffer(), i)?;
            }
            let total = ctx.alloc(OP, 1)?;
            reduce_rows_gpu(&ctx, slots.buffer(), total.buffer(), 1, all.len(), 0.0)?;
            for t in tensors.iter_mut() {
                t.make_unique()?;
                let p = ClipParams { len: t.numel() as u32, max_norm, ..Default::default() };
                ctx.dispatch(&CLIP_SCALE, &p, &[total.buffer(), t.buffer(OP)?], ctx.grid_1d(t.numel(), 256))?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- CPU reference

/// The factor every gradient is multiplied by, from the squared global norm.
pub fn clip_scale_cpu(norm2: f64, max_norm: f32) -> f32 {
    (max_norm as f64 / (norm2.sqrt() + 1e-6)).min(1.0) as f32
}
