//! GEMM: `C = alpha·op(A)·op(B) + beta·C`, batched over a leading dimension.
//! Conv forward, weight-gradient and input-gradient are all this op with
//! different transposes.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use ndarray::{linalg::general_mat_mul, ArrayView2, ArrayView3, Axis};

use crate::device::Device;
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Bind, GemmVariant, GpuContext};
use crate::kernel::{Access::*, Kernel, Shader, Work};
use crate::ops::activation::{activation_forward, activation_forward_in_place_cpu, Activation};
use crate::ops::permute::permute_swap_gpu;
use crate::shape::check_nonempty;
use crate::tensor::{same_device, Tensor};

pub(crate) mod cpu;

const SHADER: Shader = Shader::new("gemm", include_str!("../../shaders/gemm.wgsl"));
const BINDINGS: &[crate::kernel::Access] = &[Read, Read, ReadWrite, Read, ReadWrite, Uniform];
/// Barrier-free, an 8×8 block per invocation: for CPU-type adapters.
pub(crate) static GEMM_BLOCKED: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_blocked", BINDINGS).with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0)]).with_work(gemm_work);
/// gemm_blocked with 16×16 blocks, for large GEMMs on CPU adapters.
pub(crate) static GEMM_BLOCKED_WIDE: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_blocked_wide", BINDINGS).with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0)]).with_work(gemm_work);
/// Workgroup-memory tiles with 4×4 register blocks: for real GPUs.
pub(crate) static GEMM_TILED: Kernel<GemmParams> =
    Kernel::new(&SHADER, "gemm_tiled", BINDINGS).with_constants(&[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 16.0)]).with_work(gemm_work);
/// 2·m·n·k FLOPs per batch item; A, B and C each moved once (C twice when
/// beta ≠ 0). A split-K dispatch's items each take a k slice of one product.
/// (A grid split into row/column dispatches counts the whole product in each.)
fn gemm_work(p: &GemmParams) -> Work {
    let (m, n, k, batch) = (p.m as usize, p.n as usize, p.k as usize, p.batch as usize);
    let products = if p.k_chunk > 0 { 1 } else { batch };
    let a = m * k * if p.stride_a != 0 { batch } else { 1 };
    let b = k * n * if p.stride_b != 0 { batch } else { 1 };
    let c = m * n * batch * if p.beta != 0.0 { 2 } else { 1 };
    let bias = match p.bias_mode {
        1 => n,
        2 => m,
        _ => 0,
    };
    Work::f32s(a + b + c + bias, 2 * m * n * k * products)
}
/// gemm_tiled with 32×32 tiles: four times the workgroups for small GEMMs.
pub(crate) static GEMM_TILED_32: Kernel<GemmParams> =
    Kernel::new(&SHADER, "gemm_tiled", BINDINGS).named("gemm_tiled_32").with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0), ("TILE_K", 16.0)]).with_work(gemm_work);
/// gemm_tiled with k-slabs of 32: half the barriers per FMA.
pub(crate) static GEMM_TILED_K32: Kernel<GemmParams> =
    Kernel::new(&SHADER, "gemm_tiled", BINDINGS).named("gemm_tiled_k32").with_constants(&[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 32.0)]).with_work(gemm_work);
/// 128×128 tiles, an 8×8 block per invocation.
pub(crate) static GEMM_TILED8: Kernel<GemmParams> =
    Kernel::new(&SHADER, "gemm_tiled8", BINDINGS).with_constants(&[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 8.0)]).with_work(gemm_work);
/// Split-K's reduction: adds the k slices' partial products (and row sums).
pub(crate) static GEMM_SPLIT_REDUCE: Kernel<GemmParams> =
    Kernel::new(&SHADER, "gemm_split_reduce", &[Read, Unused, ReadWrite, Unused, ReadWrite, Uniform]).with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0)]).with_work(split_reduce_work);
fn split_reduce_work(p: &GemmParams) -> Work {
    let width = (p.m * p.n + if p.rowsum != 0 { p.m } else { 0 }) as usize;
    Work::f32s(width * (p.batch as usize + if p.beta != 0.0 { 2 } else { 1 }), width * p.batch as usize)
}
/// The same kernels with the NCHW load mapping of A and the row sums compiled
/// in (`MAPPED`): a convolution's backward GEMMs and weight-with-bias
/// gradients use these; plain GEMMs keep the lean loops.
pub(crate) static GEMM_BLOCKED_MAPPED: Kernel<GemmParams> =
    Kernel::new(&SHADER, "gemm_blocked", BINDINGS).named("gemm_blocked_mapped").with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0), ("MAPPED", 1.0)]).with_work(gemm_work);
pub(crate) static GEMM_BLOCKED_WIDE_MAPPED: Kernel<GemmParams> =
    Kernel::new(&SHADER, "gemm_blocked_wide", BINDINGS).named("gemm_blocked_wide_mapped").with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0), ("MAPPED", 1.0)]).with_work(gemm_work);
pub(crate) static GEMM_TILED_MAPPED: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_tiled", BINDINGS)
    .named("gemm_tiled_mapped")
    .with_constants(&[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 16.0), ("MAPPED", 1.0)])
    .with_work(gemm_work);
pub(crate) static GEMM_TILED_32_MAPPED: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_tiled", BINDINGS)
    .named("gemm_tiled_32_mapped")
    .with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0), ("TILE_K", 16.0), ("MAPPED", 1.0)])
    .with_work(gemm_work);
pub(crate) static GEMM_TILED_K32_MAPPED: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_tiled", BINDINGS)
    .named("gemm_tiled_k32_mapped")
    .with_constants(&[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 32.0), ("MAPPED", 1.0)])
    .with_work(gemm_work);
pub(crate) static GEMM_TILED8_MAPPED: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_tiled8", BINDINGS)
    .named("gemm_tiled8_mapped")
    .with_constants(&[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 8.0), ("MAPPED", 1.0)])
    .with_work(gemm_work);
/// The mapped kernels with the implicit convolution's gather on B (`CONV`):
/// a convolution's forward and weight-gradient GEMMs read the input itself.
pub(crate) static GEMM_BLOCKED_CONV: Kernel<GemmParams> =
    Kernel::new(&SHADER, "gemm_blocked", BINDINGS).named("gemm_blocked_conv").with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0), ("MAPPED", 1.0), ("CONV", 1.0)]).with_work(gemm_work);
pub(crate) static GEMM_BLOCKED_WIDE_CONV: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_blocked_wide", BINDINGS)
    .named("gemm_blocked_wide_conv")
    .with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0), ("MAPPED", 1.0), ("CONV", 1.0)])
    .with_work(gemm_work);
pub(crate) static GEMM_TILED_CONV: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_tiled", BINDINGS)
    .named("gemm_tiled_conv")
    .with_constants(&[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 16.0), ("MAPPED", 1.0), ("CONV", 1.0)])
    .with_work(gemm_work);
