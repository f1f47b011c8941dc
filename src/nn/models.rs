//! Ready-to-train networks.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{ActivationLayer, AdaptiveAvgPool2d, BatchNorm, Concat, Layer, Conv2d, Dropout, Flatten, GlobalAvgPool, Initializer, Linear, MaxPool2d, Residual, Sequential};
use crate::ops::activation::Activation;
use crate::shape::{Conv2dConfig, Pool2dConfig};

fn relu() -> ActivationLayer {
    ActivationLayer::new(Activation::Relu)
}

/// What a built-in model is built for: its input `[channels, height, width]`
/// and its number of classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// `[channels, height, width]` of one image.
    pub input: [usize; 3],
    /// Number of classes (the last layer's outputs).
    pub classes: usize,
}

impl ModelSpec {
    /// A spec for `input` images and `classes` classes.
    pub fn new(input: [usize; 3], classes: usize) -> ModelSpec {
        ModelSpec { input, classes }
    }

    /// The spec the model was designed for (MNIST's 1@28×28 for LeNet-5 and
    /// the MLP, CIFAR-10's 3@32×32 for the others; 10 classes).
    pub fn default_for(name: &str) -> Result<ModelSpec> {
        match name {
            "lenet5" => Ok(ModelSpec::new([1, 28, 28], 10)),
            "vgg_small" | "resnet20" => Ok(ModelSpec::new([3, 32, 32], 10)),
            n if ZOO.contains(&n) => Ok(ModelSpec::new([3, 224, 224], 1000)),
            _ => Err(unknown(name)),
        }
    }
}

/// The names [`build`] accepts.
pub const NAMES: &[&str] = &["lenet5", "vgg_small", "resnet20", "alexnet", "vgg11", "vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "googlenet"];

/// The ImageNet architectures, structured and named as torchvision's (a
/// torchvision `state_dict` saved with safetensors loads into them).
pub const ZOO: &[&str] = &["alexnet", "vgg11", "vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50", "googlenet"];

fn unknown(name: &str) -> Error {
    Error::InvalidArgument { op: "models::build", msg: format!("unknown model `{name}`; the built-in models are {}", NAMES.join(", ")) }
}

/// A built-in model by name (one of [`NAMES`]) for `spec`'s input and classes.
pub fn build(name: &str, spec: ModelSpec, dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    let net = match name {
        "lenet5" => lenet5_for(spec, dev, init),
        "vgg_small" => vgg_small_for(spec, dev, init),
        "resnet20" => resnet20_for(spec, dev, init),
        "alexnet" => alexnet(spec, dev, init),
        "vgg11" => vgg(VGG11, false, spec, dev, init),
        "vgg16" => vgg(VGG16, false, spec, dev, init),
        "vgg16_bn" => vgg(VGG16, true, spec, dev, init),
        "resnet18" => resnet(Block::Basic, [2, 2, 2, 2], spec, dev, init),
        "resnet34" => resnet(Block::Basic, [3, 4, 6, 3], spec, dev, init),
        "resnet50" => resnet(Block::Bottleneck, [3, 4, 6, 3], spec, dev, init),
        "googlenet" => googlenet(spec, dev, init),
        _ => Err(unknown(name)),
    }?;
    let [c, h, w] = spec.input;
    net.output_shape(&[1, c, h, w]).map_err(|e| Error::InvalidArgument { op: "models::build", msg: format!("{name} cannot take a {c}@{h}×{w} input: {e}") })?;
    Ok(net)
}

// ------------------------------------------------------------------ the zoo (torchvision's structure and names)

fn conv(dev: &Device, c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, bias: bool, init: &mut Initializer) -> Result<Conv2d> {
    Conv2d::new(dev, c_in, c_out, [k, k], Conv2dConfig::default().stride(stride).padding(pad), bias, init)
}

fn zoo_spec(model: &str, spec: ModelSpec) -> Result<()> {
    check_spec(model, spec, 1)
}

/// AlexNet (torchvision's, after Krizhevsky 2014's one-GPU variant): 61,100,840 parameters at 1000 classes.
pub fn alexnet(spec: ModelSpec, dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    zoo_spec("AlexNet", spec)?;
    let pool = || MaxPool2d::new(Pool2dConfig::new(3).stride(2));
    let features = Sequential::new()
        .push(conv(dev, spec.input[0], 64, 11, 4, 2, true, init)?)
        .push(relu())
        .push(pool())
        .push(conv(dev, 64, 192, 5, 1, 2, true, init)?)
        .push(relu())
        .push(pool())
        .push(conv(dev, 192, 384, 3, 1, 1, true, init)?)
        .push(relu())
        .push(conv(dev, 384, 256, 3, 1, 1, true, init)?)
        .push(relu())
        .push(conv(dev, 256, 256, 3, 1, 1, true, init)?)
        .push(relu())
        .push(pool());
    let classifier = Sequential::new()
        .push(Dropout::new(0.5, init)?)
        .push(Linear::new(dev, 256 * 6 * 6, 4096, true, init)?)
        .push(relu())
        .push(Dropout::new(0.5, init)?)
        .push(Linear::new(dev, 4096, 4096, true, init)?)
        .push(relu())
        .push(Linear::new(dev, 4096, spec.classes, true, init)?);
    Ok(Sequential::new()
        .push_named("features", features)
        .push_named("avgpool", AdaptiveAvgPool2d::new([6, 6]))
        .push_named("flatten", Flatten::new())
        .push_named("classifier", classifier))
}

/// VGG configurations: output channels of each 3×3 convolution, 0 for a 2×2 max pool.
const VGG11: &[usize] = &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
const VGG16: &[usize] = &[64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];

/// VGG (Simonyan & Zisserman 2015) as torchvision builds it, optionally with
/// batch-norm after each convolution: VGG-11 132,863,336, VGG-16 138,357,544,
/// VGG-16-BN 138,365,992 parameters at 1000 classes.
fn vgg(cfg: &[usize], bn: bool, spec: ModelSpec, dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    zoo_spec("VGG", spec)?;
    let mut features = Sequential::new();
    let mut c_in = spec.input[0];
    for &v in cfg {
        if v == 0 {
            features = features.push(MaxPool2d::new(Pool2dConfig::new(2)));
            continue;
        }
        features = features.push(conv(dev, c_in, v, 3, 1, 1, true, init)?);
        if bn {
            features = features.push(BatchNorm::new_2d(dev, v)?);
        }
        features = features.push(relu());
        c_in = v;
    }
    let classifier = Sequential::new()
        .push(Linear::new(dev, 512 * 7 * 7, 4096, true, init)?)
        .push(relu())
        .push(Dropout::new(0.5, init)?)
        .push(Linear::new(dev, 4096, 4096, true, init)?)
        .push(relu())
        .push(Dropout::new(0.5, init)?)
        .push(Linear::new(dev, 4096, spec.classes, true, init)?);
    Ok(Sequential::new()
        .push_named("features", features)
        .push_named("avgpool", AdaptiveAvgPool2d::new([7, 7]))
        .push_named("flatten", Flatten::new())
        .push_named("classifier", classifier))
}

/// A ResNet block kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Two 3×3 convolutions (ResNet-18/34).
    Basic,
    /// 1×1 → 3×3 (with the stride, as torchvision's v1.5) → 1×1 with expansion 4 (ResNet-50).
    Bottleneck,
}

