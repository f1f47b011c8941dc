//! col2im: the adjoint of im2col, on every device, and CPU/GPU parity.

use wgpu_cnn::ops::col2im::col2im;
use wgpu_cnn::ops::im2col::im2col;
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::{assert_adjoint, random};
use crate::im2col::geometries;
use crate::test_device;

fn adjoint_and_parity(dev: &Device) {
    for (i, g) in geometries().iter().enumerate() {
        let xs = g.input_shape();
        let cs = [g.c_in * g.kh * g.kw, g.n * g.oh * g.ow];
        let x = random(10 + i as u64, xs.iter().product());
        let c = random(20 + i as u64, cs.iter().product());
        let fx = im2col(&Tensor::from_slice(dev, &xs, &x).unwrap(), g).unwrap().to_vec().unwrap();
        let fty = col2im(&Tensor::from_slice(dev, &cs, &c).unwrap(), g).unwrap();
        assert_eq!(fty.shape(), xs);
        let fty = fty.to_vec().unwrap();
        assert_adjoint(&format!("col2im geometry {i} on {dev}"), &fx, &c, &x, &fty);
        let cpu = col2im(&Tensor::from_slice(&Device::Cpu, &cs, &c).unwrap(), g).unwrap().to_vec().unwrap();
        // Same terms in the same order on both sides.
        Tolerance::new(1e-6, 1e-6).assert(&format!("col2im geometry {i} on {dev}"), &fty, &cpu);
    }
}
test_device!(col2im_is_adjoint_of_im2col, adjoint_and_parity);
