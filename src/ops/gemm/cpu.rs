//! The CPU path's own GEMM micro-kernels, for the tuned convolution
//! (`conv2d/cpu.rs`). matrixmultiply packs both operands on every call,
//! which on a convolution's short, wide products cost a third of its time
//! (benches/RESULTS.md); these read the column matrix and dy where they lie:
//!
//! - `gemm_nn`: C = A·B (+ bias, ReLU), A packed once per call (the weights),
//!   B read row by row in panels of `NR` columns: forward and dcols.
//! - `gemm_nt_acc`: C += Σ A·Bᵀ over segments (images), both read along k:
//!   the weight gradient, whose k is the pixels.
//!
//! Written once over `pulp::Simd` and compiled for each instruction set
//! pulp knows (AVX2 with FMA, NEON, ...; picked at run time, no `unsafe`
//! here). The sum order of every element is fixed (k in order; for
//! `gemm_nt_acc`, lanes then their sum), so results do not depend on the
//! core count.

use pulp::{Arch, Simd, WithSimd};

/// Rows of an outer-product tile; its columns are `NV` vectors.
const MR: usize = 6;
const NV: usize = 2;
/// Rows of A and of B in a dot-product tile.
const RT: usize = 2;
const ST: usize = 4;

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

/// C (m × n, row i at `c[i * ldc..]`) += Σ over `segs` (a_off, b_off) of
/// Σ_t A[i][t]·B[j][t], A's row i at `a[a_off + i * lda..][..len]` and B's
/// row j at `b[b_off + j * ldb..][..len]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nt_acc(a: &[f32], lda: usize, b: &[f32], ldb: usize, segs: &[(usize, usize)], len: usize, [m, n]: [usize; 2], c: &mut [f32], ldc: usize) {
    Arch::new().dispatch(NtAcc { a, lda, b, ldb, segs, len, m, n, c, ldc })
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
                    (Some(d), Some(bases)) => {
                        for (av, &o) in ap.chunks_exact(MR).zip(d.offs) {
                            let bv: [S::f32s; NV] = std::array::from_fn(|q| S::as_simd_f32s(&d.src[o + bases[q]..][..lanes]).0[0]);
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
                for (r, acc) in acc.iter().enumerate().take(m - i0) {
                    let bi = bias.map_or(0.0, |b| b[i0 + r]);
                    let row = &mut c[(i0 + r) * ldc + j0..][..w];
                    let vals: &[f32] = bytemuck::cast_slice(acc.as_slice());
                    for (d, &v) in row.iter_mut().zip(vals) {
                        let v = v + bi;
                        *d = if relu && v < 0.0 { 0.0 } else { v };
                    }
                }
            }
        }
    }
}

/// One k step of an outer-product tile.
#[inline(always)]
fn fma_step<S: Simd>(simd: S, acc: &mut [[S::f32s; NV]; MR], av: &[f32], bv: [S::f32s; NV]) {
    for r in 0..MR {
        let ar = simd.splat_f32s(av[r]);
        for q in 0..NV {
            acc[r][q] = simd.mul_add_f32s(ar, bv[q], acc[r][q]);
        }
    }
}

struct NtAcc<'a> {
    a: &'a [f32],
    lda: usize,
    b: &'a [f32],
    ldb: usize,
    segs: &'a [(usize, usize)],
    len: usize,
    m: usize,
    n: usize,
    c: &'a mut [f32],
    ldc: usize,
}

impl WithSimd for NtAcc<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let NtAcc { a, lda, b, ldb, segs, len, m, n, c, ldc } = self;
        if m == 0 || n == 0 {
            return;
        }
        // B's tile outer (its rows stay in L1), A's inner (A, the smaller
        // operand here, stays in L2): B is read from memory once.
        for j0 in (0..n).step_by(ST) {
            // Past the edge a tile repeats the last row; those sums are dropped.
            let cols: [usize; ST] = std::array::from_fn(|s| (j0 + s).min(n - 1));
            for i0 in (0..m).step_by(RT) {
                let rows: [usize; RT] = std::array::from_fn(|r| (i0 + r).min(m - 1));
                let mut acc = [[simd.splat_f32s(0.0); ST]; RT];
                for &(ao, bo) in segs {
                    let [a0, a1] = rows.map(|r| S::as_simd_f32s(&a[ao + r * lda..][..len]));
                    let [b0, b1, b2, b3] = cols.map(|s| S::as_simd_f32s(&b[bo + s * ldb..][..len]));
                    // Zipped iterators: no bounds check in the loop.
                    for (((((&x0, &x1), &y0), &y1), &y2), &y3) in a0.0.iter().zip(a1.0).zip(b0.0).zip(b1.0).zip(b2.0).zip(b3.0) {
                        for (r, x) in [x0, x1].into_iter().enumerate() {
                            for (s, y) in [y0, y1, y2, y3].into_iter().enumerate() {
                                acc[r][s] = simd.mul_add_f32s(x, y, acc[r][s]);
                            }
                        }
                    }
                    if !a0.1.is_empty() {
                        // The tail, zero-padded to a vector.
                        let av = [a0.1, a1.1].map(|t| simd.partial_load_f32s(t));
                        let bv = [b0.1, b1.1, b2.1, b3.1].map(|t| simd.partial_load_f32s(t));
                        for r in 0..RT {
                            for s in 0..ST {
                                acc[r][s] = simd.mul_add_f32s(av[r], bv[s], acc[r][s]);
                            }
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(m - i0) {
                    for (s, &v) in acc.iter().enumerate().take(n - j0) {
                        c[(i0 + r) * ldc + j0 + s] += simd.reduce_sum_f32s(v);
                    }
                }
            }
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
    fn nt_matches_naive() {
        for (m, n, len, segs) in [(1, 1, 1, 1), (5, 7, 19, 2), (16, 27, 64, 3), (4, 3, 8, 1)] {
            let (a, b) = (data(segs * m * len, 1), data(segs * n * len, 2));
            let offs: Vec<(usize, usize)> = (0..segs).map(|s| (s * m * len, s * n * len)).collect();
            let mut c = data(m * n, 4);
            let c0 = c.clone();
            gemm_nt_acc(&a, len, &b, len, &offs, len, [m, n], &mut c, n);
            for i in 0..m {
                for j in 0..n {
                    let want = c0[i * n + j] as f64 + offs.iter().map(|&(ao, bo)| (0..len).map(|t| a[ao + i * len + t] as f64 * b[bo + j * len + t] as f64).sum::<f64>()).sum::<f64>();
                    assert!((c[i * n + j] as f64 - want).abs() < 1e-4, "{m}x{n}x{len}·{segs} ({i},{j})");
                }
            }
        }
    }
}
