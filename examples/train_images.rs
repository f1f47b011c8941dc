//! Train a built-in model on a folder of images (`root/<class>/*.png|jpg|…`,
//! with optional `train/` and `val/` sub-folders, else a seeded split).
//!
//!     cargo run --release --example train_images -- --data data/digits-png --model lenet5 --epochs 10 --save digits.safetensors
use std::path::PathBuf;

use clap::Parser;
use wgpu_cnn::data::folder::{self, Color, FolderConfig, Normalize};
use wgpu_cnn::data::Augment;
use wgpu_cnn::nn::models::{self, ModelSpec};
use wgpu_cnn::nn::{Init, Initializer};
use wgpu_cnn::weights::{save_weights, WeightsMeta};

#[path = "common/mod.rs"]
mod common;
use common::{Defaults, OptArg, ScheduleArg, TrainArgs};

#[derive(Parser, Debug)]
#[command(about = "Train a built-in model on an image folder with wgpu-cnn")]
struct Args {
    /// The image folder: <DIR>/<class>/<images>, or <DIR>/train/… and <DIR>/val/….
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "lenet5", value_parser = clap::builder::PossibleValuesParser::new(models::NAMES))]
    model: String,
    /// Side of the square input (default: the images' own size).
    #[arg(long)]
    size: Option<usize>,
    /// Read the images as grayscale (default: grayscale when every image is).
    #[arg(long, conflicts_with = "rgb")]
    grayscale: bool,
    /// Read the images as RGB.
    #[arg(long)]
    rgb: bool,
    /// Held-out fraction when the folder has no val/ or test/.
    #[arg(long, default_value_t = 0.1)]
    val_split: f32,
    /// Skip files that do not decode (counted) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Mirror training images left-right at random (not for digits or text).
    #[arg(long)]
    flip: bool,
    /// Rotate training images by up to ± this many degrees.
    #[arg(long, default_value_t = 0.0)]
    rotate: f32,
    /// Data-parallel replicas, one device each (several devices on one adapter
    /// when there is one GPU): each batch is split across them.
    #[arg(long, default_value_t = 1)]
    devices: usize,
    /// Save the trained weights (with class names and preprocessing) here.
    #[arg(long)]
    save: Option<PathBuf>,
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> std::process::ExitCode {
    common::main_with(Args::parse(), run)
}

fn run(args: Args) -> wgpu_cnn::Result<()> {
    if let Some(path) = &args.save {
        wgpu_cnn::checkpoint::check_writable(path)?;
    }
    args.train.check_paths()?;
    let device = common::open_device(args.train.device, false)?;
    println!("device: {device}");
    let color = if args.grayscale { Color::Gray } else if args.rgb { Color::Rgb } else { Color::Auto };
    let cfg = FolderConfig { size: args.size, color, val_split: args.val_split, seed: args.train.seed, skip_bad: args.skip_bad, normalize: Normalize::FromTrain, workers: 0 };
    let t0 = std::time::Instant::now();
    let data = folder::load(&args.data, &cfg)?;
    let [c, h, w] = data.preprocess.input;
    println!(
        "data: {} ({} classes, {} train and {} validation images, {c}@{h}×{w}, read in {:.2} s{})",
        args.data.display(),
        data.classes.len(),
        data.train.len(),
        data.val.as_ref().map_or(0, |v| v.len()),
        t0.elapsed().as_secs_f64(),
        if data.skipped.is_empty() { String::new() } else { format!(", {} unreadable files skipped", data.skipped.len()) }
    );
    let train = args.train.limit(data.train.clone())?;
    let spec = ModelSpec::new(data.preprocess.input, data.classes.len());
    let model = models::build(&args.model, spec, &device, &mut Initializer::new(args.train.seed, Init::PytorchDefault))?;
    let defaults = Defaults { epochs: 5, batch_size: 32, optimizer: OptArg::Adam, schedule: ScheduleArg::Constant };
    let mut trainer = args.train.trainer(&defaults, model, device.clone())?;
    trainer.config.augment = (args.flip || args.rotate > 0.0).then_some(Augment { horizontal_flip: args.flip, rotate_degrees: args.rotate, ..Augment::default() });
    if args.devices > 1 {
        trainer = data_parallel(&args, spec, &device, trainer, &train, data.val.as_ref())?;
    } else {
        common::run_training(&args.train, &mut trainer, &train, data.val.as_ref(), &data.classes)?;
    }
    if let Some(path) = &args.save {
        let meta = WeightsMeta { model: Some(args.model.clone()), input: Some(data.preprocess.input), classes: data.classes.clone(), mean: data.preprocess.mean.clone(), std: data.preprocess.std.clone() };
        save_weights(path, &mut trainer.model, &meta)?;
        println!("weights written to {}", path.display());
    }
    Ok(())
}

/// `--devices N`: the same training on N replicas in lockstep; returns replica 0.
fn data_parallel(args: &Args, spec: ModelSpec, device: &wgpu_cnn::Device, template: wgpu_cnn::train::Trainer, train: &wgpu_cnn::data::Dataset, val: Option<&wgpu_cnn::data::Dataset>) -> wgpu_cnn::Result<wgpu_cnn::train::Trainer> {
    use wgpu_cnn::parallel::DataParallel;
    let devices = (0..args.devices)
        .map(|_| if device.is_gpu() { wgpu_cnn::Device::gpu() } else { Ok(wgpu_cnn::Device::Cpu) })
        .collect::<wgpu_cnn::Result<Vec<_>>>()?;
    let opt = template.optimizer.config;
    let cfg = template.config.clone();
    let mut seed = args.train.seed;
    let mut dp = DataParallel::new(&devices, |d| models::build(&args.model, spec, d, &mut Initializer::new(seed, Init::PytorchDefault)).inspect(|_| seed += 1), opt, cfg)?;
    println!("{} replicas; {} bytes of gradients summed per step", args.devices, dp.bytes_all_reduced_per_step());
    while dp.replicas[0].epoch < dp.replicas[0].config.epochs {
        let t0 = std::time::Instant::now();
        let loss = dp.train_epoch(train)?;
        let secs = t0.elapsed().as_secs_f64();
        let test = val.map(|v| dp.evaluate(v)).transpose()?.map_or(String::new(), |m| format!("  test loss {:.4}  test accuracy {:.2}%", m.loss, 100.0 * m.accuracy));
        println!("epoch {:>3}/{}  train loss {loss:.4}{test}  {:.0} images/s  ({secs:.1} s)", dp.replicas[0].epoch, dp.replicas[0].config.epochs, train.len() as f64 / secs);
        if let Some(path) = &args.train.checkpoint {
            wgpu_cnn::checkpoint::save(path, &mut dp.replicas[0])?;
        }
    }
    Ok(dp.replicas.swap_remove(0))
}
