//! ResNet-20 (or VGG-small) on CIFAR-10 with random crops and flips.
//!
//!     cargo run --release --example train_cifar10 -- --data ~/cifar-10-batches-bin --device gpu
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use wgpu_cnn::data::{cifar, Augment};
use wgpu_cnn::nn::{models, Init, Initializer};

#[path = "common/mod.rs"]
mod common;
use common::{Defaults, OptArg, ScheduleArg, TrainArgs};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Net {
    Resnet20,
    Vgg,
}

#[derive(Parser, Debug)]
#[command(about = "Train a CIFAR-10 CNN with augmentation")]
struct Args {
    /// Folder with data_batch_1.bin … data_batch_5.bin and test_batch.bin (CIFAR-10 binary version).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, value_enum, default_value_t = Net::Resnet20)]
    net: Net,
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> std::process::ExitCode {
    common::main_with(Args::parse(), run)
}

const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

fn run(args: Args) -> wgpu_cnn::Result<()> {
    args.train.check_paths()?;
    let dev = common::open_device(args.train.device, false)?;
    println!("device: {dev}");
    let train = args.train.limit(cifar::load(&args.data, true)?)?;
    let test = cifar::load(&args.data, false)?;
    let init = &mut Initializer::new(args.train.seed, Init::KaimingNormal);
    let model = match args.net {
        Net::Resnet20 => models::resnet20(&dev, init)?,
        Net::Vgg => models::vgg_small(&dev, init)?,
    };
    let defaults = Defaults { epochs: 30, batch_size: 128, optimizer: OptArg::Sgd, schedule: ScheduleArg::Cosine };
    let mut t = args.train.trainer(&defaults, model, dev.clone())?;
    t.config.augment = Some(Augment { crop_padding: 4, horizontal_flip: true, ..Augment::default() });
    let names: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    let net = args.net;
    let build = |d: &wgpu_cnn::Device, seed: u64| {
        let init = &mut Initializer::new(seed, Init::KaimingNormal);
        match net {
            Net::Resnet20 => models::resnet20(d, init),
            Net::Vgg => models::vgg_small(d, init),
        }
    };
    if !common::run_parallel(&args.train, &mut t, &build, &dev, &train, Some(&test))? {
        common::run_training(&args.train, &mut t, &train, Some(&test), &names)?;
    }
    Ok(())
}
