//! Layers and models: summaries, whole-network gradients GPU vs CPU vs finite
//! differences, and a few optimiser steps on both devices.

use wgpu_cnn::nn::{models, ActivationLayer, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Init, Initializer, Layer, Linear, Mode, Residual, Sequential};
use wgpu_cnn::ops::activation::Activation;
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::ops::softmax_xent::softmax_xent;
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{TrainConfig, Trainer};
use wgpu_cnn::{Conv2dConfig, Device, Tensor, Tolerance};

use crate::harness::{random, with_gpu};

#[test]
fn summary_of_the_course_notes_network() {
    let mut net = models::course_notes_net(&Device::Cpu, &mut Initializer::new(0, Init::PytorchDefault)).unwrap();
    let s = net.summary(&[1, 3, 128, 128]).unwrap();
    let shapes: Vec<Vec<usize>> = s.rows.iter().map(|r| r.output.clone()).collect();
    assert_eq!(shapes, vec![vec![1, 3, 64, 64], vec![1, 12, 48, 48], vec![1, 12, 16, 16], vec![1, 3072], vec![1, 128], vec![1, 128], vec![1, 10]]);
    assert_eq!(s.params_of("Conv2d"), 10_416);
    assert_eq!(s.params_of("Linear"), 394_634);
    let table = s.to_string();
    assert!(table.contains("12@48×48") && table.contains("394,634") && table.contains("10,416"), "{table}");
    let mut lenet = models::lenet5(&Device::Cpu, &mut Initializer::new(0, Init::PytorchDefault)).unwrap();
    assert_eq!(lenet.summary(&[1, 1, 28, 28]).unwrap().total_params(), 61_706);
    assert!(net.summary(&[1, 3, 32, 32]).is_err(), "a 17×17 kernel does not fit 16×16");
}

/// Loss and all parameter gradients of `model` on one batch.
fn grads(model: &mut Sequential, x: &Tensor, labels: &[i64]) -> (f32, Vec<(String, Vec<f32>)>) {
    model.zero_grad();
    let logits = model.forward(x, Mode::Train).unwrap();
    let (loss, dlogits) = softmax_xent(&logits, labels, Default::default()).unwrap();
    model.backward(&dlogits).unwrap();
    let g = model.parameters("").unwrap().into_iter().map(|p| (p.name, p.grad.to_vec().unwrap())).collect();
    (loss.to_vec().unwrap()[0], g)
}

fn loss_of(model: &mut Sequential, x: &Tensor, labels: &[i64]) -> f64 {
    let logits = model.forward(x, Mode::Train).unwrap();
    softmax_xent(&logits, labels, Default::default()).unwrap().0.to_vec().unwrap()[0] as f64
}

/// CPU gradients against central differences at a few coordinates of each parameter.
fn check_fd(model: &mut Sequential, x: &Tensor, labels: &[i64], analytic: &[(String, Vec<f32>)]) {
    let eps = 1e-3f32;
    for (pi, (name, g)) in analytic.iter().enumerate() {
        for &k in &[0, g.len() / 2, g.len() - 1] {
            let bump = |model: &mut Sequential, d: f32| {
                let mut ps = model.parameters("").unwrap();
                let p = &mut ps[pi];
                let mut v = p.value.to_vec().unwrap();
                v[k] += d;
                p.value.write(&v).unwrap();
            };
            bump(model, eps);
            let up = loss_of(model, x, labels);
            bump(model, -2.0 * eps);
            let down = loss_of(model, x, labels);
            bump(model, eps);
            let numeric = ((up - down) / (2.0 * eps as f64)) as f32;
            // f32 losses near 2.3 differ in the 7th digit: ~1e-4 of noise at eps 1e-3.
            Tolerance::new(5e-4, 5e-2).assert(&format!("{name}[{k}] vs finite differences"), &[g[k]], &[numeric]);
        }
    }
}

fn compare_devices(build: impl Fn(&Device) -> Sequential, x_shape: &[usize], fd: bool) {
    let labels: Vec<i64> = (0..x_shape[0] as i64).map(|i| (i * 3) % 10).collect();
    let xv = random(7, x_shape.iter().product());
    let mut cpu = build(&Device::Cpu);
    let x = Tensor::from_slice(&Device::Cpu, x_shape, &xv).unwrap();
    let (cpu_loss, cpu_grads) = grads(&mut cpu, &x, &labels);
    if fd {
        check_fd(&mut cpu, &x, &labels, &cpu_grads);
    }
    with_gpu("nn::compare_devices", |dev| compare_with_cpu(dev, &build, x_shape, cpu_loss, &cpu_grads, &xv, &labels));
}

