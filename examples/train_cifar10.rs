//! ResNet-20 (or VGG-small) on CIFAR-10 with random crops and flips.
//!
//!     cargo run --release --example train_cifar10 -- --data ~/cifar-10-batches-bin --device gpu
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use wgpu_cnn::data::{cifar, Augment};
use wgpu_cnn::nn::{models, Init, Initializer};
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::optim::{LrSchedule, Optimizer, OptimizerConfig};
use wgpu_cnn::train::{Control, TrainConfig, Trainer};
use wgpu_cnn::Device;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Net {
    Resnet20,
    Vgg,
}

#[derive(Parser)]
#[command(about = "Train a CIFAR-10 CNN with augmentation")]
struct Args {
    /// Folder with data_batch_1.bin … data_batch_5.bin and test_batch.bin (CIFAR-10 binary version).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value_t = Net::Resnet20)]
    net: Net,
    /// cpu or gpu.
    #[arg(long, default_value = "gpu")]
    device: String,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// Train on the first N images only.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    env_logger::init();
    let args = Args::parse();
    let run = || -> wgpu_cnn::Result<()> {
        let dev = if args.device == "cpu" { Device::Cpu } else { Device::gpu()? };
        println!("device: {dev}");
        let mut train = cifar::load(&args.data, true)?;
        let test = cifar::load(&args.data, false)?;
        if let Some(n) = args.limit {
            train = train.take(n);
        }
        let init = &mut Initializer::new(args.seed, Init::KaimingNormal);
        let model = match args.net {
            Net::Resnet20 => models::resnet20(&dev, init)?,
            Net::Vgg => models::vgg_small(&dev, init)?,
        };
        let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true, ..SgdConfig::new(args.lr) }))?;
        let cfg = TrainConfig {
            epochs: args.epochs,
            batch_size: args.batch_size,
            seed: args.seed,
            schedule: LrSchedule::Cosine { min_lr: 0.0 },
            warmup_epochs: 1,
            augment: Some(Augment { crop_padding: 4, horizontal_flip: true, ..Augment::default() }),
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(model, opt, cfg, dev)?;
        t.fit(&train, Some(&test), |s| {
            println!("epoch {}  lr {:.4}  train loss {:.4}  test accuracy {:.2}%  {:.0} images/s", s.epoch, s.lr, s.train_loss, 100.0 * s.val_accuracy.unwrap_or(0.0), s.images_per_sec);
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
