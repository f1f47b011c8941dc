//! Per-channel bias: add along axis 1, and its gradient (the sum over the other axes).

use wgpu_cnn::ops::bias::{bias_add, bias_grad};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::random;
use crate::test_device;

fn bias(dev: &Device) {
    let t = Tolerance::new(1e-6, 1e-6);
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
    assert!(bias_add(&Tensor::zeros(dev, &[2, 3, 4]).unwrap(), &Tensor::zeros(dev, &[4]).unwrap()).is_err(), "bias length must match axis 1");
    assert!(bias_grad(&Tensor::zeros(dev, &[5]).unwrap()).is_err(), "a 1-d tensor has no channel axis");
}
test_device!(bias_add_and_grad, bias);
