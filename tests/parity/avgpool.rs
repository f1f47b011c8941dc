//! Average pooling: both divisor rules, ceil mode, global pooling; backward as
//! the adjoint of forward.

use wgpu_cnn::ops::avgpool::{avgpool_backward, avgpool_forward, avgpool_global_backward, avgpool_global_forward};
use wgpu_cnn::{Device, Pool2dGeometry, Tensor, Tolerance};

use crate::harness::{assert_adjoint, random};
use crate::maxpool::configs;
use crate::test_device;

/// Oracle from PyTorch's definition, in f64.
fn oracle(x: &[f32], g: &Pool2dGeometry) -> Vec<f32> {
    let c = &g.cfg;
    let mut y = Vec::new();
    for plane in 0..g.n * g.c {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let y0 = (oy * c.stride[0]) as isize - c.padding[0] as isize;
                let x0 = (ox * c.stride[1]) as isize - c.padding[1] as isize;
                let y1 = (y0 + c.kernel[0] as isize).min((g.h + c.padding[0]) as isize);
                let x1 = (x0 + c.kernel[1] as isize).min((g.w + c.padding[1]) as isize);
                let (mut sum, mut count) = (0f64, 0usize);
                for iy in y0.max(0)..y1.min(g.h as isize) {
                    for ix in x0.max(0)..x1.min(g.w as isize) {
                        sum += x[plane * g.h * g.w + iy as usize * g.w + ix as usize] as f64;
                        count += 1;
                    }
                }
                let div = if c.count_include_pad { ((y1 - y0) * (x1 - x0)) as f64 } else { count as f64 };
                y.push((sum / div) as f32);
            }
        }
    }
    y
}

fn parity(dev: &Device) {
    for include_pad in [true, false] {
        for (i, (shape, cfg)) in configs().into_iter().enumerate() {
            let cfg = cfg.count_include_pad(include_pad);
            let g = Pool2dGeometry::new("avgpool", &shape, cfg).unwrap();
            let x = random(i as u64, shape.iter().product());
            let y = avgpool_forward(&Tensor::from_slice(dev, &shape, &x).unwrap(), cfg).unwrap();
            assert_eq!(y.shape(), g.output_shape());
            let y = y.to_vec().unwrap();
            let what = format!("avgpool config {i} count_include_pad={include_pad} on {dev}");
            Tolerance::new(1e-6, 1e-5).assert(&what, &y, &oracle(&x, &g));
            let dy = random(70 + i as u64, y.len());
            let dx = avgpool_backward(&Tensor::from_slice(dev, &g.output_shape(), &dy).unwrap(), &shape, cfg).unwrap().to_vec().unwrap();
            assert_adjoint(&what, &y, &dy, &x, &dx);
        }
    }
}
test_device!(avgpool_parity, parity);

/// count_include_pad decides the corner of a padded 2×2 window over ones.
fn divisors(dev: &Device) {
    let ones = Tensor::full(dev, &[1, 1, 2, 2], 1.0).unwrap();
    let cfg = wgpu_cnn::Pool2dConfig::new(2).padding(1);
    assert_eq!(avgpool_forward(&ones, cfg).unwrap().to_vec().unwrap(), vec![0.25; 4]);
    assert_eq!(avgpool_forward(&ones, cfg.count_include_pad(false)).unwrap().to_vec().unwrap(), vec![1.0; 4]);
}
test_device!(avgpool_divisor_rules, divisors);

fn global(dev: &Device) {
    let x = random(5, 2 * 3 * 5 * 4);
    let xt = Tensor::from_slice(dev, &[2, 3, 5, 4], &x).unwrap();
    let y = avgpool_global_forward(&xt).unwrap();
    assert_eq!(y.shape(), [2, 3, 1, 1]);
    let want: Vec<f32> = x.chunks(20).map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / 20.0) as f32).collect();
    Tolerance::new(1e-6, 1e-5).assert("global_avg_pool", &y.to_vec().unwrap(), &want);
    let dy = Tensor::from_vec(dev, &[2, 3, 1, 1], vec![20.0; 6]).unwrap();
    assert_eq!(avgpool_global_backward(&dy, &[2, 3, 5, 4]).unwrap().to_vec().unwrap(), vec![1.0; 120]);
}
test_device!(avgpool_global, global);

