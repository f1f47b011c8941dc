//! 2-d convolution (PyTorch's cross-correlation), forward and backward, as
//! im2col + GEMM with images folded into the GEMM columns:
//!
//! ```text
//! cols  = im2col(x)                      [G·Kc, nb·P]    Kc = C_in/G·kH·kW, P = OH·OW
//! Yc_g  = W_g · cols_g                   [C_out/G, nb·P] one batched GEMM over groups
//! y     = swap(Yc) + b                   [nb, C_out, P]
//! dYc   = swap(dy)                       [C_out, nb·P]
//! db    = Σ_cols dYc;  dW_g += dYc_g · cols_gᵀ  (one GEMM with K = nb·P)
//! dx    = col2im(W_gᵀ · dYc_g)
//! ```
//! The CPU path builds the columns in chunks of nb images (a budget). On the
//! GPU the forward and weight-gradient GEMMs gather the columns from x in
//! their loads instead (an implicit GEMM: no im2col pass, no column buffer),
//! except that a training layer whose columns are small (≤ 8 MiB) builds
//! them once in forward and keeps them for backward. dx's column gradient is
//! still a matrix, in chunks under the binding limit. A 1×1, stride-1,
//! unpadded, ungrouped convolution is a GEMM per image. The first layer skips dx.

use ndarray::{ArrayView2, ArrayViewMut2};

use std::sync::Arc;

use crate::gpu::Bind;
use crate::device::Device;
use crate::error::{shape_err, Result};
use crate::gpu::GpuContext;
use crate::ops::col2im::{col2im_cpu, col2im_gpu};
use crate::ops::activation::{activation_backward, activation_forward, activation_forward_in_place_cpu, activation_relu_backward_cpu, Activation};
use crate::ops::bias::{bias_add, bias_grad};
use crate::ops::gemm::{gemm_matmul_cpu, gemm_gpu_strided, ConvGather, Epilogue, GemmConfig, GemmLayout, GemmShape};
use crate::ops::im2col::{im2col_cpu_into, im2col_gpu};
use crate::ops::permute::{permute_flip_gpu, permute_swap_cpu, permute_swap_gpu};
use crate::ops::reduce::reduce_rows_cpu;
use crate::shape::{Conv2dConfig, Conv2dGeometry};
use crate::tensor::{same_device, Tensor};

mod cpu;
pub use cpu::{conv2d_backward_cpu_tuned, conv2d_forward_cpu_tuned};

/// Column-matrix budget on the CPU path (the `_in_chunks` twins take another).
pub const CPU_CHUNK_BYTES: u64 = 256 << 20;
/// Column-matrix budget on the GPU (kept columns, dx's column gradient),
/// also capped by the binding limit and `GpuOptions::max_chunk_bytes`.
const GPU_CHUNK_BYTES: u64 = 512 << 20;
/// Budget of dx's column gradient on the GPU when dW gathers its columns
/// (or dx's own size, when larger): ResNet-18's 56×56 stage at batch 8 then
/// runs dx in two chunks of 29 MB instead of one of 58 MB, two more
/// dispatches for 29 MB off the step's peak.
const DX_COLS_BYTES: u64 = 32 << 20;

/// Gradients of a convolution.
pub struct Conv2dGrads {
    /// `[n, c_in, h, w]`
    pub dx: Tensor,
    /// `[c_out, c_in/groups, kh, kw]`
    pub dw: Tensor,
    /// `[c_out]`, when the convolution has a bias.
    pub db: Option<Tensor>,
}

/// `y = conv2d(x, w) + b`: x `[n, c_in, h, w]`, w `[c_out, c_in/groups, kh, kw]`, b `[c_out]`.
pub fn conv2d_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, cfg: Conv2dConfig) -> Result<Tensor> {
    forward(x, w, bias, cfg, None, false).map(|(y, _)| y)
}

/// `act(conv2d(x, w) + b)`: a convolution and the activation layer after it.
/// On the GPU a ReLU rides in the kernel that lays out the output (no extra
/// dispatch); another activation is applied after.
pub fn conv2d_forward_act(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, cfg: Conv2dConfig, act: Activation) -> Result<Tensor> {
    forward(x, w, bias, cfg, Some(act), false).map(|(y, _)| y)
}

