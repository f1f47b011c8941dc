//! Layer tables (output shape and parameters per layer) of the built-in models.
//!
//!     cargo run --release --example model_summary                      # the small models
//!     cargo run --release --example model_summary -- --model resnet50  # 3@224×224, 1000 classes
//!     cargo run --release --example model_summary -- --model vgg16_bn --input 3x64x64 --classes 10 --json
use clap::Parser;
use wgpu_cnn::nn::models::{self, ModelSpec};
use wgpu_cnn::nn::{Init, Initializer};
use wgpu_cnn::{Device, Error};

#[path = "common/mod.rs"]
mod common;

#[derive(Parser, Debug)]
#[command(about = "Print a built-in model's layers, output shapes and parameter counts")]
struct Args {
    /// One model (default: LeNet-5, the course-notes network, VGG-small and ResNet-20).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(models::NAMES))]
    model: Option<String>,
    /// Input as CxHxW (default: the model's own, 3x224x224 for the ImageNet models).
    #[arg(long)]
    input: Option<String>,
    /// Number of classes (default: the model's own).
    #[arg(long)]
    classes: Option<usize>,
    /// JSON instead of a table: {"model", "input", "total_params", "params_by_kind", "layers": [...]}.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    common::main_with(Args::parse(), run)
}

fn parse_input(s: &str) -> wgpu_cnn::Result<[usize; 3]> {
    let dims: Vec<usize> = s.split(['x', 'X', '×', '@']).map(|d| d.trim().parse()).collect::<Result<_, _>>().unwrap_or_default();
    dims.try_into().map_err(|_| Error::InvalidArgument { op: "model_summary", msg: format!("--input {s:?}: expected CxHxW, e.g. 3x224x224") })
}

fn run(args: Args) -> wgpu_cnn::Result<()> {
    let dev = Device::Cpu;
    let init = &mut Initializer::new(0, Init::PytorchDefault);
    let Some(name) = args.model else {
        println!("LeNet-5 on 1@28×28\n{}\n", models::lenet5(&dev, init)?.summary(&[1, 1, 28, 28])?);
        println!("The course-notes network on 3@128×128\n{}\n", models::course_notes_net(&dev, init)?.summary(&[1, 3, 128, 128])?);
        println!("VGG-small on 3@32×32\n{}\n", models::vgg_small(&dev, init)?.summary(&[1, 3, 32, 32])?);
        println!("ResNet-20 on 3@32×32\n{}", models::resnet20(&dev, init)?.summary(&[1, 3, 32, 32])?);
        return Ok(());
    };
    let default = ModelSpec::default_for(&name)?;
    let input = args.input.as_deref().map(parse_input).transpose()?.unwrap_or(default.input);
    let spec = ModelSpec::new(input, args.classes.unwrap_or(default.classes));
    let [c, h, w] = input;
    let s = models::build(&name, spec, &dev, init)?.summary(&[1, c, h, w])?;
    if args.json {
        let layers: Vec<serde_json::Value> = s
            .rows
            .iter()
            .map(|r| serde_json::json!({"name": r.name, "kind": r.kind, "description": r.description, "output": r.output, "params": r.params}))
            .collect();
        let by_kind: serde_json::Map<String, serde_json::Value> = s.kinds().into_iter().map(|k| (k.to_string(), s.params_of(k).into())).collect();
        let out = serde_json::json!({"model": name, "input": input, "classes": spec.classes, "total_params": s.total_params(), "params_by_kind": by_kind, "layers": layers});
        println!("{out}");
    } else {
        println!("{name} on {c}@{h}×{w}, {} classes\n{s}", spec.classes);
    }
    Ok(())
}
