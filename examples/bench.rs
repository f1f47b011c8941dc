//! One command, one table: each op on the GPU and on the CPU path, measured
//! side by side in the same run.
//!
//!     cargo run --release --example bench            # table
//!     cargo run --release --example bench -- --json  # one JSON object per row
//!     # device memory of zoo models' training steps (peak_device_bytes, peak_live_bytes):
//!     cargo run --release --example bench -- --gpu-only --no-gemm --models resnet18,resnet50,vgg16 \
//!         --input 3x224x224 --batch 8 --steps 2 --json
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
    /// Training-step models to run: any built-in model (lenet5, vgg_small,
    /// resnet20, resnet18, resnet50, vgg16, ...).
    #[arg(long, value_delimiter = ',', default_value = "lenet5,vgg_small,resnet20")]
    models: Vec<String>,
    /// Input size CxHxW for the training steps (default: each model's own).
    #[arg(long)]
    input: Option<String>,
    /// Classes for the training steps (default: each model's own).
    #[arg(long)]
    classes: Option<usize>,
    /// Batch size of the training steps.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Time this many steady training steps (and take the host counters over
    /// as many) instead of `--seconds` worth: for large models on slow adapters.
    #[arg(long)]
    steps: Option<usize>,
    /// Skip the GEMM table.
    #[arg(long)]
    no_gemm: bool,
    /// Train the models' heads only (`nn::freeze_backbone`): what a
    /// fine-tuning step with a frozen backbone costs.
    #[arg(long)]
    freeze_backbone: bool,
    /// Train with dynamic loss scaling (`TrainConfig::loss_scale`): what it costs a step.
    #[arg(long)]
    loss_scale: bool,
    /// f32, or mixed (activations kept for backward in f16): the step's memory and time.
    #[arg(long, default_value = "f32")]
    precision: wgpu_cnn::nn::Precision,
    /// The longest wait for the GPU, in seconds (a VGG-16 step at 224² takes
    /// minutes on lavapipe).
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
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
/// submit; the wait for the GPU is outside), median over steps; and the
/// device memory: bytes of buffers the pool created by the end of the last
/// steady step (`peak_device_bytes`) and the most bytes of tensors alive at
/// once during the steady steps (`peak_live_bytes`).
fn train_steps(devices: &[(&str, Device)], args: &Args, idle: Duration) -> wgpu_cnn::Result<()> {
    use wgpu_cnn::nn::{models, Init, Initializer};
    use wgpu_cnn::ops::optim::SgdConfig;
    use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
    use wgpu_cnn::train::{TrainConfig, Trainer};
    let batch = args.batch;
    if !args.json {
        println!(
            "\n{:<18} {:<8} {:>9} {:>11} {:>10} {:>9} | {:>6} {:>6} {:>6} {:>6} {:>9} {:>9} | {:>9} {:>9}",
            format!("train step (b{batch})"), "device", "build", "first step", "step", "images/s", "disp", "passes", "bgs", "writes", "bytes up", "host µs", "dev MB", "live MB"
        );
    }
    let input = args.input.as_deref().map(parse_input).transpose()?;
    for name in &args.models {
        let default = models::ModelSpec::default_for(name)?;
        let spec = models::ModelSpec::new(input.unwrap_or(default.input), args.classes.unwrap_or(default.classes));
        let item = spec.input;
        for (dname, dev) in devices {
            let t_build = Instant::now();
            let mut model = models::build(name, spec, dev, &mut Initializer::new(0, Init::PytorchDefault))?;
            if args.freeze_backbone {
                wgpu_cnn::nn::freeze_backbone(&mut model)?;
            }
            let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.01) }))?;
            let mut t = Trainer::new(model, opt, TrainConfig { progress: false, batch_size: batch, loss_scale: args.loss_scale.then(wgpu_cnn::train::LossScale::default), precision: args.precision, ..TrainConfig::default() }, dev.clone())?;
            let built = t_build.elapsed().as_secs_f64();
            let n = batch * item.iter().product::<usize>();
            let x = Tensor::from_vec(dev, &[batch, item[0], item[1], item[2]], (0..n).map(|i| ((i * 7) % 13) as f32 / 13.0).collect())?;
            let labels: Vec<i64> = (0..batch as i64).map(|i| i % spec.classes as i64).collect();
            let t0 = Instant::now();
            t.train_step(&x, &labels)?;
            dev.synchronize()?;
            let first = t0.elapsed().as_secs_f64();
            if let Some(ctx) = dev.gpu_context() {
                ctx.reset_peak_live();
            }
            let mut failed = None;
            let mut one = || {
                if failed.is_none() {
                    failed = t.train_step(&x, &labels).and_then(|_| dev.synchronize()).err();
                }
            };
            let step = match args.steps {
                Some(k) => time_steps(k, &mut one),
                None => time(args.seconds, &mut one),
            };
            if let Some(e) = failed {
                return Err(e);
            }
            let host = host_side(dev, idle, args.steps.unwrap_or(15), || t.train_step(&x, &labels).map(drop))?;
            let mem = dev.gpu_context().map(|ctx| ctx.pool_stats());
            if args.json {
                let h = host.map_or(String::new(), |(c, us)| {
                    format!(
                        ",\"dispatches_per_step\":{},\"passes_per_step\":{},\"bind_groups_per_step\":{},\"queue_writes_per_step\":{},\"bytes_uploaded_per_step\":{},\"submits_per_step\":{},\"host_us_per_step\":{us:.1}",
                        c.dispatches, c.passes, c.bind_groups, c.queue_writes, c.bytes_uploaded, c.submits
                    )
                });
                let m = mem.map_or(String::new(), |m| {
                    format!(",\"peak_device_bytes\":{},\"peak_live_bytes\":{},\"planned_bytes\":{}", m.allocated_bytes, m.peak_live_bytes, m.planned_bytes)
                });
                let (frozen, scaled, precision) = (args.freeze_backbone, args.loss_scale, format!("{:?}", args.precision).to_lowercase());
                println!(
                    "{{\"op\":\"train_step\",\"model\":\"{name}\",\"frozen_backbone\":{frozen},\"loss_scale\":{scaled},\"precision\":\"{precision}\",\"input\":[{},{},{}],\"batch\":{batch},\"device\":\"{dname}\",\"build_s\":{built:.4},\"first_step_s\":{first:.4},\"step_s\":{step:.6},\"images_per_s\":{:.1}{h}{m}}}",
                    item[0], item[1], item[2], batch as f64 / step
                );
            } else {
                let h = host.map_or(format!("{:>6} {:>6} {:>6} {:>6} {:>9} {:>9}", "-", "-", "-", "-", "-", "-"), |(c, us)| {
                    format!("{:>6} {:>6} {:>6} {:>6} {:>9} {:>9.0}", c.dispatches, c.passes, c.bind_groups, c.queue_writes, c.bytes_uploaded, us)
                });
                let m = mem.map_or(format!("{:>9} {:>9}", "-", "-"), |m| format!("{:>9.1} {:>9.1}", m.allocated_bytes as f64 / 1e6, m.peak_live_bytes as f64 / 1e6));
                println!("{:<18} {:<8} {:>7.1}ms {:>9.1}ms {:>8.2}ms {:>9.0} | {h} | {m}", name, dname, built * 1e3, first * 1e3, step * 1e3, batch as f64 / step);
            }
        }
    }
    Ok(())
}