#[allow(clippy::too_many_arguments)]
fn compare_with_cpu(dev: &Device, build: &dyn Fn(&Device) -> Sequential, x_shape: &[usize], cpu_loss: f32, cpu_grads: &[(String, Vec<f32>)], xv: &[f32], labels: &[i64]) {
    let mut gpu = build(dev);
    let (gpu_loss, gpu_grads) = grads(&mut gpu, &Tensor::from_slice(dev, x_shape, xv).unwrap(), labels);
    Tolerance::new(1e-5, 1e-4).assert("loss GPU vs CPU", &[gpu_loss], &[cpu_loss]);
    for ((name, g), (_, c)) in gpu_grads.iter().zip(cpu_grads) {
        Tolerance::new(2e-5, 1e-3).assert(&format!("{name} gradient GPU vs CPU"), g, c);
    }
}

/// Loss and every gradient of `build`'s model on `dev` against the CPU path
/// (for devices other than the shared one, e.g. with forced small limits).
pub(crate) fn gradients_match_cpu(dev: &Device, build: impl Fn(&Device) -> Sequential, x_shape: &[usize]) {
    let labels: Vec<i64> = (0..x_shape[0] as i64).map(|i| (i * 3) % 10).collect();
    let xv = random(7, x_shape.iter().product());
    let mut cpu = build(&Device::Cpu);
    let (cpu_loss, cpu_grads) = grads(&mut cpu, &Tensor::from_slice(&Device::Cpu, x_shape, &xv).unwrap(), &labels);
    compare_with_cpu(dev, &build, x_shape, cpu_loss, &cpu_grads, &xv, &labels);
}

/// LeNet-5 on a batch of 8: every parameter gradient, GPU against CPU, and
/// the CPU against finite differences.
#[test]
fn lenet5_gradients() {
    compare_devices(|d| models::lenet5(d, &mut Initializer::new(3, Init::PytorchDefault)).unwrap(), &[8, 1, 28, 28], true);
}

/// A residual block with a strided projection shortcut and batch-norm. Tanh,
/// not ReLU: a finite difference that straddles a kink is meaningless.
#[test]
fn residual_network_gradients() {
    let build = |d: &Device| {
        let init = &mut Initializer::new(5, Init::KaimingNormal);
        let body = Sequential::new()
            .push(Conv2d::new(d, 3, 4, [3, 3], Conv2dConfig::default().padding(1).stride(2), false, init).unwrap())
            .push(BatchNorm::new_2d(d, 4).unwrap())
            .push(ActivationLayer::new(Activation::Tanh))
            .push(Conv2d::new(d, 4, 4, [3, 3], Conv2dConfig::default().padding(1), false, init).unwrap());
        let shortcut = Sequential::new().push(Conv2d::new(d, 3, 4, [1, 1], Conv2dConfig::default().stride(2), false, init).unwrap());
        Sequential::new()
            .push(Residual::new(body, Some(shortcut)))
            .push(ActivationLayer::new(Activation::Tanh))
            .push(Residual::new(Sequential::new().push(Conv2d::new(d, 4, 4, [3, 3], Conv2dConfig::default().padding(1), true, init).unwrap()), None))
            .push(GlobalAvgPool::new())
            .push(Flatten::new())
            .push(Linear::new(d, 4, 10, true, init).unwrap())
    };
    compare_devices(build, &[4, 3, 8, 8], true);
}

/// The ReLU fusions change nothing: batch-norm with the ReLU after it, a
/// convolution's col2im applying the backward of the ReLU before it, and a
/// residual block's sum with the ReLU after it give, loss and every gradient
/// bit for bit, what the same network gives with each ReLU wrapped in a
/// Sequential of its own (which no layer fuses with).
fn relu_fusions_are_exact(dev: &Device) {
    let build = |fuse: bool| {
        let init = &mut Initializer::new(21, Init::KaimingNormal);
        let relu = |s: Sequential| if fuse { s.push(ActivationLayer::new(Activation::Relu)) } else { s.push(Sequential::new().push(ActivationLayer::new(Activation::Relu))) };
        let conv = |c_in, c_out, stride, init: &mut Initializer| Conv2d::new(dev, c_in, c_out, [3, 3], Conv2dConfig::default().padding(1).stride(stride), false, init).unwrap();
        let stem = relu(Sequential::new().push(conv(3, 4, 1, init)).push(BatchNorm::new_2d(dev, 4).unwrap()));
        let body1 = relu(Sequential::new().push(conv(4, 4, 1, init)).push(BatchNorm::new_2d(dev, 4).unwrap())).push(conv(4, 4, 1, init)).push(BatchNorm::new_2d(dev, 4).unwrap());
        let body2 = relu(Sequential::new().push(conv(4, 8, 2, init)).push(BatchNorm::new_2d(dev, 8).unwrap())).push(conv(8, 8, 1, init)).push(BatchNorm::new_2d(dev, 8).unwrap());
        let shortcut = Sequential::new().push(Conv2d::new(dev, 4, 8, [1, 1], Conv2dConfig::default().stride(2), false, init).unwrap()).push(BatchNorm::new_2d(dev, 8).unwrap());
        let net = relu(stem.push(Residual::new(body1, None)));
        relu(net.push(Residual::new(body2, Some(shortcut)))).push(GlobalAvgPool::new()).push(Flatten::new()).push(Linear::new(dev, 8, 10, true, init).unwrap())
    };
    let labels: Vec<i64> = (0..4).map(|i| (i * 3) % 10).collect();
    let x = Tensor::from_slice(dev, &[4, 3, 8, 8], &random(8, 4 * 3 * 64)).unwrap();
    let (fused_loss, fused) = grads(&mut build(true), &x, &labels);
    let (plain_loss, plain) = grads(&mut build(false), &x, &labels);
    assert_eq!(fused_loss.to_bits(), plain_loss.to_bits(), "loss on {dev}");
    assert_eq!(fused.len(), plain.len());
    for ((name, f), (_, p)) in fused.iter().zip(&plain) {
        assert_eq!(f.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), p.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{name} gradient on {dev}");
    }
}
crate::test_device!(relu_fusions, relu_fusions_are_exact);