/// Columns worth keeping from forward for backward (GPU, one chunk): backward
/// then skips its im2col. Larger ones are recomputed rather than held: a
/// 3×3 convolution's columns are 9× its input, and held from forward to
/// backward they would dominate a large model's memory (PyTorch keeps only x).
const KEEP_COLS_BYTES: usize = 8 << 20;
/// Nor for a convolution over many input channels (rows of its columns: c_in
/// × taps): ResNet-18's last stage (4,608 rows, 7×7 pixels) would hold 25 MB
/// of columns at the step's peak, and its gather costs little at that size;
/// LeNet-5's (25 and 150 rows) keep theirs.
const KEEP_COLS_ROWS: usize = 1024;

/// [`conv2d_forward`] that, on the GPU, may also hand back the im2col columns
/// for [`conv2d_backward_cols`] (training layers keep them until backward).
pub(crate) fn conv2d_forward_keep(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, cfg: Conv2dConfig, act: Option<Activation>) -> Result<(Tensor, Option<Tensor>)> {
    forward(x, w, bias, cfg, act, true)
}

fn forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, cfg: Conv2dConfig, act: Option<Activation>, keep: bool) -> Result<(Tensor, Option<Tensor>)> {
    const OP: &str = "conv2d_forward";
    let geo = Conv2dGeometry::new(x.shape(), w.shape(), cfg)?;
    let mut operands = vec![x, w];
    if let Some(b) = bias {
        if b.shape() != [geo.c_out] {
            return shape_err(OP, format!("bias has shape {:?} but the weight {:?} has {} output channels", b.shape(), w.shape(), geo.c_out));
        }
        operands.push(b);
    }
    match same_device(OP, &operands)? {
        Device::Cpu => {
            let b = bias.map(|b| b.host(OP)).transpose()?;
            let relu = act == Some(Activation::Relu);
            let mut y = conv2d_forward_cpu_tuned(x.host(OP)?, w.host(OP)?, b, &geo, relu);
            if let Some(act) = act.filter(|_| !relu) {
                activation_forward_in_place_cpu(act, &mut y);
            }
            Ok((Tensor::from_cpu(&geo.output_shape(), y), None))
        }
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, &geo.output_shape())?;
            let b = bias.map(|b| b.buffer(OP)).transpose()?;
            let keep = keep && !geo.is_pointwise() && gpu_chunk(&ctx, &geo) >= geo.n && col_elems(&geo) * 4 <= KEEP_COLS_BYTES && geo.col_rows() <= KEEP_COLS_ROWS;
            let cols = keep.then(|| Tensor::uninit_gpu(&ctx, OP, &[col_elems(&geo)])).transpose()?;
            let kept = cols.as_ref().map(|c| c.buffer(OP)).transpose()?;
            let relu = act == Some(Activation::Relu);
            conv2d_forward_gpu(&ctx, x.buffer(OP)?, w.buffer(OP)?, b, y.buffer(OP)?, &geo, kept, relu)?;
            match act {
                Some(act) if !relu => Ok((activation_forward(&y, act)?, cols)),
                _ => Ok((y, cols)),
            }
        }
    }
}

/// Elements of the whole batch's columns.
fn col_elems(geo: &Conv2dGeometry) -> usize {
    geo.cfg.groups * geo.col_rows() * geo.n * geo.out_pixels()
}

/// Gradients of the loss with respect to x, w and (when `with_bias`) b, given dL/dy.
pub fn conv2d_backward(x: &Tensor, w: &Tensor, dy: &Tensor, cfg: Conv2dConfig, with_bias: bool) -> Result<Conv2dGrads> {
    match conv2d_backward_cols(x, w, dy, cfg, with_bias, true, true, None, false)? {
        (Some(dx), Some(dw), db) => Ok(Conv2dGrads { dx, dw, db }),
        _ => Err(crate::Error::InvalidArgument { op: "conv2d_backward", msg: "dx and dW were asked for but not computed".into() }),
    }
}

/// [`conv2d_backward`] without dL/dx: for a first layer, whose input needs no
/// gradient (saves the dcols GEMM and col2im).
pub fn conv2d_backward_params(x: &Tensor, w: &Tensor, dy: &Tensor, cfg: Conv2dConfig, with_bias: bool) -> Result<(Tensor, Option<Tensor>)> {
    let (_, dw, db) = conv2d_backward_cols(x, w, dy, cfg, with_bias, false, true, None, false)?;
    Ok((dw.expect("asked for"), db))
}