pub(crate) static GEMM_TILED_32_CONV: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_tiled", BINDINGS)
    .named("gemm_tiled_32_conv")
    .with_constants(&[("WG_X", 8.0), ("WG_Y", 8.0), ("TILE_K", 16.0), ("MAPPED", 1.0), ("CONV", 1.0)])
    .with_work(gemm_work);
pub(crate) static GEMM_TILED_K32_CONV: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_tiled", BINDINGS)
    .named("gemm_tiled_k32_conv")
    .with_constants(&[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 32.0), ("MAPPED", 1.0), ("CONV", 1.0)])
    .with_work(gemm_work);
pub(crate) static GEMM_TILED8_CONV: Kernel<GemmParams> = Kernel::new(&SHADER, "gemm_tiled8", BINDINGS)
    .named("gemm_tiled8_conv")
    .with_constants(&[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 8.0), ("MAPPED", 1.0), ("CONV", 1.0)])
    .with_work(gemm_work);
/// Each kernel shape, plain, mapped and gathering, in `kernel_for`'s order.
static PLAIN: [&Kernel<GemmParams>; 6] = [&GEMM_BLOCKED, &GEMM_BLOCKED_WIDE, &GEMM_TILED, &GEMM_TILED_32, &GEMM_TILED_K32, &GEMM_TILED8];
static MAPPED: [&Kernel<GemmParams>; 6] =
    [&GEMM_BLOCKED_MAPPED, &GEMM_BLOCKED_WIDE_MAPPED, &GEMM_TILED_MAPPED, &GEMM_TILED_32_MAPPED, &GEMM_TILED_K32_MAPPED, &GEMM_TILED8_MAPPED];
static CONV: [&Kernel<GemmParams>; 6] = [&GEMM_BLOCKED_CONV, &GEMM_BLOCKED_WIDE_CONV, &GEMM_TILED_CONV, &GEMM_TILED_32_CONV, &GEMM_TILED_K32_CONV, &GEMM_TILED8_CONV];
pub(crate) const KERNELS: &[&crate::kernel::KernelDef] = &[
    &GEMM_BLOCKED.def,
    &GEMM_BLOCKED_WIDE.def,
    &GEMM_TILED.def,
    &GEMM_TILED_32.def,
    &GEMM_TILED_K32.def,
    &GEMM_TILED8.def,
    &GEMM_BLOCKED_MAPPED.def,
    &GEMM_BLOCKED_WIDE_MAPPED.def,
    &GEMM_TILED_MAPPED.def,
    &GEMM_TILED_32_MAPPED.def,
    &GEMM_TILED_K32_MAPPED.def,
    &GEMM_TILED8_MAPPED.def,
    &GEMM_BLOCKED_CONV.def,
    &GEMM_BLOCKED_WIDE_CONV.def,
    &GEMM_TILED_CONV.def,
    &GEMM_TILED_32_CONV.def,
    &GEMM_TILED_K32_CONV.def,
    &GEMM_TILED8_CONV.def,
    &GEMM_SPLIT_REDUCE.def,
];

/// How to combine the operands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmConfig {
    /// Use Aᵀ: A is stored `[K, M]` (or `[B, K, M]`).
    pub trans_a: bool,
    /// Use Bᵀ: B is stored `[N, K]` (or `[B, N, K]`).
    pub trans_b: bool,
    /// Scales the product (`C = α·op(A)·op(B) + β·C`).
    pub alpha: f32,
    /// Weight of the existing C in [`gemm_into`]; 0 ignores C entirely (NaN included).
    pub beta: f32,
    /// Force a GPU kernel; `None` uses the adapter's choice. Ignored on the CPU.
    pub variant: Option<GemmVariant>,
}

impl Default for GemmConfig {
    fn default() -> Self {
        GemmConfig { trans_a: false, trans_b: false, alpha: 1.0, beta: 0.0, variant: None }
    }
}

/// Matches `GemmParams` in `shaders/gemm.wgsl`, field for field.
// Field for field the WGSL struct of the same name, which says what each is.
#[allow(missing_docs)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batch: u32,
    pub trans_a: u32,
    pub trans_b: u32,
    pub alpha: f32,
    pub beta: f32,
    pub stride_a: u32,
    pub stride_b: u32,
    pub stride_c: u32,
    pub offset_a: u32,
    pub offset_b: u32,
    pub offset_c: u32,
    pub row_base: u32,
    pub col_base: u32,
    pub k_chunk: u32,
    /// 0 no bias, 1 `bias[j]` added to column j, 2 `bias[i]` to row i.
    pub bias_mode: u32,
    /// 1: ReLU after the bias; 2: times `aux > 0` (a ReLU's backward).
    pub relu: u32,
    /// Non-zero: C's columns are images of this many pixels, stored NCHW.
    pub c_img_cols: u32,
    /// With `c_img_cols`: elements from one image of C to the next.
    pub c_img_stride: u32,
    /// Non-zero: op(A)'s k index runs over images of this many pixels (NCHW).
    pub a_img_cols: u32,
    /// With `a_img_cols`: elements from one image of A to the next.
    pub a_img_stride: u32,
    /// Non-zero: op(B)'s columns are images of this many pixels (NCHW).
    pub b_img_cols: u32,
    /// With `b_img_cols`: elements from one image of B to the next.
    pub b_img_stride: u32,
    /// 1: also write op(A)'s row sums to the row-sum binding; 2: after each
    /// split-K slice's partial C.
    pub rowsum: u32,
    /// With `rowsum` 1: where batch item 0's row sums start.
    pub rowsum_offset: u32,
    /// Implicit convolution (see [`ConvGather`]): input height and width.
    pub conv_h: u32,
    pub conv_w: u32,
    pub tap_inner: u32,
    pub tap_mid: u32,
    pub tap_dx: u32,
    pub tap_dy: u32,
    pub tap_outer: u32,
    pub pix_inner: u32,
    pub pix_mid: u32,
    pub pix_dx: u32,
    pub pix_dy: u32,
    pub pix_outer: u32,
    pub pix_x0: i32,
    pub pix_y0: i32,
    pub _pad0: u32,
    pub _pad1: u32,
    pub _pad2: u32,
}

/// An implicit convolution's B: the im2col column matrix `[taps, images·pixels]`
/// of an NCHW input, gathered in the GEMM's loads instead of stored. With
/// `trans_b` the GEMM reads its transpose (a weight gradient's `dy·colsᵀ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGather {
    /// The geometry the columns belong to (its input is what B binds).
    pub geo: crate::shape::Conv2dGeometry,
}

impl ConvGather {
    fn write(&self, p: &mut GemmParams) {
        let g = &self.geo;
        let c = &g.cfg;
        p.conv_h = g.h as u32;
        p.conv_w = g.w as u32;
        (p.tap_inner, p.tap_mid, p.tap_dx, p.tap_dy, p.tap_outer) = (g.kw as u32, g.kh as u32, c.dilation[1] as u32, c.dilation[0] as u32, (g.h * g.w) as u32);
        (p.pix_inner, p.pix_mid, p.pix_dx, p.pix_dy, p.pix_outer) = (g.ow as u32, g.oh as u32, c.stride[1] as u32, c.stride[0] as u32, (g.c_in * g.h * g.w) as u32);
        (p.pix_x0, p.pix_y0) = (-(c.padding[1] as i32), -(c.padding[0] as i32));
    }
}