/// Adaptive pooling (PyTorch's AdaptiveAvgPool2d) down and up: values and
/// gradients from PyTorch 2.15 (`adaptive_avg_pool2d` of arange(35) as 5×7,
/// backward of sum(y · arange)), and backward as the adjoint on random data.
fn adaptive(dev: &Device) {
    use wgpu_cnn::ops::avgpool::{avgpool_adaptive_backward, avgpool_adaptive_forward};
    let x: Vec<f32> = (0..35).map(|v| v as f32).collect();
    let xt = Tensor::from_slice(dev, &[1, 1, 5, 7], &x).unwrap();
    let down_y = [4.0, 5.5, 7.5, 9.0, 14.5, 16.0, 18.0, 19.5, 25.0, 26.5, 28.5, 30.0];
    #[rustfmt::skip]
    let down_g = [0.0, 0.166667, 0.166667, 0.5, 0.333333, 1.083333, 0.75, 0.666667, 1.388889, 0.722222, 1.722222, 1.0, 2.916667, 1.916667, 0.666667, 1.222222, 0.555556, 1.222222, 0.666667, 1.833333, 1.166667, 2.666667, 4.722222, 2.055556, 4.388889, 2.333333, 6.25, 3.916667, 2.0, 3.5, 1.5, 3.166667, 1.666667, 4.416667, 2.75];
    #[rustfmt::skip]
    let up_y = [0.0, 0.5, 1.5, 2.5, 3.0, 3.5, 4.5, 5.5, 6.0, 3.5, 4.0, 5.0, 6.0, 6.5, 7.0, 8.0, 9.0, 9.5, 10.5, 11.0, 12.0, 13.0, 13.5, 14.0, 15.0, 16.0, 16.5, 14.0, 14.5, 15.5, 16.5, 17.0, 17.5, 18.5, 19.5, 20.0, 17.5, 18.0, 19.0, 20.0, 20.5, 21.0, 22.0, 23.0, 23.5, 24.5, 25.0, 26.0, 27.0, 27.5, 28.0, 29.0, 30.0, 30.5, 28.0, 28.5, 29.5, 30.5, 31.0, 31.5, 32.5, 33.5, 34.0];
    #[rustfmt::skip]
    let up_g = [7.5, 6.75, 8.25, 21.0, 12.75, 14.25, 24.0, 20.75, 15.0, 16.0, 35.0, 19.0, 20.0, 31.75, 82.0, 57.0, 59.0, 124.0, 65.0, 67.0, 104.0, 61.25, 42.0, 43.0, 89.0, 46.0, 47.0, 72.25, 115.5, 78.75, 80.25, 165.0, 84.75, 86.25, 132.0];
    for (out, want_y, want_g) in [([3, 4], &down_y[..], &down_g[..]), ([7, 9], &up_y[..], &up_g[..])] {
        let what = format!("adaptive avgpool 5×7 → {out:?} on {dev}");
        let y = avgpool_adaptive_forward(&xt, out).unwrap();
        assert_eq!(y.shape(), [1, 1, out[0], out[1]]);
        Tolerance::new(1e-5, 1e-6).assert(&what, &y.to_vec().unwrap(), want_y);
        let w: Vec<f32> = (0..out[0] * out[1]).map(|v| v as f32).collect();
        let g = avgpool_adaptive_backward(&Tensor::from_slice(dev, &[1, 1, out[0], out[1]], &w).unwrap(), &[1, 1, 5, 7], out).unwrap();
        Tolerance::new(1e-5, 1e-5).assert(&format!("{what}, backward"), &g.to_vec().unwrap(), want_g);
    }
    for (i, (shape, out)) in [([2, 3, 9, 6], [4, 4]), ([1, 2, 7, 7], [7, 7]), ([3, 1, 5, 5], [1, 1]), ([1, 1, 3, 4], [8, 5])].into_iter().enumerate() {
        let x = random(200 + i as u64, shape.iter().product());
        let y = avgpool_adaptive_forward(&Tensor::from_slice(dev, &shape, &x).unwrap(), out).unwrap().to_vec().unwrap();
        let dy = random(300 + i as u64, y.len());
        let dx = avgpool_adaptive_backward(&Tensor::from_slice(dev, &[shape[0], shape[1], out[0], out[1]], &dy).unwrap(), &shape, out).unwrap().to_vec().unwrap();
        assert_adjoint(&format!("adaptive avgpool {shape:?} → {out:?} on {dev}"), &y, &dy, &x, &dx);
    }
    assert!(avgpool_adaptive_forward(&xt, [0, 2]).is_err(), "a 0×2 output");
    assert!(avgpool_adaptive_forward(&Tensor::zeros(dev, &[5, 7]).unwrap(), [2, 2]).is_err(), "a 2-D input");
}
test_device!(avgpool_adaptive, adaptive);
