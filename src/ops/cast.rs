//! f32 ⇄ f16 storage casts, for mixed precision's activations kept for
//! backward ([`Tensor::to_half`], [`HalfTensor::to_f32`]). The rounding is
//! IEEE round-to-nearest-even on both devices, bit for bit: the GPU packs the
//! halves by hand in core WGSL, so it needs no `SHADER_F16`.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use crate::device::Device;
use crate::error::Result;
use crate::gpu::GpuContext;
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::tensor::{HalfData, HalfTensor, Tensor};

const SHADER: Shader = Shader::new("cast", include_str!("../../shaders/cast.wgsl"));
pub(crate) static CAST_TO_F16: Kernel<CastParams> =
    Kernel::new(&SHADER, "cast_to_f16", &[Read, ReadWrite, Uniform]).with_work(|p| Work { flops: p.len as f64, bytes: 6.0 * p.len as f64 });
pub(crate) static CAST_TO_F32: Kernel<CastParams> =
    Kernel::new(&SHADER, "cast_to_f32", &[Read, ReadWrite, Uniform]).with_work(|p| Work { flops: p.len as f64, bytes: 6.0 * p.len as f64 });
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[&CAST_TO_F16.def, &CAST_TO_F32.def];

/// Matches `CastParams` in `shaders/cast.wgsl`.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CastParams {
    pub len: u32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// `x` rounded to f16.
pub fn cast_to_f16(x: &Tensor) -> Result<HalfTensor> {
    const OP: &str = "cast_to_f16";
    let n = x.numel();
    match x.device() {
        Device::Cpu => Ok(HalfTensor::new(x.shape(), HalfData::Cpu(Arc::new(x.host(OP)?.iter().map(|&v| cast_f16_bits_cpu(v)).collect())))),
        Device::Gpu(ctx) => {
            let src = x.gpu().expect("a GPU tensor");
            let memo = src.half.lock().unwrap_or_else(|e| e.into_inner()).upgrade();
            if let Some(half) = memo {
                return Ok(HalfTensor::new(x.shape(), HalfData::Gpu(half)));
            }
            let out = Arc::new(ctx.alloc(OP, n.div_ceil(2))?);
            for (start, len) in windows(&ctx, n) {
                let p = CastParams { len: len as u32, ..Default::default() };
                let (from, to) = (src.buffer().window(start as u64 * 4, len as u64 * 4), out.buffer().window(start as u64 * 2, len.div_ceil(2) as u64 * 4));
                ctx.dispatch(&CAST_TO_F16, &p, &[from, to], ctx.grid_1d(len.div_ceil(2), 256))?;
            }
            *src.half.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&out);
            Ok(HalfTensor::new(x.shape(), HalfData::Gpu(out)))
        }
    }
}

/// The f32 values of `h` (exact).
pub fn cast_to_f32(h: &HalfTensor) -> Result<Tensor> {
    const OP: &str = "cast_to_f32";
    let n = h.numel();
    match &h.data {
        HalfData::Cpu(bits) => Ok(Tensor::from_cpu(h.shape(), bits.iter().map(|&b| cast_f16_value_cpu(b)).collect())),
        HalfData::Gpu(src) => {
            let ctx = src.context();
            let out = Tensor::uninit_gpu(ctx, OP, h.shape())?;
            let dst = out.gpu().expect("a GPU tensor");
            for (start, len) in windows(ctx, n) {
                let p = CastParams { len: len as u32, ..Default::default() };
                let (from, to) = (src.buffer().window(start as u64 * 2, len.div_ceil(2) as u64 * 4), dst.buffer().window(start as u64 * 4, len as u64 * 4));
                ctx.dispatch(&CAST_TO_F32, &p, &[from, to], ctx.grid_1d(len, 256))?;
            }
            Ok(out)
        }
    }
}

/// Windows (first element, elements) of a cast: the f32 side's offsets and
/// the f16 side's (half the bytes) both aligned, each within one binding.
fn windows(ctx: &GpuContext, n: usize) -> impl Iterator<Item = (usize, usize)> {
    let align = 2 * ctx.binding_alignment().max(4);
    let per = ((ctx.max_binding_bytes() / align * align) / 4) as usize;
    (0..n).step_by(per).map(move |start| (start, per.min(n - start)))
}

// ---------------------------------------------------------------- CPU reference

/// The IEEE binary16 bits of `v`, rounded to nearest even (ties to even);
/// beyond the largest half (65504, with rounding) ±inf; NaN stays NaN.
pub fn cast_f16_bits_cpu(v: f32) -> u16 {
    let x = v.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let e = ((x >> 23) & 0xff) as i32;
    let m = x & 0x7f_ffff;
    if e == 255 {
        return sign | 0x7c00 | if m != 0 { 0x200 | (m >> 13) as u16 } else { 0 };
    }
    let he = e - 112; // exponent rebiased from 127 to 15
    if he >= 31 {
        return sign | 0x7c00;
    }
    let (kept, rem, halfway) = if he <= 0 {
        // A subnormal half (or zero): the whole 24-bit significand, shifted.
        if he < -10 {
            return sign;
        }
        let full = m | 0x80_0000;
        let shift = (14 - he) as u32;
        (full >> shift, full & ((1 << shift) - 1), 1 << (shift - 1))
    } else {
        (((he as u32) << 10) | (m >> 13), m & 0x1fff, 0x1000)
    };
    // A carry out of the significand bumps the exponent, which is right (up to inf).
    let round_up = rem > halfway || (rem == halfway && kept & 1 == 1);
    sign | (kept + round_up as u32) as u16
}

/// The f32 value of binary16 bits `h` (exact).
pub fn cast_f16_value_cpu(h: u16) -> f32 {
    let (h, sign) = (h as u32, ((h as u32) & 0x8000) << 16);
    let (e, m) = ((h >> 10) & 0x1f, h & 0x3ff);
    match e {
        0 => {
            let v = m as f32 * 2f32.powi(-24);
            if sign != 0 { -v } else { v }
        }
        31 => f32::from_bits(sign | 0x7f80_0000 | (m << 13)),
        _ => f32::from_bits(sign | ((e + 112) << 23) | (m << 13)),
    }
}

/// `v` rounded to the nearest f16, as an f32: what an f16 store then load gives.
pub fn cast_round_f16_cpu(v: f32) -> f32 {
    cast_f16_value_cpu(cast_f16_bits_cpu(v))
}