/// The validated geometry of one GEMM call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    /// Independent products.
    pub batch: usize,
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The shared dimension.
    pub k: usize,
    /// A has its own matrix per batch item (3-D); otherwise it is broadcast.
    pub a_batched: bool,
    /// Whether B differs per batch entry (else shared).
    pub b_batched: bool,
}

impl GemmShape {
    /// Infers M, N, K and the batch from stored shapes (2-D or 3-D each).
    pub fn infer(a: &[usize], b: &[usize], trans_a: bool, trans_b: bool) -> Result<GemmShape> {
        const OP: &str = "gemm";
        check_nonempty(OP, "A", a)?;
        check_nonempty(OP, "B", b)?;
        let split = |s: &[usize], name: &str| -> Result<(Option<usize>, usize, usize)> {
            match *s {
                [r, c] => Ok((None, r, c)),
                [bt, r, c] => Ok((Some(bt), r, c)),
                _ => shape_err(OP, format!("{name} must be 2-D or 3-D (batched), got shape {s:?}")),
            }
        };
        let (ba, ar, ac) = split(a, "A")?;
        let (bb, br, bc) = split(b, "B")?;
        let (m, ka) = if trans_a { (ac, ar) } else { (ar, ac) };
        let (kb, n) = if trans_b { (bc, br) } else { (br, bc) };
        if ka != kb {
            return shape_err(
                OP,
                format!("inner dimensions differ: op(A) is {m}×{ka} (A {a:?}, trans_a={trans_a}) but op(B) is {kb}×{n} (B {b:?}, trans_b={trans_b})"),
            );
        }
        let batch = match (ba, bb) {
            (Some(x), Some(y)) if x != y => return shape_err(OP, format!("batch sizes differ: A {a:?}, B {b:?}")),
            (Some(x), _) | (None, Some(x)) => x,
            (None, None) => 1,
        };
        Ok(GemmShape { batch, m, n, k: ka, a_batched: ba.is_some(), b_batched: bb.is_some() })
    }

    /// The shape of C: `[M, N]`, or `[B, M, N]` when either operand is batched.
    pub fn out_shape(&self) -> Vec<usize> {
        if self.a_batched || self.b_batched {
            vec![self.batch, self.m, self.n]
        } else {
            vec![self.m, self.n]
        }
    }

    /// Floating-point operations: one multiply and one add per term.
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k) as f64
    }
}

/// `alpha·op(A)·op(B)` as a new tensor. `cfg.beta` must be 0 (there is no C).
pub fn gemm(a: &Tensor, b: &Tensor, cfg: GemmConfig) -> Result<Tensor> {
    if cfg.beta != 0.0 {
        return Err(Error::InvalidArgument { op: "gemm", msg: format!("beta = {} needs an existing C; use gemm_into", cfg.beta) });
    }
    let dev = same_device("gemm", &[a, b])?;
    let s = GemmShape::infer(a.shape(), b.shape(), cfg.trans_a, cfg.trans_b)?;
    let mut c = Tensor::uninit(&dev, "gemm", &s.out_shape())?;
    run(a, b, &mut c, s, cfg)?;
    Ok(c)
}

/// `act(alpha·op(A)·op(B) + bias)`, the bias (length N) added to every row: a
/// linear layer's forward, and the activation layer after it, in one GEMM
/// (bias and ReLU are its epilogue; another activation is applied after).
pub fn gemm_epilogue(a: &Tensor, b: &Tensor, bias: Option<&Tensor>, act: Option<Activation>, cfg: GemmConfig) -> Result<Tensor> {
    const OP: &str = "gemm_epilogue";
    if cfg.beta != 0.0 {
        return Err(Error::InvalidArgument { op: OP, msg: format!("beta = {} needs an existing C; use gemm_into", cfg.beta) });
    }
    let dev = same_device(OP, &[a, b].into_iter().chain(bias).collect::<Vec<_>>())?;
    let s = GemmShape::infer(a.shape(), b.shape(), cfg.trans_a, cfg.trans_b)?;
    if let Some(bias) = bias.filter(|t| t.shape() != [s.n]) {
        return shape_err(OP, format!("bias has shape {:?}, expected [{}] for A {:?} · B {:?}", bias.shape(), s.n, a.shape(), b.shape()));
    }
    let y = match dev {
        Device::Cpu => {
            let mut c = vec![0f32; s.batch * s.m * s.n];
            gemm_cpu(a.host(OP)?, b.host(OP)?, &mut c, s, cfg)?;
            if let Some(bias) = bias {
                gemm_bias_cpu(&mut c, bias.host(OP)?);
            }
            if let Some(act) = act {
                activation_forward_in_place_cpu(act, &mut c);
            }
            return Ok(Tensor::from_cpu(&s.out_shape(), c));
        }
        Device::Gpu(ctx) => {
            let c = Tensor::uninit_gpu(&ctx, OP, &s.out_shape())?;
            let epi = Epilogue { bias: bias.map(|t| t.buffer(OP)).transpose()?, bias_per_row: false, relu: act == Some(Activation::Relu), relu_grad: None, row_sums: None };
            gemm_gpu_any(&ctx, a.buffer(OP)?, b.buffer(OP)?, c.buffer(OP)?, s, cfg, epi)?;
            c
        }
    };
    match act {
        Some(act) if act != Activation::Relu => activation_forward(&y, act),
        _ => Ok(y),
    }
}

/// `op(A)·op(B) · (relu_out > 0)`: a GEMM followed by the backward of the
/// ReLU whose output `relu_out` has C's shape, in one kernel (a linear
/// layer's input gradient through the ReLU before the layer).
pub fn gemm_relu_backward(a: &Tensor, b: &Tensor, relu_out: &Tensor, cfg: GemmConfig) -> Result<Tensor> {
    const OP: &str = "gemm_relu_backward";
    if cfg.beta != 0.0 {
        return Err(Error::InvalidArgument { op: OP, msg: format!("beta = {} needs an existing C; use gemm_into", cfg.beta) });
    }
    let dev = same_device(OP, &[a, b, relu_out])?;
    let s = GemmShape::infer(a.shape(), b.shape(), cfg.trans_a, cfg.trans_b)?;
    if relu_out.shape() != s.out_shape().as_slice() {
        return shape_err(OP, format!("the ReLU output has shape {:?}, expected {:?} for A {:?} · B {:?}", relu_out.shape(), s.out_shape(), a.shape(), b.shape()));
    }
    match dev {
        Device::Cpu => {
            let mut c = vec![0f32; s.batch * s.m * s.n];
            gemm_cpu(a.host(OP)?, b.host(OP)?, &mut c, s, cfg)?;
            crate::ops::activation::activation_relu_backward_cpu(&mut c, relu_out.host(OP)?);
            Ok(Tensor::from_cpu(&s.out_shape(), c))
        }
        Device::Gpu(ctx) => {
            let c = Tensor::uninit_gpu(&ctx, OP, &s.out_shape())?;
            let epi = Epilogue { relu_grad: Some(relu_out.buffer(OP)?), ..Epilogue::default() };
            gemm_gpu_any(&ctx, a.buffer(OP)?, b.buffer(OP)?, c.buffer(OP)?, s, cfg, epi)?;
            Ok(c)
        }
    }
}

