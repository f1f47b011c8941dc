//! The CPU path's convolution, tuned; the parity suite checks it against
//! `conv2d_forward_cpu` / `conv2d_backward_cpu`, the plain references.
//!
//! - Forward: an implicit GEMM, image by image over the cores. The GEMM's B
//!   panels (columns of im2col) come from the zero-padded image as they are
//!   needed: for stride 1 read in place (where output rows are not a multiple
//!   of 8 wide, over the padded width, keeping each row's first ow columns),
//!   copied otherwise; y is written with bias and ReLU.
//! - dx: for stride 1 (rows a multiple of 8 wide), the same forward on dy
//!   with the kernels flipped and transposed; otherwise dcols = Wᵀ·dy and
//!   col2im, in blocks of images.
//! - dW and db: no column matrix either. dWᵀ = windows of the padded input
//!   (read in place) · dyᵀ, an outer-product tile over (ci, ky, kx) × output
//!   channels whose k is the pixels, in blocks of images that stay in cache
//!   (about `BLOCK_BYTES`, at least `MIN_BLOCK_PIXELS` pixels), summed per
//!   part (at most `PARTS`, a number that does not depend on the core count,
//!   so neither do the sums), then the parts in order.

use crate::ops::gemm::cpu::{gemm_nn, gemm_nn_panels, gemm_windows_acc, Direct, PackedA, Windows};
use crate::ops::{parallel, runs, sum8};
use crate::ops::col2im::col2im_cpu_into;
use crate::shape::Conv2dGeometry;

/// A block's column matrix is kept near this size (within a core's L2; from
/// 64 to 256 KiB measured alike here, 1 MiB 5–10% slower: benches/RESULTS.md).
const BLOCK_BYTES: usize = 256 << 10;
/// ...but spans at least this many output pixels: the k of the weight
/// gradient's GEMM, which runs short and slow on a few pixels.
const MIN_BLOCK_PIXELS: usize = 256;
/// Weight and bias gradients are summed in at most this many parts.
const PARTS: usize = 4;

/// Images per block of the weight gradient alone: the padded images and dy's
/// panels (16 lanes a pixel) near `BLOCK_BYTES`, at least `MIN_BLOCK_PIXELS`.
fn dw_block_images(geo: &Conv2dGeometry) -> usize {
    let [hp, wp] = padded_dims(geo);
    let p = geo.out_pixels().max(1);
    let per_image = (geo.c_in * hp * wp + p * 16) * 4;
    (BLOCK_BYTES / per_image).max(MIN_BLOCK_PIXELS.div_ceil(p)).clamp(1, geo.n.max(1))
}

/// Images per block where dx takes dcols and col2im.
fn block_images(geo: &Conv2dGeometry) -> usize {
    let p = geo.out_pixels().max(1);
    let per_image = geo.cfg.groups * geo.col_rows().max(1) * p * 4;
    (BLOCK_BYTES / per_image).max(MIN_BLOCK_PIXELS.div_ceil(p)).clamp(1, geo.n.max(1))
}

