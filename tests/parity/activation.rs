//! Activations: every kind on every device against the CPU twin, known values,
//! gradients at exactly 0, stability at ±100, finite differences.

use wgpu_cnn::ops::activation::{activation_backward, activation_forward, activation_derivative_cpu, activation_forward_cpu, Activation};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::{numeric_grad, random};
use crate::test_device;

fn inputs() -> Vec<f32> {
    let mut v: Vec<f32> = random(1, 997).iter().map(|x| x * 6.0).collect();
    v.extend([0.0, -0.0, 100.0, -100.0, 1e4, -1e4, 20.0, -20.0]);
    v
}

fn parity(dev: &Device) {
    let x = inputs();
    let dy = random(2, x.len());
    let xt = Tensor::from_slice(dev, &[x.len()], &x).unwrap();
    let dyt = Tensor::from_slice(dev, &[x.len()], &dy).unwrap();
    for act in Activation::ALL {
        let y = activation_forward(&xt, act).unwrap().to_vec().unwrap();
        let dx = activation_backward(&xt, &dyt, act).unwrap().to_vec().unwrap();
        assert!(y.iter().chain(&dx).all(|v| v.is_finite()), "{act:?} on {dev}: non-finite output");
        let want_y: Vec<f32> = x.iter().map(|&v| activation_forward_cpu(act, v)).collect();
        let want_dx: Vec<f32> = x.iter().zip(&dy).map(|(&v, &d)| d * activation_derivative_cpu(act, v)).collect();
        // exp/erf differ by a few ulp between the GPU and Rust's libm.
        Tolerance::new(1e-6, 1e-5).assert(&format!("{act:?} forward on {dev}"), &y, &want_y);
        Tolerance::new(1e-6, 1e-5).assert(&format!("{act:?} backward on {dev}"), &dx, &want_dx);
    }
}
test_device!(activation_parity, parity);

fn known_values(dev: &Device) {
    let x = Tensor::from_vec(dev, &[7], vec![-100.0, -1.0, 0.0, 1.0, 2.0, 100.0, -2.0]).unwrap();
    let ones = Tensor::full(dev, &[7], 1.0).unwrap();
    let f = |a| activation_forward(&x, a).unwrap().to_vec().unwrap();
    let d = |a| activation_backward(&x, &ones, a).unwrap().to_vec().unwrap();
    let t = Tolerance::new(2e-6, 2e-6);
    t.assert("relu", &f(Activation::Relu), &[0.0, 0.0, 0.0, 1.0, 2.0, 100.0, 0.0]);
    t.assert("relu'", &d(Activation::Relu), &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
    t.assert("leaky'", &d(Activation::LeakyRelu(0.2)), &[0.2, 0.2, 0.2, 1.0, 1.0, 1.0, 0.2]);
    t.assert("sigmoid", &f(Activation::Sigmoid), &[0.0, 0.26894142, 0.5, 0.7310586, 0.8807971, 1.0, 0.11920292]);
    t.assert("tanh", &f(Activation::Tanh), &[-1.0, -0.7615942, 0.0, 0.7615942, 0.9640276, 1.0, -0.9640276]);
    // torch.nn.functional.gelu at these points (erf and tanh forms).
    t.assert("gelu", &f(Activation::Gelu), &[-0.0, -0.15865526, 0.0, 0.8413447, 1.9544997, 100.0, -0.04550027]);
    t.assert("gelu_tanh", &f(Activation::GeluTanh), &[-0.0, -0.15880796, 0.0, 0.841192, 1.9545977, 100.0, -0.04540229]);
}
test_device!(activation_known_values, known_values);

/// Finite differences of L = Σ f(x)·r away from the kinks.
#[test]
fn cpu_gradients_match_finite_differences() {
    let x: Vec<f32> = random(5, 64).iter().map(|v| if v.abs() < 0.05 { v + 0.2 } else { *v } * 3.0).collect();
    let r = random(6, 64);
    for act in Activation::ALL {
        let analytic: Vec<f32> = x.iter().zip(&r).map(|(&v, &r)| r * activation_derivative_cpu(act, v)).collect();
        let loss = |x: &[f32]| -> f64 { x.iter().zip(&r).map(|(&v, &r)| activation_forward_cpu(act, v) as f64 * r as f64).sum() };
        Tolerance::new(2e-3, 1e-2).assert(&format!("{act:?} vs finite differences"), &analytic, &numeric_grad(&x, 1e-2, &loss));
    }
}
