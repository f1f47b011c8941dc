//! The CPU path's convolution, tuned. The batch runs in blocks of images
//! whose columns stay in cache (about `BLOCK_BYTES`, but at least
//! `MIN_BLOCK_PIXELS` pixels so a weight gradient's GEMM keeps a long k), and
//! the blocks are spread over the cores. Each block takes the reference's
//! steps (im2col, GEMM, permute; col2im for dx), so the parity suite checks
//! this against `conv2d_forward_cpu` / `conv2d_backward_cpu`; what changes is
//! memory: no batch-sized column matrix, permuted copy or zero-filled dx
//! to fault in and stream through, and bias and ReLU applied as each block
//! of output is written. Weight and bias gradients are summed per part (at
//! most `PARTS`, a number that does not depend on the core count, so neither
//! do the sums), then the parts in order.

use super::{gemm_groups_cpu, group_gemm};
use crate::ops::{parallel, runs};
use crate::ops::activation::{activation_forward_cpu, Activation};
use crate::ops::col2im::col2im_cpu_into;
use crate::ops::im2col::im2col_cpu_into;
use crate::shape::Conv2dGeometry;

/// A block's column matrix is kept near this size (within a core's L2; from
/// 64 to 256 KiB measured alike here, 1 MiB 5–10% slower: benches/RESULTS.md).
const BLOCK_BYTES: usize = 256 << 10;
/// ...but spans at least this many output pixels: the k of the weight
/// gradient's GEMM, which runs short and slow on a few pixels.
const MIN_BLOCK_PIXELS: usize = 256;
/// Weight and bias gradients are summed in at most this many parts.
const PARTS: usize = 4;

/// Images per block.
fn block_images(geo: &Conv2dGeometry) -> usize {
    let p = geo.out_pixels().max(1);
    let per_image = geo.cfg.groups * geo.col_rows().max(1) * p * 4;
    (BLOCK_BYTES / per_image).max(MIN_BLOCK_PIXELS.div_ceil(p)).clamp(1, geo.n.max(1))
}

/// The forward pass: as `conv2d_forward_cpu`, then ReLU when `relu` (NaN passes).
pub fn conv2d_forward_cpu_tuned(x: &[f32], w: &[f32], bias: Option<&[f32]>, geo: &Conv2dGeometry, relu: bool) -> Vec<f32> {
    let (groups, kc, p, c_out) = (geo.cfg.groups, geo.col_rows(), geo.out_pixels(), geo.c_out);
    let cog = c_out / groups;
    let (in_img, out_img) = (geo.c_in * geo.h * geo.w, c_out * p);
    let b = block_images(geo);
    let mut y = vec![0f32; geo.n * out_img];
    if y.is_empty() {
        return y;
    }
    let blocks: Vec<(usize, &mut [f32])> = y.chunks_mut(b * out_img).enumerate().map(|(i, yb)| (i * b, yb)).collect();
    parallel(runs(blocks, crate::cores()), |run| {
        let (mut cols, mut yc) = (Vec::new(), Vec::new());
        for (img0, yb) in run {
            let nb = yb.len() / out_img;
            im2col_cpu_into(&x[img0 * in_img..(img0 + nb) * in_img], &geo.with_batch(nb), &mut cols);
            // Written whole by the GEMM (beta = 0 never reads C): no zero-fill.
            yc.resize(c_out * nb * p, 0.0);
            let (s, l) = group_gemm(groups, cog, nb * p, kc, [cog * kc, kc * nb * p, cog * nb * p]);
            gemm_groups_cpu(w, &cols, &mut yc, s, l, false, false, 0.0, false);
            // (c_out, nb, p) → (nb, c_out, p), with bias and ReLU.
            for c in 0..c_out {
                let bc = bias.map_or(0.0, |b| b[c]);
                for img in 0..nb {
                    let src = &yc[(c * nb + img) * p..][..p];
                    let dst = &mut yb[(img * c_out + c) * p..][..p];
                    for (d, &v) in dst.iter_mut().zip(src) {
                        let v = v + bc;
                        *d = if relu { activation_forward_cpu(Activation::Relu, v) } else { v };
                    }
                }
            }
        }
    });
    y
}

/// The backward pass: (dx when `need_dx`, dW from `x` when given, db), as
/// `conv2d_backward_cpu` computes them.
pub fn conv2d_backward_cpu_tuned(x: Option<&[f32]>, w: &[f32], dy: &[f32], geo: &Conv2dGeometry, need_dx: bool) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (groups, kc, p, c_out) = (geo.cfg.groups, geo.col_rows(), geo.out_pixels(), geo.c_out);
    let cog = c_out / groups;
    let (in_img, out_img) = (geo.c_in * geo.h * geo.w, c_out * p);
    let b = block_images(geo);
    let nblocks = geo.n.div_ceil(b);
    let mut dx = if need_dx { vec![0f32; geo.n * in_img] } else { Vec::new() };
    let mut dx_blocks: Vec<Option<&mut [f32]>> = if need_dx && in_img > 0 { dx.chunks_mut(b * in_img).map(Some).collect() } else { Vec::new() };
    dx_blocks.resize_with(nblocks, || None);
    let blocks: Vec<(usize, Option<&mut [f32]>)> = dx_blocks.into_iter().enumerate().map(|(i, d)| (i * b, d)).collect();
    let sums = parallel(runs(blocks, PARTS), |run| {
        let mut dw = vec![0f32; if x.is_some() { c_out * kc } else { 0 }];
        let mut db = vec![0f64; c_out];
        let (mut dyc, mut cols, mut dcols) = (Vec::new(), Vec::new(), Vec::new());
        for (img0, dxb) in run {
            let nb = b.min(geo.n - img0);
            // dy's block as (c_out, nb·p), and its row sums.
            dyc.resize(c_out * nb * p, 0.0); // overwritten whole
            for img in 0..nb {
                for c in 0..c_out {
                    let src = &dy[(img0 + img) * out_img + c * p..][..p];
                    dyc[(c * nb + img) * p..][..p].copy_from_slice(src);
                    db[c] += src.iter().map(|&v| v as f64).sum::<f64>();
                }
            }
            let sub = geo.with_batch(nb);
            if let Some(x) = x {
                im2col_cpu_into(&x[img0 * in_img..(img0 + nb) * in_img], &sub, &mut cols);
                // dW_g (cog, kc) += dYc_g (cog, nb·p) · cols_gᵀ (nb·p, kc)
                let (s, l) = group_gemm(groups, cog, kc, nb * p, [cog * nb * p, kc * nb * p, cog * kc]);
                gemm_groups_cpu(&dyc, &cols, &mut dw, s, l, false, true, 1.0, false);
            }
            if let Some(dxb) = dxb {
                // dcols_g (kc, nb·p) = W_gᵀ (kc, cog) · dYc_g (cog, nb·p), written whole.
                dcols.resize(groups * kc * nb * p, 0.0);
                let (s, l) = group_gemm(groups, kc, nb * p, cog, [cog * kc, cog * nb * p, kc * nb * p]);
                gemm_groups_cpu(w, &dyc, &mut dcols, s, l, true, false, 0.0, false);
                col2im_cpu_into(&dcols, &sub, dxb); // dx starts as zeros
            }
        }
        (dw, db)
    });
    let mut dw = vec![0f32; if x.is_some() { c_out * kc } else { 0 }];
    let mut db = vec![0f64; c_out];
    for (pdw, pdb) in sums {
        dw.iter_mut().zip(&pdw).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(&pdb).for_each(|(a, v)| *a += v);
    }
    (need_dx.then_some(dx), dw, db.into_iter().map(|v| v as f32).collect())
}