/// The forward pass: as `conv2d_forward_cpu`, then ReLU when `relu` (NaN
/// passes). No column matrix: the GEMM's B panels are built from each
/// zero-padded input image as they are needed (an implicit GEMM), so the
/// columns never leave L1, and y is written in place with bias and ReLU.
pub fn conv2d_forward_cpu_tuned(x: &[f32], w: &[f32], bias: Option<&[f32]>, geo: &Conv2dGeometry, relu: bool) -> Vec<f32> {
    let (groups, kc, p, c_out) = (geo.cfg.groups, geo.col_rows(), geo.out_pixels(), geo.c_out);
    let cog = c_out / groups;
    let (in_img, out_img) = (geo.c_in * geo.h * geo.w, c_out * p);
    let mut y = vec![0f32; geo.n * out_img];
    if y.is_empty() {
        return y;
    }
    // W_g (cog × kc), packed once for every image.
    let packed: Vec<PackedA> = (0..groups).map(|g| PackedA::new(&w[g * cog * kc..], cog, kc, kc, 1)).collect();
    let images: Vec<(usize, &mut [f32])> = y.chunks_mut(out_img).enumerate().collect();
    // Stride 1: a window row is a slice of the padded image, read in place
    // (row (ci, ky, kx) of the columns starts at offs[kk]).
    let ([_, wp], offs) = (padded_dims(geo), window_offsets(geo));
    // Stride 1 with output rows that vectors do not tile (LeNet-5's 28 and
    // 10): the product runs over the padded width instead, q = oy·wp + ox
    // (the columns from ow on wasted), so every panel is read in place, then
    // each row's first ow values are kept. Copying the panels cost more.
    let wide = geo.cfg.stride == [1, 1] && geo.ow % 8 != 0;
    let q = (geo.oh - 1) * wp + geo.ow;
    parallel(runs(images, crate::cores()), |run| {
        let (mut xp, mut spans, mut yq) = (Vec::new(), Vec::new(), Vec::new());
        for (img, yi) in run {
            let plane = pad_image(&x[img * in_img..][..in_img], geo, &mut xp);
            for (g, a) in packed.iter().enumerate() {
                let xg = &xp[g * (geo.c_in / groups) * plane..];
                let bias = bias.map(|b| &b[g * cog..][..cog]);
                let yg = &mut yi[g * cog * p..][..cog * p];
                if wide {
                    yq.resize(cog * q, 0.0); // written whole
                    let direct = Direct { src: xg, offs: &offs, row: q, stride: 0 };
                    let tail = |j0: usize, w: usize, panel: &mut [f32]| {
                        for (dst, &o) in panel.chunks_exact_mut(panel.len() / kc).zip(&offs) {
                            dst[..w].copy_from_slice(&xg[o + j0..][..w]);
                        }
                    };
                    gemm_nn_panels(a, q, &mut yq, q, bias, relu, tail, Some(direct));
                    for (yrow, qrow) in yg.chunks_exact_mut(p).zip(yq.chunks_exact(q)) {
                        for (dst, src) in yrow.chunks_exact_mut(geo.ow).zip(qrow.chunks(wp)) {
                            copy_row(dst, &src[..geo.ow]);
                        }
                    }
                } else {
                    let direct = (geo.cfg.stride == [1, 1]).then_some(Direct { src: xg, offs: &offs, row: geo.ow, stride: wp });
                    gemm_nn_panels(a, p, yg, p, bias, relu, |j0, w, panel| window_panel(xg, geo, j0, w, panel, &mut spans), direct);
                }
            }
        }
    });
    y
}

/// The padded input's height and width.
fn padded_dims(geo: &Conv2dGeometry) -> [usize; 2] {
    let [ph, pw] = geo.cfg.padding;
    [geo.h + 2 * ph, geo.w + 2 * pw]
}

/// Where row (ci, ky, kx) of one group's column matrix starts in its padded
/// input (at output pixel (0, 0)): the same for every image and group.
fn window_offsets(geo: &Conv2dGeometry) -> Vec<usize> {
    let ([hp, wp], [dh, dw], taps) = (padded_dims(geo), geo.cfg.dilation, geo.kh * geo.kw);
    (0..geo.col_rows()).map(|kk| (kk / taps * hp + kk / geo.kw % geo.kh * dh) * wp + kk % geo.kw * dw).collect()
}

/// Copies images `x` (each c_in × h × w) into `out` with the convolution's
/// padding as zeros on every side; returns the padded plane's size. `out`
/// is scratch kept for one geometry: its borders are zeroed when it grows
/// and never written after, so only the interiors are copied each time.
fn pad_image(x: &[f32], geo: &Conv2dGeometry, out: &mut Vec<f32>) -> usize {
    let [ph, pw] = geo.cfg.padding;
    let [hp, wp] = padded_dims(geo);
    out.resize(x.len() / (geo.h * geo.w).max(1) * hp * wp, 0.0);
    for (dst, src) in out.chunks_exact_mut(hp * wp).zip(x.chunks_exact(geo.h * geo.w)) {
        for (y, row) in src.chunks_exact(geo.w).enumerate() {
            copy_row(&mut dst[(y + ph) * wp + pw..][..geo.w], row);
        }
    }
    hp * wp
}

/// `dst.copy_from_slice(src)` in fixed-size pieces: a memcpy call per short
/// row cost more than the copy (perf: 5% of a ResNet-20 step).
fn copy_row(dst: &mut [f32], src: &[f32]) {
    let (mut d8, mut s8) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    d8.by_ref().zip(s8.by_ref()).for_each(|(d, s)| d.copy_from_slice(s));
    d8.into_remainder().iter_mut().zip(s8.remainder()).for_each(|(d, &s)| *d = s);
}