/// [`conv2d_backward`] where x is the output of a ReLU: dL/dx is also taken
/// back through that ReLU (times `x > 0`), in the same kernel that forms it
/// (col2im's), so the ReLU's backward costs no pass of its own.
pub fn conv2d_backward_relu(x: &Tensor, w: &Tensor, dy: &Tensor, cfg: Conv2dConfig, with_bias: bool) -> Result<Conv2dGrads> {
    match conv2d_backward_cols(x, w, dy, cfg, with_bias, true, true, None, true)? {
        (Some(dx), Some(dw), db) => Ok(Conv2dGrads { dx, dw, db }),
        _ => Err(crate::Error::InvalidArgument { op: "conv2d_backward_relu", msg: "dx and dW were asked for but not computed".into() }),
    }
}

/// Backward, from the columns [`conv2d_forward_keep`] kept (`None`: rebuild
/// them); dL/dx only when `need_dx`, through the ReLU that produced x when
/// `relu_mask`; dW (and db) only when `need_dw` (a frozen layer's are not).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn conv2d_backward_cols(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    cfg: Conv2dConfig,
    with_bias: bool,
    need_dx: bool,
    need_dw: bool,
    kept: Option<&Tensor>,
    relu_mask: bool,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    const OP: &str = "conv2d_backward";
    let geo = Conv2dGeometry::new(x.shape(), w.shape(), cfg)?;
    let dev = same_device(OP, &[x, w, dy])?;
    crate::ops::check_shape(OP, "dy", dy.shape(), &geo.output_shape())?;
    match dev {
        Device::Cpu => {
            let xs = need_dw.then(|| x.host(OP)).transpose()?;
            let (mut gx, gw, gb) = conv2d_backward_cpu_tuned(xs, w.host(OP)?, dy.host(OP)?, &geo, need_dx);
            if let (Some(gx), true) = (gx.as_mut(), relu_mask) {
                activation_relu_backward_cpu(gx, x.host(OP)?);
            }
            let db = (with_bias && need_dw).then(|| Tensor::from_cpu(&[geo.c_out], gb));
            Ok((gx.map(|gx| Tensor::from_cpu(x.shape(), gx)), need_dw.then(|| Tensor::from_cpu(w.shape(), gw)), db))
        }
        Device::Gpu(ctx) => {
            let dx = need_dx.then(|| Tensor::uninit_gpu(&ctx, OP, x.shape())).transpose()?;
            let dw = need_dw.then(|| Tensor::uninit_gpu(&ctx, OP, w.shape())).transpose()?;
            let db = (with_bias && need_dw).then(|| Tensor::uninit_gpu(&ctx, OP, &[geo.c_out])).transpose()?;
            let kept = kept.filter(|c| c.numel() == col_elems(&geo)).map(|c| c.buffer(OP)).transpose()?;
            let dxb = dx.as_ref().map(|t| t.buffer(OP)).transpose()?;
            let dbb = db.as_ref().map(|t| t.buffer(OP)).transpose()?;
            // A 1×1 convolution's dx comes from a permute, not col2im: its ReLU runs after.
            let fused = relu_mask && !geo.is_pointwise();
            let relu_out = fused.then(|| x.buffer(OP)).transpose()?;
            let params = dw.as_ref().map(|dw| Ok::<_, crate::Error>((x.buffer(OP)?, dw.buffer(OP)?, dbb))).transpose()?;
            conv2d_backward_gpu(&ctx, params, w.buffer(OP)?, dy.buffer(OP)?, dxb, &geo, kept, relu_out)?;
            match dx {
                Some(dx) if relu_mask && !fused => Ok((Some(activation_backward(x, &dx, Activation::Relu)?), dw, db)),
                dx => Ok((dx, dw, db)),
            }
        }
    }
}