/// The MLP with batch-norm and dropout: the dropout masks agree across devices.
#[test]
fn mlp_gradients() {
    compare_devices(|d| models::mlp(d, 32, 0.25, &mut Initializer::new(9, Init::KaimingUniform)).unwrap(), &[6, 1, 28, 28], false);
}

/// Five SGD steps (lr 0.01, momentum 0.9) on one batch: CPU and GPU weights
/// agree after every step and the loss goes down.
#[test]
fn five_sgd_steps_cpu_and_gpu() {
    let labels: Vec<i64> = (0..16).map(|i| i % 10).collect();
    let xv = random(11, 16 * 784);
    let trainer = |d: &Device| {
        let model = models::lenet5(d, &mut Initializer::new(1, Init::PytorchDefault)).unwrap();
        let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.01) })).unwrap();
        Trainer::new(model, opt, TrainConfig { progress: false, ..Default::default() }, d.clone()).unwrap()
    };
    let mut cpu = trainer(&Device::Cpu);
    let xc = Tensor::from_slice(&Device::Cpu, &[16, 1, 28, 28], &xv).unwrap();
    let cpu_steps: Vec<(f32, Vec<Vec<f32>>)> = (0..5)
        .map(|_| {
            let l = cpu.train_step(&xc, &labels).unwrap().to_vec().unwrap()[0];
            (l, cpu.model.parameters("").unwrap().iter().map(|p| p.value.to_vec().unwrap()).collect())
        })
        .collect();
    let losses: Vec<f32> = cpu_steps.iter().map(|s| s.0).collect();
    assert!(losses[4] < losses[0], "loss did not decrease: {losses:?}");
    with_gpu("nn::five_sgd_steps_cpu_and_gpu", |dev| {
        let mut gpu = trainer(dev);
        let xg = Tensor::from_slice(dev, &[16, 1, 28, 28], &xv).unwrap();
        for (step, (cl, cw)) in cpu_steps.iter().enumerate() {
            let l = gpu.train_step(&xg, &labels).unwrap().to_vec().unwrap()[0];
            Tolerance::new(1e-5, 1e-4).assert(&format!("loss at step {}", step + 1), &[l], &[*cl]);
            for (p, w) in gpu.model.parameters("").unwrap().iter().zip(cw) {
                Tolerance::new(1e-5, 1e-4).assert(&format!("{} after step {}", p.name, step + 1), &p.value.to_vec().unwrap(), w);
            }
        }
    });
}

/// `backward_params` (what the trainer calls: the input needs no gradient)
/// gives exactly the parameter gradients `backward` gives, for a model that
/// starts with a convolution and one that starts with a parameter-less Flatten.
fn backward_params_matches_backward(dev: &Device) {
    type Build = fn(&Device) -> Sequential;
    let nets: [(Build, [usize; 4]); 2] = [
        (|d| models::lenet5(d, &mut Initializer::new(3, Init::PytorchDefault)).unwrap(), [4, 1, 28, 28]),
        (|d| models::mlp(d, 16, 0.0, &mut Initializer::new(4, Init::PytorchDefault)).unwrap(), [4, 1, 28, 28]),
    ];
    for (build, shape) in nets {
        let x = Tensor::from_slice(dev, &shape, &random(8, shape.iter().product())).unwrap();
        let labels = [1, 5, 7, 9];
        let (_, full) = grads(&mut build(dev), &x, &labels);
        let mut m = build(dev);
        m.zero_grad();
        let logits = m.forward(&x, Mode::Train).unwrap();
        let (_, dlogits) = softmax_xent(&logits, &labels, Default::default()).unwrap();
        m.backward_params(&dlogits).unwrap();
        for (p, (name, g)) in m.parameters("").unwrap().into_iter().zip(&full) {
            assert_eq!(&p.grad.to_vec().unwrap(), g, "{name} on {dev}");
        }
    }
}
crate::test_device!(backward_params_equals_backward, backward_params_matches_backward);