/// Columns j0..j0 + w of one image's column matrix (rows (ci, ky, kx) of
/// one group, as im2col lays them out), read from the padded image `xp`
/// into `panel` (`kc` rows of `panel.len() / kc` lanes). `spans` is scratch.
fn window_panel(xp: &[f32], geo: &Conv2dGeometry, j0: usize, w: usize, panel: &mut [f32], spans: &mut Vec<[usize; 4]>) {
    let (kh, kw, ow) = (geo.kh, geo.kw, geo.ow);
    let [sh, sw] = geo.cfg.stride;
    let [dh, dw] = geo.cfg.dilation;
    let [hp, wp] = padded_dims(geo);
    let nr = panel.len() / geo.col_rows().max(1);
    // The panel's pixels as runs along output rows: [lane, oy, ox, len].
    spans.clear();
    let mut q = j0;
    while q < j0 + w {
        let (oy, ox) = (q / ow, q % ow);
        let len = (ow - ox).min(j0 + w - q);
        spans.push([q - j0, oy, ox, len]);
        q += len;
    }
    let mut rows = panel.chunks_exact_mut(nr);
    for plane in xp.chunks_exact(hp * wp).take(geo.c_in / geo.cfg.groups) {
        for ky in 0..kh {
            for kx in 0..kw {
                let Some(dst) = rows.next() else { return };
                for &[lane, oy, ox, len] in spans.iter() {
                    let src = &plane[(oy * sh + ky * dh) * wp + ox * sw + kx * dw..];
                    let dst = &mut dst[lane..][..len];
                    if sw == 1 {
                        // Fixed-size copies for the usual runs (no memcpy call).
                        match len {
                            16 => dst.copy_from_slice(&src[..16]),
                            8 => dst.copy_from_slice(&src[..8]),
                            _ => dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s),
                        }
                    } else {
                        dst.iter_mut().zip(src.iter().step_by(sw)).for_each(|(d, &s)| *d = s);
                    }
                }
            }
        }
    }
}

/// The backward pass: (dx when `need_dx`, dW from `x` when given, db), as
/// `conv2d_backward_cpu` computes them.
pub fn conv2d_backward_cpu_tuned(x: Option<&[f32]>, w: &[f32], dy: &[f32], geo: &Conv2dGeometry, need_dx: bool) -> (Option<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let (groups, kc, p, c_out) = (geo.cfg.groups, geo.col_rows(), geo.out_pixels(), geo.c_out);
    let (cog, cig) = (c_out / groups, geo.c_in / groups);
    let (in_img, out_img) = (geo.c_in * geo.h * geo.w, c_out * p);
    // A stride-1 convolution's dx is itself a convolution (of dy, with W
    // flipped and transposed): the implicit-GEMM forward, with no dcols or
    // col2im, where its rows are a multiple of 8 wide. Elsewhere (LeNet-5's
    // 14-wide conv2) the wide forward's wasted columns and the zeros around
    // dy cost more than dcols and col2im (0.83 against 0.67 ms a backward),
    // which take it and anything else below.
    let direct_dx = (geo.w % 8 == 0).then(|| transposed_geometry(geo)).flatten();
    // Blocks sized for dcols where dx would take them, whether or not it is
    // asked for: dW's sum order, and so its bits, must not depend on that.
    let b = if direct_dx.is_some() { dw_block_images(geo) } else { block_images(geo) };
    let direct_dx = direct_dx.filter(|_| need_dx);
    let need_dx = need_dx && direct_dx.is_none();
    let nblocks = geo.n.div_ceil(b);
    let mut dx = if need_dx { vec![0f32; geo.n * in_img] } else { Vec::new() };
    let mut dx_blocks: Vec<Option<&mut [f32]>> = if need_dx && in_img > 0 { dx.chunks_mut(b * in_img).map(Some).collect() } else { Vec::new() };
    dx_blocks.resize_with(nblocks, || None);
    let blocks: Vec<(usize, Option<&mut [f32]>)> = dx_blocks.into_iter().enumerate().map(|(i, d)| (i * b, d)).collect();
    // W_gᵀ (kc × cog), packed once for every image.
    let packed_t: Vec<PackedA> = if need_dx { (0..groups).map(|g| PackedA::new(&w[g * cog * kc..], kc, cog, 1, kc)).collect() } else { Vec::new() };
    let ([_, wp], offs) = (padded_dims(geo), window_offsets(geo));
    let sums = parallel(runs(blocks, PARTS), |run| {
        // dWᵀ (kc × c_out): the windows' product yields it so.
        let mut dwt = vec![0f32; if x.is_some() { kc * c_out } else { 0 }];
        let mut db = vec![0f64; c_out];
        let (mut xp, mut dyc, mut dcols) = (Vec::new(), Vec::new(), Vec::new());
        for (img0, dxb) in run {
            let nb = b.min(geo.n - img0);
            let dyb = &dy[img0 * out_img..][..nb * out_img];
            for (c, rows) in dyb.chunks_exact(p.max(1)).enumerate() {
                db[c % c_out] += sum8(rows, rows, |v, _| v as f64);
            }
            if let Some(x) = x {
                // dW_gᵀ (kc × cog) += windows of the padded x_g · dY_gᵀ, read in place.
                let plane = pad_image(&x[img0 * in_img..][..nb * in_img], geo, &mut xp);
                for g in 0..groups {
                    let [sh, sw] = geo.cfg.stride;
                    let win = Windows { src: &xp[g * cig * plane..], img_len: geo.c_in * plane, offs: &offs, rows: geo.oh, row: geo.ow, row_stride: sh * wp, step: sw };
                    gemm_windows_acc(&win, nb, &dyb[g * cog * p..], out_img, cog, &mut dwt[g * cog..], c_out);
                }
            }
            if let Some(dxb) = dxb {
                // dy's block as (c_out, nb·p), so the product runs along one long k.
                let np = nb * p;
                dyc.resize(c_out * np, 0.0); // overwritten whole
                for (i, src) in dyb.chunks_exact(p.max(1)).enumerate() {
                    let (img, c) = (i / c_out, i % c_out);
                    dyc[(c * nb + img) * p..][..p].copy_from_slice(src);
                }
                // dcols_g (kc × nb·p) = W_gᵀ · dYc_g, written whole.
                dcols.resize(groups * kc * np, 0.0);
                for (g, a) in packed_t.iter().enumerate() {
                    gemm_nn(a, &dyc[g * cog * np..], np, np, &mut dcols[g * kc * np..], np, None, false);
                }
                col2im_cpu_into(&dcols, &geo.with_batch(nb), dxb); // dx starts as zeros
            }
        }
        (dwt, db)
    });
    let mut dwt = vec![0f32; if x.is_some() { kc * c_out } else { 0 }];
    let mut db = vec![0f64; c_out];
    for (pdw, pdb) in sums {
        dwt.iter_mut().zip(&pdw).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(&pdb).for_each(|(a, v)| *a += v);
    }
    let mut dw = vec![0f32; dwt.len()];
    for (kk, row) in dwt.chunks_exact(c_out.max(1)).enumerate() {
        dw[kk..].iter_mut().step_by(kc).zip(row).for_each(|(d, &v)| *d = v);
    }
    let dx = match direct_dx {
        Some(tgeo) => Some(conv2d_forward_cpu_tuned(dy, &flip_weights(w, geo), None, &tgeo, false)),
        None => need_dx.then_some(dx),
    };
    (dx, dw, db.into_iter().map(|v| v as f32).collect())
}