/// Transposed convolution (PyTorch's `ConvTranspose2d`, a "deconvolution"):
/// x `[n, c_in, h, w]`, w `[c_in, c_out/groups, kh, kw]`, b `[c_out]` →
/// `[n, c_out, oh, ow]` (see [`Conv2dGeometry::transposed`]). It is the
/// backward-data pass of the convolution with the same weight, so it runs on
/// the same GEMM and col2im kernels.
pub fn conv2d_transpose_forward(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, cfg: Conv2dConfig, output_padding: [usize; 2]) -> Result<Tensor> {
    const OP: &str = "conv2d_transpose_forward";
    let geo = Conv2dGeometry::transposed(x.shape(), w.shape(), cfg, output_padding)?;
    let mut operands = vec![x, w];
    if let Some(b) = bias {
        crate::ops::check_shape(OP, "bias", b.shape(), &[geo.c_in])?;
        operands.push(b);
    }
    let y = match same_device(OP, &operands)? {
        Device::Cpu => {
            let (gx, _, _) = conv2d_backward_cpu_tuned(None, w.host(OP)?, x.host(OP)?, &geo, true);
            Tensor::from_cpu(&geo.input_shape(), gx.unwrap_or_default())
        }
        Device::Gpu(ctx) => {
            let y = Tensor::uninit_gpu(&ctx, OP, &geo.input_shape())?;
            conv2d_backward_gpu(&ctx, None, w.buffer(OP)?, x.buffer(OP)?, Some(y.buffer(OP)?), &geo, None, None)?;
            y
        }
    };
    match bias {
        Some(b) => bias_add(&y, b),
        None => Ok(y),
    }
}

/// Gradients of [`conv2d_transpose_forward`] from dL/dy: dx (a convolution
/// of dy with w), dw and, when `with_bias`, db.
pub fn conv2d_transpose_backward(x: &Tensor, w: &Tensor, dy: &Tensor, cfg: Conv2dConfig, output_padding: [usize; 2], with_bias: bool) -> Result<Conv2dGrads> {
    const OP: &str = "conv2d_transpose_backward";
    let geo = Conv2dGeometry::transposed(x.shape(), w.shape(), cfg, output_padding)?;
    crate::ops::check_shape(OP, "dy", dy.shape(), &geo.input_shape())?;
    same_device(OP, &[x, w, dy])?;
    let dx = conv2d_forward(dy, w, None, cfg)?;
    // The adjoint convolution's weight gradient, with dy as its input and x as its output gradient.
    let (dw, _) = conv2d_backward_params(dy, w, x, cfg, false)?;
    let db = with_bias.then(|| bias_grad(dy)).transpose()?;
    Ok(Conv2dGrads { dx, dw, db })
}

/// The batched-over-groups GEMM shape and layout of one step (see the module docs).
fn group_gemm(batch: usize, m: usize, n: usize, k: usize, strides: [usize; 3]) -> (GemmShape, GemmLayout) {
    let shape = GemmShape { batch, m, n, k, a_batched: true, b_batched: true };
    let [stride_a, stride_b, stride_c] = strides;
    (shape, GemmLayout { stride_a, stride_b, stride_c, ..GemmLayout::default() })
}

// ---------------------------------------------------------------- CPU reference

