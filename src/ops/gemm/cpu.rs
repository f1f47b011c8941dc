//! The CPU path's own GEMM micro-kernels, for the tuned convolution
//! (`conv2d/cpu.rs`). matrixmultiply packs both operands on every call,
//! which on a convolution's short, wide products cost a third of its time
//! (benches/RESULTS.md); these read the column matrix and dy where they lie:
//!
//! - `gemm_nn`: C = A·B (+ bias, ReLU), A packed once per call (the weights),
//!   B read row by row in panels of `NR` columns: forward and dcols.
//! - `gemm_windows_acc`: C += Σ A·Bᵀ over images, A's rows windows of the
//!   padded input read in place (no column matrix), B (dy) packed pixel-major:
//!   the weight gradient, transposed, with the pixels as k.
//!
//! Both are outer-product tiles (6 rows × 1 or 2 vectors of accumulators in
//! registers). Written once over `pulp::Simd` and compiled for each
//! instruction set pulp knows (AVX2 with FMA, NEON, ...; picked at run time,
//! no `unsafe` here). The sum order of every element is fixed (k in order),
//! so results do not depend on the core count.

use pulp::{Arch, Simd, WithSimd};

/// Rows of an outer-product tile; its columns are `NV` vectors.
const MR: usize = 6;
const NV: usize = 2;

/// A (m × k) packed for `gemm_nn`: panels of `MR` rows (the last padded with
/// zeros), each k-major, so a tile's step along k reads `MR` adjacent values.
pub(crate) struct PackedA {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedA {
    /// A's element (i, kk) is `a[i * rs + kk * cs]` (so `cs = 1` for A, `rs = 1` for Aᵀ).
    pub(crate) fn new(a: &[f32], m: usize, k: usize, rs: usize, cs: usize) -> Self {
        let mut data = vec![0f32; m.div_ceil(MR) * k * MR];
        for (kk, step) in data.chunks_exact_mut(MR).enumerate() {
            let (panel, kk) = (kk / k, kk % k);
            for (r, v) in step.iter_mut().enumerate() {
                let i = panel * MR + r;
                if i < m {
                    *v = a[i * rs + kk * cs];
                }
            }
        }
        PackedA { data, m, k }
    }
}

/// Row `i` of C (at `c[i * ldc..]`, n wide) = row i of A · B (+ `bias[i]`,
/// then ReLU when `relu`: NaN passes, as `activation_forward_cpu`), with B's
/// row kk at `b[kk * ldb..]`. C is written whole, never read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nn(a: &PackedA, b: &[f32], ldb: usize, n: usize, c: &mut [f32], ldc: usize, bias: Option<&[f32]>, relu: bool) {
    gemm_nn_panels(a, n, c, ldc, bias, relu, |j0, w, panel| {
        let nr = panel.len() / a.k.max(1);
        for (kk, dst) in panel.chunks_exact_mut(nr).enumerate() {
            dst[..w].copy_from_slice(&b[j0 + kk * ldb..][..w]);
        }
    }, None)
}

/// `gemm_nn` with B given by `pack(j0, w, panel)`, which writes columns
/// j0..j0 + w of B into `panel` (k rows of `panel.len() / k` values, lanes
/// from w on already zero): a convolution builds them from its input.
/// `direct`, when given, lets whole panels be read in place instead.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nn_panels(a: &PackedA, n: usize, c: &mut [f32], ldc: usize, bias: Option<&[f32]>, relu: bool, pack: impl FnMut(usize, usize, &mut [f32]), direct: Option<Direct>) {
    Arch::new().dispatch(Nn { a, n, c, ldc, bias, relu, pack, direct })
}

/// B read where it lies: element (kk, j) at `src[offs[kk] + (j / row) *
/// stride + j % row]`, B's columns being rows of `row` values `stride` apart
/// in `src` (a stride-1 convolution's windows in its padded input). A panel
/// is read in place when each of its vectors lies within one such row, with
/// no copy: for few output channels the copy cost as much as the product.
pub(crate) struct Direct<'a> {
    pub src: &'a [f32],
    pub offs: &'a [usize],
    pub row: usize,
    pub stride: usize,
}

