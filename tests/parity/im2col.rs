//! im2col: CPU and GPU agree exactly (it only copies); padding reads as zero.

use wgpu_cnn::ops::im2col::im2col;
use wgpu_cnn::{Conv2dConfig, Conv2dGeometry, Device, Tensor};

use crate::harness::random;
use crate::test_device;

pub fn geometries() -> Vec<Conv2dGeometry> {
    let d = Conv2dConfig::default;
    [
        ([2, 3, 7, 6], [4, 3, 3, 3], d().padding(1)),
        ([1, 2, 9, 8], [2, 2, 3, 2], Conv2dConfig { stride: [2, 3], padding: [2, 1], dilation: [2, 1], groups: 1 }),
        ([3, 1, 5, 5], [1, 1, 5, 5], d().padding(2).stride(2)),
        ([2, 4, 4, 4], [4, 1, 3, 3], d().groups(4).padding(1)),
    ]
    .into_iter()
    .map(|(x, w, c)| Conv2dGeometry::new(&x, &w, c).unwrap())
    .collect()
}

fn parity(dev: &Device) {
    for (i, g) in geometries().iter().enumerate() {
        let x = random(i as u64, g.input_shape().iter().product());
        let cpu = im2col(&Tensor::from_slice(&Device::Cpu, &g.input_shape(), &x).unwrap(), g).unwrap();
        let here = im2col(&Tensor::from_slice(dev, &g.input_shape(), &x).unwrap(), g).unwrap();
        assert_eq!(here.shape(), [g.c_in * g.kh * g.kw, g.n * g.oh * g.ow]);
        assert_eq!(here.to_vec().unwrap(), cpu.to_vec().unwrap(), "im2col geometry {i} on {dev}");
    }
}
test_device!(im2col_parity, parity);

/// A 1-channel 3×3 image of ones, 3×3 kernel, padding 1: the centre column
/// is all ones, the corner column has four ones (the rest is padding).
fn padding_is_zero(dev: &Device) {
    let g = Conv2dGeometry::new(&[1, 1, 3, 3], &[1, 1, 3, 3], Conv2dConfig::default().padding(1)).unwrap();
    let cols = im2col(&Tensor::full(dev, &[1, 1, 3, 3], 1.0).unwrap(), &g).unwrap().to_vec().unwrap();
    let column = |j: usize| (0..9).map(|r| cols[r * 9 + j]).sum::<f32>();
    assert_eq!(column(4), 9.0);
    assert_eq!(column(0), 4.0);
}
test_device!(im2col_padding_is_zero, padding_is_zero);
