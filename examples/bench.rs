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
    /// Skip the training-step table.
    #[arg(long)]
    no_train: bool,
    /// Training-step models to run (default: lenet5,vgg_small).
    #[arg(long, value_delimiter = ',', default_value = "lenet5,vgg_small")]
    models: Vec<String>,
    /// Skip the GEMM table.
    #[arg(long)]
    no_gemm: bool,
}

/// Training-step rows: (model, device, build = model + trainer with every
/// pipeline, first step, median step).
fn train_steps(devices: &[(&str, Device)], seconds: f64, json: bool, models: &[String]) -> wgpu_cnn::Result<()> {
    use wgpu_cnn::nn::{models, Init, Initializer};
    use wgpu_cnn::ops::optim::SgdConfig;
    use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
    use wgpu_cnn::train::{TrainConfig, Trainer};
    if !json {
        println!("\n{:<18} {:<14} {:>10} {:>12} {:>11} {:>10}", "train step (b64)", "device", "build", "first step", "step", "images/s");
    }
    type Build = fn(&Device, &mut Initializer) -> wgpu_cnn::Result<wgpu_cnn::nn::Sequential>;
    let nets: [(&str, Build, [usize; 3]); 2] = [("lenet5", models::lenet5, [1, 28, 28]), ("vgg_small", models::vgg_small, [3, 32, 32])];
    for (name, build, item) in nets.into_iter().filter(|n| models.iter().any(|m| m == n.0)) {
        for (dname, dev) in devices {
            let t_build = Instant::now();
            let model = build(dev, &mut Initializer::new(0, Init::PytorchDefault))?;
            let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.01) }))?;
            let mut t = Trainer::new(model, opt, TrainConfig { progress: false, ..TrainConfig::default() }, dev.clone())?;
            let built = t_build.elapsed().as_secs_f64();
            let n = 64 * item.iter().product::<usize>();
            let x = Tensor::from_vec(dev, &[64, item[0], item[1], item[2]], (0..n).map(|i| ((i * 7) % 13) as f32 / 13.0).collect())?;
            let labels: Vec<i64> = (0..64).map(|i| i % 10).collect();
            let t0 = Instant::now();
            t.train_step(&x, &labels)?;
            dev.synchronize()?;
            let first = t0.elapsed().as_secs_f64();
            let step = time(seconds, || {
                t.train_step(&x, &labels).unwrap();
                dev.synchronize().unwrap();
            });
            if json {
                println!("{{\"op\":\"train_step\",\"model\":\"{name}\",\"batch\":64,\"device\":\"{dname}\",\"build_s\":{built:.4},\"first_step_s\":{first:.4},\"step_s\":{step:.6},\"images_per_s\":{:.1}}}", 64.0 / step);
            } else {
                println!("{:<18} {:<14} {:>8.1}ms {:>10.1}ms {:>9.2}ms {:>10.0}", name, dname, built * 1e3, first * 1e3, step * 1e3, 64.0 / step);
            }
        }
    }
    Ok(())
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
    for n in if args.no_gemm { vec![] } else { sizes } {
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
    if !args.json && gpu.is_some() && !args.no_gemm {
        println!("(* = the kernel this adapter uses by default; GPU/CPU = CPU time / GPU time)");
    }
    if !args.no_train {
        let mut devices = vec![("cpu", Device::Cpu)];
        devices.extend(gpu.map(|g| ("gpu", g)));
        train_steps(&devices, args.seconds, args.json, &args.models)?;
    }
    Ok(())
}
