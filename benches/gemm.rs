//! GEMM throughput, GPU kernels and the ndarray CPU twin side by side.
//! Criterion's "elem/s" here is FLOP/s: each iteration is counted as 2·n³ elements.
//!
//! Napkin math: n³ multiply-adds (2·n³ FLOP) over 3·n² floats moved; at
//! n = 512 that is 268 MFLOP per call against 3 MiB, so it is compute-bound
//! everywhere and GFLOP/s is the figure to watch.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_cnn::ops::gemm::{gemm_into, GemmConfig};
use wgpu_cnn::{Device, GemmVariant, Tensor};

fn square(dev: &Device, n: usize, seed: u32) -> Tensor {
    let data: Vec<f32> = (0..n * n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / (1u32 << 24) as f32 - 0.5).collect();
    Tensor::from_vec(dev, &[n, n], data).unwrap()
}

fn gemm(c: &mut Criterion) {
    let gpu = match Device::gpu() {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("gemm bench: GPU skipped ({e})");
            None
        }
    };
    let software = gpu.as_ref().is_some_and(|d| d.gpu_context().unwrap().adapter().is_software());
    if let Some(d) = &gpu {
        eprintln!("gemm bench on {d}");
    }
    let sizes: &[usize] = if gpu.is_some() && !software { &[128, 256, 512, 1024, 2048, 4096] } else { &[128, 256, 512] };
    let mut group = c.benchmark_group("gemm");
    group.sample_size(10);
    for &n in sizes {
        group.throughput(Throughput::Elements(2 * (n as u64).pow(3)));
        if n <= 1024 {
            let (a, b, mut out) = (square(&Device::Cpu, n, 1), square(&Device::Cpu, n, 2), square(&Device::Cpu, n, 3));
            group.bench_function(BenchmarkId::new("cpu", n), |bench| bench.iter(|| gemm_into(&a, &b, &mut out, GemmConfig::default()).unwrap()));
        }
        let Some(dev) = &gpu else { continue };
        for variant in [GemmVariant::Blocked, GemmVariant::Tiled] {
            // The tiled kernel is barrier-heavy: ~0.2 GFLOP/s on lavapipe, minutes per sample at 512.
            if software && variant == GemmVariant::Tiled && n > 256 {
                continue;
            }
            let (a, b, mut out) = (square(dev, n, 1), square(dev, n, 2), square(dev, n, 3));
            let cfg = GemmConfig { variant: Some(variant), ..GemmConfig::default() };
            let id = BenchmarkId::new(format!("gpu_{variant:?}").to_lowercase(), n);
            group.bench_function(id, |bench| {
                bench.iter(|| {
                    gemm_into(&a, &b, &mut out, cfg).unwrap();
                    dev.synchronize().unwrap(); // wait for the GPU inside the timed region
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
