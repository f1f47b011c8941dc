//! Max pooling: values and argmax indices exactly equal on every device and to
//! an oracle; ties go to the first maximum; padding never wins; backward is
//! the adjoint of the forward's selection.

use wgpu_cnn::ops::maxpool::{maxpool_backward, maxpool_backward_relu, maxpool_backward_relu_half, maxpool_forward};
use wgpu_cnn::{Device, Pool2dConfig, Pool2dGeometry, Tensor};

use crate::harness::{assert_adjoint, random};
use crate::test_device;

/// Oracle from the definition: scan the padded window in row-major order,
/// skip positions outside the input, keep the first strict maximum.
fn oracle(x: &[f32], g: &Pool2dGeometry) -> (Vec<f32>, Vec<u32>) {
    let (mut y, mut arg) = (Vec::new(), Vec::new());
    for plane in 0..g.n * g.c {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let mut best: Option<(f32, u32)> = None;
                for ki in 0..g.cfg.kernel[0] {
                    for kj in 0..g.cfg.kernel[1] {
                        let iy = (oy * g.cfg.stride[0] + ki) as isize - g.cfg.padding[0] as isize;
                        let ix = (ox * g.cfg.stride[1] + kj) as isize - g.cfg.padding[1] as isize;
                        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                            continue;
                        }
                        let i = iy as usize * g.w + ix as usize;
                        let v = x[plane * g.h * g.w + i];
                        if best.is_none_or(|(b, _)| v > b) {
                            best = Some((v, i as u32));
                        }
                    }
                }
                let (v, i) = best.expect("every window holds an input element");
                y.push(v);
                arg.push(i);
            }
        }
    }
    (y, arg)
}

pub fn configs() -> Vec<([usize; 4], Pool2dConfig)> {
    let p = Pool2dConfig::new;
    vec![
        ([2, 3, 8, 8], p(2)),
        ([1, 2, 9, 7], p(3).stride(2)),                    // overlapping windows
        ([2, 1, 7, 9], p(3).stride(2).padding(1)),
        ([1, 2, 5, 5], p(2).ceil_mode(true)),              // a last, partial window
        ([1, 1, 6, 7], p(3).stride(2).padding(1).ceil_mode(true)),
        ([2, 2, 5, 6], Pool2dConfig { kernel: [2, 3], stride: [1, 2], padding: [1, 1], ceil_mode: false, count_include_pad: true }),
        ([1, 3, 4, 4], p(4)),                              // global
    ]
}

fn forward_backward(dev: &Device, data: impl Fn(u64, usize) -> Vec<f32>) {
    for (i, (shape, cfg)) in configs().into_iter().enumerate() {
        let g = Pool2dGeometry::new("maxpool", &shape, cfg).unwrap();
        let x = data(i as u64, shape.iter().product());
        let (y_ref, arg_ref) = oracle(&x, &g);
        let xt = Tensor::from_slice(dev, &shape, &x).unwrap();
        let (y, mask) = maxpool_forward(&xt, cfg).unwrap();
        assert_eq!(y.shape(), g.output_shape());
        assert_eq!(y.to_vec().unwrap(), y_ref, "maxpool values, config {i} on {dev}");
        assert_eq!(mask.to_vec().unwrap(), arg_ref, "maxpool argmax, config {i} on {dev}");
        let dy = random(50 + i as u64, y_ref.len());
        let dx = maxpool_backward(&Tensor::from_slice(dev, &g.output_shape(), &dy).unwrap(), &mask, &shape, cfg).unwrap();
        assert_eq!(dx.shape(), shape);
        let dx = dx.to_vec().unwrap();
        assert_adjoint(&format!("maxpool backward config {i} on {dev}"), &y_ref, &dy, &x, &dx);
        let cpu_dx = {
            let (_, m) = maxpool_forward(&Tensor::from_slice(&Device::Cpu, &shape, &x).unwrap(), cfg).unwrap();
            maxpool_backward(&Tensor::from_slice(&Device::Cpu, &g.output_shape(), &dy).unwrap(), &m, &shape, cfg).unwrap().to_vec().unwrap()
        };
        assert_eq!(dx, cpu_dx, "maxpool backward CPU vs {dev}, config {i}");
    }
}

fn random_data(dev: &Device) {
    forward_backward(dev, random);
}
test_device!(maxpool_parity, random_data);

/// Few distinct values: ties everywhere, so the first-maximum rule decides.
fn ties(dev: &Device) {
    forward_backward(dev, |seed, n| random(seed, n).iter().map(|v| (v * 2.0).round()).collect());
    let (_, mask) = maxpool_forward(&Tensor::full(dev, &[1, 1, 4, 4], 3.0).unwrap(), Pool2dConfig::new(2)).unwrap();
    assert_eq!(mask.to_vec().unwrap(), vec![0, 2, 8, 10], "all equal: the top-left of each window");
}
test_device!(maxpool_ties_pick_first, ties);

/// All inputs negative with padding: the zero padding must never win.
fn negative_with_padding(dev: &Device) {
    let x: Vec<f32> = random(9, 2 * 25).iter().map(|v| -1.0 - v.abs()).collect();
    let (y, _) = maxpool_forward(&Tensor::from_slice(dev, &[2, 1, 5, 5], &x).unwrap(), Pool2dConfig::new(3).stride(2).padding(1)).unwrap();
    assert!(y.to_vec().unwrap().iter().all(|&v| v < -1.0 + 1e-6 && v >= -2.0), "padding leaked into max pooling");
    forward_backward(dev, |seed, n| random(seed, n).iter().map(|v| -1.0 - v.abs()).collect());
}
test_device!(maxpool_padding_never_wins, negative_with_padding);

