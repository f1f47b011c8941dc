//! Train a built-in model on a folder of images (`root/<class>/*.png|jpg|…`,
//! with optional `train/` and `val/` sub-folders, else a seeded split).
//!
//!     cargo run --release --example train_images -- --data data/digits-png --model lenet5 --epochs 10 --save digits.safetensors
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use wgpu_cnn::data::folder::{self, Color, FolderConfig, Normalize};
use wgpu_cnn::data::Augment;
use wgpu_cnn::nn::models::{self, ModelSpec};
use wgpu_cnn::nn::{Init, Initializer};
use wgpu_cnn::ops::optim::{AdamConfig, SgdConfig};
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{Control, TrainConfig, Trainer};
use wgpu_cnn::weights::{save_weights, WeightsMeta};

#[path = "common/mod.rs"]
mod common;
use common::DeviceArg;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptArg {
    Sgd,
    Adam,
    Adamw,
}

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
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, value_enum, default_value_t = OptArg::Adam)]
    optimizer: OptArg,
    /// Learning rate (SGD default 0.01 with momentum 0.9; Adam/AdamW 1e-3).
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save the trained weights (with class names and preprocessing) here.
    #[arg(long)]
    save: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    common::main_with(Args::parse(), run)
}

fn run(args: Args) -> wgpu_cnn::Result<()> {
    if let Some(path) = &args.save {
        wgpu_cnn::checkpoint::check_writable(path)?;
    }
    let device = common::open_device(args.device, false)?;
    println!("device: {device}");
    let color = if args.grayscale { Color::Gray } else if args.rgb { Color::Rgb } else { Color::Auto };
    let cfg = FolderConfig { size: args.size, color, val_split: args.val_split, seed: args.seed, skip_bad: args.skip_bad, normalize: Normalize::FromTrain, workers: 0 };
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
    let spec = ModelSpec::new(data.preprocess.input, data.classes.len());
    let model = models::build(&args.model, spec, &device, &mut Initializer::new(args.seed, Init::PytorchDefault))?;
    let opt = match args.optimizer {
        OptArg::Sgd => OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(args.lr.unwrap_or(0.01)) }),
        OptArg::Adam => OptimizerConfig::Adam(AdamConfig::adam(args.lr.unwrap_or(1e-3))),
        OptArg::Adamw => OptimizerConfig::Adam(AdamConfig::adamw(args.lr.unwrap_or(1e-3))),
    };
    let augment = (args.flip || args.rotate > 0.0).then_some(Augment { horizontal_flip: args.flip, rotate_degrees: args.rotate, ..Augment::default() });
    let config = TrainConfig { epochs: args.epochs, batch_size: args.batch_size, seed: args.seed, augment, ..TrainConfig::default() };
    let mut trainer = Trainer::new(model, Optimizer::new(opt)?, config, device)?;
    trainer.fit(&data.train, data.val.as_ref(), |s| {
        let val = s.val_accuracy.map_or(String::new(), |a| format!("  val loss {:.4}  val accuracy {:.2}%", s.val_loss.unwrap_or(f32::NAN), 100.0 * a));
        println!("epoch {:>3}  train loss {:.4}{val}  {:.0} images/s  ({:.1} s)", s.epoch, s.train_loss, s.images_per_sec, s.seconds);
        Control::Continue
    })?;
    if let Some(path) = &args.save {
        let meta = WeightsMeta {
            model: Some(args.model.clone()),
            input: Some(data.preprocess.input),
            classes: data.classes.clone(),
            mean: data.preprocess.mean.clone(),
            std: data.preprocess.std.clone(),
        };
        save_weights(path, &mut trainer.model, &meta)?;
        println!("weights written to {}", path.display());
    }
    Ok(())
}
