//! Regression losses (MSE, L1, smooth L1; mean and sum) against PyTorch 2.15
//! values and gradients, on both devices, and their bad input.

use wgpu_cnn::ops::loss::{loss_l1, loss_mse, loss_regression, loss_smooth_l1, Reduction, RegressionLoss};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::{torch_tensor, torch_value};
use crate::test_device;

fn parity(dev: &Device) {
    let (pred, target) = (torch_tensor(dev, "reg.pred"), torch_tensor(dev, "reg.target"));
    for (red, rname) in [(Reduction::Mean, "mean"), (Reduction::Sum, "sum")] {
        let runs: [(&str, (Tensor, Tensor)); 3] = [
            ("mse", loss_mse(&pred, &target, red).unwrap()),
            ("l1", loss_l1(&pred, &target, red).unwrap()),
            ("smooth_l1", loss_smooth_l1(&pred, &target, 0.7, red).unwrap()),
        ];
        for (name, (loss, grad)) in runs {
            let key = format!("reg.{name}.{rname}");
            assert_eq!(loss.shape(), [1]);
            Tolerance::new(1e-5, 1e-5).assert(&format!("{key} loss on {dev}"), &loss.to_vec().unwrap(), &torch_value(&format!("{key}.loss")).1);
            Tolerance::new(1e-7, 1e-5).assert(&format!("{key} gradient on {dev}"), &grad.to_vec().unwrap(), &torch_value(&format!("{key}.grad")).1);
        }
    }
    let bad = Tensor::zeros(dev, &[4, 15]).unwrap();
    assert!(loss_mse(&pred, &bad, Reduction::Mean).is_err(), "a target of another shape");
    assert!(loss_regression(&pred, &target, RegressionLoss::SmoothL1 { beta: 0.0 }, Reduction::Mean).is_err(), "beta 0");
}
test_device!(loss_parity, parity);