/// Overlapping windows that choose the same element add their gradients.
fn overlapping_sum(dev: &Device) {
    let mut x = vec![0f32; 25];
    x[12] = 9.0; // the centre of a 5×5 plane: every 3×3 stride-1 window contains it
    let cfg = Pool2dConfig::new(3).stride(1);
    let (_, mask) = maxpool_forward(&Tensor::from_slice(dev, &[1, 1, 5, 5], &x).unwrap(), cfg).unwrap();
    let dy = Tensor::from_vec(dev, &[1, 1, 3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
    let dx = maxpool_backward(&dy, &mask, &[1, 1, 5, 5], cfg).unwrap().to_vec().unwrap();
    assert_eq!(dx[12], 45.0);
    assert_eq!(dx.iter().sum::<f32>(), 45.0);
}
test_device!(maxpool_overlapping_windows_sum, overlapping_sum);

/// The fused ReLU backward: exactly max-pool backward, then zero where the
/// pooling's input (the ReLU's output) is not positive; the CPU path and the
/// GPU agree bit for bit.
fn relu_fused(dev: &Device) {
    let mut masked = 0;
    for (i, cfg) in [Pool2dConfig::new(2), Pool2dConfig::new(3).stride(2).padding(1), Pool2dConfig::new(3).stride(1)].into_iter().enumerate() {
        let shape = [3, 4, 9, 7];
        // A ReLU's output: about half zeros, so whole windows are zero too.
        let x: Vec<f32> = random(90 + i as u64, shape.iter().product()).iter().map(|v| v.max(0.0)).collect();
        let xt = Tensor::from_slice(dev, &shape, &x).unwrap();
        let (y, mask) = maxpool_forward(&xt, cfg).unwrap();
        let dy = Tensor::from_slice(dev, y.shape(), &random(95 + i as u64, y.numel())).unwrap();
        let fused = maxpool_backward_relu(&dy, &mask, &xt, cfg).unwrap().to_vec().unwrap();
        let plain = maxpool_backward(&dy, &mask, &shape, cfg).unwrap().to_vec().unwrap();
        let want: Vec<f32> = plain.iter().zip(&x).map(|(g, v)| if *v > 0.0 { *g } else { 0.0 }).collect();
        assert_eq!(fused, want, "maxpool_backward_relu config {i} on {dev}");
        masked += fused.iter().zip(&plain).filter(|(f, p)| **f == 0.0 && **p != 0.0).count();
        // The ReLU's output kept in f16 (mixed precision), with positives that
        // are subnormal halves and ones that round to zero: the same as from
        // the rounded values, bit for bit.
        let tiny: Vec<f32> = x.iter().enumerate().map(|(j, v)| v * [1.0, 1e-6, 1e-9][j % 3]).collect();
        let ht = Tensor::from_slice(dev, &shape, &tiny).unwrap().to_half().unwrap();
        let half = maxpool_backward_relu_half(&dy, &mask, &ht, cfg).unwrap().to_vec().unwrap();
        let rounded = maxpool_backward_relu(&dy, &mask, &ht.to_f32().unwrap(), cfg).unwrap().to_vec().unwrap();
        assert_eq!(half, rounded, "maxpool_backward_relu from f16, config {i} on {dev}");
    }
    assert!(masked > 0, "the ReLU mask must have zeroed some gradient");
    let xt = Tensor::zeros(dev, &[1, 1, 4, 4]).unwrap();
    let (y, mask) = maxpool_forward(&xt, Pool2dConfig::new(2)).unwrap();
    let e = maxpool_backward_relu(&y, &mask, &Tensor::zeros(dev, &[1, 1, 6, 6]).unwrap(), Pool2dConfig::new(2)).unwrap_err().to_string();
    assert!(e.contains("maxpool_backward_relu"), "{e}");
}
test_device!(maxpool_backward_relu_fused, relu_fused);

fn bad_input(dev: &Device) {
    let x = Tensor::zeros(dev, &[1, 1, 4, 4]).unwrap();
    let err = |cfg| maxpool_forward(&x, cfg).err().expect("expected an error").to_string();
    assert!(err(Pool2dConfig::new(3).padding(2)).contains("at most half the kernel"));
    assert!(err(Pool2dConfig::new(2).stride(0)).contains("must be positive"));
    assert!(err(Pool2dConfig::new(5)).contains("larger than the padded input"));
    let (_, mask) = maxpool_forward(&x, Pool2dConfig::new(2)).unwrap();
    let e = maxpool_backward(&Tensor::zeros(dev, &[1, 1, 3, 3]).unwrap(), &mask, &[1, 1, 4, 4], Pool2dConfig::new(2)).unwrap_err();
    assert!(e.to_string().contains("dy has shape [1, 1, 3, 3], expected [1, 1, 2, 2]"), "{e}");
}
test_device!(maxpool_bad_input, bad_input);

#[test]
fn ceil_mode_output_size_matches_pytorch() {
    // torch.nn.MaxPool2d(k, s, p, ceil_mode=True) output sizes, worked by hand.
    for (h, k, s, p, want) in [(5, 2, 2, 0, 3), (6, 3, 2, 1, 4), (7, 3, 2, 1, 4), (4, 2, 3, 0, 2), (5, 3, 3, 1, 2)] {
        let g = Pool2dGeometry::new("maxpool", &[1, 1, h, h], Pool2dConfig::new(k).stride(s).padding(p).ceil_mode(true)).unwrap();
        assert_eq!(g.oh, want, "h {h} k {k} s {s} p {p}");
    }
}
