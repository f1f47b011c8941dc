//! Concatenation along dim 1 (channels, or features of `[n, f]`), as
//! `torch.cat(xs, dim=1)`, and its backward, which splits the gradient back
//! into the inputs' slices. One dispatch per input either way.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{shape_err, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("concat", include_str!("../../shaders/concat.wgsl"));
fn work(p: &ConcatParams) -> Work {
    Work::f32s(0, 2 * (p.n * p.c_part * p.inner) as usize)
}
pub(crate) static CONCAT_FORWARD: Kernel<ConcatParams> = Kernel::new(&SHADER, "concat_forward", &[Read, ReadWrite, Uniform]).with_work(work);
pub(crate) static CONCAT_BACKWARD: Kernel<ConcatParams> = Kernel::new(&SHADER, "concat_backward", &[Read, ReadWrite, Uniform]).with_work(work);
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&CONCAT_FORWARD.def, &CONCAT_BACKWARD.def];

/// Matches `ConcatParams` in `shaders/concat.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConcatParams {
    pub n: u32,
    pub c_part: u32,
    pub c_total: u32,
    pub offset: u32,
    pub inner: u32,
    pub _pad: [u32; 3],
}

/// `[n, c_i, ...] → [n, Σ c_i, ...]`: every input must share the batch and the dims after 1.
pub fn concat_forward(xs: &[&Tensor]) -> Result<Tensor> {
    const OP: &str = "concat_forward";
    let Some(first) = xs.first() else { return shape_err(OP, "nothing to concatenate") };
    let base = first.shape();
    if base.len() < 2 {
        return shape_err(OP, format!("inputs need a batch and a channel axis, got {base:?}"));
    }
    for x in xs {
        let s = x.shape();
        if s.len() != base.len() || s[0] != base[0] || s[2..] != base[2..] {
            let shapes: Vec<&[usize]> = xs.iter().map(|t| t.shape()).collect();
            return shape_err(OP, format!("inputs must agree on every dim but 1, got {shapes:?}"));
        }
    }
    let channels: Vec<usize> = xs.iter().map(|x| x.shape()[1]).collect();
    let mut shape = base.to_vec();
    shape[1] = channels.iter().sum();
    let inner: usize = base[2..].iter().product();
    match same_device(OP, xs)? {
        Device::Cpu => {
            let parts = xs.iter().map(|x| x.host(OP)).collect::<Result<Vec<_>>>()?;
            Ok(Tensor::from_cpu(&shape, concat_forward_cpu(&parts, base[0])))
        }
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, OP, &shape)?;
            let mut offset = 0;
            for (x, &c) in xs.iter().zip(&channels) {
                let p = ConcatParams { n: base[0] as u32, c_part: c as u32, c_total: shape[1] as u32, offset: offset as u32, inner: inner as u32, ..Default::default() };
                ctx.dispatch(&CONCAT_FORWARD, &p, &[x.buffer(OP)?, out.buffer(OP)?], ctx.grid_1d(x.numel(), 256))?;
                offset += c;
            }
            Ok(out)
        }
    }
}

/// The gradient of each input of [`concat_forward`]: `dy [n, Σ c_i, ...]` split into `[n, c_i, ...]`.
pub fn concat_backward(dy: &Tensor, channels: &[usize]) -> Result<Vec<Tensor>> {
    const OP: &str = "concat_backward";
    let s = dy.shape();
    if s.len() < 2 || s[1] != channels.iter().sum::<usize>() || channels.contains(&0) {
        return shape_err(OP, format!("dy {s:?} does not split into {channels:?} channels"));
    }
    let inner: usize = s[2..].iter().product();
    let part_shape = |c: usize| {
        let mut p = s.to_vec();
        p[1] = c;
        p
    };
    match dy.device() {
        Device::Cpu => Ok(concat_backward_cpu(dy.host(OP)?, s[0], channels, inner).into_iter().zip(channels).map(|(v, &c)| Tensor::from_cpu(&part_shape(c), v)).collect()),
        Device::Gpu(ctx) => {
            let mut offset = 0;
            let mut out = Vec::with_capacity(channels.len());
            for &c in channels {
                let part = Tensor::uninit_gpu(&ctx, OP, &part_shape(c))?;
                let p = ConcatParams { n: s[0] as u32, c_part: c as u32, c_total: s[1] as u32, offset: offset as u32, inner: inner as u32, ..Default::default() };
                ctx.dispatch(&CONCAT_BACKWARD, &p, &[dy.buffer(OP)?, part.buffer(OP)?], ctx.grid_1d(part.numel(), 256))?;
                out.push(part);
                offset += c;
            }
            Ok(out)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// `parts[i]`: (n, c_i, inner) → (n, Σ c_i, inner); each part's block per image is contiguous.
pub fn concat_forward_cpu(parts: &[&[f32]], n: usize) -> Vec<f32> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total);
    for b in 0..n {
        for p in parts {
            let per = p.len() / n;
            out.extend_from_slice(&p[b * per..(b + 1) * per]);
        }
    }
    out
}

/// (n, Σ c_i, inner) → (n, c_i, inner) for each i.
pub fn concat_backward_cpu(dy: &[f32], n: usize, channels: &[usize], inner: usize) -> Vec<Vec<f32>> {
    let total: usize = channels.iter().sum::<usize>() * inner;
    let mut parts: Vec<Vec<f32>> = channels.iter().map(|c| Vec::with_capacity(n * c * inner)).collect();
    for b in 0..n {
        let mut at = b * total;
        for (part, c) in parts.iter_mut().zip(channels) {
            part.extend_from_slice(&dy[at..at + c * inner]);
            at += c * inner;
        }
    }
    parts
}
