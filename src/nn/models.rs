//! Ready-to-train networks.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{ActivationLayer, BatchNorm, Layer, Conv2d, Dropout, Flatten, GlobalAvgPool, Initializer, Linear, MaxPool2d, Residual, Sequential};
use crate::ops::activation::Activation;
use crate::shape::{Conv2dConfig, Pool2dConfig};

fn relu() -> ActivationLayer {
    ActivationLayer::new(Activation::Relu)
}

/// What a built-in model is built for: its input `[channels, height, width]`
/// and its number of classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub input: [usize; 3],
    pub classes: usize,
}

impl ModelSpec {
    pub fn new(input: [usize; 3], classes: usize) -> ModelSpec {
        ModelSpec { input, classes }
    }

    /// The spec the model was designed for (MNIST's 1@28×28 for LeNet-5 and
    /// the MLP, CIFAR-10's 3@32×32 for the others; 10 classes).
    pub fn default_for(name: &str) -> Result<ModelSpec> {
        match name {
            "lenet5" => Ok(ModelSpec::new([1, 28, 28], 10)),
            "vgg_small" | "resnet20" => Ok(ModelSpec::new([3, 32, 32], 10)),
            _ => Err(unknown(name)),
        }
    }
}

/// The names [`build`] accepts.
pub const NAMES: &[&str] = &["lenet5", "vgg_small", "resnet20"];

fn unknown(name: &str) -> Error {
    Error::InvalidArgument { op: "models::build", msg: format!("unknown model `{name}`; the built-in models are {}", NAMES.join(", ")) }
}

/// A built-in model by name (one of [`NAMES`]) for `spec`'s input and classes.
pub fn build(name: &str, spec: ModelSpec, dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    match name {
        "lenet5" => lenet5_for(spec, dev, init),
        "vgg_small" => vgg_small_for(spec, dev, init),
        "resnet20" => resnet20_for(spec, dev, init),
        _ => Err(unknown(name)),
    }
}

/// Checks that `spec` has a channel, a class and an input at least `min` pixels on each side.
fn check_spec(model: &str, spec: ModelSpec, min: usize) -> Result<()> {
    let [c, h, w] = spec.input;
    if c == 0 || spec.classes == 0 || h < min || w < min {
        return Err(Error::InvalidArgument {
            op: "models::build",
            msg: format!("{model} needs ≥ 1 channel, ≥ 1 class and an input of at least {min}×{min}, got {c}@{h}×{w} with {} classes", spec.classes),
        });
    }
    Ok(())
}

/// The flattened feature count after `layers` for `spec`'s input.
fn features_after(net: &Sequential, spec: ModelSpec) -> Result<usize> {
    let [c, h, w] = spec.input;
    Ok(net.output_shape(&[1, c, h, w])?.iter().skip(1).product())
}

/// LeNet-5 for 1@28×28: conv5×5 6 pad 2 → ReLU → maxpool 2 → conv5×5 16 → ReLU
/// → maxpool 2 → FC 120 → ReLU → FC 84 → ReLU → FC 10.
pub fn lenet5(dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    lenet5_for(ModelSpec::new([1, 28, 28], 10), dev, init)
}

/// LeNet-5 for any input of at least 12×12 and any class count (the first FC
/// layer takes whatever the convolutions leave: 16×5×5 at 28×28).
pub fn lenet5_for(spec: ModelSpec, dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    check_spec("LeNet-5", spec, 12)?;
    let net = Sequential::new()
        .push(Conv2d::new(dev, spec.input[0], 6, [5, 5], Conv2dConfig::default().padding(2), true, init)?)
        .push(relu())
        .push(MaxPool2d::new(Pool2dConfig::new(2)))
        .push(Conv2d::new(dev, 6, 16, [5, 5], Conv2dConfig::default(), true, init)?)
        .push(relu())
        .push(MaxPool2d::new(Pool2dConfig::new(2)))
        .push(Flatten::new());
    let features = features_after(&net, spec)?;
    Ok(net
        .push(Linear::new(dev, features, 120, true, init)?)
        .push(relu())
        .push(Linear::new(dev, 120, 84, true, init)?)
        .push(relu())
        .push(Linear::new(dev, 84, spec.classes, true, init)?))
}