thread_local! {
    /// Column buffers reused across calls on this thread: a VGG-sized batch
    /// needs ~75 MB of columns, which glibc would map and unmap (and the kernel
    /// fault in again) on every call. Held until the thread ends.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with two column buffers: the thread's scratch pair when the
/// columns are large enough for glibc to map them afresh each time (above
/// 16 MB), fresh vectors otherwise (reusing small ones measured slower: the
/// held memory pushes other buffers onto cold pages).
fn with_cols<R>(geo: &Conv2dGeometry, budget: u64, f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
    let chunk = geo.images_per_chunk(budget).min(geo.n);
    let bytes = geo.cfg.groups * geo.col_rows() * chunk * geo.out_pixels() * 4;
    if bytes >= 16 << 20 {
        SCRATCH.with_borrow_mut(|(a, b)| f(a, b))
    } else {
        f(&mut Vec::new(), &mut Vec::new())
    }
}

/// `C_g = op(A_g)·op(B_g) + beta·C_g` for each group, on plain slices (large
/// products split over the cores).
#[allow(clippy::too_many_arguments)]
fn gemm_groups_cpu(a: &[f32], b: &[f32], c: &mut [f32], s: GemmShape, l: GemmLayout, ta: bool, tb: bool, beta: f32) {
    for gi in 0..s.batch {
        let (ar, ac) = if ta { (s.k, s.m) } else { (s.m, s.k) };
        let (br, bc) = if tb { (s.n, s.k) } else { (s.k, s.n) };
        // Slices of exactly the view's size: from_shape cannot fail.
        let av = ArrayView2::from_shape((ar, ac), &a[gi * l.stride_a..gi * l.stride_a + ar * ac]).unwrap();
        let bv = ArrayView2::from_shape((br, bc), &b[gi * l.stride_b..gi * l.stride_b + br * bc]).unwrap();
        let mut cv = ArrayViewMut2::from_shape((s.m, s.n), &mut c[gi * l.stride_c..gi * l.stride_c + s.m * s.n]).unwrap();
        let av = if ta { av.reversed_axes() } else { av };
        let bv = if tb { bv.reversed_axes() } else { bv };
        gemm_matmul_cpu(1.0, &av, &bv, beta, &mut cv);
    }
}

/// x: (n, c_in, h, w), w: (c_out, c_in/g, kh, kw), b: (c_out) → y: (n, c_out, oh, ow).
pub fn conv2d_forward_cpu(x: &[f32], w: &[f32], bias: Option<&[f32]>, geo: &Conv2dGeometry) -> Vec<f32> {
    conv2d_forward_cpu_in_chunks(x, w, bias, geo, CPU_CHUNK_BYTES)
}

/// [`conv2d_forward_cpu`] with the column matrix capped at `chunk_bytes`
/// (whole images per chunk, at least one): the same result up to rounding.
pub fn conv2d_forward_cpu_in_chunks(x: &[f32], w: &[f32], bias: Option<&[f32]>, geo: &Conv2dGeometry, chunk_bytes: u64) -> Vec<f32> {
    with_cols(geo, chunk_bytes, |cols, _| forward_cpu_with(x, w, bias, geo, cols, chunk_bytes))
}

fn forward_cpu_with(x: &[f32], w: &[f32], bias: Option<&[f32]>, geo: &Conv2dGeometry, cols: &mut Vec<f32>, budget: u64) -> Vec<f32> {
    let (groups, kc, p) = (geo.cfg.groups, geo.col_rows(), geo.out_pixels());
    let cog = geo.c_out / groups;
    let (in_img, out_img) = (geo.c_in * geo.h * geo.w, geo.c_out * p);
    let chunk = geo.images_per_chunk(budget);
    let mut y = if chunk >= geo.n { Vec::new() } else { vec![0f32; geo.n * out_img] };
    for img0 in (0..geo.n).step_by(chunk) {
        let nb = chunk.min(geo.n - img0);
        let sub = geo.with_batch(nb);
        im2col_cpu_into(&x[img0 * in_img..(img0 + nb) * in_img], &sub, cols); // (g·kc, nb·p)
        let mut yc = vec![0f32; geo.c_out * nb * p]; // (c_out, nb·p)
        let (s, l) = group_gemm(groups, cog, nb * p, kc, [cog * kc, kc * nb * p, cog * nb * p]);
        gemm_groups_cpu(w, cols, &mut yc, s, l, false, false, 0.0);
        let out = permute_swap_cpu(&yc, geo.c_out, nb, p, bias); // (nb, c_out, p)
        if nb == geo.n {
            return out; // one chunk: no zero-fill and copy
        }
        y[img0 * out_img..(img0 + nb) * out_img].copy_from_slice(&out);
    }
    y
}

/// Returns (dx, dw, db) for x, w and dy as in [`conv2d_forward_cpu`].
pub fn conv2d_backward_cpu(x: &[f32], w: &[f32], dy: &[f32], geo: &Conv2dGeometry) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    conv2d_backward_cpu_in_chunks(x, w, dy, geo, CPU_CHUNK_BYTES)
}

/// [`conv2d_backward_cpu`] with the column matrix capped at `chunk_bytes`.
pub fn conv2d_backward_cpu_in_chunks(x: &[f32], w: &[f32], dy: &[f32], geo: &Conv2dGeometry, chunk_bytes: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (dx, dw, db) = backward_cpu_opt(Some(x), w, dy, geo, true, chunk_bytes);
    (dx.unwrap_or_default(), dw, db)
}

/// The CPU backward, computing dx only when asked, and dW (from `x`) only when `x` is given.
fn backward_cpu_opt(x: Option<&[f32]>, w: &[f32], dy: &[f32], geo: &Conv2dGeometry, need_dx: bool, budget: u64) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    with_cols(geo, budget, |cols, dcols| backward_cpu_with(x, w, dy, geo, need_dx, cols, dcols, budget))
}