/// For a stride-1 convolution, the convolution that maps dy to dx: input
/// (n, c_out, oh, ow), weights (c_in, c_out/groups, kh, kw) as `flip_weights`
/// makes them, padding d·(k − 1) − p. None where that padding would be
/// negative or the stride is not 1.
pub(super) fn transposed_geometry(geo: &Conv2dGeometry) -> Option<Conv2dGeometry> {
    let (cfg, k) = (geo.cfg, [geo.kh, geo.kw]);
    if cfg.stride != [1, 1] {
        return None;
    }
    let pad = [0, 1].map(|i| (cfg.dilation[i] * (k[i] - 1)).checked_sub(cfg.padding[i]));
    let [Some(ph), Some(pw)] = pad else { return None };
    let tcfg = crate::Conv2dConfig { padding: [ph, pw], ..cfg };
    let t = Conv2dGeometry::new(&[geo.n, geo.c_out, geo.oh, geo.ow], &[geo.c_in, geo.c_out / cfg.groups, geo.kh, geo.kw], tcfg).ok()?;
    (t.oh == geo.h && t.ow == geo.w).then_some(t)
}

/// W (c_out, c_in/g, kh, kw) → W' (c_in, c_out/g, kh, kw), each kernel
/// rotated by 180°, group by group: the weights of `transposed_geometry`.
fn flip_weights(w: &[f32], geo: &Conv2dGeometry) -> Vec<f32> {
    let g = geo.cfg.groups;
    let (cog, cig, taps) = (geo.c_out / g, geo.c_in / g, geo.kh * geo.kw);
    let mut out = vec![0f32; w.len()];
    for gi in 0..g {
        for co in 0..cog {
            for ci in 0..cig {
                let src = &w[((gi * cog + co) * cig + ci) * taps..][..taps];
                let dst = &mut out[((gi * cig + ci) * cog + co) * taps..][..taps];
                dst.iter_mut().zip(src.iter().rev()).for_each(|(d, &s)| *d = s);
            }
        }
    }
    out
}
