//! Train a built-in model on a folder of images (`root/<class>/*.png|jpg|…`,
//! with optional `train/` and `val/` sub-folders, else a seeded split).
//!
//!     cargo run --release --example train_images -- --data data/digits-png --model lenet5 --epochs 10 --save digits.safetensors
//!
//! Fine-tuning a pretrained network: `--weights FILE` (ours or a PyTorch
//! state_dict; a head with another class count is replaced), `--freeze-backbone`
//! or `--freeze PREFIX,…`, `--unfreeze-after N`, `--backbone-lr-mult M`, and
//! `--imagenet` for torchvision's preprocessing of ImageNet-pretrained weights.
use std::path::PathBuf;

use clap::Parser;
use wgpu_cnn::data::folder::{self, FolderConfig, Normalize};
use wgpu_cnn::data::Augment;
use wgpu_cnn::nn::models::{self, ModelSpec};
use wgpu_cnn::nn::{Init, Initializer};
use wgpu_cnn::weights::{save_weights, WeightsMeta};

#[path = "common/mod.rs"]
mod common;
use common::{Defaults, ImageArgs, OptArg, ScheduleArg, TrainArgs};

#[derive(Parser, Debug)]
#[command(about = "Train a built-in model on an image folder with wgpu-cnn")]
struct Args {
    /// The image folder: <DIR>/<class>/<images>, or <DIR>/train/… and <DIR>/val/….
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "lenet5", value_parser = clap::builder::PossibleValuesParser::new(models::NAMES))]
    model: String,
    #[command(flatten)]
    image: ImageArgs,
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
    /// Save the trained weights (with class names and preprocessing) here.
    #[arg(long)]
    save: Option<PathBuf>,
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> std::process::ExitCode {
    common::main_with(Args::parse(), run)
}

fn run(mut args: Args) -> wgpu_cnn::Result<()> {
    args.image = args.image.resolved();
    // An image folder's held-out images are its validation split.
    args.train.held_out = "val".into();
    if let Some(path) = &args.save {
        wgpu_cnn::checkpoint::check_writable(path)?;
    }
    args.train.check_paths()?;
    let device = common::open_device(args.train.device, false)?;
    println!("device: {device}");
    let normalize = if args.image.mean.is_empty() && args.image.std.is_empty() { Normalize::FromTrain } else { Normalize::Given { mean: args.image.mean.clone(), std: args.image.std.clone() } };
    let cfg = FolderConfig { size: args.image.size, color: args.image.color(), val_split: args.val_split, seed: args.train.seed, skip_bad: args.skip_bad, normalize, resize: args.image.resize, workers: 0 };
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
    let build = |d: &wgpu_cnn::Device, seed: u64| models::build(&args.model, spec, d, &mut Initializer::new(seed, Init::PytorchDefault));
    if !common::run_parallel(&args.train, &mut trainer, &build, &device, &train, data.val.as_ref())? {
        common::run_training(&args.train, &mut trainer, &train, data.val.as_ref(), &data.classes)?;
    }
    if let Some(path) = &args.save {
        let meta = WeightsMeta { model: Some(args.model.clone()), input: Some(data.preprocess.input), classes: data.classes.clone(), mean: data.preprocess.mean.clone(), std: data.preprocess.std.clone(), resize: data.preprocess.resize };
        save_weights(path, &mut trainer.model, &meta)?;
        println!("weights written to {}", path.display());
    }
    Ok(())
}