/// torchvision's `BasicBlock` or `Bottleneck` from `c_in` channels with `planes` (×4 for a bottleneck).
pub fn resnet_block(dev: &Device, bottleneck: bool, c_in: usize, planes: usize, stride: usize, init: &mut Initializer) -> Result<Residual> {
    let bn = |c| BatchNorm::new_2d(dev, c);
    let (body, c_out) = if bottleneck {
        let body = Sequential::new()
            .push_named("conv1", conv(dev, c_in, planes, 1, 1, 0, false, init)?)
            .push_named("bn1", bn(planes)?)
            .push_named("relu1", relu())
            .push_named("conv2", conv(dev, planes, planes, 3, stride, 1, false, init)?)
            .push_named("bn2", bn(planes)?)
            .push_named("relu2", relu())
            .push_named("conv3", conv(dev, planes, planes * 4, 1, 1, 0, false, init)?)
            .push_named("bn3", bn(planes * 4)?);
        (body, planes * 4)
    } else {
        let body = Sequential::new()
            .push_named("conv1", conv(dev, c_in, planes, 3, stride, 1, false, init)?)
            .push_named("bn1", bn(planes)?)
            .push_named("relu", relu())
            .push_named("conv2", conv(dev, planes, planes, 3, 1, 1, false, init)?)
            .push_named("bn2", bn(planes)?);
        (body, planes)
    };
    let downsample = if stride != 1 || c_in != c_out { Some(Sequential::new().push(conv(dev, c_in, c_out, 1, stride, 0, false, init)?).push(bn(c_out)?)) } else { None };
    Ok(Residual::torchvision(body, downsample))
}

