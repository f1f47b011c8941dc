//! Activations: ReLU, LeakyReLU, sigmoid, tanh, GELU (erf and tanh forms),
//! forward and backward (from the saved input).

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::Result;
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::check_shape;
use crate::tensor::{same_device, Tensor};

const SHADER: Shader = Shader::new("activation", include_str!("../../shaders/activation.wgsl"));
pub(crate) static ACTIVATION_FORWARD: Kernel<ActParams> = Kernel::new(&SHADER, "activation_forward", &[Read, Unused, ReadWrite, Uniform]).with_work(|p| Work::f32s(2 * p.len as usize, 4 * p.len as usize));
pub(crate) static ACTIVATION_BACKWARD: Kernel<ActParams> = Kernel::new(&SHADER, "activation_backward", &[Read, Read, ReadWrite, Uniform]).with_work(|p| Work::f32s(3 * p.len as usize, 5 * p.len as usize));
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&ACTIVATION_FORWARD.def, &ACTIVATION_BACKWARD.def];

/// An elementwise activation function, PyTorch's definitions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// max(x, 0).
    Relu,
    /// Slope for x ≤ 0 (PyTorch's default is 0.01).
    LeakyRelu(f32),
    /// 1 / (1 + e^−x).
    Sigmoid,
    /// tanh(x).
    Tanh,
    /// Exact GELU, x·Φ(x).
    Gelu,
    /// GELU's tanh approximation.
    GeluTanh,
}

impl Activation {
    fn kind(self) -> (u32, f32) {
        match self {
            Activation::Relu => (0, 0.0),
            Activation::LeakyRelu(s) => (1, s),
            Activation::Sigmoid => (2, 0.0),
            Activation::Tanh => (3, 0.0),
            Activation::Gelu => (4, 0.0),
            Activation::GeluTanh => (5, 0.0),
        }
    }

    /// Every activation (one parameter value for LeakyReLU).
    pub const ALL: [Activation; 6] =
        [Activation::Relu, Activation::LeakyRelu(0.01), Activation::Sigmoid, Activation::Tanh, Activation::Gelu, Activation::GeluTanh];
}

/// Matches `ActParams` in `shaders/activation.wgsl`.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ActParams {
    pub len: u32,
    pub kind: u32,
    pub slope: f32,
    pub _pad0: u32,
}

/// `y = f(x)`.
pub fn activation_forward(x: &Tensor, act: Activation) -> Result<Tensor> {
    run("activation_forward", x, None, act)
}

/// `dx = dy · f'(x)`, from the input x the forward saw.
pub fn activation_backward(x: &Tensor, dy: &Tensor, act: Activation) -> Result<Tensor> {
    check_shape("activation_backward", "dy", dy.shape(), x.shape())?;
    run("activation_backward", x, Some(dy), act)
}

fn run(op: &'static str, x: &Tensor, dy: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    let operands: Vec<&Tensor> = std::iter::once(x).chain(dy).collect();
    match same_device(op, &operands)? {
        Device::Cpu => Ok(Tensor::from_cpu(x.shape(), map_cpu(act, x.host(op)?, dy.map(|d| d.host(op)).transpose()?))),
        Device::Gpu(ctx) => {
            let out = Tensor::uninit_gpu(&ctx, op, x.shape())?;
            let (kind, slope) = act.kind();
            let p = ActParams { len: x.numel() as u32, kind, slope, _pad0: 0 };
            let xb = x.buffer(op)?;
            // Forward binds x in dy's slot too; the kernel does not read it.
            let (kernel, dyb) = match dy {
                Some(d) => (&ACTIVATION_BACKWARD, d.buffer(op)?),
                None => (&ACTIVATION_FORWARD, xb),
            };
            ctx.dispatch(kernel, &p, &[xb, dyb, out.buffer(op)?], ctx.grid_1d(x.numel(), 256))?;
            Ok(out)
        }
    }
}

// ---------------------------------------------------------------- CPU reference

