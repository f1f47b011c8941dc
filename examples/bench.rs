//! One command, one table: each op on the GPU and on the CPU path, measured
//! side by side in the same run.
//!
//!     cargo run --release --example bench            # table
//!     cargo run --release --example bench -- --json  # one JSON object per row
use std::time::{Duration, Instant};

use clap::Parser;
use wgpu_cnn::ops::gemm::{gemm_into, GemmConfig, GemmShape};
use wgpu_cnn::{Device, GemmVariant, Tensor};

#[derive(Parser)]
#[command(about = "Benchmark wgpu-cnn ops on the GPU and the CPU path, side by side")]
struct Args {
    /// Square GEMM sizes (default: 128,256,512, plus 1024..4096 on a hardware GPU).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Seconds to spend timing each row (after warm-up).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print one JSON object per row instead of the table.
    #[arg(long)]
    json: bool,
    /// Skip the GPU (time the CPU path only).
    #[arg(long)]
    cpu_only: bool,
}

/// Median seconds per call of `f`, after two warm-up calls.
fn time(budget: f64, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || (start.elapsed() < Duration::from_secs_f64(budget) && samples.len() < 1000) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn filled(dev: &Device, n: usize, seed: usize) -> Tensor {
    Tensor::from_vec(dev, &[n, n], (0..n * n).map(|i| ((i * 7 + seed * 13) % 17) as f32 / 17.0 - 0.5).collect()).unwrap()
}

fn main() -> wgpu_cnn::Result<()> {
    env_logger::init();
    let args = Args::parse();
    let gpu = if args.cpu_only { None } else { Some(Device::gpu()?) };
    let real_gpu = gpu.as_ref().is_some_and(|d| !d.gpu_context().unwrap().adapter().is_software());
    let sizes = args.sizes.clone().unwrap_or(if real_gpu { vec![128, 256, 512, 1024, 2048, 4096] } else { vec![128, 256, 512] });
    if !args.json {
        println!("adapter: {}", gpu.as_ref().map_or("none (--cpu-only)".to_string(), |d| d.to_string()));
        println!("{:<6} {:<16} {:<14} {:>11} {:>10} {:>8}", "op", "shape", "device", "time", "GFLOP/s", "GPU/CPU");
    }
    for n in sizes {
        let flops = GemmShape { batch: 1, m: n, n, k: n, a_batched: false, b_batched: false }.flops();
        let mut rows: Vec<(String, f64)> = Vec::new();
        // The CPU twin is O(n³) too; above 2048 it takes too long to be worth the wait.
        if n <= 2048 {
            let (a, b, mut c) = (filled(&Device::Cpu, n, 1), filled(&Device::Cpu, n, 2), filled(&Device::Cpu, n, 3));
            rows.push(("cpu".into(), time(args.seconds, || gemm_into(&a, &b, &mut c, GemmConfig::default()).unwrap())));
        }
        if let Some(dev) = &gpu {
            let ctx = dev.gpu_context().unwrap();
            for variant in [GemmVariant::Blocked, GemmVariant::Tiled] {
                // Barrier-heavy tiles crawl on a CPU adapter; see shaders/gemm.wgsl.
                if !real_gpu && variant == GemmVariant::Tiled && n > 256 {
                    continue;
                }
                let (a, b, mut c) = (filled(dev, n, 1), filled(dev, n, 2), filled(dev, n, 3));
                let cfg = GemmConfig { variant: Some(variant), ..GemmConfig::default() };
                let t = time(args.seconds, || {
                    gemm_into(&a, &b, &mut c, cfg).unwrap();
                    dev.synchronize().unwrap();
                });
                let chosen = if variant == ctx.gemm_variant() { "*" } else { "" };
                rows.push((format!("gpu-{variant:?}{chosen}").to_lowercase(), t));
            }
        }
        let cpu_time = rows.iter().find(|(d, _)| d == "cpu").map(|(_, t)| *t);
        for (device, t) in &rows {
            let ratio = match (cpu_time, device.starts_with("gpu")) {
                (Some(c), true) => format!("{:.2}x", c / t),
                _ => "-".into(),
            };
            let gflops = flops / t / 1e9;
            if args.json {
                println!(
                    "{{\"op\":\"gemm\",\"shape\":[{n},{n},{n}],\"device\":\"{device}\",\"seconds\":{t:.6e},\"gflops\":{gflops:.3},\"gpu_over_cpu\":\"{ratio}\"}}"
                );
            } else {
                println!("{:<6} {:<16} {:<14} {:>9.3}ms {:>10.2} {:>8}", "gemm", format!("{n}x{n}x{n}"), device, t * 1e3, gflops, ratio);
            }
        }
    }
    if !args.json && gpu.is_some() {
        println!("(* = the kernel this adapter uses by default; GPU/CPU = CPU time / GPU time)");
    }
    Ok(())
}
