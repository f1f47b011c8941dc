//! Zero padding and convolutions with PyTorch's other padding forms
//! (`same` with even and dilated kernels, per side), against PyTorch 2.15.

use wgpu_cnn::nn::{Conv2d, Init, Initializer, Layer, Mode, ZeroPad2d};
use wgpu_cnn::ops::pad::{pad_backward, pad_forward};
use wgpu_cnn::{Conv2dConfig, Device, Padding, Tensor, Tolerance};

use crate::harness::{assert_adjoint, random, torch_tensor, torch_value};
use crate::test_device;

fn parity(dev: &Device) {
    let sides = [1, 2, 0, 3];
    let x = torch_tensor(dev, "pad.x");
    let y = pad_forward(&x, sides).unwrap();
    assert_eq!(y.shape(), [2, 3, 7, 8]);
    assert_eq!(y.to_vec().unwrap(), torch_value("pad.y").1, "F.pad(x, (0, 3, 1, 2)) on {dev}");
    let dy = random(3, y.numel());
    let dx = pad_backward(&Tensor::from_slice(dev, y.shape(), &dy).unwrap(), x.shape(), sides).unwrap().to_vec().unwrap();
    assert_adjoint(&format!("pad on {dev}"), &y.to_vec().unwrap(), &dy, &x.to_vec().unwrap(), &dx);
    let mut layer = ZeroPad2d::new(sides);
    assert_eq!(layer.output_shape(x.shape()).unwrap(), vec![2, 3, 7, 8]);
    assert_eq!(layer.forward(&x, Mode::Train).unwrap().to_vec().unwrap(), y.to_vec().unwrap());
    assert_eq!(layer.backward(&Tensor::from_slice(dev, y.shape(), &dy).unwrap()).unwrap().to_vec().unwrap(), dx);
    assert!(pad_backward(&x, &[2, 3, 4, 5], sides).is_err(), "dy of the unpadded shape");
}
test_device!(pad_parity, parity);

/// `padding="same"`: the layer against F.conv2d's values and gradients.
fn same(dev: &Device) {
    for (name, dil) in [("same_even", 1), ("same_dil", 2)] {
        let get = |k: &str| torch_tensor(dev, &format!("{name}.{k}"));
        let (x, w, gy) = (get("x"), get("w"), get("gy"));
        let ws = w.shape().to_vec();
        let mut conv = Conv2d::with_padding(dev, ws[1], ws[0], [ws[2], ws[3]], Conv2dConfig::default().dilation(dil), Padding::Same, true, &mut Initializer::new(0, Init::PytorchDefault)).unwrap();
        conv.params.weight.write(&w.to_vec().unwrap()).unwrap();
        conv.params.bias.as_mut().unwrap().write(&get("b").to_vec().unwrap()).unwrap();
        assert_eq!(conv.output_shape(x.shape()).unwrap(), x.shape()[..1].iter().chain(&[ws[0]]).chain(&x.shape()[2..]).copied().collect::<Vec<_>>());
        let tol = Tolerance::new(1e-4, 1e-4);
        let y = conv.forward(&x, Mode::Train).unwrap();
        tol.assert(&format!("{name} y on {dev}"), &y.to_vec().unwrap(), &torch_value(&format!("{name}.y")).1);
        let dx = conv.backward(&gy).unwrap();
        tol.assert(&format!("{name} dx on {dev}"), &dx.to_vec().unwrap(), &torch_value(&format!("{name}.dx")).1);
        let ps = conv.parameters("").unwrap();
        tol.assert(&format!("{name} dw on {dev}"), &ps[0].grad.to_vec().unwrap(), &torch_value(&format!("{name}.dw")).1);
        tol.assert(&format!("{name} db on {dev}"), &ps[1].grad.to_vec().unwrap(), &torch_value(&format!("{name}.db")).1);
    }
    let init = &mut Initializer::new(0, Init::PytorchDefault);
    assert!(Conv2d::with_padding(dev, 1, 1, [3, 3], Conv2dConfig::default().stride(2), Padding::Same, false, init).is_err(), "same needs stride 1");
    let valid = Conv2d::with_padding(dev, 1, 1, [3, 3], Conv2dConfig::default(), Padding::Valid, false, init).unwrap();
    assert_eq!(valid.output_shape(&[1, 1, 5, 5]).unwrap(), vec![1, 1, 3, 3]);
    let sym = Conv2d::with_padding(dev, 1, 1, [3, 3], Conv2dConfig::default(), Padding::symmetric([1, 2]), false, init).unwrap();
    assert!(sym.pre_pad.is_none() && sym.cfg.padding == [1, 2], "symmetric padding stays in the convolution");
}
test_device!(conv2d_padding_modes, same);
