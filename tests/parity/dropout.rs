//! Dropout: keep rate, identical masks on every device, inverted scaling,
//! identity in eval, backward reuses the mask.

use wgpu_cnn::ops::dropout::{dropout_backward, dropout_forward, dropout_mask_cpu, DropoutConfig};
use wgpu_cnn::{Device, Tensor};

use crate::test_device;

fn masks(dev: &Device) {
    let n = 1_000_000;
    let cfg = DropoutConfig { p: 0.3, seed: 0xdead_beef_1234, step: 7 };
    let ones = Tensor::full(dev, &[n], 1.0).unwrap();
    let y = dropout_forward(&ones, cfg, true).unwrap().to_vec().unwrap();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    assert!((kept - 0.7).abs() < 0.01 * 0.7, "keep rate {kept} on {dev}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6), "inverted scaling");
    let mask = dropout_mask_cpu(&cfg, n).unwrap();
    assert!(y.iter().zip(&mask).all(|(v, k)| (*v != 0.0) == *k), "mask on {dev} differs from the CPU twin's");
    let other = dropout_mask_cpu(&DropoutConfig { step: 8, ..cfg }, n).unwrap();
    assert_ne!(mask, other, "a new step draws a new mask");
    let dy = Tensor::full(dev, &[n], 2.0).unwrap();
    let dx = dropout_backward(&dy, cfg).unwrap().to_vec().unwrap();
    assert!(dx.iter().zip(&y).all(|(d, y)| (*d - 2.0 * y).abs() < 1e-6), "backward uses the forward's mask");
    let eval = dropout_forward(&ones, cfg, false).unwrap().to_vec().unwrap();
    assert!(eval.iter().all(|&v| v == 1.0), "eval mode is the identity");
    let zero = dropout_forward(&ones, DropoutConfig { p: 0.0, ..cfg }, true).unwrap().to_vec().unwrap();
    assert!(zero.iter().all(|&v| v == 1.0), "p = 0 keeps everything");
    for p in [1.0, -0.1, f32::NAN] {
        let e = dropout_forward(&ones, DropoutConfig { p, ..cfg }, true).unwrap_err().to_string();
        assert!(e.contains("dropout") && e.contains("[0, 1)"), "{e}");
    }
}
test_device!(dropout_masks, masks);
