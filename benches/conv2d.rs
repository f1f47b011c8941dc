//! Convolution forward and backward, GPU and CPU side by side.
//! Criterion's "elem/s" is FLOP/s: forward counts 2·N·C_out·OH·OW·(C_in/g·kH·kW),
//! backward twice that (dW and dX are one GEMM each).
//!
//! Napkin math: LeNet conv2 at batch 64 is 2·64·16·100·150 = 31 MFLOP over
//! 64·6·14·14 + 2400 inputs; CIFAR 3×3 32→32 at 32×32 is 1.2 GFLOP per image
//! batch of 64: compute-bound on every device once the columns fit in cache.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_cnn::ops::conv2d::{conv2d_backward, conv2d_forward};
use wgpu_cnn::{Conv2dConfig, Conv2dGeometry, Device, Tensor};

struct Shape {
    name: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    cfg: Conv2dConfig,
}

fn shapes(batch: usize) -> Vec<Shape> {
    let d = Conv2dConfig::default;
    vec![
        Shape { name: "lenet_conv1", x: [batch, 1, 28, 28], w: [6, 1, 5, 5], cfg: d().padding(2) },
        Shape { name: "lenet_conv2", x: [batch, 6, 14, 14], w: [16, 6, 5, 5], cfg: d() },
        Shape { name: "cifar_3x3_32", x: [batch, 32, 32, 32], w: [32, 32, 3, 3], cfg: d().padding(1) },
        Shape { name: "pointwise_64", x: [batch, 64, 16, 16], w: [64, 64, 1, 1], cfg: d() },
    ]
}

fn filled(dev: &Device, shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(dev, shape, (0..n).map(|i| ((i * 31 + seed * 17) % 23) as f32 / 23.0 - 0.5).collect()).unwrap()
}

fn conv2d(c: &mut Criterion) {
    let gpu = Device::gpu().map_err(|e| eprintln!("conv2d bench: GPU skipped ({e})")).ok();
    let software = gpu.as_ref().is_none_or(|d| d.gpu_context().unwrap().adapter().is_software());
    // Lavapipe runs ~1 GFLOP/s: a smaller batch keeps a sample under a second.
    let batch = if software { 8 } else { 64 };
    let mut devices = vec![("cpu", Device::Cpu)];
    devices.extend(gpu.map(|d| ("gpu", d)));
    for (phase, flop_factor) in [("forward", 1.0), ("backward", 2.0)] {
        let mut group = c.benchmark_group(format!("conv2d_{phase}"));
        group.sample_size(10);
        for s in shapes(batch) {
            let geo = Conv2dGeometry::new(&s.x, &s.w, s.cfg).unwrap();
            group.throughput(Throughput::Elements((geo.flops() * flop_factor) as u64));
            for (name, dev) in &devices {
                let (x, w, b) = (filled(dev, &s.x, 1), filled(dev, &s.w, 2), filled(dev, &[s.w[0]], 3));
                let dy = filled(dev, &geo.output_shape(), 4);
                group.bench_function(BenchmarkId::new(*name, format!("{}_b{batch}", s.name)), |bench| {
                    bench.iter(|| {
                        if phase == "forward" {
                            drop(conv2d_forward(&x, &w, Some(&b), s.cfg).unwrap());
                        } else {
                            drop(conv2d_backward(&x, &w, &dy, s.cfg, true).unwrap());
                        }
                        dev.synchronize().unwrap(); // GPU work finishes inside the timed region
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, conv2d);
criterion_main!(benches);