#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn backward_cpu_with(
    x: Option<&[f32]>,
    w: &[f32],
    dy: &[f32],
    geo: &Conv2dGeometry,
    need_dx: bool,
    cols: &mut Vec<f32>,
    dcols: &mut Vec<f32>,
    budget: u64,
) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (groups, kc, p) = (geo.cfg.groups, geo.col_rows(), geo.out_pixels());
    let cog = geo.c_out / groups;
    let (in_img, out_img) = (geo.c_in * geo.h * geo.w, geo.c_out * p);
    let chunk = geo.images_per_chunk(budget);
    // One chunk: col2im's output is dx itself, no zero-fill and copy.
    let mut dx = if need_dx && chunk < geo.n { vec![0f32; geo.n * in_img] } else { Vec::new() };
    let mut dw = vec![0f32; geo.c_out * kc];
    let mut db = vec![0f32; geo.c_out];
    for img0 in (0..geo.n).step_by(chunk) {
        let nb = chunk.min(geo.n - img0);
        let sub = geo.with_batch(nb);
        let dyc = permute_swap_cpu(&dy[img0 * out_img..(img0 + nb) * out_img], nb, geo.c_out, p, None); // (c_out, nb·p)
        for (acc, v) in db.iter_mut().zip(reduce_rows_cpu(&dyc, geo.c_out, nb * p)) {
            *acc += v;
        }
        if let Some(x) = x {
            im2col_cpu_into(&x[img0 * in_img..(img0 + nb) * in_img], &sub, cols);
            let beta = if img0 == 0 { 0.0 } else { 1.0 };
            // dW_g (cog, kc) += dYc_g (cog, nb·p) · cols_gᵀ (nb·p, kc)
            let (s, l) = group_gemm(groups, cog, kc, nb * p, [cog * nb * p, kc * nb * p, cog * kc]);
            gemm_groups_cpu(&dyc, cols, &mut dw, s, l, false, true, beta);
        }
        if !need_dx {
            continue;
        }
        // dcols_g (kc, nb·p) = W_gᵀ (kc, cog) · dYc_g (cog, nb·p)
        // Zeroed: the reused buffer may hold NaN, and 0·NaN is NaN even at beta = 0.
        dcols.clear();
        dcols.resize(groups * kc * nb * p, 0.0);
        let (s, l) = group_gemm(groups, kc, nb * p, cog, [cog * kc, cog * nb * p, kc * nb * p]);
        gemm_groups_cpu(w, &dyc, dcols, s, l, true, false, 0.0);
        let part = col2im_cpu(dcols, &sub);
        if nb == geo.n {
            dx = part;
        } else {
            dx[img0 * in_img..(img0 + nb) * in_img].copy_from_slice(&part);
        }
    }
    (need_dx.then_some(dx), dw, db)
}

// ---------------------------------------------------------------- GPU wrapper

