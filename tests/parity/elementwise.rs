//! Elementwise arithmetic: add, combine (in place), fill, combine_sign.

use wgpu_cnn::ops::activation::{activation_backward, activation_forward, Activation};
use wgpu_cnn::ops::elementwise::{elementwise_add, elementwise_add_relu, elementwise_add_relu_backward, elementwise_combine, elementwise_combine_sign, elementwise_fill, elementwise_mul};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::random;
use crate::test_device;

fn helpers(dev: &Device) {
    let t = Tolerance::new(1e-6, 1e-6);
    let (a, b) = (random(1, 35), random(2, 35));
    let at = Tensor::from_slice(dev, &[5, 7], &a).unwrap();
    let bt = Tensor::from_slice(dev, &[5, 7], &b).unwrap();
    let s = elementwise_add(&at, &bt, 2.0, -0.5).unwrap().to_vec().unwrap();
    t.assert("add", &s, &a.iter().zip(&b).map(|(a, b)| 2.0 * a - 0.5 * b).collect::<Vec<_>>());

    let mut acc = Tensor::from_slice(dev, &[5, 7], &b).unwrap();
    elementwise_combine(&mut acc, &at, 1.0, 1.0).unwrap();
    t.assert("combine accumulate", &acc.to_vec().unwrap(), &a.iter().zip(&b).map(|(a, b)| a + b).collect::<Vec<_>>());
    let mut nan = Tensor::full(dev, &[5, 7], f32::NAN).unwrap();
    elementwise_combine(&mut nan, &at, 3.0, 0.0).unwrap();
    t.assert("combine beta=0 ignores out", &nan.to_vec().unwrap(), &a.iter().map(|a| 3.0 * a).collect::<Vec<_>>());
    elementwise_fill(&mut nan, 0.25).unwrap();
    assert_eq!(nan.to_vec().unwrap(), vec![0.25; 35]);

    // L1's gradient term: alpha·sign(a) + beta·out, sign(0) = 0.
    let mut out = Tensor::from_slice(dev, &[5, 7], &b).unwrap();
    let mut z = a.clone();
    z[3] = 0.0;
    elementwise_combine_sign(&mut out, &Tensor::from_slice(dev, &[5, 7], &z).unwrap(), 0.5, 2.0).unwrap();
    let sign = |v: f32| if v > 0.0 { 1.0 } else if v < 0.0 { -1.0 } else { 0.0 };
    t.assert("combine_sign", &out.to_vec().unwrap(), &z.iter().zip(&b).map(|(a, b)| 0.5 * sign(*a) + 2.0 * b).collect::<Vec<_>>());
    assert!(elementwise_add(&at, &Tensor::zeros(dev, &[7, 5]).unwrap(), 1.0, 1.0).is_err(), "shape mismatch is an error");

    // A residual block's sum and ReLU in one kernel: the sum, then ReLU, bit for
    // bit; NaN passes as in PyTorch.
    let mut an = a.clone();
    an[4] = f32::NAN;
    let ant = Tensor::from_slice(dev, &[5, 7], &an).unwrap();
    let fused = elementwise_add_relu(&ant, &bt, 2.0, -0.5).unwrap().to_vec().unwrap();
    let want = activation_forward(&elementwise_add(&ant, &bt, 2.0, -0.5).unwrap(), Activation::Relu).unwrap().to_vec().unwrap();
    assert_eq!(fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "add + ReLU on {dev}");
    assert!(fused[4].is_nan() && fused.iter().all(|v| v.is_nan() || *v >= 0.0), "add + ReLU on {dev}: {fused:?}");
    assert!(elementwise_add_relu(&at, &Tensor::zeros(dev, &[7, 5]).unwrap(), 1.0, 1.0).is_err(), "shape mismatch is an error");

    // The same sum taken back through a ReLU whose output is `b` (half of it
    // positive): the sum, then ReLU's backward, bit for bit.
    let fused = elementwise_add_relu_backward(&at, &ant, &bt, 2.0, -0.5).unwrap().to_vec().unwrap();
    let want = activation_backward(&bt, &elementwise_add(&at, &ant, 2.0, -0.5).unwrap(), Activation::Relu).unwrap().to_vec().unwrap();
    assert_eq!(fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "add, ReLU backward on {dev}");
    assert!(fused.iter().zip(&b).any(|(f, &m)| m <= 0.0 && *f == 0.0) && fused.iter().zip(&b).any(|(f, &m)| m > 0.0 && *f != 0.0), "the mask both passes and stops: {fused:?}");
    let e = elementwise_add_relu_backward(&at, &bt, &Tensor::zeros(dev, &[7, 5]).unwrap(), 1.0, 1.0).unwrap_err().to_string();
    assert!(e.contains("ReLU output") && e.contains("[7, 5]"), "{e}");
}
test_device!(elementwise_helpers, helpers);

/// Products: equal shapes, and `b` broadcast over `a`'s trailing axes (a
/// channel gate), against a loop written out here; bad shapes are errors.
fn mul(dev: &Device) {
    let t = Tolerance::new(1e-6, 1e-6);
    let (a, b) = (random(3, 2 * 3 * 20), random(4, 2 * 3 * 20));
    let at = Tensor::from_slice(dev, &[2, 3, 4, 5], &a).unwrap();
    let same = elementwise_mul(&at, &Tensor::from_slice(dev, &[2, 3, 4, 5], &b).unwrap(), 0.5).unwrap();
    t.assert(&format!("mul on {dev}"), &same.to_vec().unwrap(), &a.iter().zip(&b).map(|(x, y)| 0.5 * x * y).collect::<Vec<_>>());
    let gate = &b[..6];
    let gated = elementwise_mul(&at, &Tensor::from_slice(dev, &[2, 3], gate).unwrap(), 1.0).unwrap();
    assert_eq!(gated.shape(), &[2, 3, 4, 5]);
    let want: Vec<f32> = (0..120).map(|i| a[i] * gate[i / 20]).collect();
    t.assert(&format!("channel gate on {dev}"), &gated.to_vec().unwrap(), &want);
    let e = elementwise_mul(&at, &Tensor::zeros(dev, &[3]).unwrap(), 1.0).unwrap_err().to_string();
    assert!(e.contains("elementwise_mul") && e.contains("[3]") && e.contains("[2, 3, 4, 5]"), "{e}");
}
test_device!(mul_dev, mul);
