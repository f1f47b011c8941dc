//! A convolutional autoencoder on MNIST: a strided-convolution encoder, a
//! ConvTranspose2d decoder and an MSE reconstruction loss. Prints the
//! reconstruction loss per epoch and writes a PNG grid: inputs on the top
//! row, their reconstructions below.
//!
//!     cargo run --release --example autoencoder -- --epochs 3 --png reconstructions.png
use std::path::PathBuf;

use clap::Parser;
use wgpu_cnn::data::mnist::{self, Split};
use wgpu_cnn::nn::{ActivationLayer, Conv2d, ConvTranspose2d, Init, Initializer, Layer, Mode, Sequential};
use wgpu_cnn::ops::activation::Activation;
use wgpu_cnn::ops::loss::{loss_mse, Reduction};
use wgpu_cnn::ops::optim::AdamConfig;
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::{Conv2dConfig, Device, Tensor};

#[path = "common/mod.rs"]
mod common;
use common::DeviceArg;

#[derive(Parser, Debug)]
#[command(about = "Train a convolutional autoencoder on MNIST with wgpu-cnn")]
struct Args {
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f32,
    /// Train on the first N images (default: all 60,000).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write inputs and reconstructions of 8 test images here.
    #[arg(long, default_value = "reconstructions.png")]
    png: PathBuf,
}

fn main() -> std::process::ExitCode {
    common::main_with(Args::parse(), run)
}

/// 1@28×28 → 32@7×7 → 1@28×28.
fn autoencoder(dev: &Device, init: &mut Initializer) -> wgpu_cnn::Result<Sequential> {
    let down = Conv2dConfig::default().stride(2).padding(1);
    let relu = || ActivationLayer::new(Activation::Relu);
    Ok(Sequential::new()
        .push(Conv2d::new(dev, 1, 16, [3, 3], down, true, init)?)
        .push(relu())
        .push(Conv2d::new(dev, 16, 32, [3, 3], down, true, init)?)
        .push(relu())
        .push(ConvTranspose2d::new(dev, 32, 16, [3, 3], down, [1, 1], true, init)?)
        .push(relu())
        .push(ConvTranspose2d::new(dev, 16, 1, [3, 3], down, [1, 1], true, init)?)
        .push(ActivationLayer::new(Activation::Sigmoid)))
}

fn run(args: Args) -> wgpu_cnn::Result<()> {
    wgpu_cnn::checkpoint::check_writable(&args.png)?;
    let dev = common::open_device(args.device, false)?;
    println!("device: {dev}");
    let mut train = mnist::load(&mnist::embedded_dir(), Split::Train)?;
    let test = mnist::load(&mnist::embedded_dir(), Split::Test)?;
    if let Some(n) = args.limit {
        train = train.take(n);
    }
    let mut model = autoencoder(&dev, &mut Initializer::new(args.seed, Init::PytorchDefault))?;
    let mut opt = Optimizer::new(OptimizerConfig::Adam(AdamConfig::adam(args.lr)))?;
    let eval = test.take(1000);
    for epoch in 1..=args.epochs {
        let t0 = std::time::Instant::now();
        let batches = train.batches(args.batch_size, Some(args.seed + epoch as u64));
        let mut losses = Vec::with_capacity(batches.len());
        for idx in &batches {
            let (x, _) = train.batch(&dev, idx, None)?;
            model.zero_grad();
            let y = model.forward(&x, Mode::Train)?;
            let (loss, dy) = loss_mse(&y, &x, Reduction::Mean)?;
            model.backward_params(&dy)?;
            opt.step(&mut model)?;
            losses.push(loss);
        }
        // One readback per epoch: the losses stayed on the device.
        let train_loss = losses.iter().map(|l| l.to_vec().map(|v| v[0] as f64)).sum::<wgpu_cnn::Result<f64>>()? / losses.len().max(1) as f64;
        let (x, _) = eval.batch(&dev, &(0..eval.len()).collect::<Vec<_>>(), None)?;
        let test_loss = loss_mse(&model.forward(&x, Mode::Eval)?, &x, Reduction::Mean)?.0.to_vec()?[0];
        println!("epoch {epoch:>3}  train reconstruction MSE {train_loss:.5}  test MSE {test_loss:.5}  ({:.1} s)", t0.elapsed().as_secs_f64());
    }
    let (x, _) = test.batch(&dev, &(0..8).collect::<Vec<_>>(), None)?;
    let y = model.forward(&x, Mode::Eval)?;
    write_grid(&args.png, &x, &y)?;
    println!("inputs (top) and reconstructions (bottom) written to {}", args.png.display());
    Ok(())
}

/// Two rows of 28×28 tiles: `top` images above `bottom` ones.
fn write_grid(path: &std::path::Path, top: &Tensor, bottom: &Tensor) -> wgpu_cnn::Result<()> {
    let (a, b) = (top.to_vec()?, bottom.to_vec()?);
    let n = top.shape()[0];
    let img = image::GrayImage::from_fn((n * 28) as u32, 56, |px, py| {
        let (i, x, y) = (px as usize / 28, px as usize % 28, py as usize % 28);
        let src = if py < 28 { &a } else { &b };
        image::Luma([(src[i * 784 + y * 28 + x].clamp(0.0, 1.0) * 255.0).round() as u8])
    });
    img.save(path).map_err(|e| wgpu_cnn::Error::File { path: path.to_path_buf(), kind: wgpu_cnn::FileErrorKind::Write, msg: e.to_string() })
}