/// `(alpha·op(A)·op(B), Σ_p op(A)[·, i, p])`: a GEMM and the row sums of
/// op(A) from the same pass over A (`[m]`, or `[batch, m]` for a batched
/// product; not scaled by alpha). A linear layer's weight gradient dyᵀ·x and
/// its bias gradient, the column sums of dy, in one kernel.
pub fn gemm_row_sums(a: &Tensor, b: &Tensor, cfg: GemmConfig) -> Result<(Tensor, Tensor)> {
    const OP: &str = "gemm_row_sums";
    if cfg.beta != 0.0 {
        return Err(Error::InvalidArgument { op: OP, msg: format!("beta = {} needs an existing C; use gemm_into", cfg.beta) });
    }
    let dev = same_device(OP, &[a, b])?;
    let s = GemmShape::infer(a.shape(), b.shape(), cfg.trans_a, cfg.trans_b)?;
    let out = s.out_shape();
    let sums_shape = if out.len() == 2 { vec![s.m] } else { vec![s.batch, s.m] };
    match dev {
        Device::Cpu => {
            let mut c = vec![0f32; s.batch * s.m * s.n];
            gemm_cpu(a.host(OP)?, b.host(OP)?, &mut c, s, cfg)?;
            let sums = gemm_row_sums_cpu(a.host(OP)?, &s, cfg.trans_a);
            Ok((Tensor::from_cpu(&out, c), Tensor::from_cpu(&sums_shape, sums)))
        }
        Device::Gpu(ctx) => {
            let c = Tensor::uninit_gpu(&ctx, OP, &out)?;
            let sums = Tensor::uninit_gpu(&ctx, OP, &sums_shape)?;
            let epi = Epilogue { row_sums: Some((sums.buffer(OP)?, 0)), ..Epilogue::default() };
            gemm_gpu_any(&ctx, a.buffer(OP)?, b.buffer(OP)?, c.buffer(OP)?, s, cfg, epi)?;
            Ok((c, sums))
        }
    }
}

/// The reference for [`gemm_row_sums`]' second result: each batch item's
/// `Σ_p op(A)[i][p]`, summed in f64 (A broadcast: the same sums per item).
pub fn gemm_row_sums_cpu(a: &[f32], s: &GemmShape, trans_a: bool) -> Vec<f32> {
    let item = s.m * s.k;
    (0..s.batch * s.m)
        .map(|e| {
            let (bt, i) = (e / s.m, e % s.m);
            let base = if s.a_batched { bt * item } else { 0 };
            let at = |p: usize| if trans_a { a[base + p * s.m + i] } else { a[base + i * s.k + p] };
            (0..s.k).map(|p| at(p) as f64).sum::<f64>() as f32
        })
        .collect()
}

/// `C = alpha·op(A)·op(B) + beta·C` in place.
pub fn gemm_into(a: &Tensor, b: &Tensor, c: &mut Tensor, cfg: GemmConfig) -> Result<()> {
    same_device("gemm", &[a, b, c])?;
    c.make_unique()?;
    let s = GemmShape::infer(a.shape(), b.shape(), cfg.trans_a, cfg.trans_b)?;
    let want = s.out_shape();
    let ok = c.shape() == want.as_slice() || (c.shape() == [s.m, s.n] && s.batch == 1);
    if !ok {
        return shape_err("gemm", format!("C has shape {:?} but A {:?} · B {:?} gives {want:?}", c.shape(), a.shape(), b.shape()));
    }
    run(a, b, c, s, cfg)
}

fn run(a: &Tensor, b: &Tensor, c: &mut Tensor, s: GemmShape, cfg: GemmConfig) -> Result<()> {
    const OP: &str = "gemm";
    match a.device() {
        Device::Cpu => {
            gemm_cpu(a.host(OP)?, b.host(OP)?, c.host_mut(OP)?, s, cfg)
        }
        Device::Gpu(ctx) => gemm_gpu_any(&ctx, a.buffer(OP)?, b.buffer(OP)?, c.buffer(OP)?, s, cfg, Epilogue::default()),
    }
}

// ---------------------------------------------------------------- CPU reference

/// The reference: ndarray's GEMM (matrixmultiply) per batch item, on
/// row-major slices. a: (Ba, rows, cols) with Ba ∈ {1, B} (rows × cols is
/// M × K, or K × M with `trans_a`); likewise b; c: (B, M, N).
pub fn gemm_cpu(a: &[f32], b: &[f32], c: &mut [f32], s: GemmShape, cfg: GemmConfig) -> Result<()> {
    let (ar, ac) = if cfg.trans_a { (s.k, s.m) } else { (s.m, s.k) };
    let (br, bc) = if cfg.trans_b { (s.n, s.k) } else { (s.k, s.n) };
    let items = |batched: bool| if batched { s.batch } else { 1 };
    let a3 = ArrayView3::from_shape((items(s.a_batched), ar, ac), a).map_err(|e| layout_err("A", &e))?;
    let b3 = ArrayView3::from_shape((items(s.b_batched), br, bc), b).map_err(|e| layout_err("B", &e))?;
    let mut c3 = ndarray::ArrayViewMut3::from_shape((s.batch, s.m, s.n), c).map_err(|e| layout_err("C", &e))?;
    if cfg.beta == 0.0 {
        c3.fill(0.0); // BLAS convention: beta = 0 ignores C, even NaN.
    }
    for i in 0..s.batch {
        let ai: ArrayView2<f32> = a3.index_axis(Axis(0), if s.a_batched { i } else { 0 });
        let bi: ArrayView2<f32> = b3.index_axis(Axis(0), if s.b_batched { i } else { 0 });
        let ai = if cfg.trans_a { ai.reversed_axes() } else { ai };
        let bi = if cfg.trans_b { bi.reversed_axes() } else { bi };
        let mut ci = c3.index_axis_mut(Axis(0), i);
        gemm_matmul_cpu(cfg.alpha, &ai, &bi, cfg.beta, &mut ci);
    }
    Ok(())
}

