//! Upsampling, nearest and bilinear (align_corners = false): forward and
//! backward against PyTorch 2.15 (`F.interpolate` and its autograd) up by 2,
//! to uneven sizes and down, on both devices; backward as forward's adjoint.

use wgpu_cnn::ops::upsample::{upsample_backward, upsample_forward, UpsampleMode};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::{assert_adjoint, random, torch_tensor, torch_value};
use crate::test_device;

fn parity(dev: &Device) {
    let x = torch_tensor(dev, "up.x");
    for (mode, mname) in [(UpsampleMode::Nearest, "nearest"), (UpsampleMode::Bilinear, "bilinear")] {
        for (name, size) in [("x2", [8, 10]), ("odd", [7, 13]), ("down", [3, 2])] {
            let key = format!("up.{mname}.{name}");
            let y = upsample_forward(&x, size, mode).unwrap();
            assert_eq!(y.shape(), [2, 3, size[0], size[1]]);
            Tolerance::new(1e-6, 1e-5).assert(&format!("{key} forward on {dev}"), &y.to_vec().unwrap(), &torch_value(&format!("{key}.y")).1);
            let dx = upsample_backward(&torch_tensor(dev, &format!("{key}.gy")), x.shape(), mode).unwrap();
            Tolerance::new(1e-5, 1e-5).assert(&format!("{key} backward on {dev}"), &dx.to_vec().unwrap(), &torch_value(&format!("{key}.dx")).1);
        }
        for (i, (shape, size)) in [([1, 2, 3, 3], [9, 7]), ([2, 1, 6, 4], [6, 4]), ([1, 1, 1, 5], [3, 11])].into_iter().enumerate() {
            let xv = random(40 + i as u64, shape.iter().product());
            let y = upsample_forward(&Tensor::from_slice(dev, &shape, &xv).unwrap(), size, mode).unwrap().to_vec().unwrap();
            let dy = random(50 + i as u64, y.len());
            let dx = upsample_backward(&Tensor::from_slice(dev, &[shape[0], shape[1], size[0], size[1]], &dy).unwrap(), &shape, mode).unwrap().to_vec().unwrap();
            assert_adjoint(&format!("upsample {mname} {shape:?} → {size:?} on {dev}"), &y, &dy, &xv, &dx);
        }
    }
    assert!(upsample_forward(&x, [0, 4], UpsampleMode::Nearest).is_err());
    assert!(upsample_forward(&Tensor::zeros(dev, &[3, 4]).unwrap(), [2, 2], UpsampleMode::Bilinear).is_err());
}
test_device!(upsample_parity, parity);
