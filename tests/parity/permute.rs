//! Swapping leading axes, with and without a bias.

use wgpu_cnn::ops::permute::permute_swap;
use wgpu_cnn::{Device, Tensor};

use crate::harness::random;
use crate::test_device;

fn swap(dev: &Device) {
    let (a, b, inner) = (3, 5, 7);
    let x = random(1, a * b * inner);
    let bias = random(2, a);
    let xt = Tensor::from_slice(dev, &[a, b, inner], &x).unwrap();
    let bt = Tensor::from_slice(dev, &[a], &bias).unwrap();
    let plain = permute_swap(&xt, None).unwrap();
    assert_eq!(plain.shape(), [b, a, inner]);
    let with_bias = permute_swap(&xt, Some(&bt)).unwrap().to_vec().unwrap();
    let plain = plain.to_vec().unwrap();
    for j in 0..b {
        for i in 0..a {
            for t in 0..inner {
                let (o, s) = ((j * a + i) * inner + t, (i * b + j) * inner + t);
                assert_eq!(plain[o], x[s]);
                assert_eq!(with_bias[o], x[s] + bias[i]);
            }
        }
    }
    // 2-D: a transpose.
    let m = Tensor::from_vec(dev, &[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
    assert_eq!(permute_swap(&m, None).unwrap().to_vec().unwrap(), vec![1., 4., 2., 5., 3., 6.]);
    let bad = permute_swap(&xt, Some(&Tensor::zeros(dev, &[b]).unwrap())).unwrap_err().to_string();
    assert!(bad.contains("permute") && bad.contains("expected [3]"), "{bad}");
}
test_device!(permute_swap_leading, swap);