/// `c = alpha·a·b + beta·c` on the CPU, with the larger of C's two dimensions
/// split across the machine's cores for large products (matrixmultiply runs
/// single-threaded: its own threads cost more than they gave on the small
/// GEMMs of a training step). Every element sums over k in the same order
/// however C is split, so the result does not depend on the core count.
pub fn gemm_matmul_cpu(alpha: f32, a: &ArrayView2<f32>, b: &ArrayView2<f32>, beta: f32, c: &mut ndarray::ArrayViewMut2<f32>) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let threads = crate::cores();
    // Below ~32 MFLOP starting a thread costs more than the split saves.
    if threads < 2 || 2 * m * n * k < (1 << 25) || m.max(n) < 2 * threads {
        general_mat_mul(alpha, a, b, beta, c);
        return;
    }
    // One part in the scope's own task, the others spawned: all on rayon's pool.
    rayon::scope(|s| {
        if m >= n {
            let rows = m.div_ceil(threads);
            let mut parts = a.axis_chunks_iter(Axis(0), rows).zip(c.axis_chunks_iter_mut(Axis(0), rows));
            let first = parts.next();
            for (ai, mut ci) in parts {
                s.spawn(move |_| general_mat_mul(alpha, &ai, b, beta, &mut ci));
            }
            if let Some((ai, mut ci)) = first {
                general_mat_mul(alpha, &ai, b, beta, &mut ci);
            }
        } else {
            let cols = n.div_ceil(threads);
            let mut parts = b.axis_chunks_iter(Axis(1), cols).zip(c.axis_chunks_iter_mut(Axis(1), cols));
            let first = parts.next();
            for (bi, mut ci) in parts {
                s.spawn(move |_| general_mat_mul(alpha, a, &bi, beta, &mut ci));
            }
            if let Some((bi, mut ci)) = first {
                general_mat_mul(alpha, a, &bi, beta, &mut ci);
            }
        }
    });
}

/// c: (…, N) += bias (N) on every row.
pub fn gemm_bias_cpu(c: &mut [f32], bias: &[f32]) {
    for row in c.chunks_mut(bias.len().max(1)) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

fn layout_err(what: &str, e: &ndarray::ShapeError) -> Error {
    Error::Shape { op: "gemm", msg: format!("{what} does not hold the elements its shape needs: {e}") }
}

// ---------------------------------------------------------------- GPU wrapper

/// Where each operand's batch items sit in its buffer, in elements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct GemmLayout {
    pub offset_a: usize,
    pub stride_a: usize,
    pub offset_b: usize,
    pub stride_b: usize,
    pub offset_c: usize,
    pub stride_c: usize,
    /// `Some((pixels, image_stride))`: C's column j is pixel j % pixels of
    /// image j / pixels, images `image_stride` apart and rows `pixels` apart
    /// (a convolution writing NCHW directly, no permute after it).
    pub c_images: Option<(usize, usize)>,
    /// The same for A's k index (A not transposed): a backward pass reading
    /// an NCHW gradient as its `[C_out, images·pixels]` matrix.
    pub a_images: Option<(usize, usize)>,
    /// The same for B's columns (B not transposed).
    pub b_images: Option<(usize, usize)>,
    /// B is a convolution's column matrix, gathered from its input (bound
    /// as B) in the loads; `offset_b` is where the first image starts and
    /// `stride_b` steps from one group's channels to the next.
    pub b_conv: Option<ConvGather>,
}

impl GemmLayout {
    /// Packed operands: each batched one holds its items back to back.
    pub fn packed(s: &GemmShape) -> GemmLayout {
        GemmLayout {
            stride_a: if s.a_batched { s.m * s.k } else { 0 },
            stride_b: if s.b_batched { s.k * s.n } else { 0 },
            stride_c: s.m * s.n,
            ..GemmLayout::default()
        }
    }
}

/// Test hook: `c = op(a)·op(b)` with each operand's image mapping as a
/// convolution uses it (`images[0]` A's k index, `[1]` B's columns, `[2]` C's
/// columns; each `(pixels, image_stride)`) and offsets into each buffer, so the
/// parity suite can check every kernel variant on the NCHW loads and stores.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn gemm_images_for_tests(a: &Tensor, b: &Tensor, c: &mut Tensor, s: GemmShape, cfg: GemmConfig, images: [Option<(usize, usize)>; 3], offsets: [usize; 3]) -> Result<()> {
    const OP: &str = "gemm (test hook)";
    c.make_unique()?;
    let Device::Gpu(ctx) = a.device() else { return Err(Error::Wgpu(format!("{OP}: needs a GPU tensor"))) };
    let l = GemmLayout {
        offset_a: offsets[0],
        offset_b: offsets[1],
        offset_c: offsets[2],
        a_images: images[0],
        b_images: images[1],
        c_images: images[2],
        ..GemmLayout::packed(&s)
    };
    gemm_gpu_strided(&ctx, a.buffer(OP)?, b.buffer(OP)?, c.buffer(OP)?, s, l, cfg, Epilogue::default())
}

/// Test hook: `c = op(a)·op(cols(x))` with the columns of `geo`'s input `x`
/// gathered in the GEMM's loads (the implicit convolution), batch items
/// (groups) `x_stride` elements apart in x; A and C packed.
#[cfg(feature = "testing")]
#[doc(hidden)]
pub fn gemm_conv_for_tests(a: &Tensor, x: &Tensor, c: &mut Tensor, s: GemmShape, cfg: GemmConfig, geo: crate::shape::Conv2dGeometry, x_stride: usize) -> Result<()> {
    const OP: &str = "gemm (test hook)";
    c.make_unique()?;
    let Device::Gpu(ctx) = a.device() else { return Err(Error::Wgpu(format!("{OP}: needs a GPU tensor"))) };
    let l = GemmLayout { stride_b: x_stride, b_conv: Some(ConvGather { geo }), ..GemmLayout::packed(&s) };
    gemm_gpu_strided(&ctx, a.buffer(OP)?, x.buffer(OP)?, c.buffer(OP)?, s, l, cfg, Epilogue::default())
}

/// The kernel a variant uses for a shape (its `MAPPED` twin when the GEMM
/// maps A's loads or writes row sums), and the register block each
/// invocation owns (a workgroup covers block·WG_Y rows × block·WG_X columns).
fn kernel_for(v: GemmVariant, s: &GemmShape, mapped: bool, conv: bool) -> (&'static Kernel<GemmParams>, usize) {
    let (i, block) = match v {
        // Big enough to fill 16×16 blocks without much waste: the wide kernel
        // loads half as much per FMA (VGG-small's step 10.0 → 7.3 s on lavapipe),
        // but LeNet-5's small GEMMs ran 10% slower with it throughout.
        GemmVariant::Blocked if s.m >= 32 && s.n >= 256 => (1, 16),
        GemmVariant::Blocked | GemmVariant::Blocked8 => (0, 8),
        GemmVariant::Blocked16 => (1, 16),
        GemmVariant::Tiled => (2, 4),
        GemmVariant::Tiled32 => (3, 4),
        GemmVariant::TiledK32 => (4, 4),
        GemmVariant::Tiled128 => (5, 8),
    };
    (if conv { CONV[i] } else if mapped { MAPPED[i] } else { PLAIN[i] }, block)
}

// ---------------------------------------------------------------- tuning

