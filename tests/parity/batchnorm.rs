//! Batch-norm: training and eval forward, running statistics, backward, on every
//! device against an f64 oracle; finite differences; data far from zero.

use wgpu_cnn::ops::activation::{activation_forward, Activation};
use wgpu_cnn::ops::batchnorm::{
    batchnorm_backward, batchnorm_backward_cpu, batchnorm_backward_half, batchnorm_backward_cpu_tuned, batchnorm_forward_eval, batchnorm_forward_eval_relu, batchnorm_forward_train,
    batchnorm_forward_train_cpu, batchnorm_forward_train_cpu_tuned, batchnorm_forward_train_relu, Affine, BatchNormConfig,
};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::{numeric_grad, random};
use crate::test_device;

struct Oracle {
    y: Vec<f32>,
    running: Vec<f32>,
    dx: Vec<f32>,
    dgamma: Vec<f32>,
    dbeta: Vec<f32>,
}

/// From the definitions, in f64. dims = (n, c, inner).
fn oracle(x: &[f32], dy: &[f32], (n, c, inner): (usize, usize, usize), gamma: &[f32], beta: &[f32], running: &[f32], cfg: BatchNormConfig) -> Oracle {
    let idx = |ch: usize| (0..n).flat_map(move |i| (0..inner).map(move |t| (i * c + ch) * inner + t));
    let m = (n * inner) as f64;
    let (mut y, mut dx) = (vec![0f32; x.len()], vec![0f32; x.len()]);
    let (mut run, mut dg, mut db) = (running.to_vec(), vec![0f32; c], vec![0f32; c]);
    for ch in 0..c {
        let mean = idx(ch).map(|i| x[i] as f64).sum::<f64>() / m;
        let var = idx(ch).map(|i| (x[i] as f64 - mean).powi(2)).sum::<f64>() / m;
        let inv = 1.0 / (var + cfg.eps as f64).sqrt();
        let mo = cfg.momentum as f64;
        run[ch] = ((1.0 - mo) * running[ch] as f64 + mo * mean) as f32;
        run[c + ch] = ((1.0 - mo) * running[c + ch] as f64 + mo * var * m / (m - 1.0)) as f32;
        let xh = |i: usize| (x[i] as f64 - mean) * inv;
        let sdy: f64 = idx(ch).map(|i| dy[i] as f64).sum();
        let sdyx: f64 = idx(ch).map(|i| dy[i] as f64 * xh(i)).sum();
        dg[ch] = sdyx as f32;
        db[ch] = sdy as f32;
        for i in idx(ch) {
            y[i] = (gamma[ch] as f64 * xh(i) + beta[ch] as f64) as f32;
            dx[i] = (gamma[ch] as f64 * inv / m * (m * dy[i] as f64 - sdy - xh(i) * sdyx)) as f32;
        }
    }
    Oracle { y, running: run, dx, dgamma: dg, dbeta: db }
}