/// A matrix whose rows are windows of images, read where they lie: row i at
/// output pixel (oy, ox) of image `img` is `src[img * img_len + offs[i] + oy
/// * row_stride + ox * step]`, for `rows` × `row` pixels (a convolution's
/// column matrix, row (ci, ky, kx), read from its padded input).
pub(crate) struct Windows<'a> {
    pub src: &'a [f32],
    pub img_len: usize,
    pub offs: &'a [usize],
    pub rows: usize,
    pub row: usize,
    pub row_stride: usize,
    pub step: usize,
}

/// C (m × n, row i at `c[i * ldc..]`) += Σ over `images` images and their
/// pixels of A[i][pix] · B[j][pix], with A's rows the `win`dows (m =
/// `offs.len()`) and image img's B row j at `b[img * b_img + j * p..][..p]`,
/// p = rows · row: a convolution's weight gradient, transposed (i its
/// (ci, ky, kx), j its output channel), with no column matrix. An
/// outer-product tile whose k is the pixels: sums stay in registers over
/// every image, and no reduction across lanes is needed.
pub(crate) fn gemm_windows_acc(win: &Windows, images: usize, b: &[f32], b_img: usize, n: usize, c: &mut [f32], ldc: usize) {
    Arch::new().dispatch(WinAcc { win, images, b, b_img, n, c, ldc })
}

struct WinAcc<'a> {
    win: &'a Windows<'a>,
    images: usize,
    b: &'a [f32],
    b_img: usize,
    n: usize,
    c: &'a mut [f32],
    ldc: usize,
}

impl WithSimd for WinAcc<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // One vector wide where one holds every channel (LeNet-5's 6), so
        // fewer lanes go to waste; two otherwise.
        if self.n <= S::F32_LANES {
            win_acc::<S, 1>(simd, self)
        } else {
            win_acc::<S, NV>(simd, self)
        }
    }
}

#[inline(always)]
fn win_acc<S: Simd, const V: usize>(simd: S, job: WinAcc) {
    let WinAcc { win, images, b, b_img, n, c, ldc } = job;
    let Windows { src, img_len, offs, rows, row, row_stride, step } = *win;
    let (m, p, nr) = (offs.len(), rows * row, V * S::F32_LANES);
    if m == 0 || n == 0 || p == 0 || images == 0 {
        return;
    }
    // B's panel of nr channels, pixel-major (nr lanes per pixel, zeros past
    // n), for every image: it stays in cache over all of A's tiles.
    let mut bp = vec![0f32; images * p * nr];
    for j0 in (0..n).step_by(nr) {
        let w = nr.min(n - j0);
        if w < nr {
            bp.fill(0.0);
        }
        for (img, dst) in bp.chunks_exact_mut(p * nr).enumerate() {
            for jj in 0..w {
                let src = &b[img * b_img + (j0 + jj) * p..][..p];
                dst[jj..].iter_mut().step_by(nr).zip(src).for_each(|(d, &v)| *d = v);
            }
        }
        for i0 in (0..m).step_by(MR) {
            // Past the edge a tile repeats the last row; those sums are dropped.
            let starts: [usize; MR] = std::array::from_fn(|r| offs[(i0 + r).min(m - 1)]);
            let mut acc = [[simd.splat_f32s(0.0); V]; MR];
            for (img, bimg) in bp.chunks_exact(p * nr).enumerate() {
                let x = &src[img * img_len..];
                let (bv, _) = S::as_simd_f32s(bimg);
                // Output row by row (one run of rows joined across their gaps
                // measured slower: the products wasted on the gaps cost more
                // than the loops).
                for (oy, bv) in bv.chunks_exact(V * row).enumerate() {
                    let at = oy * row_stride;
                    if step == 1 {
                        let a = |r: usize| &x[starts[r] + at..][..row];
                        let (a0, a1, a2, a3, a4, a5) = (a(0), a(1), a(2), a(3), a(4), a(5));
                        // Zipped iterators: no bounds check in the loop.
                        for ((((((bv, &x0), &x1), &x2), &x3), &x4), &x5) in bv.chunks_exact(V).zip(a0).zip(a1).zip(a2).zip(a3).zip(a4).zip(a5) {
                            fma_step(simd, &mut acc, &[x0, x1, x2, x3, x4, x5], std::array::from_fn(|q| bv[q]));
                        }
                    } else {
                        for (ox, bv) in bv.chunks_exact(V).enumerate() {
                            let at = at + ox * step;
                            let av: [f32; MR] = std::array::from_fn(|r| x[starts[r] + at]);
                            fma_step(simd, &mut acc, &av, std::array::from_fn(|q| bv[q]));
                        }
                    }
                }
            }
            let acc = acc; // a copy: the borrows above would keep `acc` in memory
            for (r, acc) in acc.iter().enumerate().take(m - i0) {
                let crow = &mut c[(i0 + r) * ldc + j0..][..w];
                if w == nr {
                    let (cv, _) = S::as_mut_simd_f32s(crow);
                    for (d, &v) in cv.iter_mut().zip(acc) {
                        *d = simd.add_f32s(*d, v);
                    }
                } else {
                    let vals: &[f32] = bytemuck::cast_slice(acc.as_slice());
                    crow.iter_mut().zip(vals).for_each(|(d, &v)| *d += v);
                }
            }
        }
    }
}

