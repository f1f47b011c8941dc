//! LayerNorm (the last two dims) and GroupNorm (3 groups of 6 channels):
//! forward, dx, dγ, dβ against PyTorch 2.15 on both devices, through the layer;
//! the non-affine op; bad input.

use wgpu_cnn::nn::{Layer, LayerNorm, Mode};
use wgpu_cnn::ops::layernorm::{layernorm_forward, NormKind};
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::{torch_tensor, torch_value};
use crate::test_device;

fn parity(dev: &Device) {
    for name in ["ln", "gn"] {
        let get = |k: &str| torch_tensor(dev, &format!("{name}.{k}"));
        let want = |k: &str| torch_value(&format!("{name}.{k}")).1;
        let mut layer = if name == "ln" { LayerNorm::new(dev, &[5, 6]).unwrap() } else { LayerNorm::group_norm(dev, 3, 6).unwrap() };
        layer.weight.write(&want("w")).unwrap();
        layer.bias.write(&want("b")).unwrap();
        let y = layer.forward(&get("x"), Mode::Train).unwrap();
        Tolerance::new(1e-5, 1e-5).assert(&format!("{name} y on {dev}"), &y.to_vec().unwrap(), &want("y"));
        let dx = layer.backward(&get("gy")).unwrap();
        Tolerance::new(1e-5, 1e-4).assert(&format!("{name} dx on {dev}"), &dx.to_vec().unwrap(), &want("dx"));
        let ps = layer.parameters("").unwrap();
        Tolerance::new(1e-5, 1e-4).assert(&format!("{name} dw on {dev}"), &ps[0].grad.to_vec().unwrap(), &want("dw"));
        Tolerance::new(1e-5, 1e-4).assert(&format!("{name} db on {dev}"), &ps[1].grad.to_vec().unwrap(), &want("db"));
        assert_eq!(ps[0].name, "weight");
    }
    // Without affine: each row has mean 0 and variance 1 (up to eps).
    let x = Tensor::from_vec(dev, &[2, 8], (0..16).map(|v| (v * v) as f32).collect()).unwrap();
    let (y, stats) = layernorm_forward(&x, None, NormKind::Layer { dims: 1 }, 1e-5).unwrap();
    assert_eq!(stats.shape(), [2, 2]);
    for row in y.to_vec().unwrap().chunks(8) {
        let mean: f32 = row.iter().sum::<f32>() / 8.0;
        let var: f32 = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 8.0;
        assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3, "mean {mean} var {var}");
    }
    assert!(LayerNorm::new(dev, &[5, 6]).unwrap().forward(&Tensor::zeros(dev, &[2, 6, 5]).unwrap(), Mode::Eval).is_err(), "trailing dims [6, 5] for [5, 6]");
    assert!(LayerNorm::group_norm(dev, 4, 6).is_err(), "4 groups of 6 channels");
    assert!(layernorm_forward(&x, None, NormKind::Layer { dims: 3 }, 1e-5).is_err());
    assert!(layernorm_forward(&x, None, NormKind::Layer { dims: 1 }, 0.0).is_err(), "eps 0");
}
test_device!(layernorm_parity, parity);