/// The issue-15 layers in one network: transposed convolution (upsampling by
/// 2), nearest and bilinear upsampling, an Inception-style Concat, a
/// torchvision bottleneck block and adaptive pooling: every gradient GPU
/// against CPU, and against finite differences where the network is smooth.
#[test]
fn decoder_and_branch_gradients() {
    use wgpu_cnn::nn::{AdaptiveAvgPool2d, Concat, ConvTranspose2d, Upsample};
    use wgpu_cnn::ops::upsample::UpsampleMode;
    let build = |d: &Device| {
        let init = &mut Initializer::new(11, Init::PytorchDefault);
        let p1 = Conv2dConfig::default().padding(1);
        let branches = Concat::new()
            .branch("a", Conv2d::new(d, 4, 3, [1, 1], Conv2dConfig::default(), true, init).unwrap())
            .branch("b", Sequential::new().push(Upsample::scale(2, UpsampleMode::Nearest)).push(Conv2d::new(d, 4, 2, [3, 3], p1.stride(2), true, init).unwrap()));
        Sequential::new()
            .push(ConvTranspose2d::new(d, 2, 4, [3, 3], Conv2dConfig::default().stride(2).padding(1), [1, 1], true, init).unwrap())
            // Smooth, so finite differences do not straddle a kink.
            .push(ActivationLayer::new(Activation::Tanh))
            .push(branches)
            .push(Upsample::to_size([5, 7], UpsampleMode::Bilinear))
            .push(AdaptiveAvgPool2d::new([2, 3]))
            .push(Flatten::new())
            .push(Linear::new(d, 5 * 6, 10, true, init).unwrap())
    };
    compare_devices(build, &[3, 2, 5, 4], true);
    // A torchvision bottleneck block (ReLUs: no finite differences) and a basic one.
    let blocks = |d: &Device| {
        let init = &mut Initializer::new(12, Init::PytorchDefault);
        Sequential::new()
            .push(wgpu_cnn::nn::models::resnet_block(d, true, 3, 2, 2, init).unwrap())
            .push(wgpu_cnn::nn::models::resnet_block(d, false, 8, 8, 1, init).unwrap())
            .push(AdaptiveAvgPool2d::new([1, 1]))
            .push(Flatten::new())
            .push(Linear::new(d, 8, 10, true, init).unwrap())
    };
    compare_devices(blocks, &[4, 3, 6, 6], false);
}

/// A small convolutional autoencoder (strided convolutions, ConvTranspose2d
/// decoder, MSE; as `examples/autoencoder.rs`) learns to reconstruct MNIST
/// digits: the loss falls by more than half in 30 Adam steps, identically
/// (within tolerance) on both devices.
fn autoencoder_learns(dev: &Device) {
    use wgpu_cnn::nn::ConvTranspose2d;
    use wgpu_cnn::ops::loss::{loss_mse, Reduction};
    let init = &mut Initializer::new(5, Init::PytorchDefault);
    let down = Conv2dConfig::default().stride(2).padding(1);
    let mut model = Sequential::new()
        .push(Conv2d::new(dev, 1, 8, [3, 3], down, true, init).unwrap())
        .push(ActivationLayer::new(Activation::Relu))
        .push(ConvTranspose2d::new(dev, 8, 1, [3, 3], down, [1, 1], true, init).unwrap())
        .push(ActivationLayer::new(Activation::Sigmoid));
    let mut opt = Optimizer::new(OptimizerConfig::Adam(wgpu_cnn::ops::optim::AdamConfig::adam(1e-2))).unwrap();
    let data = crate::training::mnist_slice(wgpu_cnn::data::mnist::Split::Train, 32);
    let (x, _) = data.batch(dev, &(0..32).collect::<Vec<_>>(), None).unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        model.zero_grad();
        let y = model.forward(&x, Mode::Train).unwrap();
        let (loss, dy) = loss_mse(&y, &x, Reduction::Mean).unwrap();
        model.backward_params(&dy).unwrap();
        opt.step(&mut model).unwrap();
        losses.push(loss.to_vec().unwrap()[0]);
    }
    assert!(losses[29] < 0.5 * losses[0], "reconstruction MSE {} → {} on {dev}", losses[0], losses[29]);
}
crate::test_device!(autoencoder, autoencoder_learns);
