//! Max and average pooling, GPU and CPU side by side. Criterion's "bytes/s"
//! counts the bytes the op must move: forward reads x and writes y (+ the u32
//! mask for max); backward reads dy (+ mask) and writes dx.
//!
//! Napkin math: 2×2 stride-2 pooling of [64, 16, 28, 28] reads 3.2 MB and
//! writes 0.8 MB (+0.8 MB mask): memory-bound, so GB/s is the figure.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_cnn::ops::avgpool::{avgpool_backward, avgpool_forward};
use wgpu_cnn::ops::maxpool::{maxpool_backward, maxpool_forward};
use wgpu_cnn::{Device, Pool2dConfig, Tensor};

fn pool(c: &mut Criterion) {
    let gpu = Device::gpu().map_err(|e| eprintln!("pool bench: GPU skipped ({e})")).ok();
    let mut devices = vec![("cpu", Device::Cpu)];
    devices.extend(gpu.map(|d| ("gpu", d)));
    let shape = [64, 16, 28, 28];
    let n: usize = shape.iter().product();
    let cfgs = [("k2s2", Pool2dConfig::new(2)), ("k3s2p1", Pool2dConfig::new(3).stride(2).padding(1))];
    for op in ["maxpool", "avgpool"] {
        let mut group = c.benchmark_group(op);
        group.sample_size(10);
        for (cname, cfg) in cfgs {
            for (dname, dev) in &devices {
                let x = Tensor::from_vec(dev, &shape, (0..n).map(|i| ((i * 13) % 29) as f32).collect()).unwrap();
                let (y, mask) = maxpool_forward(&x, cfg).unwrap();
                let out_n = y.numel();
                let dy = Tensor::full(dev, y.shape(), 1.0).unwrap();
                let mask_bytes = if op == "maxpool" { out_n * 4 } else { 0 };
                group.throughput(Throughput::Bytes(((n + out_n) * 4 + mask_bytes) as u64));
                group.bench_function(BenchmarkId::new(format!("{dname}_forward"), cname), |b| {
                    b.iter(|| {
                        if op == "maxpool" {
                            drop(maxpool_forward(&x, cfg).unwrap());
                        } else {
                            drop(avgpool_forward(&x, cfg).unwrap());
                        }
                        dev.synchronize().unwrap();
                    })
                });
                group.bench_function(BenchmarkId::new(format!("{dname}_backward"), cname), |b| {
                    b.iter(|| {
                        if op == "maxpool" {
                            drop(maxpool_backward(&dy, &mask, &shape, cfg).unwrap());
                        } else {
                            drop(avgpool_backward(&dy, &shape, cfg).unwrap());
                        }
                        dev.synchronize().unwrap();
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, pool);
criterion_main!(benches);