struct Nn<'a, F> {
    a: &'a PackedA,
    n: usize,
    c: &'a mut [f32],
    ldc: usize,
    bias: Option<&'a [f32]>,
    relu: bool,
    pack: F,
    direct: Option<Direct<'a>>,
}

impl<F: FnMut(usize, usize, &mut [f32])> WithSimd for Nn<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Nn { a, n, c, ldc, bias, relu, mut pack, direct } = self;
        let lanes = S::F32_LANES;
        let (m, k, nr) = (a.m, a.k, NV * S::F32_LANES);
        if m == 0 || n == 0 {
            return;
        }
        // One panel of B at a time, contiguous (so it stays in L1 whatever
        // B's layout), zero-padded when partial so every tile is whole.
        let mut bp = vec![0f32; k * nr];
        for j0 in (0..n).step_by(nr) {
            let w = nr.min(n - j0);
            // Where each vector of the panel starts in `direct`'s source.
            let bases: Option<[usize; NV]> = direct.as_ref().filter(|_| w == nr).and_then(|d| {
                let base = |j: usize| (j % d.row + lanes <= d.row).then_some(j / d.row * d.stride + j % d.row);
                let b: [Option<usize>; NV] = std::array::from_fn(|q| base(j0 + q * lanes));
                b.iter().all(Option::is_some).then(|| b.map(Option::unwrap_or_default))
            });
            if bases.is_none() {
                if w < nr {
                    bp.fill(0.0);
                }
                pack(j0, w, &mut bp);
            }
            for (pi, ap) in a.data.chunks_exact(k.max(1) * MR).enumerate() {
                let mut acc = [[simd.splat_f32s(0.0); NV]; MR];
                match (&direct, bases) {
                    (Some(d), Some(bases)) if bases[NV - 1] == bases[0] + (NV - 1) * lanes => {
                        // The panel's vectors side by side: one slice a step.
                        let src = &d.src[bases[0]..];
                        for (av, &o) in ap.chunks_exact(MR).zip(d.offs) {
                            let (bv, _) = S::as_simd_f32s(&src[o..o + nr]);
                            fma_step(simd, &mut acc, av, std::array::from_fn(|q| bv[q]));
                        }
                    }
                    (Some(d), Some(bases)) => {
                        let srcs: [&[f32]; NV] = bases.map(|b| &d.src[b..]);
                        for (av, &o) in ap.chunks_exact(MR).zip(d.offs) {
                            let mut bv = [simd.splat_f32s(0.0); NV];
                            for (v, src) in bv.iter_mut().zip(srcs) {
                                *v = S::as_simd_f32s(&src[o..o + lanes]).0[0];
                            }
                            fma_step(simd, &mut acc, av, bv);
                        }
                    }
                    _ => {
                        for (av, brow) in ap.chunks_exact(MR).zip(bp.chunks_exact(nr)) {
                            let (bv, _) = S::as_simd_f32s(&brow[..nr]);
                            fma_step(simd, &mut acc, av, std::array::from_fn(|q| bv[q]));
                        }
                    }
                }
                let acc = acc; // a copy: the borrows above would keep `acc` in memory
                let i0 = pi * MR;
                let zero = simd.splat_f32s(0.0);
                for (r, acc) in acc.iter().enumerate().take(m - i0) {
                    let bi = simd.splat_f32s(bias.map_or(0.0, |b| b[i0 + r]));
                    let vals: [S::f32s; NV] = std::array::from_fn(|q| {
                        let v = simd.add_f32s(acc[q], bi);
                        if relu { simd.select_f32s(simd.less_than_f32s(v, zero), zero, v) } else { v }
                    });
                    let row = &mut c[(i0 + r) * ldc + j0..][..w];
                    if w == nr {
                        S::as_mut_simd_f32s(row).0.copy_from_slice(&vals);
                    } else {
                        row.copy_from_slice(&bytemuck::cast_slice(vals.as_slice())[..w]);
                    }
                }
            }
        }
    }
}

