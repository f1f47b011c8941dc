//! The CPU path's batch-norm, tuned: per-channel sums spread over the cores
//! by channel (each channel's images are contiguous runs, summed in f64 over
//! eight lanes), the output spread over the cores by image, with the ReLU in
//! the same pass. The same formulas as the reference twins
//! (`batchnorm_forward_train_cpu`, `batchnorm_backward_cpu`), summed in another
//! order; the parity suite checks these against them.

use super::BatchNormConfig;
use crate::ops::activation::{activation_forward_cpu, Activation};
use crate::ops::{parallel, runs, sum8};

/// `f(ch)` for every channel, channels spread over the cores.
fn per_channel<R: Send>(c: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    parallel(runs((0..c).collect(), crate::cores()), |chans: Vec<usize>| chans.into_iter().map(&f).collect::<Vec<R>>()).into_iter().flatten().collect()
}

/// `out` image by image (`c·inner` elements each), images spread over the cores.
fn per_image(out: &mut [f32], image: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if image == 0 {
        return;
    }
    parallel(runs(out.chunks_mut(image).enumerate().collect(), crate::cores()), |run: Vec<(usize, &mut [f32])>| {
        for (i, o) in run {
            f(i, o);
        }
    });
}

/// ReLU with NaN passing, as in PyTorch (the CPU path's one definition).
fn relu_of(v: f32) -> f32 {
    activation_forward_cpu(Activation::Relu, v)
}

/// As `batchnorm_forward_train_cpu`, then ReLU when `relu` (NaN passes).
pub fn batchnorm_forward_train_cpu_tuned(
    x: &[f32],
    dims: (usize, usize, usize),
    affine: Option<(&[f32], &[f32])>,
    running: &mut [f32],
    cfg: BatchNormConfig,
    relu: bool,
) -> (Vec<f32>, Vec<f32>) {
    let (n, c, inner) = dims;
    let count = (n * inner) as f64;
    let plane = |i: usize, ch: usize| &x[(i * c + ch) * inner..][..inner];
    let moments = per_channel(c, |ch| {
        let shift = if n * inner > 0 { x[ch * inner] } else { 0.0 };
        let s: f64 = (0..n).map(|i| sum8(plane(i, ch), plane(i, ch), |v, _| (v - shift) as f64)).sum();
        let mean_lo = (s / count) as f32;
        let var = (0..n).map(|i| sum8(plane(i, ch), plane(i, ch), |v, _| (((v - shift) - mean_lo) as f64).powi(2))).sum::<f64>() / count;
        (shift, mean_lo, var)
    });
    let mut stats = vec![0f32; 3 * c];
    for (ch, &(shift, mean_lo, var)) in moments.iter().enumerate() {
        stats[ch] = shift;
        stats[c + ch] = mean_lo;
        stats[2 * c + ch] = (1.0 / (var + cfg.eps as f64).sqrt()) as f32;
        let m = cfg.momentum;
        running[ch] = (1.0 - m) * running[ch] + m * (shift + mean_lo);
        running[c + ch] = (1.0 - m) * running[c + ch] + m * (var * count / (count - 1.0)) as f32;
    }
    let mut y = vec![0f32; x.len()];
    per_image(&mut y, c * inner, |i, yi| {
        for ch in 0..c {
            let (shift, mean_lo, invstd) = (stats[ch], stats[c + ch], stats[2 * c + ch]);
            // Identity affine without γ, β: the same arithmetic as the
            // reference's map_or, with no branch left in the loop.
            let (g, b) = affine.map_or((1.0, 0.0), |(g, b)| (g[ch], b[ch]));
            let out = yi[ch * inner..][..inner].iter_mut().zip(plane(i, ch));
            match (affine.is_some(), relu) {
                (true, false) => out.for_each(|(d, &v)| *d = g * (((v - shift) - mean_lo) * invstd) + b),
                (true, true) => out.for_each(|(d, &v)| *d = relu_of(g * (((v - shift) - mean_lo) * invstd) + b)),
                (false, false) => out.for_each(|(d, &v)| *d = ((v - shift) - mean_lo) * invstd),
                (false, true) => out.for_each(|(d, &v)| *d = relu_of(((v - shift) - mean_lo) * invstd)),
            }
        }
    });
    (y, stats)
}

/// As `batchnorm_backward_cpu`: (dx, [dγ; dβ]).
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward_cpu_tuned(
    x: &[f32],
    dy: &[f32],
    dims: (usize, usize, usize),
    gamma: Option<&[f32]>,
    stats: &[f32],
    running: &[f32],
    training: bool,
    cfg: BatchNormConfig,
) -> (Vec<f32>, Vec<f32>) {
    let (n, c, inner) = dims;
    let m = (n * inner) as f32;
    let at = |i: usize, ch: usize| (i * c + ch) * inner;
    // x̂ as the reference computes it (for the sums; the dx pass hoists it).
    let x_hat = |ch: usize, v: f32| {
        if training {
            ((v - stats[ch]) - stats[c + ch]) * stats[2 * c + ch]
        } else {
            (v - running[ch]) / (running[c + ch] + cfg.eps).sqrt()
        }
    };
    let sums = per_channel(c, |ch| {
        let (mut sum_dy, mut sum_dy_xhat) = (0f64, 0f64);
        for i in 0..n {
            let (xs, ds) = (&x[at(i, ch)..][..inner], &dy[at(i, ch)..][..inner]);
            sum_dy += sum8(ds, ds, |d, _| d as f64);
            sum_dy_xhat += sum8(ds, xs, |d, v| (d * x_hat(ch, v)) as f64);
        }
        (sum_dy as f32, sum_dy_xhat as f32)
    });
    let mut grads = vec![0f32; 2 * c];
    for (ch, &(sum_dy, sum_dy_xhat)) in sums.iter().enumerate() {
        grads[ch] = sum_dy_xhat;
        grads[c + ch] = sum_dy;
    }
    let mut dx = vec![0f32; x.len()];
    per_image(&mut dx, c * inner, |i, di| {
        for ch in 0..c {
            let (sum_dy, sum_dy_xhat) = sums[ch];
            let g = gamma.map_or(1.0, |g| g[ch]);
            let (xs, ds) = (&x[at(i, ch)..][..inner], &dy[at(i, ch)..][..inner]);
            let out = di[ch * inner..][..inner].iter_mut().zip(xs).zip(ds);
            if training {
                let (shift, mean_lo, invstd) = (stats[ch], stats[c + ch], stats[2 * c + ch]);
                let scale = g * invstd / m;
                out.for_each(|((o, &v), &d)| *o = scale * (m * d - sum_dy - ((v - shift) - mean_lo) * invstd * sum_dy_xhat));
            } else {
                let sd = (running[c + ch] + cfg.eps).sqrt();
                out.for_each(|((o, _), &d)| *o = d * g / sd);
            }
        }
    });
    (dx, grads)
}
