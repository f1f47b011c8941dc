//! Swapping the two leading axes (`[a, b, …] → [b, a, …]`), with an optional
//! per-channel bias: conv moves between channel-major GEMM results and NCHW with it.

use bytemuck::{Pod, Zeroable};

use crate::gpu::Bind;
use crate::device::Device;
use crate::error::{shape_err, Result};
use crate::gpu::GpuContext;
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("permute", include_str!("../../shaders/permute.wgsl"));
pub(crate) static PERMUTE_SWAP: Kernel<PermuteParams> = Kernel::new(&SHADER, "permute_swap", &[Read, Read, ReadWrite, Uniform])
    .with_work(|p| Work::f32s(2 * (p.a * p.b * p.inner) as usize, if p.bias_len > 0 { (p.a * p.b * p.inner) as usize } else { 0 }));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&PERMUTE_SWAP.def];

/// Matches `PermuteParams` in `shaders/permute.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PermuteParams {
    pub a: u32,
    pub b: u32,
    pub inner: u32,
    pub bias_len: u32,
    pub in_offset: u32,
    pub out_offset: u32,
    /// 1: ReLU after the bias.
    pub relu: u32,
    /// 1: `inner` reversed too (not with `relu`).
    pub flip: u32,
}

/// `[a, b, rest…] → [b, a, rest…]`; `bias` (length `a`) is added along the new axis 1.
pub fn permute_swap(x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "permute_swap";
    let s = x.shape();
    if s.len() < 2 {
        return shape_err(OP, format!("need at least 2 axes to swap, got {s:?}"));
    }
    let (a, b, inner) = (s[0], s[1], s[2..].iter().product::<usize>());
    let mut operands = vec![x];
    if let Some(bias) = bias {
        if bias.shape() != [a] {
            return shape_err(OP, format!("bias has shape {:?}, expected [{a}] for input {s:?}", bias.shape()));
        }
        operands.push(bias);
    }
    let mut out_shape = vec![b, a];
    out_shape.extend_from_slice(&s[2..]);
    match same_device(OP, &operands)? {
        Device::Cpu => {
            let bias = bias.map(|t| t.host(OP)).transpose()?;
            Ok(Tensor::from_cpu(&out_shape, permute_swap_cpu(x.host(OP)?, a, b, inner, bias)))
        }
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, OP, &out_shape)?;
            let bias = bias.map(|t| Ok((t.buffer(OP)?, a))).transpose()?;
            permute_swap_gpu(&ctx, x.buffer(OP)?, 0, out.buffer(OP)?, 0, [a, b, inner], bias, false)?;
            Ok(out)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// x: (a, b, inner) → (b, a, inner), plus `bias[channel]` where the output's
/// channel is `(index / inner) mod bias.len()`.
pub fn permute_swap_cpu(x: &[f32], a: usize, b: usize, inner: usize, bias: Option<&[f32]>) -> Vec<f32> {
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
#[allow(clippy::too_many_arguments)]
/// `[a, b, inner] → [b, a, inner reversed]`: a convolution's weights
/// `[c_out, c_in, taps]` (one group) as those of the convolution that maps
/// its dy to its dx (`[c_in, c_out]`, each kernel rotated by 180°; the CPU
/// path's `flip_weights`).
pub(crate) fn permute_flip_gpu(ctx: &GpuContext, x: Bind<'_>, out: Bind<'_>, [a, b, inner]: [usize; 3]) -> Result<()> {
    let params = PermuteParams { a: a as u32, b: b as u32, inner: inner as u32, flip: 1, ..PermuteParams::default() };
    let seg = PERMUTE_SWAP.def.constant("SEG", 32) as usize;
    ctx.dispatch(&PERMUTE_SWAP, &params, &[x, x, out], ctx.grid_1d(a * b * inner.div_ceil(seg), 256))
}

pub(crate) fn permute_swap_gpu(
    ctx: &GpuContext,
    x: Bind<'_>,
    in_offset: usize,
    out: Bind<'_>,
    out_offset: usize,
    [a, b, inner]: [usize; 3],
    bias: Option<(Bind<'_>, usize)>,
    relu: bool,
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
        relu: relu as u32,
        ..PermuteParams::default()
    };
    // Without a bias the binding still needs a buffer; the kernel never reads it.
    // One invocation per SEG elements of a row (see the shader).
    let seg = PERMUTE_SWAP.def.constant("SEG", 32) as usize;
    ctx.dispatch(&PERMUTE_SWAP, &params, &[x, bias.map_or(x, |(bb, _)| bb), out], ctx.grid_1d(a * b * inner.div_ceil(seg), 256))
}