fn gpu_chunk(ctx: &GpuContext, geo: &Conv2dGeometry) -> usize {
    let budget = ctx.max_binding_bytes().min(GPU_CHUNK_BYTES).min(ctx.max_chunk_bytes().unwrap_or(u64::MAX));
    geo.images_per_chunk(budget)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_forward_gpu(
    ctx: &Arc<GpuContext>,
    x: Bind<'_>,
    w: Bind<'_>,
    bias: Option<Bind<'_>>,
    y: Bind<'_>,
    geo: &Conv2dGeometry,
    keep: Option<Bind<'_>>,
    relu: bool,
) -> Result<()> {
    let (groups, kc, p) = (geo.cfg.groups, geo.col_rows(), geo.out_pixels());
    let cog = geo.c_out / groups;
    let plain = GemmConfig::default();
    if geo.is_pointwise() {
        // Y[img] (c_out, p) = W (c_out, c_in) · X[img] (c_in, p), W shared by every image;
        // bias per row (channel) and ReLU in the GEMM's store.
        let s = GemmShape { batch: geo.n, m: geo.c_out, n: p, k: geo.c_in, a_batched: false, b_batched: true };
        return gemm_gpu_strided(ctx, w, x, y, s, GemmLayout::packed(&s), plain, Epilogue { bias, bias_per_row: true, relu, relu_grad: None, row_sums: None });
    }
    // Without columns to keep, the GEMM gathers them from x in its loads
    // (an implicit GEMM): no im2col pass and no column buffer, so one group
    // takes the whole batch in one dispatch.
    let implicit = keep.is_none();
    let chunk = if implicit && groups == 1 { geo.n } else { gpu_chunk(ctx, geo) };
    // Kept columns (one chunk) go straight into the caller's buffer.
    let own;
    let cols = match keep {
        Some(kept) => Some(kept),
        None if implicit => None,
        None => {
            own = ctx.alloc("conv2d", groups * kc * chunk * p)?;
            Some(own.buffer())
        }
    };
    // One group: the GEMM stores NCHW, with bias and ReLU, straight into y.
    // Grouped: into (c_out, nb·p) columns, then a permute adds them (the
    // epilogue's bias index is the row within a group).
    let yc = if groups == 1 { None } else { Some(ctx.alloc("conv2d", geo.c_out * chunk * p)?) };
    for img0 in (0..geo.n).step_by(chunk) {
        let nb = chunk.min(geo.n - img0);
        let sub = geo.with_batch(nb);
        let in_off = img0 * geo.c_in * geo.h * geo.w;
        let (s, mut l) = group_gemm(groups, cog, nb * p, kc, [cog * kc, kc * nb * p, cog * nb * p]);
        let b = match cols {
            Some(cols) => {
                im2col_gpu(ctx, x, in_off, cols, &sub)?;
                cols
            }
            None => {
                (l.offset_b, l.stride_b, l.b_conv) = (in_off, geo.c_in / groups * geo.h * geo.w, Some(ConvGather { geo: sub }));
                x
            }
        };
        match &yc {
            None => {
                l.offset_c = img0 * geo.c_out * p;
                l.c_images = Some((p, geo.c_out * p));
                gemm_gpu_strided(ctx, w, b, y, s, l, plain, Epilogue { bias, bias_per_row: true, relu, relu_grad: None, row_sums: None })?;
            }
            Some(yc) => {
                gemm_gpu_strided(ctx, w, b, yc.buffer(), s, l, plain, Epilogue::default())?;
                permute_swap_gpu(ctx, yc.buffer(), 0, y, img0 * geo.c_out * p, [geo.c_out, nb, p], bias.map(|b| (b, geo.c_out)), relu)?;
            }
        }
    }
    Ok(())
}

/// Records dx (when given) and, from x, dW and db (when `params` is given;
/// db rides in dW's GEMM as dy's row sums), through the ReLU whose output is
/// `relu_out` (x itself) when given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_backward_gpu(
    ctx: &Arc<GpuContext>,
    params: Option<(Bind<'_>, Bind<'_>, Option<Bind<'_>>)>,
    w: Bind<'_>,
    dy: Bind<'_>,
    dx: Option<Bind<'_>>,
    geo: &Conv2dGeometry,
    kept: Option<Bind<'_>>,
    relu_out: Option<Bind<'_>>,
) -> Result<()> {
    debug_assert!(relu_out.is_none() || !geo.is_pointwise(), "a 1×1 convolution's dx has no col2im to fuse a ReLU into");
    let (groups, kc, p) = (geo.cfg.groups, geo.col_rows(), geo.out_pixels());
    let cog = geo.c_out / groups;
    let (in_img, out_img) = (geo.c_in * geo.h * geo.w, geo.c_out * p);
    let chunk = gpu_chunk(ctx, geo);
    // Columns kept by the forward pass cover the whole batch in one chunk.
    let kept = kept.filter(|_| chunk >= geo.n && !geo.is_pointwise());
    // dy is read in place as each group's [cog, nb·p] matrix: the GEMMs
    // load it through the NCHW mapping their stores use, no permute.
    let dy_images = Some((p, out_img));
    // dW (and db) over images [img0, img0 + nb), added to what earlier chunks left.
    let weight_grad = |img0: usize, nb: usize| -> Result<()> {
        let Some((x, dw, db)) = params else { return Ok(()) };
        let beta = if img0 == 0 { 0.0 } else { 1.0 };
        let (s, mut l) = group_gemm(groups, cog, kc, nb * p, [cog * p, kc * nb * p, cog * kc]);
        (l.offset_a, l.a_images) = (img0 * out_img, dy_images);
        // Columns: kept from forward, a 1×1 convolution's swapped x, or
        // (otherwise) gathered from x by the GEMM itself, as in forward.
        let own;
        let cols_buf = match kept {
            Some(kept) => kept,
            None if geo.is_pointwise() => {
                own = ctx.alloc("conv2d", groups * kc * nb * p)?;
                // For a 1×1 stride-1 convolution im2col is exactly this swap.
                permute_swap_gpu(ctx, x, img0 * in_img, own.buffer(), 0, [nb, geo.c_in, p], None, false)?;
                own.buffer()
            }
            None => {
                (l.offset_b, l.stride_b, l.b_conv) = (img0 * in_img, geo.c_in / groups * geo.h * geo.w, Some(ConvGather { geo: geo.with_batch(nb) }));
                x
            }
        };
        // The bias gradient rides in the weight gradient's GEMM (dy's row sums).
        let epi = Epilogue { row_sums: db.map(|db| (db, 0)), ..Epilogue::default() };
        gemm_gpu_strided(ctx, dy, cols_buf, dw, s, l, GemmConfig { trans_b: true, beta, ..GemmConfig::default() }, epi)
    };
    // Gathered columns take the whole batch in one GEMM; dx's column gradient
    // is a matrix, in chunks of at most DX_COLS_BYTES (it would otherwise be
    // the largest tensor of a ResNet's backward).
    let gathered = kept.is_none() && !geo.is_pointwise();
    // Stride 1, one group: dx is itself a convolution, of dy with W flipped
    // and transposed, which the GEMM gathers as the forward's does: no column
    // gradient and no col2im (the ReLU's backward rides in its store).
    let fits = |elems: usize| (elems * 4) as u64 <= ctx.max_binding_bytes();
    let implicit_dx = (gathered && geo.cfg.groups == 1 && fits(geo.n * in_img) && fits(geo.n * out_img)).then(|| cpu::transposed_geometry(geo)).flatten();
    if let (Some(dx), Some(tgeo)) = (dx, implicit_dx) {
        weight_grad(0, geo.n)?;
        let wt = ctx.alloc("conv2d", geo.c_out * kc)?;
        permute_flip_gpu(ctx, w, wt.buffer(), [geo.c_out, geo.c_in, geo.kh * geo.kw])?;
        let (pt, kt) = (tgeo.out_pixels(), tgeo.col_rows());
        let (s, mut l) = group_gemm(1, geo.c_in, geo.n * pt, kt, [geo.c_in * kt, kt * geo.n * pt, geo.c_in * geo.n * pt]);
        (l.stride_b, l.b_conv, l.c_images) = (out_img, Some(ConvGather { geo: tgeo }), Some((pt, in_img)));
        let epi = Epilogue { relu_grad: relu_out, ..Epilogue::default() };
        return gemm_gpu_strided(ctx, wt.buffer(), dy, dx, s, l, GemmConfig::default(), epi);
    }
    let dx_chunk = if gathered {
        weight_grad(0, geo.n)?;
        // No smaller than dx itself: a VGG-sized layer (columns 9× its
        // input) would otherwise take dozens of chunks, two dispatches each.
        let dx_bytes = (geo.n * in_img * 4) as u64;
        chunk.min(geo.images_per_chunk(DX_COLS_BYTES.max(dx_bytes)))
    } else {
        chunk
    };
    for img0 in (0..geo.n).step_by(dx_chunk) {
        let nb = dx_chunk.min(geo.n - img0);
        if !gathered {
            weight_grad(img0, nb)?;
        }
        let Some(dx) = dx else { continue };
        let sub = geo.with_batch(nb);
        let dcols = ctx.alloc("conv2d", groups * kc * nb * p)?;
        let (s, mut l) = group_gemm(groups, kc, nb * p, cog, [cog * kc, cog * p, kc * nb * p]);
        (l.offset_b, l.b_images) = (img0 * out_img, dy_images);
        gemm_gpu_strided(ctx, w, dy, dcols.buffer(), s, l, GemmConfig { trans_a: true, ..GemmConfig::default() }, Epilogue::default())?;
        if geo.is_pointwise() {
            permute_swap_gpu(ctx, dcols.buffer(), 0, dx, img0 * in_img, [geo.c_in, nb, p], None, false)?;
        } else {
            col2im_gpu(ctx, dcols.buffer(), dx, img0 * in_img, &sub, relu_out)?;
        }
    }
    Ok(())
}