/// The kernels timed per shape class. On CPU-type adapters the barrier-heavy
/// tiles crawl (10× slower on lavapipe), so only the register-blocked ones compete.
fn candidates(ctx: &GpuContext) -> &'static [GemmVariant] {
    use GemmVariant::*;
    if ctx.adapter().is_software() {
        &[Blocked8, Blocked16]
    } else {
        &[Tiled, Tiled32, TiledK32, Tiled128, Blocked8, Blocked16]
    }
}

/// GEMMs whose m, n and k round up to the same powers of two, with the same
/// transposes and batching, share a tuned kernel.
fn shape_class(s: &GemmShape, cfg: &GemmConfig) -> String {
    let lg = |x: usize| x.next_power_of_two().trailing_zeros();
    let flag = |b: bool| if b { 't' } else { 'n' };
    format!(
        "gemm/m{}/n{}/k{}/{}{}/{}",
        lg(s.m),
        lg(s.n),
        lg(s.k),
        flag(cfg.trans_a),
        flag(cfg.trans_b),
        if s.batch > 1 { "batched" } else { "single" }
    )
}

/// The kernel for this GEMM: the one asked for, else the tuned one for its
/// shape class (timing the candidates the first time a class is seen on
/// this adapter, or reading an earlier run's choice), else the adapter's default.
fn choose(ctx: &Arc<GpuContext>, s: &GemmShape, cfg: &GemmConfig) -> Result<GemmVariant> {
    if let Some(v) = cfg.variant {
        return Ok(v);
    }
    if !ctx.autotune() {
        return Ok(ctx.gemm_variant());
    }
    let key = shape_class(s, cfg);
    if let Some(v) = ctx.tuned(&key).and_then(|name| GemmVariant::from_name(&name)) {
        return Ok(v);
    }
    // Tuning times plain GEMMs on operands of their own: where one would not
    // fit a binding (an implicit convolution's B is never materialised; a
    // windowed operand), the default serves.
    let items = |batched: bool| if batched { s.batch } else { 1 };
    let largest = [s.m * s.k * items(s.a_batched), s.k * s.n * items(s.b_batched), s.m * s.n * s.batch].into_iter().max().unwrap_or(0);
    if (largest * 4) as u64 > ctx.max_binding_bytes() {
        return Ok(ctx.gemm_variant());
    }
    let v = ctx.tuning_run(|| tune(ctx, s, cfg))?;
    log::info!("GEMM {key}: {} is fastest on {}", v.name(), ctx.adapter());
    ctx.remember_tuned(key, v.name().to_string());
    Ok(v)
}

/// Times each candidate on operands of this GEMM's shape (its own buffers:
/// nothing the caller holds is touched) and returns the fastest: the best of
/// three runs (one on a CPU adapter) after a warm-up that builds the pipeline.
fn tune(ctx: &Arc<GpuContext>, s: &GemmShape, cfg: &GemmConfig) -> Result<GemmVariant> {
    const OP: &str = "gemm (tuning)";
    let items = |batched: bool| if batched { s.batch } else { 1 };
    let fill = |len: usize| -> Result<crate::gpu::GpuBuffer> {
        // Small normal values: zeros or NaN garbage could time differently on a CPU adapter.
        ctx.upload_new(OP, len, bytemuck::cast_slice(&vec![0.5f32; len]))
    };
    let a = fill(s.m * s.k * items(s.a_batched))?;
    let b = fill(s.k * s.n * items(s.b_batched))?;
    let c = fill(s.m * s.n * s.batch)?;
    // What the caller recorded so far runs now, outside the timings.
    ctx.synchronize()?;
    let mut best = (f64::INFINITY, candidates(ctx)[0]);
    for &v in candidates(ctx) {
        let cfg = GemmConfig { variant: Some(v), beta: 0.0, ..*cfg };
        let run = || -> Result<f64> {
            let t = std::time::Instant::now();
            gemm_gpu(ctx, a.buffer(), b.buffer(), c.buffer(), *s, cfg)?;
            ctx.synchronize()?;
            Ok(t.elapsed().as_secs_f64())
        };
        run()?;
        // A CPU adapter's GEMM takes long enough to time once (VGG-small's classes
        // took a minute to tune with three runs each on lavapipe).
        let runs = if ctx.adapter().is_software() { 1 } else { 3 };
        let t = (0..runs).map(|_| run()).try_fold(f64::INFINITY, |m, t| t.map(|t| m.min(t)))?;
        if t < best.0 {
            best = (t, v);
        }
    }
    Ok(best.1)
}

/// Records the GEMM dispatches; batches beyond the grid limit are split.
pub(crate) fn gemm_gpu(ctx: &Arc<GpuContext>, a: Bind<'_>, b: Bind<'_>, c: Bind<'_>, s: GemmShape, cfg: GemmConfig) -> Result<()> {
    gemm_gpu_strided(ctx, a, b, c, s, GemmLayout::packed(&s), cfg, Epilogue::default())
}

/// What a GEMM's store does to each result besides `alpha·acc + beta·C`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Epilogue<'a> {
    /// Added to each column (`bias[j]`), or each row (`bias[i]`) when `bias_per_row`.
    pub bias: Option<Bind<'a>>,
    pub bias_per_row: bool,
    /// ReLU last (NaN passes).
    pub relu: bool,
    /// Multiply by `relu_out > 0` (laid out like C): the backward of the
    /// ReLU that produced `relu_out`. Not with a bias or `relu`.
    pub relu_grad: Option<Bind<'a>>,
    /// Also write op(A)'s row sums, `Σ_p op(A)[i][p]` (+ beta·old; not scaled
    /// by alpha), from this element of the buffer on (batch item b's at
    /// offset + b·m): the bias gradient beside a weight gradient, A being dy.
    pub row_sums: Option<(Bind<'a>, usize)>,
}