fn check(dev: &Device, shape: &[usize], affine: bool, seed: u64) {
    let (n, c, inner) = (shape[0], shape[1], shape[2..].iter().product::<usize>());
    let len = n * c * inner;
    let cfg = BatchNormConfig::default();
    let x: Vec<f32> = random(seed, len).iter().map(|v| 3.0 * v + 0.5).collect();
    let dy = random(seed + 1, len);
    let (gamma, beta) = if affine { (random(seed + 2, c), random(seed + 3, c)) } else { (vec![1.0; c], vec![0.0; c]) };
    let running0: Vec<f32> = (0..2 * c).map(|i| if i < c { 0.1 * i as f32 } else { 1.0 + 0.1 * i as f32 }).collect();
    let o = oracle(&x, &dy, (n, c, inner), &gamma, &beta, &running0, cfg);

    let xt = Tensor::from_slice(dev, shape, &x).unwrap();
    let (gt, bt) = (Tensor::from_slice(dev, &[c], &gamma).unwrap(), Tensor::from_slice(dev, &[c], &beta).unwrap());
    let aff = affine.then_some(Affine { gamma: &gt, beta: &bt });
    let mut running = Tensor::from_slice(dev, &[2, c], &running0).unwrap();
    let (y, stats) = batchnorm_forward_train(&xt, aff, &mut running, cfg).unwrap();
    let what = format!("batchnorm {shape:?} affine={affine} on {dev}");
    let tol = Tolerance::new(1e-5 * (n * inner) as f32 + 1e-5, 1e-4);
    tol.assert(&format!("{what}: y"), &y.to_vec().unwrap(), &o.y);
    Tolerance::new(1e-5, 1e-5).assert(&format!("{what}: running stats"), &running.to_vec().unwrap(), &o.running);

    let dyt = Tensor::from_slice(dev, shape, &dy).unwrap();
    let g = batchnorm_backward(&xt, &dyt, aff, &stats, &running, true, cfg).unwrap();
    tol.assert(&format!("{what}: dx"), &g.dx.to_vec().unwrap(), &o.dx);
    tol.assert(&format!("{what}: dgamma"), &g.dgamma.to_vec().unwrap(), &o.dgamma);
    tol.assert(&format!("{what}: dbeta"), &g.dbeta.to_vec().unwrap(), &o.dbeta);

    // From x kept in f16 (mixed precision; the GPU reads the halves in its
    // kernels): the backward of the rounded x, with the same statistics.
    let (x16, xr) = (xt.to_half().unwrap(), xt.to_half().unwrap().to_f32().unwrap());
    for training in [true, false] {
        let h = batchnorm_backward_half(&x16, &dyt, aff, &stats, &running, training, cfg).unwrap();
        let f = batchnorm_backward(&xr, &dyt, aff, &stats, &running, training, cfg).unwrap();
        let what = format!("{what}, x in f16, training={training}");
        tol.assert(&format!("{what}: dx"), &h.dx.to_vec().unwrap(), &f.dx.to_vec().unwrap());
        tol.assert(&format!("{what}: dgamma"), &h.dgamma.to_vec().unwrap(), &f.dgamma.to_vec().unwrap());
        tol.assert(&format!("{what}: dbeta"), &h.dbeta.to_vec().unwrap(), &f.dbeta.to_vec().unwrap());
    }

    // Eval uses the running statistics, which it does not change.
    let r = running.to_vec().unwrap();
    let ye = batchnorm_forward_eval(&xt, aff, &running, cfg).unwrap().to_vec().unwrap();
    let want: Vec<f32> = (0..len)
        .map(|i| {
            let ch = (i / inner) % c;
            gamma[ch] * (x[i] - r[ch]) / (r[c + ch] + cfg.eps).sqrt() + beta[ch]
        })
        .collect();
    Tolerance::new(1e-5, 1e-5).assert(&format!("{what}: eval"), &ye, &want);
    assert_eq!(running.to_vec().unwrap(), r, "eval must not touch the running statistics");

    // A fused ReLU (a ReLU layer after batch-norm) is ReLU after, bit for bit, and
    // updates the running statistics the same way.
    let relu = |v: &[f32]| activation_forward(&Tensor::from_slice(dev, shape, v).unwrap(), Activation::Relu).unwrap().to_vec().unwrap();
    let mut running2 = Tensor::from_slice(dev, &[2, c], &running0).unwrap();
    let (yr, _) = batchnorm_forward_train_relu(&xt, aff, &mut running2, cfg, true).unwrap();
    assert_eq!(yr.to_vec().unwrap(), relu(&y.to_vec().unwrap()), "{what}: train + ReLU");
    assert_eq!(running2.to_vec().unwrap(), r, "{what}: running stats with ReLU");
    let yer = batchnorm_forward_eval_relu(&xt, aff, &running, cfg, true).unwrap().to_vec().unwrap();
    assert_eq!(yer, relu(&ye), "{what}: eval + ReLU");
    let dxe = batchnorm_backward(&xt, &dyt, aff, &stats, &running, false, cfg).unwrap().dx;
    let want: Vec<f32> = (0..len).map(|i| dy[i] * gamma[(i / inner) % c] / (r[c + (i / inner) % c] + cfg.eps).sqrt()).collect();
    Tolerance::new(1e-5, 1e-5).assert(&format!("{what}: eval backward"), &dxe.to_vec().unwrap(), &want);
}

fn parity(dev: &Device) {
    check(dev, &[2, 3], true, 1); // BatchNorm1d with n = 2: two values per feature
    check(dev, &[1, 3, 1, 2], false, 2); // N·H·W = 2
    check(dev, &[4, 5, 3, 3], true, 3);
    check(dev, &[1, 2, 7, 5], true, 4); // batch 1
    check(dev, &[513, 3], true, 5); // large N, 1-d
    check(dev, &[8, 4, 7, 5], false, 6);
}
test_device!(batchnorm_parity, parity);

/// Mean 1e4, std 1e-2: the f32 result matches an f64 computation on the same inputs.
fn far_from_zero(dev: &Device) {
    let (n, c, inner) = (16, 2, 64);
    let x: Vec<f32> = random(9, n * c * inner).iter().map(|v| 1e4 + 1.7e-2 * v).collect();
    let xt = Tensor::from_slice(dev, &[n, c, 8, 8], &x).unwrap();
    let mut running = Tensor::from_vec(dev, &[2, c], vec![0.0, 0.0, 1.0, 1.0]).unwrap();
    let (y, _) = batchnorm_forward_train(&xt, None, &mut running, BatchNormConfig::default()).unwrap();
    let o = oracle(&x, &x, (n, c, inner), &[1.0; 2], &[0.0; 2], &[0.0, 0.0, 1.0, 1.0], BatchNormConfig::default());
    Tolerance::new(1e-3, 1e-3).assert(&format!("batchnorm at mean 1e4, std 1e-2 on {dev}"), &y.to_vec().unwrap(), &o.y);
    Tolerance::new(1e-3, 1e-3).assert("running stats at mean 1e4", &running.to_vec().unwrap(), &o.running);
}
test_device!(batchnorm_far_from_zero, far_from_zero);

