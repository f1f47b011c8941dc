//! Softmax cross-entropy and (log-)softmax against an f64 oracle; properties;
//! extreme logits; label validation before any GPU work.

use wgpu_cnn::ops::softmax_xent::{softmax_xent_probs, softmax_xent, CrossEntropyConfig, Reduction};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::{numeric_grad, random};
use crate::test_device;

/// (loss, grad) from the definition in f64.
fn oracle(x: &[f32], n: usize, c: usize, labels: &[i64], cfg: &CrossEntropyConfig) -> (f32, Vec<f32>) {
    let counted = labels.iter().filter(|&&l| Some(l) != cfg.ignore_index).count();
    let scale = match cfg.reduction {
        Reduction::Mean => 1.0 / counted.max(1) as f64,
        Reduction::Sum => 1.0,
    };
    let eps = cfg.label_smoothing as f64;
    let (mut loss, mut grad) = (0f64, vec![0f32; n * c]);
    for r in 0..n {
        if Some(labels[r]) == cfg.ignore_index {
            continue;
        }
        let row: Vec<f64> = x[r * c..(r + 1) * c].iter().map(|&v| v as f64).collect();
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        for j in 0..c {
            let t = eps / c as f64 + if j as i64 == labels[r] { 1.0 - eps } else { 0.0 };
            loss -= t * (row[j] - lse);
            grad[r * c + j] = (scale * ((row[j] - lse).exp() - t)) as f32;
        }
    }
    ((loss * scale) as f32, grad)
}

fn parity(dev: &Device) {
    let configs = [
        CrossEntropyConfig::default(),
        CrossEntropyConfig { label_smoothing: 0.1, ..Default::default() },
        CrossEntropyConfig { ignore_index: Some(3), ..Default::default() },
        CrossEntropyConfig { reduction: Reduction::Sum, label_smoothing: 0.05, ..Default::default() },
    ];
    // Up to 64 rows the GPU adds the loss in the same workgroup; 65 and 200 take
    // the two-dispatch path (rows, then their sum).
    for (n, c) in [(1, 10), (7, 10), (64, 10), (65, 10), (200, 7), (5, 1000), (3, 1)] {
        let x: Vec<f32> = random(n as u64 * 7 + c as u64, n * c).iter().map(|v| 8.0 * v).collect();
        let labels: Vec<i64> = (0..n).map(|i| ((i * 7 + 3) % c) as i64).collect();
        for cfg in &configs {
            let xt = Tensor::from_slice(dev, &[n, c], &x).unwrap();
            let (loss, grad) = softmax_xent(&xt, &labels, *cfg).unwrap();
            let (want_loss, want_grad) = oracle(&x, n, c, &labels, cfg);
            let what = format!("softmax_xent {n}x{c} {cfg:?} on {dev}");
            Tolerance::new(1e-5, 1e-5).assert(&what, &loss.to_vec().unwrap(), &[want_loss]);
            Tolerance::new(1e-6, 1e-4).assert(&what, &grad.to_vec().unwrap(), &want_grad);
        }
    }
}
test_device!(softmax_xent_parity, parity);

fn properties(dev: &Device) {
    let (n, c) = (6, 9);
    let x: Vec<f32> = random(3, n * c).iter().map(|v| 5.0 * v).collect();
    let xt = Tensor::from_slice(dev, &[n, c], &x).unwrap();
    let p = softmax_xent_probs(&xt, false).unwrap().to_vec().unwrap();
    for r in 0..n {
        let s: f32 = p[r * c..(r + 1) * c].iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "softmax row {r} sums to {s} on {dev}");
    }
    let lp = softmax_xent_probs(&xt, true).unwrap().to_vec().unwrap();
    Tolerance::new(1e-5, 1e-5).assert("log_softmax = ln softmax", &lp, &p.iter().map(|v| v.ln()).collect::<Vec<_>>());
    // Adding a constant to a row leaves the loss unchanged.
    let labels: Vec<i64> = (0..n as i64).collect();
    let shifted: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + 100.0 * (i / c) as f32).collect();
    let l0 = softmax_xent(&xt, &labels, Default::default()).unwrap().0.to_vec().unwrap()[0];
    let l1 = softmax_xent(&Tensor::from_slice(dev, &[n, c], &shifted).unwrap(), &labels, Default::default()).unwrap().0.to_vec().unwrap()[0];
    assert!((l0 - l1).abs() < 1e-4 * l0.abs().max(1.0), "CE changed under a row shift: {l0} vs {l1}");
}
test_device!(softmax_xent_properties, properties);