/// One k step of an outer-product tile.
#[inline(always)]
fn fma_step<S: Simd, const V: usize>(simd: S, acc: &mut [[S::f32s; V]; MR], av: &[f32], bv: [S::f32s; V]) {
    for r in 0..MR {
        let ar = simd.splat_f32s(av[r]);
        for q in 0..V {
            acc[r][q] = simd.mul_add_f32s(ar, bv[q], acc[r][q]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32 / 65536.0 - 0.5).collect()
    }

    #[test]
    fn nn_matches_naive() {
        for (m, k, n) in [(1, 1, 1), (7, 5, 17), (16, 27, 100), (13, 33, 48)] {
            let (a, b) = (data(m * k, 1), data(k * n, 2));
            let bias = data(m, 3);
            let mut c = vec![f32::NAN; m * n];
            gemm_nn(&PackedA::new(&a, m, k, k, 1), &b, n, n, &mut c, n, Some(&bias), true);
            for i in 0..m {
                for j in 0..n {
                    let want = ((0..k).map(|t| a[i * k + t] as f64 * b[t * n + j] as f64).sum::<f64>() + bias[i] as f64).max(0.0);
                    assert!((c[i * n + j] as f64 - want).abs() < 1e-4, "{m}x{k}x{n} ({i},{j}): {} vs {want}", c[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn windows_match_naive() {
        // (m, n, images, rows, row, step): tails in both tile dimensions, strides 1 and 2.
        // n ≤ 8 takes the one-vector tile (LeNet-5's 6 channels), more the two-vector one.
        for (m, n, images, rows, row, step) in [(1, 1, 1, 1, 1, 1), (13, 6, 2, 3, 7, 1), (7, 17, 2, 3, 5, 1), (13, 33, 3, 4, 8, 2), (6, 16, 1, 2, 9, 1)] {
            let row_stride = (row * step + 3) * 2;
            let offs: Vec<usize> = (0..m).map(|i| i * 3 % 7 + i / 2).collect();
            let img_len = offs.iter().max().unwrap() + (rows - 1) * row_stride + (row - 1) * step + 1;
            let (src, b) = (data(images * img_len, 1), data(images * n * rows * row, 2));
            let win = Windows { src: &src, img_len, offs: &offs, rows, row, row_stride, step };
            let ldc = n + 3;
            let mut c = data(m * ldc, 4);
            let c0 = c.clone();
            gemm_windows_acc(&win, images, &b, n * rows * row, n, &mut c, ldc);
            for i in 0..m {
                for j in 0..ldc {
                    let want = c0[i * ldc + j] as f64 + if j >= n { 0.0 } else {
                        (0..images).flat_map(|img| (0..rows).flat_map(move |oy| (0..row).map(move |ox| (img, oy, ox))))
                            .map(|(img, oy, ox)| src[img * img_len + offs[i] + oy * row_stride + ox * step] as f64 * b[(img * n + j) * rows * row + oy * row + ox] as f64)
                            .sum::<f64>()
                    };
                    assert!((c[i * ldc + j] as f64 - want).abs() < 1e-4, "{m}x{n}·{images} ({i},{j}): {} vs {want}", c[i * ldc + j]);
                }
            }
        }
    }
}