/// The CPU backward against central differences of L = Σ y·r (x, γ and β).
#[test]
fn cpu_backward_matches_finite_differences() {
    let dims = (3, 2, 4);
    let len = 24;
    let cfg = BatchNormConfig::default();
    let x = random(11, len);
    let r = random(12, len);
    let (g, b) = (vec![0.7, -1.3], vec![0.2, 0.4]);
    let loss = |x: &[f32], g: &[f32], b: &[f32]| -> f64 {
        let mut run = vec![0.0, 0.0, 1.0, 1.0];
        let (y, _) = batchnorm_forward_train_cpu(x, dims, Some((g, b)), &mut run, cfg);
        y.iter().zip(&r).map(|(y, r)| *y as f64 * *r as f64).sum()
    };
    let mut run = vec![0.0, 0.0, 1.0, 1.0];
    let (_, stats) = batchnorm_forward_train_cpu(&x, dims, Some((&g, &b)), &mut run, cfg);
    let (dx, grads) = batchnorm_backward_cpu(&x, &r, dims, Some(&g), &stats, &run, true, cfg);
    let tol = Tolerance::new(3e-3, 1e-2);
    tol.assert("batchnorm dx vs finite differences", &dx, &numeric_grad(&x, 1e-2, &|x| loss(x, &g, &b)));
    tol.assert("batchnorm dgamma vs finite differences", &grads[..2], &numeric_grad(&g, 1e-2, &|g| loss(&x, g, &b)));
    tol.assert("batchnorm dbeta vs finite differences", &grads[2..], &numeric_grad(&b, 1e-2, &|b| loss(&x, &g, b)));
}

/// The CPU path's tuned batch-norm (channels and images over the cores, sums
/// in eight lanes, ReLU in the output pass) against the plain reference:
/// outputs, statistics, running statistics, and both backward modes.
#[test]
fn cpu_tuned_matches_reference() {
    let cfg = BatchNormConfig::default();
    for (i, &(n, c, inner)) in [(3, 2, 4), (5, 7, 37), (64, 16, 64), (1, 3, 1), (2, 5, 9)].iter().enumerate() {
        let dims = (n, c, inner);
        let len = n * c * inner;
        // Off zero, so the shifted sums matter.
        let x: Vec<f32> = random(900 + i as u64, len).iter().map(|v| 3.0 + v).collect();
        let dy = random(950 + i as u64, len);
        let (g, b) = (random(960 + i as u64, c), random(970 + i as u64, c));
        let what = format!("tuned CPU batch-norm {dims:?}");
        let tol = Tolerance::new(1e-5, 1e-4);
        for affine in [None, Some((g.as_slice(), b.as_slice()))] {
            let start: Vec<f32> = (0..2 * c).map(|k| if k < c { 0.1 } else { 1.2 }).collect();
            let (mut run_ref, mut run) = (start.clone(), start.clone());
            let (y_ref, stats_ref) = batchnorm_forward_train_cpu(&x, dims, affine, &mut run_ref, cfg);
            let (y, stats) = batchnorm_forward_train_cpu_tuned(&x, dims, affine, &mut run, cfg, false);
            tol.assert(&format!("{what}: y"), &y, &y_ref);
            tol.assert(&format!("{what}: stats"), &stats, &stats_ref);
            tol.assert(&format!("{what}: running"), &run, &run_ref);
            let (y_relu, _) = batchnorm_forward_train_cpu_tuned(&x, dims, affine, &mut start.clone(), cfg, true);
            let want: Vec<f32> = y_ref.iter().map(|&v| v.max(0.0)).collect();
            tol.assert(&format!("{what}: y + ReLU"), &y_relu, &want);
            for training in [true, false] {
                let gamma = affine.map(|(g, _)| g);
                let (dx_ref, gr_ref) = batchnorm_backward_cpu(&x, &dy, dims, gamma, &stats_ref, &run_ref, training, cfg);
                let (dx, gr) = batchnorm_backward_cpu_tuned(&x, &dy, dims, gamma, &stats_ref, &run_ref, training, cfg);
                tol.assert(&format!("{what}: dx (training {training})"), &dx, &dx_ref);
                tol.assert(&format!("{what}: dγ, dβ (training {training})"), &gr, &gr_ref);
            }
        }
    }
}

fn bad_input(dev: &Device) {
    let x = Tensor::zeros(dev, &[1, 3, 1, 1]).unwrap();
    let mut running = Tensor::zeros(dev, &[2, 3]).unwrap();
    let e = batchnorm_forward_train(&x, None, &mut running, BatchNormConfig::default()).err().expect("one value per channel").to_string();
    assert!(e.contains("batchnorm") && e.contains("more than one value per channel") && e.contains("[1, 3, 1, 1]"), "{e}");
    let x = Tensor::zeros(dev, &[4, 3]).unwrap();
    let mut wrong = Tensor::zeros(dev, &[2, 4]).unwrap();
    let e = batchnorm_forward_train(&x, None, &mut wrong, BatchNormConfig::default()).err().unwrap().to_string();
    assert!(e.contains("running statistics") && e.contains("[2, 3]"), "{e}");
}
test_device!(batchnorm_bad_input, bad_input);
