//! Elementwise arithmetic: add, scale/accumulate in place, fill, the L1
//! penalty's sign, and a product that broadcasts its second operand over
//! trailing axes. Gradient accumulation and zeroing are these.

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::{shape_err, Result};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::activation::{activation_derivative_cpu, activation_forward_cpu, Activation};
use crate::ops::check_shape;
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("elementwise", include_str!("../../shaders/elementwise.wgsl"));
const BINDINGS: &[crate::kernel::Access] = &[Read, Read, ReadWrite, Read, Uniform];
pub(crate) static ELEMENTWISE_ADD: Kernel<EwParams> = Kernel::new(&SHADER, "elementwise_add", BINDINGS).with_work(|p| Work::f32s(3 * p.len as usize, 3 * p.len as usize));
pub(crate) static ELEMENTWISE_COMBINE: Kernel<EwParams> = Kernel::new(&SHADER, "elementwise_combine", &[Read, Unused, ReadWrite, Unused, Uniform]).with_work(|p| Work::f32s(3 * p.len as usize, 3 * p.len as usize));
pub(crate) static ELEMENTWISE_FILL: Kernel<EwParams> = Kernel::new(&SHADER, "elementwise_fill", &[Unused, Unused, ReadWrite, Unused, Uniform]).with_work(|p| Work::f32s(p.len as usize, 0));
pub(crate) static ELEMENTWISE_COMBINE_SIGN: Kernel<EwParams> = Kernel::new(&SHADER, "elementwise_combine_sign", &[Read, Unused, ReadWrite, Unused, Uniform]).with_work(|p| Work::f32s(3 * p.len as usize, 3 * p.len as usize));
pub(crate) static ELEMENTWISE_MUL: Kernel<EwParams> = Kernel::new(&SHADER, "elementwise_mul", &[Read, Read, ReadWrite, Unused, Uniform]).with_work(|p| Work::f32s(2 * p.len as usize, 2 * p.len as usize));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] =
    &[&ELEMENTWISE_ADD.def, &ELEMENTWISE_COMBINE.def, &ELEMENTWISE_FILL.def, &ELEMENTWISE_COMBINE_SIGN.def, &ELEMENTWISE_MUL.def];

/// Matches `EwParams` in `shaders/elementwise.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct EwParams {
    pub len: u32,
    pub alpha: f32,
    pub beta: f32,
    /// elementwise_add: 1 ReLU after the sum; 2 times `mask > 0` (a ReLU's backward).
    pub relu: u32,
    /// elementwise_mul: elements of `a` per element of `b`.
    pub inner: u32,
    pub _pad: [u32; 3],
}

/// `alpha·a + beta·b` as a new tensor.
pub fn elementwise_add(a: &Tensor, b: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    add(a, b, alpha, beta, Epi::None)
}

/// `relu(alpha·a + beta·b)` in one pass (NaN passes, as in PyTorch): a
/// residual block's sum and the ReLU after it.
pub fn elementwise_add_relu(a: &Tensor, b: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    add(a, b, alpha, beta, Epi::Relu)
}

/// `(alpha·a + beta·b) · (relu_out > 0)` in one pass: a sum taken back
/// through the ReLU whose output is `relu_out` (a residual block's input
/// gradient, when a ReLU made its input).
pub fn elementwise_add_relu_backward(a: &Tensor, b: &Tensor, relu_out: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    check_shape("elementwise_add", "the ReLU output", relu_out.shape(), a.shape())?;
    add(a, b, alpha, beta, Epi::ReluBackward(relu_out))
}

/// What `add` does after the sum.
enum Epi<'a> {
    None,
    Relu,
    ReluBackward(&'a Tensor),
}

fn add(a: &Tensor, b: &Tensor, alpha: f32, beta: f32, epi: Epi) -> Result<Tensor> {
    const OP: &str = "elementwise_add";
    check_shape(OP, "b", b.shape(), a.shape())?;
    let mask = match epi {
        Epi::ReluBackward(m) => Some(m),
        _ => None,
    };
    match same_device(OP, &[a, b].into_iter().chain(mask).collect::<Vec<_>>())? {
        Device::Cpu => {
            // One pass: the epilogue applied to each sum as it is made (the
            // same values as the reference ops run one after the other).
            let sums = a.host(OP)?.iter().zip(b.host(OP)?).map(|(x, y)| alpha * x + beta * y);
            let out: Vec<f32> = match epi {
                Epi::None => sums.collect(),
                Epi::Relu => sums.map(|v| activation_forward_cpu(Activation::Relu, v)).collect(),
                Epi::ReluBackward(m) => sums.zip(m.host(OP)?).map(|(g, &v)| g * activation_derivative_cpu(Activation::Relu, v)).collect(),
            };
            Ok(Tensor::from_cpu(a.shape(), out))
        }
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, OP, a.shape())?;
            let relu = match epi {
                Epi::None => 0,
                Epi::Relu => 1,
                Epi::ReluBackward(_) => 2,
            };
            let p = EwParams { len: a.numel() as u32, alpha, beta, relu, ..Default::default() };
            let ab = a.buffer(OP)?;
            // The mask binding is read only with relu 2; A stands in otherwise.
            let mb = mask.map(|m| m.buffer(OP)).transpose()?.unwrap_or(ab);
            ctx.dispatch(&ELEMENTWISE_ADD, &p, &[ab, b.buffer(OP)?, out.buffer(OP)?, mb], ctx.grid_1d(a.numel(), 256))?;
            Ok(out)
        }
    }
}

