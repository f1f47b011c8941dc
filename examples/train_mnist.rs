//! Train LeNet-5 on MNIST (the copy committed in data/mnist by default).
//!
//!     cargo run --release --example train_mnist
//!     cargo run --release --example train_mnist -- --device gpu --epochs 10 --checkpoint lenet.safetensors --plot curves.svg
use std::path::PathBuf;

use clap::Parser;
use wgpu_cnn::data::mnist::{self, Split};
use wgpu_cnn::nn::{models, Init, Initializer};
use wgpu_cnn::{Device, Error, GpuOptions};

#[path = "common/mod.rs"]
mod common;
use common::{DeviceArg, Defaults, OptArg, ScheduleArg, TrainArgs};

#[derive(Parser, Debug)]
#[command(about = "Train LeNet-5 on MNIST with wgpu-cnn")]
struct Args {
    /// Directory with the four MNIST IDX files (default: the embedded copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Time every GPU kernel (timestamp queries): print per-kernel time and share
    /// of the step, and write a Chrome/Perfetto trace to this file.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Check every gradient for NaN/Inf before each update (one small readback
    /// per step); training stops with the parameter's name instead of updating.
    #[arg(long)]
    check_gradients: bool,
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> std::process::ExitCode {
    common::main_with(Args::parse(), run)
}

fn run(args: Args) -> wgpu_cnn::Result<()> {
    let profile = args.profile.is_some();
    if profile && matches!(args.train.device, DeviceArg::Cpu) {
        return Err(Error::InvalidArgument { op: "train_mnist", msg: "--profile times GPU kernels; use --device gpu or auto".into() });
    }
    args.train.check_paths()?;
    if let Some(path) = &args.profile {
        wgpu_cnn::checkpoint::check_writable(path)?;
    }
    let device = match (args.train.device, profile) {
        (DeviceArg::Gpu, true) => Device::gpu_with(&GpuOptions { profile, ..GpuOptions::default() })?,
        (d, _) => common::open_device(d, profile)?,
    };
    println!("device: {device}");
    let dir = args.data.clone().unwrap_or_else(mnist::embedded_dir);
    let train = args.train.limit(mnist::load(&dir, Split::Train)?)?;
    let test = mnist::load(&dir, Split::Test)?;
    println!("data: {} ({} train, {} test images)", dir.display(), train.len(), test.len());
    let model = models::lenet5(&device, &mut Initializer::new(args.train.seed, Init::PytorchDefault))?;
    let defaults = Defaults { epochs: 1, batch_size: 64, optimizer: OptArg::Sgd, schedule: ScheduleArg::Constant };
    let mut trainer = args.train.trainer(&defaults, model, device)?;
    trainer.config.check_gradients = args.check_gradients;
    let first_step = trainer.step;
    let names: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    common::run_training(&args.train, &mut trainer, &train, Some(&test), &names)?;
    if let (Some(path), Some(ctx)) = (&args.profile, trainer.device.gpu_context()) {
        ctx.flush()?;
        if let Some(report) = ctx.profile_report() {
            let steps = trainer.step - first_step;
            let per_step = trainer.train_gpu_ms / steps.max(1) as f64;
            println!(
                "\nGPU time per kernel over {steps} training steps and the evaluations ({:.3} ms in all; the training kernels {per_step:.3} ms per step):\n{report}",
                report.total_ms
            );
        }
        ctx.write_trace(path)?;
        println!("trace written to {} (open in ui.perfetto.dev or chrome://tracing)", path.display());
    }
    Ok(())
}
