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
