//! Batch-norm, softmax cross-entropy and optimiser steps, GPU and CPU side by
//! side. These are memory-bound; criterion's "bytes/s" counts what each must move.
//!
//! Napkin math:
//! - batchnorm forward on [64, 32, 28, 28] (6.4 MB): stats read x twice, normalise
//!   reads x and writes y: ~4 passes, 25.7 MB. Backward: reduce reads x and dy,
//!   dx reads x and dy and writes dx: ~5 passes, 32 MB.
//! - softmax_xent on [1024, 1000]: reads the logits, writes the gradient: 8.2 MB.
//! - sgd step (momentum) on 1M parameters: reads p, g, buf, writes p, buf: 20 MB.
//! - adam step on 1M parameters: reads p, g, m, v, writes p, m, v: 28 MB.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_cnn::ops::batchnorm::{batchnorm_backward, batchnorm_forward_train, Affine, BatchNormConfig};
use wgpu_cnn::ops::optim::{optim_adam_step, optim_sgd_step, AdamConfig, SgdConfig};
use wgpu_cnn::ops::softmax_xent::{softmax_xent, CrossEntropyConfig};
use wgpu_cnn::{Device, Tensor};

fn filled(dev: &Device, shape: &[usize], seed: usize) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(dev, shape, (0..n).map(|i| ((i * 31 + seed * 17) % 23) as f32 / 23.0 - 0.5).collect()).unwrap()
}

fn devices() -> Vec<(&'static str, Device)> {
    let mut v = vec![("cpu", Device::Cpu)];
    match Device::gpu() {
        Ok(d) => v.push(("gpu", d)),
        Err(e) => eprintln!("train_ops bench: GPU skipped ({e})"),
    }
    v
}

fn batchnorm(c: &mut Criterion) {
    let mut g = c.benchmark_group("batchnorm");
    g.sample_size(10);
    let shape = [64, 32, 28, 28];
    let bytes = shape.iter().product::<usize>() as u64 * 4;
    for (name, dev) in devices() {
        let (x, dy) = (filled(&dev, &shape, 1), filled(&dev, &shape, 2));
        let (gamma, beta) = (Tensor::full(&dev, &[32], 1.0).unwrap(), Tensor::zeros(&dev, &[32]).unwrap());
        let aff = Some(Affine { gamma: &gamma, beta: &beta });
        let mut running = Tensor::from_vec(&dev, &[2, 32], [vec![0.0; 32], vec![1.0; 32]].concat()).unwrap();
        let cfg = BatchNormConfig::default();
        g.throughput(Throughput::Bytes(4 * bytes));
        g.bench_function(BenchmarkId::new(name, "forward_64x32x28x28"), |b| {
            b.iter(|| {
                drop(batchnorm_forward_train(&x, aff, &mut running, cfg).unwrap());
                dev.synchronize().unwrap();
            })
        });
        let (_, stats) = batchnorm_forward_train(&x, aff, &mut running, cfg).unwrap();
        g.throughput(Throughput::Bytes(5 * bytes));
        g.bench_function(BenchmarkId::new(name, "backward_64x32x28x28"), |b| {
            b.iter(|| {
                drop(batchnorm_backward(&x, &dy, aff, &stats, &running, true, cfg).unwrap());
                dev.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

fn bench_softmax_xent(c: &mut Criterion) {
    let mut g = c.benchmark_group("softmax_xent");
    g.sample_size(10);
    let (n, classes) = (1024, 1000);
    let labels: Vec<i64> = (0..n as i64).map(|i| i % classes as i64).collect();
    g.throughput(Throughput::Bytes((2 * n * classes * 4) as u64));
    for (name, dev) in devices() {
        let x = filled(&dev, &[n, classes], 3);
        g.bench_function(BenchmarkId::new(name, "1024x1000"), |b| {
            b.iter(|| {
                drop(softmax_xent(&x, &labels, CrossEntropyConfig::default()).unwrap());
                dev.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

fn optim(c: &mut Criterion) {
    let mut g = c.benchmark_group("optim");
    g.sample_size(10);
    let n = 1 << 20;
    for (name, dev) in devices() {
        let grad = filled(&dev, &[n], 4);
        let (mut p, mut buf) = (filled(&dev, &[n], 5), Tensor::zeros(&dev, &[n]).unwrap());
        let sgd = SgdConfig { momentum: 0.9, ..SgdConfig::new(1e-3) };
        g.throughput(Throughput::Bytes(5 * n as u64 * 4));
        g.bench_function(BenchmarkId::new(name, "sgd_momentum_1M"), |b| {
            b.iter(|| {
                optim_sgd_step(&mut p, &grad, Some(&mut buf), false, &sgd).unwrap();
                dev.synchronize().unwrap();
            })
        });
        let (mut m, mut v) = (Tensor::zeros(&dev, &[n]).unwrap(), Tensor::zeros(&dev, &[n]).unwrap());
        g.throughput(Throughput::Bytes(7 * n as u64 * 4));
        g.bench_function(BenchmarkId::new(name, "adamw_1M"), |b| {
            b.iter(|| {
                optim_adam_step(&mut p, &grad, &mut m, &mut v, 1, &AdamConfig::adamw(1e-3)).unwrap();
                dev.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, batchnorm, bench_softmax_xent, optim);
criterion_main!(benches);