fn parse_input(s: &str) -> wgpu_cnn::Result<[usize; 3]> {
    let dims: Vec<usize> = s.split('x').map(|d| d.trim().parse::<usize>()).collect::<Result<_, _>>().unwrap_or_default();
    dims.try_into().map_err(|_| wgpu_cnn::Error::InvalidArgument { op: "bench", msg: format!("--input {s:?}: expected CxHxW, e.g. 3x224x224") })
}

/// On the GPU: what one steady step asks of wgpu (the counters of the last
/// of `reps` steps) and the median host time to record and submit it, in µs.
fn host_side(dev: &Device, idle: Duration, reps: usize, mut step: impl FnMut() -> wgpu_cnn::Result<()>) -> wgpu_cnn::Result<Option<(wgpu_cnn::HostCounters, f64)>> {
    let Some(ctx) = dev.gpu_context() else { return Ok(None) };
    let (mut times, mut per_step) = (Vec::new(), Default::default());
    for _ in 0..reps.max(1) {
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

/// Median seconds of `k` calls of `f` (no warm-up: the caller took a step).
fn time_steps(k: usize, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..k.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
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
        let opts = wgpu_cnn::GpuOptions { timeout: Some(Duration::from_secs_f64(args.timeout)), ..Default::default() };
        Some(Device::gpu_with(&opts).map_err(|e| wgpu_cnn::Error::NoAdapter(format!("{e} (or pass --cpu-only to time the CPU path alone)")))?)
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
        train_steps(&devices, &args, Duration::from_millis(args.idle_ms))?;
    }
    Ok(())
}
