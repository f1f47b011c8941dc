//! Row and column sums against an f64 sum.

use wgpu_cnn::ops::reduce::{reduce_cols, reduce_rows, reduce_sum_squares};
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

fn cols(dev: &Device) {
    for (r, len) in [(1, 1), (2, 5), (7, 3000), (50_000, 2), (129, 65)] {
        let x = random(r as u64 * 17 + len as u64, r * len);
        let got = reduce_cols(&Tensor::from_slice(dev, &[r, len], &x).unwrap()).unwrap();
        assert_eq!(got.shape(), [len]);
        let want: Vec<f32> = (0..len).map(|e| (0..r).map(|i| x[i * len + e] as f64).sum::<f64>() as f32).collect();
        Tolerance::new(1e-6 * r as f32, 1e-5).assert(&format!("reduce_cols {r}×{len} on {dev}"), &got.to_vec().unwrap(), &want);
    }
    // Trailing axes stay: [3, 2, 4] → [2, 4].
    let got = reduce_cols(&Tensor::from_slice(dev, &[3, 2, 4], &(0..24).map(|v| v as f32).collect::<Vec<_>>()).unwrap()).unwrap();
    assert_eq!((got.shape(), got.to_vec().unwrap()), (&[2usize, 4][..], (0..8).map(|e| (3 * e + 24) as f32).collect::<Vec<_>>()));
    assert!(reduce_cols(&Tensor::zeros(dev, &[4]).unwrap()).is_err(), "a 1-d tensor has no columns to keep");
}
test_device!(reduce_sum_cols, cols);

fn squares(dev: &Device) {
    let (a, b) = (random(5, 1000), random(6, 3));
    let ta = Tensor::from_slice(dev, &[10, 100], &a).unwrap();
    let tb = Tensor::from_slice(dev, &[3], &b).unwrap();
    let got = reduce_sum_squares(&[&ta, &tb]).unwrap();
    let want: Vec<f32> = [&a, &b].iter().map(|v| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>() as f32).collect();
    Tolerance::new(1e-4, 1e-5).assert(&format!("reduce_sum_squares on {dev}"), &got, &want);
}
test_device!(reduce_sum_squares_each, squares);
