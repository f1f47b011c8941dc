//! Elementwise helpers: add, scale/accumulate in place, fill, bias add and the
//! bias gradient (a per-channel reduction).

use bytemuck::{Pod, Zeroable};

use crate::error::{shape_err, Error, Result};
use crate::kernel::KernelId;
use crate::ops::check_shape;
use crate::tensor::{same_device, Data, Tensor};

/// Matches `EwParams` in `shaders/elementwise.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct EwParams {
    pub len: u32,
    pub inner: u32,
    pub channels: u32,
    pub outer: u32,
    pub alpha: f32,
    pub beta: f32,
    pub _pad0: u32,
    pub _pad1: u32,
}

/// `alpha·a + beta·b` as a new tensor.
pub fn add(a: &Tensor, b: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    check_shape("add", "b", b.shape(), a.shape())?;
    same_device("add", &[a, b])?;
    let mut out = Tensor::uninit(&a.device(), "add", a.shape())?;
    match (&a.data, &b.data) {
        (Data::Cpu(x), Data::Cpu(y)) => out = Tensor::from_cpu(&out.shape().to_vec(), x.as_slice().expect("contiguous").iter().zip(y.as_slice().expect("contiguous")).map(|(x, y)| alpha * x + beta * y).collect()),
        (Data::Gpu(x), Data::Gpu(y)) => {
            let ctx = x.context();
            let p = EwParams { len: a.numel() as u32, alpha, beta, ..Default::default() };
            ctx.dispatch(KernelId::ElementwiseAdd, &p, &[x.buffer(), y.buffer(), out.gpu().unwrap().buffer()], ctx.grid_1d(a.numel(), 256))?;
        }
        _ => unreachable!("same_device checked"),
    }
    Ok(out)
}

/// In place: `out = alpha·a + beta·out` (beta = 0 overwrites, even NaN).
/// Scaling, copying and gradient accumulation are all this.
pub fn combine_into(out: &mut Tensor, a: &Tensor, alpha: f32, beta: f32) -> Result<()> {
    if a.numel() != out.numel() {
        return shape_err("combine", format!("a has shape {:?} but out has {:?}", a.shape(), out.shape()));
    }
    same_device("combine", &[a, out])?;
    out.make_unique()?;
    let len = a.numel();
    match (&a.data, &mut out.data) {
        (Data::Cpu(x), Data::Cpu(o)) => o.as_slice_mut().expect("contiguous").iter_mut().zip(x.as_slice().expect("contiguous")).for_each(|(o, x)| *o = alpha * x + if beta == 0.0 { 0.0 } else { beta * *o }),
        (Data::Gpu(x), Data::Gpu(o)) => {
            let ctx = x.context();
            let p = EwParams { len: len as u32, alpha, beta, ..Default::default() };
            ctx.dispatch(KernelId::ElementwiseCombine, &p, &[x.buffer(), x.buffer(), o.buffer()], ctx.grid_1d(len, 256))?;
        }
        _ => unreachable!("same_device checked"),
    }
    Ok(())
}

/// In place: every element becomes `value`.
pub fn fill(out: &mut Tensor, value: f32) -> Result<()> {
    out.make_unique()?;
    let len = out.numel();
    match &mut out.data {
        Data::Cpu(o) => o.fill(value),
        Data::Gpu(o) => {
            let ctx = o.context();
            let p = EwParams { len: len as u32, alpha: value, ..Default::default() };
            ctx.dispatch(KernelId::ElementwiseFill, &p, &[ctx.scratch(0), ctx.scratch(0), o.buffer()], ctx.grid_1d(len, 256))?;
        }
    }
    Ok(())
}

/// `x + bias` with bias `[c]` broadcast over axis 1 of `x` `[n, c, …]`.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (outer, c, inner) = channel_dims("bias_add", x)?;
    check_shape("bias_add", "bias", bias.shape(), &[c])?;
    same_device("bias_add", &[x, bias])?;
    let mut out = Tensor::uninit(&x.device(), "bias_add", x.shape())?;
    match (&x.data, &bias.data) {
        (Data::Cpu(xs), Data::Cpu(bs)) => {
            let bs = bs.as_slice().unwrap();
            out = Tensor::from_cpu(&out.shape().to_vec(), xs.as_slice().expect("contiguous").iter().enumerate().map(|(i, v)| v + bs[(i / inner) % c]).collect());
        }
        (Data::Gpu(xb), Data::Gpu(bb)) => {
            let ctx = xb.context();
            let p = EwParams { len: (outer * c * inner) as u32, inner: inner as u32, channels: c as u32, outer: outer as u32, ..Default::default() };
            ctx.dispatch(KernelId::BiasAdd, &p, &[xb.buffer(), bb.buffer(), out.gpu().unwrap().buffer()], ctx.grid_1d(x.numel(), 256))?;
        }
        _ => unreachable!("same_device checked"),
    }
    Ok(out)
}

/// The bias gradient: `dy` `[n, c, …]` summed over every axis but 1 → `[c]`.
pub fn bias_grad(dy: &Tensor) -> Result<Tensor> {
    let (outer, c, inner) = channel_dims("bias_grad", dy)?;
    let mut out = Tensor::uninit(&dy.device(), "bias_grad", &[c])?;
    match &dy.data {
        Data::Cpu(d) => out = Tensor::from_cpu(&out.shape().to_vec(), bias_grad_cpu(d.as_slice().unwrap(), outer, c, inner)),
        Data::Gpu(db) => {
            let ctx = db.context();
            let p = EwParams { len: c as u32, inner: inner as u32, channels: c as u32, outer: outer as u32, ..Default::default() };
            ctx.dispatch(KernelId::BiasGrad, &p, &[db.buffer(), db.buffer(), out.gpu().unwrap().buffer()], ctx.grid_1d(c, 256))?;
        }
    }
    Ok(out)
}