/// Logits of ±1e4: finite and correct.
fn extreme_logits(dev: &Device) {
    let x = Tensor::from_vec(dev, &[2, 3], vec![1e4, -1e4, 0.0, -1e4, 1e4, 1e4]).unwrap();
    let (loss, grad) = softmax_xent(&x, &[0, 0], CrossEntropyConfig { reduction: Reduction::Sum, ..Default::default() }).unwrap();
    let (loss, grad) = (loss.to_vec().unwrap()[0], grad.to_vec().unwrap());
    // Row 0: label 0 wins outright → 0. Row 1: the label is 2e4 below the top two → 2e4 + ln 2.
    assert!((loss - (2e4 + std::f32::consts::LN_2)).abs() < 1e-2, "loss {loss} on {dev}");
    assert!(grad.iter().all(|g| g.is_finite()));
    Tolerance::new(1e-6, 1e-6).assert("grad at ±1e4", &grad, &[0.0, 0.0, 0.0, -1.0, 0.5, 0.5]);
    let p = softmax_xent_probs(&x, false).unwrap().to_vec().unwrap();
    assert!(p.iter().all(|v| v.is_finite()), "softmax at ±1e4: {p:?}");
}
test_device!(softmax_xent_extreme_logits, extreme_logits);

#[test]
fn cpu_gradient_matches_finite_differences() {
    let (n, c) = (4, 5);
    let x = random(21, n * c);
    let labels = [0, 4, 2, 2];
    let cfg = CrossEntropyConfig { label_smoothing: 0.1, ..Default::default() };
    let loss = |x: &[f32]| -> f64 {
        let t = Tensor::from_slice(&Device::Cpu, &[n, c], x).unwrap();
        softmax_xent(&t, &labels, cfg).unwrap().0.to_vec().unwrap()[0] as f64
    };
    let (_, grad) = softmax_xent(&Tensor::from_slice(&Device::Cpu, &[n, c], &x).unwrap(), &labels, cfg).unwrap();
    Tolerance::new(1e-3, 1e-2).assert("softmax_xent vs finite differences", &grad.to_vec().unwrap(), &numeric_grad(&x, 1e-2, &loss));
}

fn bad_labels(dev: &Device) {
    let x = Tensor::zeros(dev, &[3, 4]).unwrap();
    let msg = |labels: &[i64]| softmax_xent(&x, labels, Default::default()).err().expect("bad labels").to_string();
    let m = msg(&[0, 4, 1]);
    assert!(m.contains("label 4") && m.contains("row 1") && m.contains("4 classes"), "{m}");
    let m = msg(&[0, 1, -1]);
    assert!(m.contains("label -1") && m.contains("4 classes"), "{m}");
    let m = msg(&[0, 1]);
    assert!(m.contains("3 rows") && m.contains("2 labels"), "{m}");
    // The device is still usable afterwards.
    let (loss, _) = softmax_xent(&x, &[0, 1, 2], Default::default()).unwrap();
    assert!((loss.to_vec().unwrap()[0] - 4f32.ln()).abs() < 1e-5);
    assert!(softmax_xent(&Tensor::zeros(dev, &[3, 4, 1]).unwrap(), &[0, 1, 2], Default::default()).is_err());
}
test_device!(softmax_xent_bad_labels, bad_labels);
