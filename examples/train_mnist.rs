//! Train LeNet-5 on MNIST (the copy committed in data/mnist by default).
//!
//!     cargo run --release --example train_mnist
//!     cargo run --release --example train_mnist -- --device gpu --epochs 10
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use wgpu_cnn::data::mnist::{self, Split};
use wgpu_cnn::nn::{models, Init, Initializer};
use wgpu_cnn::ops::optim::{AdamConfig, SgdConfig};
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{Control, TrainConfig, Trainer};
use wgpu_cnn::{Device, GpuOptions};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DeviceArg {
    /// A hardware GPU if there is one, otherwise the CPU path (never lavapipe).
    Auto,
    /// The best GPU adapter, software ones (lavapipe) included.
    Gpu,
    /// The CPU reference path.
    Cpu,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptArg {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Parser, Debug)]
#[command(about = "Train LeNet-5 on MNIST with wgpu-cnn")]
struct Args {
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Learning rate (SGD default 0.01 with momentum 0.9; Adam/AdamW default 1e-3).
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, value_enum, default_value_t = OptArg::Sgd)]
    optimizer: OptArg,
    /// Directory with the four MNIST IDX files (default: the embedded copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Save a checkpoint here after every epoch.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Resume from this checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Write a loss/accuracy curve (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Time every GPU kernel (timestamp queries): print per-kernel time and share
    /// of the step, and write a Chrome/Perfetto trace to this file.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Check every gradient for NaN/Inf before each update (one small readback
    /// per step); training stops with the parameter's name instead of updating.
    #[arg(long)]
    check_gradients: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> wgpu_cnn::Result<()> {
    let profile = args.profile.is_some();
    if profile && matches!(args.device, DeviceArg::Cpu) {
        return Err(wgpu_cnn::Error::InvalidArgument { op: "train_mnist", msg: "--profile times GPU kernels; use --device gpu or auto".into() });
    }
    let device = match args.device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Gpu => Device::gpu_with(&GpuOptions { profile, ..GpuOptions::default() })?,
        DeviceArg::Auto => match Device::gpu_with(&GpuOptions { allow_software: false, profile, ..GpuOptions::default() }) {
            Ok(d) => d,
            Err(e) => {
                println!("no hardware GPU ({e}); using the CPU path. Pass --device gpu to use a software adapter.");
                Device::Cpu
            }
        },
    };
    println!("device: {device}");
    // Output paths fail now, not after the first epoch.
    for path in [&args.checkpoint, &args.plot].into_iter().flatten() {
        wgpu_cnn::checkpoint::check_writable(path)?;
    }
    let dir = args.data.clone().unwrap_or_else(mnist::embedded_dir);
    let mut train = mnist::load(&dir, Split::Train)?;
    let test = mnist::load(&dir, Split::Test)?;
    if let Some(n) = args.limit {
        train = train.take(n);
    }
    println!("data: {} ({} train, {} test images)", dir.display(), train.len(), test.len());

    let mut init = Initializer::new(args.seed, Init::PytorchDefault);
    let model = models::lenet5(&device, &mut init)?;
    let opt = match args.optimizer {
        OptArg::Sgd => OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(args.lr.unwrap_or(0.01)) }),
        OptArg::Adam => OptimizerConfig::Adam(AdamConfig::adam(args.lr.unwrap_or(1e-3))),
        OptArg::Adamw => OptimizerConfig::Adam(AdamConfig::adamw(args.lr.unwrap_or(1e-3))),
    };
    let config = TrainConfig { epochs: args.epochs, batch_size: args.batch_size, seed: args.seed, check_gradients: args.check_gradients, ..TrainConfig::default() };
    let mut trainer = Trainer::new(model, Optimizer::new(opt)?, config, device)?;
    if let Some(path) = &args.resume {
        wgpu_cnn::checkpoint::load(path, &mut trainer)?;
        println!("resumed from {} at epoch {}, step {}", path.display(), trainer.epoch, trainer.step);
    }
    // One epoch per fit call, so a checkpoint can be written after each; the
    // evaluation runs outside it, so the profile can tell training time apart.
    let mut hist = Vec::new();
    let gpu_ms = |t: &Trainer| -> wgpu_cnn::Result<f64> {
        let Some(ctx) = t.device.gpu_context() else { return Ok(0.0) };
        ctx.flush()?;
        Ok(ctx.profile_report().map_or(0.0, |r| r.total_ms))
    };
    let (mut train_ms, first_step) = (0.0, trainer.step);
    trainer.prepare(&train, Some(&test))?;
    while trainer.epoch < args.epochs {
        trainer.config.epochs = trainer.epoch + 1;
        let before = gpu_ms(&trainer)?;
        let mut stats = trainer.fit(&train, None, |_| Control::Continue)?;
        train_ms += gpu_ms(&trainer)? - before;
        let t0 = std::time::Instant::now();
        let m = trainer.evaluate(&test)?;
        for s in stats.iter_mut() {
            (s.val_loss, s.val_accuracy) = (Some(m.loss), Some(m.accuracy));
            s.seconds += t0.elapsed().as_secs_f64();
        }
        for s in &stats {
            println!(
                "epoch {:>3}  lr {:.4}  train loss {:.4}  test loss {:.4}  test accuracy {:.2}%  {:.0} images/s  ({:.1} s)",
                s.epoch,
                s.lr,
                s.train_loss,
                s.val_loss.unwrap_or(f32::NAN),
                100.0 * s.val_accuracy.unwrap_or(f32::NAN),
                s.images_per_sec,
                s.seconds
            );
        }
        hist.extend(stats);
        if let Some(path) = &args.checkpoint {
            wgpu_cnn::checkpoint::save(path, &mut trainer)?;
            println!("checkpoint written to {}", path.display());
        }
    }
    if let (Some(path), Some(ctx)) = (&args.profile, trainer.device.gpu_context()) {
        ctx.flush()?;
        if let Some(report) = ctx.profile_report() {
            let steps = trainer.step - first_step;
            let per_step = train_ms / steps.max(1) as f64;
            println!(
                "\nGPU time per kernel over {steps} training steps and the evaluations ({:.3} ms in all; the training kernels {per_step:.3} ms per step):\n{report}",
                report.total_ms
            );
        }
        ctx.write_trace(path)?;
        println!("trace written to {} (open in ui.perfetto.dev or chrome://tracing)", path.display());
    }
    if let Some(path) = &args.plot {
        wgpu_cnn::plot::training_curves(path, &hist)?;
        println!("curves written to {}", path.display());
    }
    Ok(())
}