fn channel_dims(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize)> {
    let s = x.shape();
    if s.len() < 2 {
        return shape_err(op, format!("input must be [n, c, …], got {s:?}"));
    }
    Ok((s[0], s[1], s[2..].iter().product()))
}

/// In place: `out = alpha·sign(a) + beta·out` (the L1 penalty's gradient).
pub fn combine_sign_into(out: &mut Tensor, a: &Tensor, alpha: f32, beta: f32) -> Result<()> {
    check_shape("combine_sign", "a", a.shape(), out.shape())?;
    same_device("combine_sign", &[a, out])?;
    out.make_unique()?;
    let len = a.numel();
    match (&a.data, &mut out.data) {
        (Data::Cpu(x), Data::Cpu(o)) => o.as_slice_mut().expect("contiguous").iter_mut().zip(x.as_slice().expect("contiguous")).for_each(|(o, x)| *o = alpha * sign(*x) + beta * *o),
        (Data::Gpu(x), Data::Gpu(o)) => {
            let ctx = x.context();
            let p = EwParams { len: len as u32, alpha, beta, ..Default::default() };
            ctx.dispatch(KernelId::CombineSign, &p, &[x.buffer(), x.buffer(), o.buffer()], ctx.grid_1d(len, 256))?;
        }
        _ => unreachable!("same_device checked"),
    }
    Ok(())
}

/// WGSL's sign: 0 at 0.
fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Σ x² of each tensor, read back in one go (one readback on the GPU). The
/// trainer's gradient check uses it; a non-finite entry means a NaN or
/// infinity (or a norm past f32's range) somewhere in that tensor.
pub fn sum_squares_each(tensors: &[&Tensor]) -> Result<Vec<f32>> {
    if tensors.is_empty() {
        return Ok(Vec::new());
    }
    let dev = same_device("sum_squares", tensors)?;
    match &dev {
        crate::device::Device::Cpu => tensors
            .iter()
            .map(|t| Ok(t.to_vec()?.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() as f32))
            .collect(),
        crate::device::Device::Gpu(ctx) => {
            let slots = ctx.alloc("sum_squares", tensors.len())?;
            for (i, t) in tensors.iter().enumerate() {
                crate::ops::reduce::sum_squares_gpu(ctx, t.gpu().unwrap().buffer(), t.numel(), slots.buffer(), i)?;
            }
            ctx.read(slots.buffer(), tensors.len())
        }
    }
}

/// Scales the tensors together so their global L2 norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`, factor `max_norm / (norm + 1e-6)` capped at 1).
/// On the GPU the norm never leaves the device. Returns nothing: reading the
/// norm would cost a readback per step.
pub fn clip_global_norm(tensors: &mut [&mut Tensor], max_norm: f32) -> Result<()> {
    if !(max_norm > 0.0) {
        return Err(Error::InvalidArgument { op: "clip_grad_norm", msg: format!("max_norm {max_norm} must be > 0") });
    }
    let Some(first) = tensors.first() else { return Ok(()) };
    let dev = first.device();
    for t in tensors.iter() {
        same_device("clip_grad_norm", &[*first, &**t])?;
    }
    match &dev {
        crate::device::Device::Cpu => {
            let mut norm2 = 0f64;
            for t in tensors.iter() {
                norm2 += t.to_vec()?.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
            }
            let scale = (max_norm as f64 / (norm2.sqrt() + 1e-6)).min(1.0) as f32;
            for t in tensors.iter_mut() {
                if let Data::Cpu(a) = &mut t.data {
                    a.as_slice_mut().expect("contiguous").iter_mut().for_each(|v| *v *= scale);
                }
            }
        }
        crate::device::Device::Gpu(ctx) => {
            use crate::ops::reduce::{sum_rows_gpu, sum_squares_gpu};
            let slots = ctx.alloc("clip_grad_norm", tensors.len())?;
            for (i, t) in tensors.iter().enumerate() {
                sum_squares_gpu(ctx, t.gpu().unwrap().buffer(), t.numel(), slots.buffer(), i)?;
            }
            let total = ctx.alloc("clip_grad_norm", 1)?;
            sum_rows_gpu(ctx, slots.buffer(), total.buffer(), 1, tensors.len(), 0.0)?;
            for t in tensors.iter_mut() {
                t.make_unique()?;
                let len = t.numel();
                let p = EwParams { len: len as u32, alpha: max_norm, ..Default::default() };
                let tb = t.gpu().unwrap().buffer();
                ctx.dispatch(KernelId::ClipScale, &p, &[total.buffer(), total.buffer(), tb], ctx.grid_1d(len, 256))?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- CPU reference

/// dy: (outer, c, inner) → (c): the sum over outer and inner.
pub fn bias_grad_cpu(dy: &[f32], outer: usize, c: usize, inner: usize) -> Vec<f32> {
    (0..c).map(|ch| (0..outer).flat_map(|n| (0..inner).map(move |t| (n * c + ch) * inner + t)).map(|i| dy[i]).sum()).collect()
}