/// [`gemm_gpu`] with explicit offsets and batch strides (conv uses these to
/// address groups and image chunks inside larger buffers) and an epilogue in
/// the kernel's store.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_gpu_strided<'x>(
    ctx: &Arc<GpuContext>,
    a: impl Into<Bind<'x>>,
    b: impl Into<Bind<'x>>,
    c: impl Into<Bind<'x>>,
    s: GemmShape,
    l: GemmLayout,
    cfg: GemmConfig,
    epi: Epilogue,
) -> Result<()> {
    let (a, b, c): (Bind, Bind, Bind) = (a.into(), b.into(), c.into());
    let mapped = l.a_images.is_some() || epi.row_sums.is_some();
    debug_assert!(l.b_conv.is_none() || l.b_images.is_none());
    let (kernel, block) = kernel_for(choose(ctx, &s, &cfg)?, &s, mapped, l.b_conv.is_some());
    let tile_n = block * kernel.def.constant("WG_X", 8) as usize;
    let tile_m = block * kernel.def.constant("WG_Y", 8) as usize;
    let (m, n, k) = (s.m, s.n, s.k);
    let params = GemmParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        trans_a: cfg.trans_a as u32,
        trans_b: cfg.trans_b as u32,
        alpha: cfg.alpha,
        beta: cfg.beta,
        stride_a: l.stride_a as u32,
        stride_b: l.stride_b as u32,
        stride_c: l.stride_c as u32,
        offset_a: l.offset_a as u32,
        offset_b: l.offset_b as u32,
        offset_c: l.offset_c as u32,
        c_img_cols: l.c_images.map_or(0, |(p, _)| p as u32),
        c_img_stride: l.c_images.map_or(0, |(_, s)| s as u32),
        a_img_cols: l.a_images.map_or(0, |(p, _)| p as u32),
        a_img_stride: l.a_images.map_or(0, |(_, s)| s as u32),
        b_img_cols: l.b_images.map_or(0, |(p, _)| p as u32),
        b_img_stride: l.b_images.map_or(0, |(_, s)| s as u32),
        bias_mode: match (epi.bias, epi.bias_per_row) {
            (None, _) => 0,
            (Some(_), false) => 1,
            (Some(_), true) => 2,
        },
        relu: if epi.relu_grad.is_some() { 2 } else { epi.relu as u32 },
        rowsum: epi.row_sums.is_some() as u32,
        rowsum_offset: epi.row_sums.map_or(0, |(_, o)| o as u32),
        ..GemmParams::default()
    };
    let mut params = params;
    if let Some(g) = &l.b_conv {
        g.write(&mut params);
    }
    debug_assert!(epi.relu_grad.is_none() || (epi.bias.is_none() && !epi.relu));
    // The aux binding is never read without a bias or a ReLU mask; A stands in.
    let bias_buf = epi.bias.or(epi.relu_grad).map_or(a, Bind::from);
    // Nothing reads or writes the row-sum binding without row sums: scratch stands in.
    let rs_buf = Bind::from(epi.row_sums.map_or(ctx.scratch(0), |(b, _)| b));
    // Split-K has no epilogue (its reduction writes C): weight gradients, its use, have none.
    let tiles = m.div_ceil(tile_m) * n.div_ceil(tile_n);
    if let Some(splits) = split_k(ctx, &s, tiles).filter(|_| epi.bias.is_none() && !epi.relu && epi.relu_grad.is_none() && l.c_images.is_none()) {
        // Few output tiles and a long k (a weight gradient summed over every
        // pixel of the batch): each of `splits` batch items sums one k slice
        // into its own partial product (and row sums), then one reduction adds them up.
        let k_chunk = k.div_ceil(splits).next_multiple_of(16);
        let splits = k.div_ceil(k_chunk);
        let width = m * n + if epi.row_sums.is_some() { m } else { 0 };
        let partial = ctx.alloc("gemm", splits * width)?;
        let split = GemmParams {
            batch: splits as u32,
            beta: 0.0,
            stride_a: 0,
            stride_b: 0,
            stride_c: width as u32,
            offset_c: 0,
            k_chunk: k_chunk as u32,
            rowsum: if epi.row_sums.is_some() { 2 } else { 0 },
            ..params
        };
        let p = Bind::from(partial.buffer());
        dispatch_tiles(ctx, kernel, split, [a, b, p, bias_buf, ctx.scratch(0).into()], splits, [tile_m, tile_n])?;
        let reduce = GemmParams { batch: splits as u32, ..params };
        return ctx.dispatch(&GEMM_SPLIT_REDUCE, &reduce, &[p, p, c, p, rs_buf], ctx.grid_1d(width, 64));
    }
    dispatch_tiles(ctx, kernel, params, [a, b, c, bias_buf, rs_buf], s.batch, [tile_m, tile_n])
}

// ------------------------------------------------ operands larger than one binding

/// A packed GEMM whose operands may be larger than one storage binding (a
/// linear layer's weight, its gradient: VGG-16's fc6 is 411 MB against
/// WebGPU's 128 MiB). The big matrix is bound in windows of whole rows; the
/// other operands, bound whole, are reached with element offsets. The three
/// products of a linear layer have such a path:
///
/// ```text
/// forward  y  = x·Wᵀ (+b, ReLU):  yᵀ[rows] = W[rows]·xᵀ per window, then one transpose adds b and the ReLU
/// weights  dW = dyᵀ·x (+ db):     dW[rows] = dyᵀ[rows]·x per window (dyᵀ transposed once; db as row sums)
/// input    dx = dy·W (·ReLU'):    dx = Σ_windows dyᵀ[rows]ᵀ·W[rows], accumulated with beta = 1
/// ```
/// Any other product with an operand past the limit is `Error::TooLarge`.
fn gemm_gpu_any(ctx: &Arc<GpuContext>, a: Bind<'_>, b: Bind<'_>, c: Bind<'_>, s: GemmShape, cfg: GemmConfig, epi: Epilogue) -> Result<()> {
    let limit = ctx.max_binding_bytes();
    let [big_a, big_b, big_c] = [(s.m * s.k, s.a_batched), (s.k * s.n, s.b_batched), (s.m * s.n, true)].map(|(len, per_item)| {
        let items = if per_item { s.batch } else { 1 };
        (len * items * 4) as u64 > limit
    });
    if !(big_a || big_b || big_c) || s.batch != 1 || big_a {
        return gemm_gpu_strided(ctx, a, b, c, s, GemmLayout::packed(&s), cfg, epi);
    }
    let plain = !cfg.trans_a && !cfg.trans_b;
    match (big_b, big_c) {
        (true, false) if cfg.trans_b && !cfg.trans_a && epi.relu_grad.is_none() && epi.row_sums.is_none() => windowed_forward(ctx, a, b, c, s, cfg, epi),
        (true, false) if plain && epi.bias.is_none() && !epi.relu && epi.row_sums.is_none() => windowed_input_grad(ctx, a, b, c, s, cfg, epi),
        (false, true) if cfg.trans_a && !cfg.trans_b && epi.bias.is_none() && !epi.relu && epi.relu_grad.is_none() => windowed_weight_grad(ctx, a, b, c, s, cfg, epi),
        // No windowed path: the dispatch names the kernel and the binding.
        _ => gemm_gpu_strided(ctx, a, b, c, s, GemmLayout::packed(&s), cfg, epi),
    }
}