/// An MLP for flattened 28×28 images with batch-norm and dropout:
/// 784 → hidden → BN → ReLU → Dropout → hidden → BN → ReLU → Dropout → 10.
pub fn mlp(dev: &Device, hidden: usize, dropout: f32, init: &mut Initializer) -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Flatten::new())
        .push(Linear::new(dev, 784, hidden, true, init)?)
        .push(BatchNorm::new_1d(dev, hidden)?)
        .push(relu())
        .push(Dropout::new(dropout, init)?)
        .push(Linear::new(dev, hidden, hidden, true, init)?)
        .push(BatchNorm::new_1d(dev, hidden)?)
        .push(relu())
        .push(Dropout::new(dropout, init)?)
        .push(Linear::new(dev, hidden, 10, true, init)?))
}

fn conv_bn_relu(dev: &Device, c_in: usize, c_out: usize, stride: usize, init: &mut Initializer) -> Result<Sequential> {
    Ok(Sequential::new()
        .push(Conv2d::new(dev, c_in, c_out, [3, 3], Conv2dConfig::default().padding(1).stride(stride), false, init)?)
        .push(BatchNorm::new_2d(dev, c_out)?)
        .push(relu()))
}

/// A small VGG-style network for 3@32×32: three blocks of two 3×3 conv+BN+ReLU
/// (32, 64, 128 channels) each followed by 2×2 max pooling, then FC 10.
pub fn vgg_small(dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    vgg_small_for(ModelSpec::new([3, 32, 32], 10), dev, init)
}

/// VGG-small for any input of at least 8×8 and any class count.
pub fn vgg_small_for(spec: ModelSpec, dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    check_spec("VGG-small", spec, 8)?;
    let mut net = Sequential::new();
    let mut c_in = spec.input[0];
    for c in [32, 64, 128] {
        for layer in conv_bn_relu(dev, c_in, c, 1, init)?.layers.into_iter().chain(conv_bn_relu(dev, c, c, 1, init)?.layers) {
            net.layers.push(layer);
        }
        net.layers.push(Box::new(MaxPool2d::new(Pool2dConfig::new(2))));
        c_in = c;
    }
    let net = net.push(Flatten::new());
    let features = features_after(&net, spec)?;
    Ok(net.push(Linear::new(dev, features, spec.classes, true, init)?))
}

/// A ResNet-20-style network for 3@32×32 (He et al. 2016, CIFAR variant):
/// conv 16 → 3 stages × 3 basic blocks (16, 32, 64 channels; stride 2 and a
/// 1×1 projection shortcut where the shape changes) → global average pool → FC 10.
pub fn resnet20(dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    resnet20_for(ModelSpec::new([3, 32, 32], 10), dev, init)
}

/// ResNet-20 for any input of at least 4×4 and any class count (global
/// average pooling makes the head independent of the input size).
pub fn resnet20_for(spec: ModelSpec, dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    check_spec("ResNet-20", spec, 4)?;
    let mut net = Sequential::new()
        .push(Conv2d::new(dev, spec.input[0], 16, [3, 3], Conv2dConfig::default().padding(1), false, init)?)
        .push(BatchNorm::new_2d(dev, 16)?)
        .push(relu());
    let mut c_in = 16;
    for (stage, c) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..3 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let body = Sequential::new()
                .push(Conv2d::new(dev, c_in, c, [3, 3], Conv2dConfig::default().padding(1).stride(stride), false, init)?)
                .push(BatchNorm::new_2d(dev, c)?)
                .push(relu())
                .push(Conv2d::new(dev, c, c, [3, 3], Conv2dConfig::default().padding(1), false, init)?)
                .push(BatchNorm::new_2d(dev, c)?);
            let shortcut = if stride != 1 || c_in != c {
                Some(
                    Sequential::new()
                        .push(Conv2d::new(dev, c_in, c, [1, 1], Conv2dConfig::default().stride(stride), false, init)?)
                        .push(BatchNorm::new_2d(dev, c)?),
                )
            } else {
                None
            };
            net = net.push(Residual::new(body, shortcut)).push(relu());
            c_in = c;
        }
    }
    Ok(net.push(GlobalAvgPool::new()).push(Flatten::new()).push(Linear::new(dev, 64, spec.classes, true, init)?))
}

/// The network from the course notes, for summaries: 3@128×128 → max-pool 2×2
/// s2 → conv 17×17 12 channels → max-pool 3×3 s3 → flatten → FC 128 + ReLU → FC 10.
pub fn course_notes_net(dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    Ok(Sequential::new()
        .push(MaxPool2d::new(Pool2dConfig::new(2)))
        .push(Conv2d::new(dev, 3, 12, [17, 17], Conv2dConfig::default(), true, init)?)
        .push(MaxPool2d::new(Pool2dConfig::new(3)))
        .push(Flatten::new())
        .push(Linear::new(dev, 12 * 16 * 16, 128, true, init)?)
        .push(relu())
        .push(Linear::new(dev, 128, 10, true, init)?))
}