/// In place: `out = alpha·a + beta·out` (beta = 0 overwrites, even NaN).
/// Scaling, copying and gradient accumulation are all this.
pub fn elementwise_combine(out: &mut Tensor, a: &Tensor, alpha: f32, beta: f32) -> Result<()> {
    const OP: &str = "elementwise_combine";
    if a.numel() != out.numel() {
        return shape_err(OP, format!("a has shape {:?} but out has {:?}", a.shape(), out.shape()));
    }
    let dev = same_device(OP, &[a, out])?;
    out.make_unique()?;
    match dev {
        Device::Cpu => elementwise_combine_cpu(out.host_mut(OP)?, a.host(OP)?, alpha, beta),
        Device::Gpu(ctx) => {
            let p = EwParams { len: a.numel() as u32, alpha, beta, ..Default::default() };
            let x = a.buffer(OP)?;
            ctx.dispatch(&ELEMENTWISE_COMBINE, &p, &[x, x, out.buffer(OP)?, x], ctx.grid_1d(a.numel(), 256))?;
        }
    }
    Ok(())
}

/// In place: every element becomes `value`.
pub fn elementwise_fill(out: &mut Tensor, value: f32) -> Result<()> {
    const OP: &str = "elementwise_fill";
    out.make_unique()?;
    match out.device() {
        Device::Cpu => out.host_mut(OP)?.fill(value),
        Device::Gpu(ctx) => {
            let p = EwParams { len: out.numel() as u32, alpha: value, ..Default::default() };
            ctx.dispatch(&ELEMENTWISE_FILL, &p, &[ctx.scratch(0), ctx.scratch(0), out.buffer(OP)?, ctx.scratch(0)], ctx.grid_1d(out.numel(), 256))?;
        }
    }
    Ok(())
}

/// In place: `out = alpha·sign(a) + beta·out` (the L1 penalty's gradient).
pub fn elementwise_combine_sign(out: &mut Tensor, a: &Tensor, alpha: f32, beta: f32) -> Result<()> {
    const OP: &str = "elementwise_combine_sign";
    check_shape(OP, "a", a.shape(), out.shape())?;
    let dev = same_device(OP, &[a, out])?;
    out.make_unique()?;
    match dev {
        Device::Cpu => elementwise_combine_sign_cpu(out.host_mut(OP)?, a.host(OP)?, alpha, beta),
        Device::Gpu(ctx) => {
            let p = EwParams { len: a.numel() as u32, alpha, beta, ..Default::default() };
            let x = a.buffer(OP)?;
            ctx.dispatch(&ELEMENTWISE_COMBINE_SIGN, &p, &[x, x, out.buffer(OP)?, x], ctx.grid_1d(a.numel(), 256))?;
        }
    }
    Ok(())
}

/// `alpha·a·b`, `b` broadcast over `a`'s trailing axes: `b`'s shape is a
/// prefix of `a`'s (`[n, c]` gates each channel of an `[n, c, h, w]` tensor,
/// as a squeeze-and-excitation block does); equal shapes multiply elementwise.
pub fn elementwise_mul(a: &Tensor, b: &Tensor, alpha: f32) -> Result<Tensor> {
    const OP: &str = "elementwise_mul";
    let (sa, sb) = (a.shape(), b.shape());
    if sb.len() > sa.len() || sa[..sb.len()] != *sb {
        return shape_err(OP, format!("b's shape {sb:?} must be a prefix of a's {sa:?} (b broadcasts over a's trailing axes)"));
    }
    let inner = sa[sb.len()..].iter().product::<usize>();
    match same_device(OP, &[a, b])? {
        Device::Cpu => Ok(Tensor::from_cpu(sa, elementwise_mul_cpu(a.host(OP)?, b.host(OP)?, alpha))),
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, OP, sa)?;
            let p = EwParams { len: a.numel() as u32, alpha, inner: inner.max(1) as u32, ..Default::default() };
            let ab = a.buffer(OP)?;
            ctx.dispatch(&ELEMENTWISE_MUL, &p, &[ab, b.buffer(OP)?, out.buffer(OP)?, ab], ctx.grid_1d(a.numel(), 256))?;
            Ok(out)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// a (len), b (len / inner) → alpha·a[i]·b[i / inner], `inner` = a.len() / b.len().
pub fn elementwise_mul_cpu(a: &[f32], b: &[f32], alpha: f32) -> Vec<f32> {
    let inner = if b.is_empty() { 1 } else { a.len() / b.len() };
    a.iter().enumerate().map(|(i, x)| alpha * x * b[i / inner]).collect()
}

/// a, b: (len) → alpha·a + beta·b.
pub fn elementwise_add_cpu(a: &[f32], b: &[f32], alpha: f32, beta: f32) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| alpha * x + beta * y).collect()
}

/// out = alpha·a + beta·out; beta = 0 ignores out (NaN included).
pub fn elementwise_combine_cpu(out: &mut [f32], a: &[f32], alpha: f32, beta: f32) {
    out.iter_mut().zip(a).for_each(|(o, x)| *o = alpha * x + if beta == 0.0 { 0.0 } else { beta * *o });
}

/// out = alpha·sign(a) + beta·out, with WGSL's sign (0 at 0).
pub fn elementwise_combine_sign_cpu(out: &mut [f32], a: &[f32], alpha: f32, beta: f32) {
    let sign = |v: f32| if v > 0.0 { 1.0 } else if v < 0.0 { -1.0 } else { 0.0 };
    out.iter_mut().zip(a).for_each(|(o, x)| *o = alpha * sign(*x) + beta * *o);
}