/// Rows of a `[rows, cols]` matrix per window: as many as one binding
/// holds, a multiple that keeps every window's offset aligned.
fn window_rows(ctx: &GpuContext, rows: usize, cols: usize) -> Result<usize> {
    let row_bytes = (cols * 4) as u64;
    let align = ctx.binding_alignment().max(4);
    let step = (align / gcd(row_bytes, align)) as usize;
    let fit = (ctx.max_binding_bytes() / row_bytes) as usize / step * step;
    if fit == 0 {
        return Err(Error::TooLarge { op: "gemm", what: format!("a row of {cols} f32 (windows of whole rows, {step} at a time)"), bytes: row_bytes * step as u64, limit: ctx.max_binding_bytes() });
    }
    Ok(fit.min(rows))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The windows `(first row, rows)` of a `[rows, cols]` matrix.
fn windows(ctx: &GpuContext, rows: usize, cols: usize) -> Result<Vec<(usize, usize)>> {
    let per = window_rows(ctx, rows, cols)?;
    Ok((0..rows).step_by(per).map(|r0| (r0, per.min(rows - r0))).collect())
}

/// `[r, c]` → `[c, r]` into a pooled buffer.
fn transposed(ctx: &Arc<GpuContext>, x: Bind<'_>, r: usize, c: usize) -> Result<crate::gpu::GpuBuffer> {
    let t = ctx.alloc("gemm (transpose)", r * c)?;
    permute_swap_gpu(ctx, x, 0, t.buffer(), 0, [r, c, 1], None, false)?;
    Ok(t)
}

/// y [m, n] = x [m, k] · W [n, k]ᵀ with W in windows of rows: each window
/// gives rows of yᵀ; the transpose back adds the bias and the ReLU.
fn windowed_forward(ctx: &Arc<GpuContext>, x: Bind<'_>, w: Bind<'_>, y: Bind<'_>, s: GemmShape, cfg: GemmConfig, epi: Epilogue) -> Result<()> {
    let yt = ctx.alloc("gemm (windows)", s.n * s.m)?;
    for (r0, rows) in windows(ctx, s.n, s.k)? {
        let part = GemmShape { batch: 1, m: rows, n: s.m, k: s.k, a_batched: false, b_batched: false };
        let l = GemmLayout { offset_c: r0 * s.m, ..GemmLayout::packed(&part) };
        let win = Bind::window(w, (r0 * s.k * 4) as u64, (rows * s.k * 4) as u64);
        gemm_gpu_strided(ctx, win, x, yt.buffer(), part, l, GemmConfig { trans_a: false, trans_b: true, beta: 0.0, ..cfg }, Epilogue::default())?;
    }
    permute_swap_gpu(ctx, yt.buffer(), 0, y, 0, [s.n, s.m, 1], epi.bias.map(|b| (b, s.n)), epi.relu)
}

/// dW [m, n] = dy [k, m]ᵀ · x [k, n] with dW in windows of rows (and db, dy's
/// column sums, as the row sums of dyᵀ).
fn windowed_weight_grad(ctx: &Arc<GpuContext>, dy: Bind<'_>, x: Bind<'_>, dw: Bind<'_>, s: GemmShape, cfg: GemmConfig, epi: Epilogue) -> Result<()> {
    let dyt = transposed(ctx, dy, s.k, s.m)?;
    for (r0, rows) in windows(ctx, s.m, s.n)? {
        let part = GemmShape { batch: 1, m: rows, n: s.n, k: s.k, a_batched: false, b_batched: false };
        let l = GemmLayout { offset_a: r0 * s.k, ..GemmLayout::packed(&part) };
        let win = Bind::window(dw, (r0 * s.n * 4) as u64, (rows * s.n * 4) as u64);
        let sums = Epilogue { row_sums: epi.row_sums.map(|(b, o)| (b, o + r0)), ..Epilogue::default() };
        gemm_gpu_strided(ctx, dyt.buffer(), x, win, part, l, GemmConfig { trans_a: false, ..cfg }, sums)?;
    }
    Ok(())
}

/// dx [m, n] = dy [m, k] · W [k, n] with W in windows of rows: a sum over
/// the windows (k slices), each from dyᵀ's rows, the first with the
/// caller's beta and the rest adding on; the ReLU mask applies to each.
fn windowed_input_grad(ctx: &Arc<GpuContext>, dy: Bind<'_>, w: Bind<'_>, dx: Bind<'_>, s: GemmShape, cfg: GemmConfig, epi: Epilogue) -> Result<()> {
    let dyt = transposed(ctx, dy, s.m, s.k)?;
    for (i, (r0, rows)) in windows(ctx, s.k, s.n)?.into_iter().enumerate() {
        let part = GemmShape { batch: 1, m: s.m, n: s.n, k: rows, a_batched: false, b_batched: false };
        let l = GemmLayout { offset_a: r0 * s.m, ..GemmLayout::packed(&part) };
        let win = Bind::window(w, (r0 * s.n * 4) as u64, (rows * s.n * 4) as u64);
        let beta = if i == 0 { cfg.beta } else { 1.0 };
        gemm_gpu_strided(ctx, dyt.buffer(), win, dx, part, l, GemmConfig { trans_a: true, beta, ..cfg }, Epilogue { relu_grad: epi.relu_grad, ..Epilogue::default() })?;
    }
    Ok(())
}

/// How many k slices a single (batch 1) GEMM with `tiles` output tiles should
/// be split into, or `None` to run it whole. Aims at enough workgroups to
/// occupy the device, slices of at least 256, and partials that fit a binding.
fn split_k(ctx: &GpuContext, s: &GemmShape, tiles: usize) -> Option<usize> {
    // Workgroups that keep the device busy: a CPU adapter runs one per core.
    let busy = if ctx.adapter().is_software() { 2 * crate::cores() } else { 256 };
    let max_z = ctx.limits().max_compute_workgroups_per_dimension as usize;
    if s.batch != 1 || tiles >= busy || s.k < 1024 {
        return None;
    }
    let splits = (busy / tiles).min(s.k / 256).min(max_z);
    let fits = (splits * s.m * s.n * 4) as u64 <= ctx.max_binding_bytes();
    (splits >= 2 && fits).then_some(splits)
}

/// Records `params` over `batch` items; grids past the per-dimension limit are
/// split: batches along z, row and column blocks into dispatches that start at
/// row_base / col_base.
fn dispatch_tiles(ctx: &GpuContext, kernel: &'static Kernel<GemmParams>, params: GemmParams, binds: [Bind; 5], batch: usize, [tile_m, tile_n]: [usize; 2]) -> Result<()> {
    let (m, n) = (params.m as usize, params.n as usize);
    let max = ctx.limits().max_compute_workgroups_per_dimension as usize;
    let (rows_per, cols_per) = (max * tile_m, max * tile_n);
    // Split-K indexes its k slice by the z of the dispatch: it must fit one.
    debug_assert!(params.k_chunk == 0 || batch <= max);
    let mut start = 0;
    while start < batch {
        let chunk = (batch - start).min(max);
        for row_base in (0..m).step_by(rows_per) {
            for col_base in (0..n).step_by(cols_per) {
                let p = GemmParams {
                    batch: chunk as u32,
                    offset_a: params.offset_a + (start as u32) * params.stride_a,
                    offset_b: params.offset_b + (start as u32) * params.stride_b,
                    offset_c: params.offset_c + (start as u32) * params.stride_c,
                    rowsum_offset: params.rowsum_offset + (start as u32) * params.m,
                    row_base: row_base as u32,
                    col_base: col_base as u32,
                    ..params
                };
                let groups = [(n - col_base).min(cols_per).div_ceil(tile_n) as u32, (m - row_base).min(rows_per).div_ceil(tile_m) as u32, chunk as u32];
                ctx.dispatch(kernel, &p, &binds, groups)?;
            }
        }
        start += chunk;
    }
    Ok(())
}
