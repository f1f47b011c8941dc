//! An MLP with batch-norm and dropout on MNIST.
//!
//!     cargo run --release --example mlp_mnist -- --epochs 5
use std::process::ExitCode;

use clap::Parser;
use wgpu_cnn::data::mnist::{self, Split};
use wgpu_cnn::nn::{models, Init, Initializer};
use wgpu_cnn::ops::optim::AdamConfig;
use wgpu_cnn::optim::{LrSchedule, Optimizer, OptimizerConfig};
use wgpu_cnn::train::{Control, TrainConfig, Trainer};
use wgpu_cnn::Device;

#[derive(Parser)]
#[command(about = "Train an MLP (784-h-h-10 with batch-norm and dropout) on MNIST")]
struct Args {
    /// cpu or gpu (the best adapter, software included).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 0.2)]
    dropout: f32,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    env_logger::init();
    let args = Args::parse();
    let run = || -> wgpu_cnn::Result<()> {
        let dev = match args.device.as_str() {
            "gpu" => Device::gpu()?,
            "cpu" => Device::Cpu,
            other => return Err(wgpu_cnn::Error::InvalidArgument { op: "mlp_mnist", msg: format!("--device {other}: expected cpu or gpu") }),
        };
        println!("device: {dev}");
        let train = mnist::load(&mnist::embedded_dir(), Split::Train)?;
        let test = mnist::load(&mnist::embedded_dir(), Split::Test)?;
        let model = models::mlp(&dev, args.hidden, args.dropout, &mut Initializer::new(args.seed, Init::KaimingUniform))?;
        let opt = Optimizer::new(OptimizerConfig::Adam(AdamConfig::adamw(args.lr)))?;
        let cfg = TrainConfig { epochs: args.epochs, batch_size: args.batch_size, seed: args.seed, schedule: LrSchedule::Cosine { min_lr: 0.0 }, ..TrainConfig::default() };
        let mut t = Trainer::new(model, opt, cfg, dev)?;
        t.fit(&train, Some(&test), |s| {
            println!("epoch {}  train loss {:.4}  test accuracy {:.2}%  {:.0} images/s", s.epoch, s.train_loss, 100.0 * s.val_accuracy.unwrap_or(0.0), s.images_per_sec);
            Control::Continue
        })?;
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
