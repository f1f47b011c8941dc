//! Softmax and log-softmax along any dim, forward and backward, and NLLLoss
//! (class weights, ignore_index, [n, c] and [n, c, d]), against PyTorch 2.15
//! on both devices; the layers; bad input.

use wgpu_cnn::nn::{Layer, Mode, Softmax};
use wgpu_cnn::ops::loss::{loss_nll, Reduction};
use wgpu_cnn::ops::softmax::{softmax_backward, softmax_forward};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::{torch_tensor, torch_value};
use crate::test_device;

fn parity(dev: &Device) {
    let x = torch_tensor(dev, "sm.x");
    for log in [false, true] {
        for dim in [0isize, 1, -1] {
            let key = format!("sm.{}.{dim}", if log { "log" } else { "soft" });
            let y = softmax_forward(&x, dim, log).unwrap();
            Tolerance::new(1e-6, 1e-5).assert(&format!("{key} forward on {dev}"), &y.to_vec().unwrap(), &torch_value(&format!("{key}.y")).1);
            let gy = torch_tensor(dev, &format!("{key}.gy"));
            let dx = softmax_backward(&y, &gy, dim, log).unwrap();
            Tolerance::new(1e-5, 1e-4).assert(&format!("{key} backward on {dev}"), &dx.to_vec().unwrap(), &torch_value(&format!("{key}.dx")).1);
            // The layer does the same.
            let mut layer = if log { Softmax::log(dim) } else { Softmax::new(dim) };
            assert_eq!(layer.forward(&x, Mode::Train).unwrap().to_vec().unwrap(), y.to_vec().unwrap());
            assert_eq!(layer.backward(&gy).unwrap().to_vec().unwrap(), dx.to_vec().unwrap());
        }
    }
    assert!(softmax_forward(&x, 4, false).is_err() && softmax_forward(&x, -5, true).is_err(), "dim out of range");
    assert!(Softmax::new(3).output_shape(&[2, 3]).is_err());
}
test_device!(softmax_parity, parity);

fn nll(dev: &Device) {
    for name in ["nll2", "nll3"] {
        let logp = torch_tensor(dev, &format!("{name}.logp"));
        let labels: Vec<i64> = torch_value(&format!("{name}.labels")).1.iter().map(|&v| v as i64).collect();
        let w = torch_value(&format!("{name}.w")).1;
        for (red, rname) in [(Reduction::Mean, "mean"), (Reduction::Sum, "sum")] {
            for weighted in [false, true] {
                let key = format!("{name}.{rname}.{}", if weighted { "w" } else { "u" });
                let (loss, grad) = loss_nll(&logp, &labels, weighted.then_some(&w[..]), Some(2), red).unwrap();
                Tolerance::new(1e-6, 1e-5).assert(&format!("{key} loss on {dev}"), &loss.to_vec().unwrap(), &torch_value(&format!("{key}.loss")).1);
                Tolerance::new(1e-7, 1e-5).assert(&format!("{key} gradient on {dev}"), &grad.to_vec().unwrap(), &torch_value(&format!("{key}.grad")).1);
            }
        }
    }
    let logp = Tensor::zeros(dev, &[2, 3]).unwrap();
    assert!(loss_nll(&logp, &[0, 3], None, None, Reduction::Mean).is_err(), "label 3 of 3 classes");
    assert!(loss_nll(&logp, &[0], None, None, Reduction::Mean).is_err(), "one label for two rows");
    assert!(loss_nll(&logp, &[0, 1], Some(&[1.0, 1.0]), None, Reduction::Mean).is_err(), "two weights for three classes");
    let (loss, _) = loss_nll(&logp, &[0, 1], None, Some(-1), Reduction::Mean).unwrap();
    assert_eq!(loss.to_vec().unwrap(), vec![0.0], "uniform log-probabilities of 0 give loss 0");
}
test_device!(nll_parity, nll);
