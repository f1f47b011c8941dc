//! Swapping the two leading axes (`[a, b, …] → [b, a, …]`), with an optional
//! per-channel bias: conv moves between channel-major GEMM results and NCHW with it.

use bytemuck::{Pod, Zeroable};

use crate::error::{shape_err, Result};
use crate::gpu::GpuContext;
use crate::kernel::KernelId;
use crate::tensor::{same_device, Data, Tensor};

/// Matches `PermuteParams` in `shaders/permute.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PermuteParams {
    pub a: u32,
    pub b: u32,
    pub inner: u32,
    pub bias_len: u32,
    pub in_offset: u32,
    pub out_offset: u32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// `[a, b, rest…] → [b, a, rest…]`; `bias` (length `a`) is added along the new axis 1.
pub fn swap_leading(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let s = x.shape();
    if s.len() < 2 {
        return shape_err("permute", format!("need at least 2 axes to swap, got {s:?}"));
    }
    let (a, b, inner) = (s[0], s[1], s[2..].iter().product::<usize>());
    if let Some(bias) = bias {
        same_device("permute", &[x, bias])?;
        if bias.shape() != [a] {
            return shape_err("permute", format!("bias has shape {:?}, expected [{a}] for input {s:?}", bias.shape()));
        }
    }
    let mut out_shape = vec![b, a];
    out_shape.extend_from_slice(&s[2..]);
    let mut out = Tensor::uninit(&x.device(), "permute", &out_shape)?;
    match (&x.data, &mut out.data) {
        (Data::Cpu(xs), Data::Cpu(o)) => {
            let bias = bias.map(|t| t.to_vec()).transpose()?;
            let v = swap_leading_cpu(xs.as_slice().unwrap(), a, b, inner, bias.as_deref());
            o.as_slice_mut().unwrap().copy_from_slice(&v);
        }
        (Data::Gpu(xb), Data::Gpu(ob)) => {
            let bias = bias.map(|t| (t.gpu().unwrap().buffer(), a));
            swap_leading_gpu(xb.context(), xb.buffer(), 0, ob.buffer(), 0, [a, b, inner], bias)?;
        }
        _ => unreachable!(),
    }
    Ok(out)
}

// ---------------------------------------------------------------- CPU reference

/// x: (a, b, inner) → (b, a, inner), plus `bias[channel]` where the output's
/// channel is `(index / inner) mod bias.len()`.
pub fn swap_leading_cpu(x: &[f32], a: usize, b: usize, inner: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; a * b * inner];
    for j in 0..b {
        for i in 0..a {
            let o = (j * a + i) * inner;
            let dst = &mut out[o..o + inner];
            dst.copy_from_slice(&x[(i * b + j) * inner..][..inner]);
            if let Some(bv) = bias {
                let add = bv[(o / inner) % bv.len()];
                dst.iter_mut().for_each(|v| *v += add);
            }
        }
    }
    out
}

// ---------------------------------------------------------------- GPU wrapper

/// Records the swap of `[a, b, inner]` read at `in_offset`, written at `out_offset`.
pub(crate) fn swap_leading_gpu(
    ctx: &GpuContext,
    x: &wgpu::Buffer,
    in_offset: usize,
    out: &wgpu::Buffer,
    out_offset: usize,
    [a, b, inner]: [usize; 3],
    bias: Option<(&wgpu::Buffer, usize)>,
) -> Result<()> {
    // The length is passed, not read off the buffer: pooled buffers are rounded up.
    let bias_len = bias.map_or(0, |(_, len)| len as u32);
    let params = PermuteParams {
        a: a as u32,
        b: b as u32,
        inner: inner as u32,
        bias_len,
        in_offset: in_offset as u32,
        out_offset: out_offset as u32,
        ..PermuteParams::default()
    };
    // Without a bias the binding still needs a buffer; the kernel never reads it.
    // One invocation per SEG elements of a row (see the shader).
    let seg = KernelId::PermuteSwap.constant("SEG", 32) as usize;
    ctx.dispatch(KernelId::PermuteSwap, &params, &[x, bias.map_or(x, |(bb, _)| bb), out], ctx.grid_1d(a * b * inner.div_ceil(seg), 256))
}