/// f(x), or dy·f'(x), elementwise. The match on `act` is outside the loop, so
/// each activation gets its own (vectorised, for ReLU) loop.
fn map_cpu(act: Activation, xs: &[f32], dy: Option<&[f32]>) -> Vec<f32> {
    fn go(xs: &[f32], dy: Option<&[f32]>, f: impl Fn(f32) -> f32, df: impl Fn(f32) -> f32) -> Vec<f32> {
        match dy {
            None => xs.iter().map(|&v| f(v)).collect(),
            Some(dy) => xs.iter().zip(dy).map(|(&v, &d)| d * df(v)).collect(),
        }
    }
    match act {
        Activation::Relu => go(xs, dy, |v| activation_forward_cpu(Activation::Relu, v), |v| activation_derivative_cpu(Activation::Relu, v)),
        other => go(xs, dy, |v| activation_forward_cpu(other, v), |v| activation_derivative_cpu(other, v)),
    }
}

/// f(x) in place (a layer's output, when the activation after it is fused
/// into it); ReLU gets its own vectorised loop, as in `map_cpu`.
pub fn activation_forward_in_place_cpu(act: Activation, xs: &mut [f32]) {
    match act {
        Activation::Relu => xs.iter_mut().for_each(|v| *v = activation_forward_cpu(Activation::Relu, *v)),
        other => xs.iter_mut().for_each(|v| *v = activation_forward_cpu(other, *v)),
    }
}

fn sigmoid(v: f32) -> f32 {
    if v >= 0.0 {
        1.0 / (1.0 + (-v).exp())
    } else {
        let e = v.exp();
        e / (1.0 + e)
    }
}

fn tanh_stable(v: f32) -> f32 {
    let e = (-2.0 * v.abs()).exp();
    v.signum() * (1.0 - e) / (1.0 + e)
}

/// Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), as in the shader.
pub(crate) fn erf_approx(v: f32) -> f32 {
    let a = v.abs();
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    v.signum() * (1.0 - poly * (-a * a).exp())
}

const SQRT_2_OVER_PI: f32 = 0.797_884_6;

#[inline]
/// f(v).
pub fn activation_forward_cpu(act: Activation, v: f32) -> f32 {
    match act {
        // f32::max drops a NaN; PyTorch's ReLU passes it on.
        Activation::Relu => if v.is_nan() { v } else { v.max(0.0) },
        Activation::LeakyRelu(s) => {
            if v > 0.0 {
                v
            } else {
                s * v
            }
        }
        Activation::Sigmoid => sigmoid(v),
        Activation::Tanh => tanh_stable(v),
        Activation::Gelu => 0.5 * v * (1.0 + erf_approx(v * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => 0.5 * v * (1.0 + tanh_stable(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v))),
    }
}

/// `dx ·= (y > 0)`: ReLU's backward from its output `y`, in place (the
/// reference for the kernels that fuse it: max-pool backward, the GEMM epilogue).
pub fn activation_relu_backward_cpu(dx: &mut [f32], y: &[f32]) {
    dx.iter_mut().zip(y).for_each(|(g, &v)| *g *= activation_derivative_cpu(Activation::Relu, v));
}

#[inline]
/// f′(v) (ReLU's is 0 at 0, as PyTorch).
pub fn activation_derivative_cpu(act: Activation, v: f32) -> f32 {
    match act {
        Activation::Relu => (v > 0.0) as u8 as f32,
        Activation::LeakyRelu(s) => {
            if v > 0.0 {
                1.0
            } else {
                s
            }
        }
        Activation::Sigmoid => {
            let s = sigmoid(v);
            s * (1.0 - s)
        }
        Activation::Tanh => {
            let t = tanh_stable(v);
            1.0 - t * t
        }
        Activation::Gelu => {
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f32::consts::PI).sqrt();
            0.5 * (1.0 + erf_approx(v * std::f32::consts::FRAC_1_SQRT_2)) + v * pdf
        }
        Activation::GeluTanh => {
            let t = tanh_stable(SQRT_2_OVER_PI * (v + 0.044715 * v * v * v));
            0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v)
        }
    }
}
