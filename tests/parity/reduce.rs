//! Row sums against an f64 sum.

use wgpu_cnn::ops::reduce::reduce_rows;
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::random;
use crate::test_device;

fn rows(dev: &Device) {
    for (r, len) in [(1, 1), (3, 5), (6, 50_000), (300, 7), (2, 129)] {
        let x = random(r as u64 * 31 + len as u64, r * len);
        let got = reduce_rows(&Tensor::from_slice(dev, &[r, len], &x).unwrap()).unwrap();
        assert_eq!(got.shape(), [r]);
        let want: Vec<f32> = (0..r).map(|i| x[i * len..(i + 1) * len].iter().map(|&v| v as f64).sum::<f64>() as f32).collect();
        Tolerance::new(1e-6 * len as f32, 1e-5).assert(&format!("reduce_rows {r}×{len} on {dev}"), &got.to_vec().unwrap(), &want);
    }
}
test_device!(reduce_sum_rows, rows);
