//! Gradient clipping by global norm: every tensor scaled by max_norm / (norm + 1e-6), capped at 1.

use wgpu_cnn::ops::clip::clip_global_norm;
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::random;
use crate::test_device;

fn clipping(dev: &Device) {
    let (a, b) = (random(1, 30), random(2, 7));
    let norm = a.iter().chain(&b).map(|v| (v * v) as f64).sum::<f64>().sqrt() as f32;
    let mut ta = Tensor::from_slice(dev, &[30], &a).unwrap();
    let mut tb = Tensor::from_slice(dev, &[7], &b).unwrap();
    clip_global_norm(&mut [&mut ta, &mut tb], norm / 2.0).unwrap();
    let scale = (norm / 2.0) / (norm + 1e-6);
    Tolerance::new(1e-6, 1e-5).assert(&format!("clipped a on {dev}"), &ta.to_vec().unwrap(), &a.iter().map(|v| v * scale).collect::<Vec<_>>());
    Tolerance::new(1e-6, 1e-5).assert(&format!("clipped b on {dev}"), &tb.to_vec().unwrap(), &b.iter().map(|v| v * scale).collect::<Vec<_>>());
    // Under the limit: unchanged (up to the 1e-6 guard).
    clip_global_norm(&mut [&mut ta], 1e3).unwrap();
    Tolerance::new(1e-6, 1e-5).assert("below the limit", &ta.to_vec().unwrap(), &a.iter().map(|v| v * scale).collect::<Vec<_>>());
    assert!(clip_global_norm(&mut [&mut ta], 0.0).is_err());
}
test_device!(clip_global_norm_scales_together, clipping);

