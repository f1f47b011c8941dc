//! An MLP with batch-norm and dropout on MNIST.
//!
//!     cargo run --release --example mlp_mnist -- --epochs 5
use clap::Parser;
use wgpu_cnn::data::mnist::{self, Split};
use wgpu_cnn::nn::{models, Init, Initializer};

#[path = "common/mod.rs"]
mod common;
use common::{Defaults, OptArg, ScheduleArg, TrainArgs};

#[derive(Parser, Debug)]
#[command(about = "Train an MLP (784-h-h-10 with batch-norm and dropout) on MNIST")]
struct Args {
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    #[arg(long, default_value_t = 0.2)]
    dropout: f32,
    #[command(flatten)]
    train: TrainArgs,
}

fn main() -> std::process::ExitCode {
    common::main_with(Args::parse(), run)
}

fn run(args: Args) -> wgpu_cnn::Result<()> {
    args.train.check_paths()?;
    let dev = common::open_device(args.train.device, false)?;
    println!("device: {dev}");
    let train = args.train.limit(mnist::load(&mnist::embedded_dir(), Split::Train)?)?;
    let test = mnist::load(&mnist::embedded_dir(), Split::Test)?;
    let model = models::mlp(&dev, args.hidden, args.dropout, &mut Initializer::new(args.train.seed, Init::KaimingUniform))?;
    let defaults = Defaults { epochs: 3, batch_size: 128, optimizer: OptArg::Adamw, schedule: ScheduleArg::Cosine };
    let mut t = args.train.trainer(&defaults, model, dev)?;
    common::run_training(&args.train, &mut t, &train, Some(&test), &[])?;
    Ok(())
}
