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
    /// Skip the CPU rows (time the GPU path only).
    #[arg(long, conflicts_with = "cpu_only")]
    gpu_only: bool,
    /// Skip the training-step table.
    #[arg(long)]
    no_train: bool,
    /// Training-step models to run: lenet5, vgg_small, resnet20.
    #[arg(long, value_delimiter = ',', default_value = "lenet5,vgg_small,resnet20")]
    models: Vec<String>,
    /// Skip the GEMM table.
    #[arg(long)]
    no_gemm: bool,
    /// Sleep this long before each step whose host time is measured (a host
    /// that sat idle, or ran other work, while the GPU worked: colder caches).
    #[arg(long, default_value_t = 0)]
    idle_ms: u64,
}

/// Training-step rows: model, device, build (model + trainer), first step
/// (on the GPU it builds every pipeline first: see `Trainer::prepare`),
/// median step, and on the GPU the host side of one steady step: dispatches,
/// compute passes, bind groups created, queue writes (and bytes) and the host
/// time to record and submit it (timed around `train_step`, which ends in the
/// submit; the wait for the GPU is outside), median over steps.
fn train_steps(devices: &[(&str, Device)], seconds: f64, json: bool, models: &[String], idle: Duration) -> wgpu_cnn::Result<()> {
    use wgpu_cnn::nn::{models, Init, Initializer};
    use wgpu_cnn::ops::optim::SgdConfig;
    use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
    use wgpu_cnn::train::{TrainConfig, Trainer};
    if !json {
        println!(
            "\n{:<18} {:<8} {:>9} {:>11} {:>10} {:>9} | {:>6} {:>6} {:>6} {:>6} {:>9} {:>9}",
            "train step (b64)", "device", "build", "first step", "step", "images/s", "disp", "passes", "bgs", "writes", "bytes up", "host µs"
        );
    }
    type Build = fn(&Device, &mut Initializer) -> wgpu_cnn::Result<wgpu_cnn::nn::Sequential>;
    let nets: [(&str, Build, [usize; 3]); 3] =
        [("lenet5", models::lenet5, [1, 28, 28]), ("vgg_small", models::vgg_small, [3, 32, 32]), ("resnet20", models::resnet20, [3, 32, 32])];
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
            let host = host_side(dev, idle, || t.train_step(&x, &labels).map(drop))?;
            if json {
                let h = host.map_or(String::new(), |(c, us)| {
                    format!(
                        ",\"dispatches_per_step\":{},\"passes_per_step\":{},\"bind_groups_per_step\":{},\"queue_writes_per_step\":{},\"bytes_uploaded_per_step\":{},\"submits_per_step\":{},\"host_us_per_step\":{us:.1}",
                        c.dispatches, c.passes, c.bind_groups, c.queue_writes, c.bytes_uploaded, c.submits
                    )
                });
                println!("{{\"op\":\"train_step\",\"model\":\"{name}\",\"batch\":64,\"device\":\"{dname}\",\"build_s\":{built:.4},\"first_step_s\":{first:.4},\"step_s\":{step:.6},\"images_per_s\":{:.1}{h}}}", 64.0 / step);
            } else {
                let h = host.map_or(format!("{:>6} {:>6} {:>6} {:>6} {:>9} {:>9}", "-", "-", "-", "-", "-", "-"), |(c, us)| {
                    format!("{:>6} {:>6} {:>6} {:>6} {:>9} {:>9.0}", c.dispatches, c.passes, c.bind_groups, c.queue_writes, c.bytes_uploaded, us)
                });
                println!("{:<18} {:<8} {:>7.1}ms {:>9.1}ms {:>8.2}ms {:>9.0} | {h}", name, dname, built * 1e3, first * 1e3, step * 1e3, 64.0 / step);
            }
        }
    }
    Ok(())
}

/// On the GPU: what one steady step asks of wgpu (the counters of the last
/// of 15 steps) and the median host time to record and submit it, in µs.
fn host_side(dev: &Device, idle: Duration, mut step: impl FnMut() -> wgpu_cnn::Result<()>) -> wgpu_cnn::Result<Option<(wgpu_cnn::HostCounters, f64)>> {
    let Some(ctx) = dev.gpu_context() else { return Ok(None) };
    let (mut times, mut per_step) = (Vec::new(), Default::default());
    for _ in 0..15 {
        dev.synchronize()?;
        std::thread::sleep(idle);
        let before = ctx.host_counters();
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        per_step = ctx.host_counters() - before;
    }
    dev.synchronize()?;
    times.sort_by(f64::total_cmp);
    Ok(Some((per_step, times[times.len() / 2])))
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

#[path = "common/mod.rs"]
mod common;

fn main() -> std::process::ExitCode {
    common::main_with((), |_| run())
}

fn run() -> wgpu_cnn::Result<()> {
    let args = Args::parse();
    let gpu = if args.cpu_only {
        None
    } else {
        Some(Device::gpu().map_err(|e| wgpu_cnn::Error::NoAdapter(format!("{e} (or pass --cpu-only to time the CPU path alone)")))?)
    };
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
        if n <= 2048 && !args.gpu_only {
            let (a, b, mut c) = (filled(&Device::Cpu, n, 1), filled(&Device::Cpu, n, 2), filled(&Device::Cpu, n, 3));
            rows.push(("cpu".into(), time(args.seconds, || gemm_into(&a, &b, &mut c, GemmConfig::default()).unwrap())));
        }
        if let Some(dev) = &gpu {
            let ctx = dev.gpu_context().unwrap();
            // Each kernel the tuner may choose, forced; then `tuned`, what a GEMM gets.
            let variants: Vec<Option<GemmVariant>> = GemmVariant::ALL.into_iter().map(Some).chain([None]).collect();
            for variant in variants {
                let tiled = matches!(variant, Some(GemmVariant::Tiled | GemmVariant::Tiled32 | GemmVariant::TiledK32 | GemmVariant::Tiled128));
                // Barrier-heavy tiles crawl on a CPU adapter; see shaders/gemm.wgsl.
                if !real_gpu && tiled && n > 256 {
                    continue;
                }
                let (a, b, mut c) = (filled(dev, n, 1), filled(dev, n, 2), filled(dev, n, 3));
                let cfg = GemmConfig { variant, ..GemmConfig::default() };
                let t = time(args.seconds, || {
                    gemm_into(&a, &b, &mut c, cfg).unwrap();
                    dev.synchronize().unwrap();
                });
                let name = variant.map_or("tuned", |v| v.name());
                let chosen = if variant == Some(ctx.gemm_variant()) { "*" } else { "" };
                rows.push((format!("gpu-{name}{chosen}"), t));
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
        println!("(* = the adapter's kernel without tuning; tuned = what a GEMM gets, the fastest per shape class; GPU/CPU = CPU time / GPU time)");
    }
    if !args.no_train {
        let mut devices = if args.gpu_only { vec![] } else { vec![("cpu", Device::Cpu)] };
        devices.extend(gpu.map(|g| ("gpu", g)));
        train_steps(&devices, args.seconds, args.json, &args.models, Duration::from_millis(args.idle_ms))?;
    }
    Ok(())
}