/// ResNet (He et al. 2016) as torchvision builds it: ResNet-18 11,689,512,
/// ResNet-34 21,797,672, ResNet-50 25,557,032 parameters at 1000 classes.
fn resnet(block: Block, layers: [usize; 4], spec: ModelSpec, dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    zoo_spec("ResNet", spec)?;
    let bottleneck = block == Block::Bottleneck;
    let expansion = if bottleneck { 4 } else { 1 };
    let mut net = Sequential::new()
        .push_named("conv1", conv(dev, spec.input[0], 64, 7, 2, 3, false, init)?)
        .push_named("bn1", BatchNorm::new_2d(dev, 64)?)
        .push_named("relu", relu())
        .push_named("maxpool", MaxPool2d::new(Pool2dConfig::new(3).stride(2).padding(1)));
    let mut c_in = 64;
    for (i, (&blocks, planes)) in layers.iter().zip([64, 128, 256, 512]).enumerate() {
        let mut stage = Sequential::new();
        for b in 0..blocks {
            let stride = if i > 0 && b == 0 { 2 } else { 1 };
            stage = stage.push(resnet_block(dev, bottleneck, c_in, planes, stride, init)?);
            c_in = planes * expansion;
        }
        net = net.push_named(&format!("layer{}", i + 1), stage);
    }
    Ok(net
        .push_named("avgpool", AdaptiveAvgPool2d::new([1, 1]))
        .push_named("flatten", Flatten::new())
        .push_named("fc", Linear::new(dev, 512 * expansion, spec.classes, true, init)?))
}

/// torchvision's `BasicConv2d`: convolution without bias, batch-norm (eps 0.001), ReLU.
fn basic_conv(dev: &Device, c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, init: &mut Initializer) -> Result<Sequential> {
    let mut bn = BatchNorm::new_2d(dev, c_out)?;
    bn.cfg.eps = 1e-3;
    Ok(Sequential::new().push_named("conv", conv(dev, c_in, c_out, k, stride, pad, false, init)?).push_named("bn", bn).push_named("relu", relu()))
}

/// An Inception block (Szegedy et al. 2015) as torchvision's: four branches
/// concatenated (1×1; 1×1 → 3×3; 1×1 → 3×3, torchvision's stand-in for 5×5;
/// 3×3 max pool → 1×1).
pub fn inception(dev: &Device, c_in: usize, [c1, c3r, c3, c5r, c5, pool]: [usize; 6], init: &mut Initializer) -> Result<Concat> {
    let ceil_pool = MaxPool2d::new(Pool2dConfig::new(3).stride(1).padding(1).ceil_mode(true));
    Ok(Concat::new()
        .branch("branch1", basic_conv(dev, c_in, c1, 1, 1, 0, init)?)
        .branch("branch2", Sequential::new().push(basic_conv(dev, c_in, c3r, 1, 1, 0, init)?).push(basic_conv(dev, c3r, c3, 3, 1, 1, init)?))
        .branch("branch3", Sequential::new().push(basic_conv(dev, c_in, c5r, 1, 1, 0, init)?).push(basic_conv(dev, c5r, c5, 3, 1, 1, init)?))
        .branch("branch4", Sequential::new().push(ceil_pool).push(basic_conv(dev, c_in, pool, 1, 1, 0, init)?)))
}

/// GoogLeNet (Inception v1) as torchvision builds it without the auxiliary
/// heads: 6,624,904 parameters at 1000 classes.
pub fn googlenet(spec: ModelSpec, dev: &Device, init: &mut Initializer) -> Result<Sequential> {
    zoo_spec("GoogLeNet", spec)?;
    let pool = |k: usize| MaxPool2d::new(Pool2dConfig::new(k).stride(2).ceil_mode(true));
    let mut net = Sequential::new()
        .push_named("conv1", basic_conv(dev, spec.input[0], 64, 7, 2, 3, init)?)
        .push_named("maxpool1", pool(3))
        .push_named("conv2", basic_conv(dev, 64, 64, 1, 1, 0, init)?)
        .push_named("conv3", basic_conv(dev, 64, 192, 3, 1, 1, init)?)
        .push_named("maxpool2", pool(3));
    let blocks: [(&str, usize, [usize; 6]); 9] = [
        ("inception3a", 192, [64, 96, 128, 16, 32, 32]),
        ("inception3b", 256, [128, 128, 192, 32, 96, 64]),
        ("inception4a", 480, [192, 96, 208, 16, 48, 64]),
        ("inception4b", 512, [160, 112, 224, 24, 64, 64]),
        ("inception4c", 512, [128, 128, 256, 24, 64, 64]),
        ("inception4d", 512, [112, 144, 288, 32, 64, 64]),
        ("inception4e", 528, [256, 160, 320, 32, 128, 128]),
        ("inception5a", 832, [256, 160, 320, 32, 128, 128]),
        ("inception5b", 832, [384, 192, 384, 48, 128, 128]),
    ];
    for (name, c_in, cfg) in blocks {
        net = net.push_named(name, inception(dev, c_in, cfg, init)?);
        match name {
            "inception3b" => net = net.push_named("maxpool3", pool(3)),
            "inception4e" => net = net.push_named("maxpool4", pool(2)),
            _ => {}
        }
    }
    Ok(net
        .push_named("avgpool", AdaptiveAvgPool2d::new([1, 1]))
        .push_named("flatten", Flatten::new())
        .push_named("dropout", Dropout::new(0.2, init)?)
        .push_named("fc", Linear::new(dev, 1024, spec.classes, true, init)?))
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
