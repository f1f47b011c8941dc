//! Elementwise helpers: add, combine (in place), fill, bias add and bias gradient.

use wgpu_cnn::ops::elementwise::{add, bias_add, bias_grad, combine_into, fill};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::random;
use crate::test_device;

fn helpers(dev: &Device) {
    let t = Tolerance::new(1e-6, 1e-6);
    let (a, b) = (random(1, 35), random(2, 35));
    let at = Tensor::from_slice(dev, &[5, 7], &a).unwrap();
    let bt = Tensor::from_slice(dev, &[5, 7], &b).unwrap();
    let s = add(&at, &bt, 2.0, -0.5).unwrap().to_vec().unwrap();
    t.assert("add", &s, &a.iter().zip(&b).map(|(a, b)| 2.0 * a - 0.5 * b).collect::<Vec<_>>());

    let mut acc = Tensor::from_slice(dev, &[5, 7], &b).unwrap();
    combine_into(&mut acc, &at, 1.0, 1.0).unwrap();
    t.assert("combine accumulate", &acc.to_vec().unwrap(), &a.iter().zip(&b).map(|(a, b)| a + b).collect::<Vec<_>>());
    let mut nan = Tensor::full(dev, &[5, 7], f32::NAN).unwrap();
    combine_into(&mut nan, &at, 3.0, 0.0).unwrap();
    t.assert("combine beta=0 ignores out", &nan.to_vec().unwrap(), &a.iter().map(|a| 3.0 * a).collect::<Vec<_>>());
    fill(&mut nan, 0.25).unwrap();
    assert_eq!(nan.to_vec().unwrap(), vec![0.25; 35]);

    // x [2, 3, 4] + b [3] along axis 1; its gradient sums over axes 0 and 2.
    let x = random(3, 24);
    let bias = vec![1.0, -2.0, 0.5];
    let y = bias_add(&Tensor::from_slice(dev, &[2, 3, 4], &x).unwrap(), &Tensor::from_slice(dev, &[3], &bias).unwrap()).unwrap();
    let want: Vec<f32> = x.iter().enumerate().map(|(i, v)| v + bias[(i / 4) % 3]).collect();
    t.assert("bias_add", &y.to_vec().unwrap(), &want);
    let db = bias_grad(&Tensor::from_slice(dev, &[2, 3, 4], &x).unwrap()).unwrap().to_vec().unwrap();
    let want: Vec<f32> = (0..3).map(|c| (0..2).flat_map(|n| (0..4).map(move |t| (n * 3 + c) * 4 + t)).map(|i| x[i]).sum()).collect();
    t.assert("bias_grad", &db, &want);
    // Linear-layer shape: [batch, features].
    let lin = random(4, 6 * 5);
    let db = bias_grad(&Tensor::from_slice(dev, &[6, 5], &lin).unwrap()).unwrap().to_vec().unwrap();
    t.assert("bias_grad 2-d", &db, &(0..5).map(|j| (0..6).map(|n| lin[n * 5 + j]).sum()).collect::<Vec<f32>>());
    assert!(add(&at, &Tensor::zeros(dev, &[7, 5]).unwrap(), 1.0, 1.0).is_err(), "shape mismatch is an error");
}
test_device!(elementwise_helpers, helpers);
