//! Classify images with a trained model: its top-K classes and probabilities.
//!
//!     cargo run --release --example classify -- --weights digits.safetensors data/digits-png/val/3/*.png
//!     cargo run --release --example classify -- --weights from_pytorch.safetensors --model lenet5 --top 3 --json digit.png
//!
//! A weights file written by `train_images` (or `weights::save_weights`) says
//! which model it is for and how to preprocess; for one written by PyTorch,
//! `--model`, `--size`, `--resize`, `--grayscale`/`--rgb`, `--classes`, `--mean` and `--std`
//! (or `--imagenet`) say what it lacks.
use std::path::PathBuf;

use clap::Parser;
use wgpu_cnn::data::folder::{Color, Preprocess};
use wgpu_cnn::nn::models::{self, ModelSpec};
use wgpu_cnn::nn::{Init, Initializer};
use wgpu_cnn::train::{predict_proba, top_k};
use wgpu_cnn::weights::{load_weights, read_meta};
use wgpu_cnn::{Error, Tensor};

#[path = "common/mod.rs"]
mod common;
use common::{DeviceArg, ImageArgs};

#[derive(Parser, Debug)]
#[command(about = "Classify images with a trained wgpu-cnn or PyTorch model")]
struct Args {
    /// Weights (safetensors) from train_images, weights::save_weights or PyTorch's state_dict.
    #[arg(long)]
    weights: PathBuf,
    /// The model (default: the one named in the file).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(models::NAMES))]
    model: Option<String>,
    /// Input side and colour (default: from the file, else the model's own: 1@28×28 for lenet5).
    #[command(flatten)]
    image: ImageArgs,
    /// Number of classes (default: from the file's class names, else 10).
    #[arg(long)]
    classes: Option<usize>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 3)]
    top: usize,
    /// One JSON array instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Images to classify.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

fn main() -> std::process::ExitCode {
    common::main_with(Args::parse(), run)
}

fn run(mut args: Args) -> wgpu_cnn::Result<()> {
    args.image = args.image.resolved();
    let meta = read_meta(&args.weights)?;
    let bad = |msg: String| Error::InvalidArgument { op: "classify", msg };
    let name = args.model.clone().or(meta.model.clone()).ok_or_else(|| bad(format!("{} does not say which model it is for; pass --model", args.weights.display())))?;
    let default = ModelSpec::default_for(&name)?;
    let [mut c, mut h, mut w] = meta.input.unwrap_or(default.input);
    if let Some(s) = args.image.size {
        (h, w) = (s, s);
    }
    match args.image.color() {
        Color::Gray => c = 1,
        Color::Rgb => c = 3,
        Color::Auto => {}
    }
    let classes = args.classes.unwrap_or(if meta.classes.is_empty() { default.classes } else { meta.classes.len() });
    let (mean, std) = if args.image.mean.is_empty() && args.image.std.is_empty() { (meta.mean.clone(), meta.std.clone()) } else { (args.image.mean.clone(), args.image.std.clone()) };
    let pre = Preprocess { input: [c, h, w], mean, std, resize: args.image.resize.or(meta.resize) };
    pre.validate()?;
    let device = common::open_device(args.device, false)?;
    let mut model = models::build(&name, ModelSpec::new([c, h, w], classes), &device, &mut Initializer::new(0, Init::PytorchDefault))?;
    load_weights(&args.weights, &mut model)?;
    // Every image decodes (or the error names it) before any runs.
    let mut data = Vec::with_capacity(args.images.len() * c * h * w);
    for path in &args.images {
        data.extend(pre.load(path)?);
    }
    let mut rows = Vec::new();
    for (paths, chunk) in args.images.chunks(256).zip(data.chunks(256 * c * h * w)) {
        let x = Tensor::from_vec(&device, &[paths.len(), c, h, w], chunk.to_vec())?;
        rows.extend(predict_proba(&mut model, &x)?);
    }
    let label = |i: usize| meta.classes.get(i).cloned().unwrap_or_else(|| i.to_string());
    if args.json {
        let out: Vec<serde_json::Value> = args
            .images
            .iter()
            .zip(&rows)
            .map(|(p, probs)| {
                let top: Vec<serde_json::Value> = top_k(probs, args.top).into_iter().map(|(i, prob)| serde_json::json!({"class": i, "label": label(i), "prob": prob})).collect();
                serde_json::json!({"image": p.display().to_string(), "top": top})
            })
            .collect();
        println!("{}", serde_json::Value::Array(out));
    } else {
        for (p, probs) in args.images.iter().zip(&rows) {
            let top: Vec<String> = top_k(probs, args.top).into_iter().map(|(i, prob)| format!("{} {:.1}%", label(i), 100.0 * prob)).collect();
            println!("{}: {}", p.display(), top.join(", "));
        }
    }
    Ok(())
}
