//! A layer written outside the crate: a squeeze-and-excitation block
//! (Hu et al., 2018) with its own parameters, its forward and a hand-written
//! backward from the library's public ops. It is gradient-checked, trained
//! inside a small network on a few MNIST batches on both devices, saved and
//! reloaded; frozen, it stops changing. `tests/parity/custom_layer.rs` runs
//! the same checks.
//!
//!     cargo run --release --example custom_layer
use wgpu_cnn::data::mnist::{self, Split};
use wgpu_cnn::nn::{check_gradients, ActivationLayer, Conv2d, Flatten, GlobalAvgPool, GradCheck, Grad, Init, Initializer, Layer, Linear, MaxPool2d, Mode, Sequential, StateEntry};
use wgpu_cnn::ops::activation::{activation_backward, activation_forward, Activation};
use wgpu_cnn::ops::avgpool::avgpool_global_forward;
use wgpu_cnn::ops::elementwise::{elementwise_add, elementwise_mul};
use wgpu_cnn::ops::gemm::{gemm, GemmConfig};
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::ops::reduce::reduce_rows;
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{TrainConfig, Trainer};
use wgpu_cnn::weights::{load_weights, save_weights, WeightsMeta};
use wgpu_cnn::{Conv2dConfig, Device, Pool2dConfig, Result, Tensor};

/// Squeeze and excitation: `y = x · σ(W₂ relu(W₁ mean_hw(x)))`, one gate per
/// channel. Parameters `fc1.weight` `[c/r, c]` and `fc2.weight` `[c, c/r]`
/// (timm's names without biases).
pub struct SqueezeExcite {
    w1: Tensor,
    w2: Tensor,
    g1: Grad,
    g2: Grad,
    /// What backward needs: x, the pooled s, the hidden relu(W₁s) and the gate.
    saved: Option<[Tensor; 4]>,
}

impl SqueezeExcite {
    /// `channels` gated through a bottleneck `reduction` times narrower.
    pub fn new(dev: &Device, channels: usize, reduction: usize, init: &mut Initializer) -> Result<SqueezeExcite> {
        let hidden = (channels / reduction).max(1);
        let w1 = Tensor::from_vec(dev, &[hidden, channels], init.weights(hidden * channels, channels, hidden))?;
        let w2 = Tensor::from_vec(dev, &[channels, hidden], init.weights(hidden * channels, hidden, channels))?;
        Ok(SqueezeExcite { g1: Grad::new(&w1)?, g2: Grad::new(&w2)?, w1, w2, saved: None })
    }
}

impl Layer for SqueezeExcite {
    fn kind(&self) -> &'static str {
        "SqueezeExcite"
    }
    fn describe(&self) -> String {
        format!("SqueezeExcite({} → {} → {})", self.w1.shape()[1], self.w1.shape()[0], self.w2.shape()[0])
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match input {
            [_, c, _, _] if *c == self.w1.shape()[1] => Ok(input.to_vec()),
            _ => Err(wgpu_cnn::Error::Shape { op: "SqueezeExcite", msg: format!("expects [n, {}, h, w], got {input:?}", self.w1.shape()[1]) }),
        }
    }
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.output_shape(x.shape())?;
        let (n, c) = (x.shape()[0], x.shape()[1]);
        let s = avgpool_global_forward(x)?.reshape(&[n, c])?;
        // [n, c] · W₁ᵀ → [n, c/r] → relu → · W₂ᵀ → [n, c] → sigmoid
        let t = GemmConfig { trans_b: true, ..GemmConfig::default() };
        let h = activation_forward(&gemm(&s, &self.w1, t)?, Activation::Relu)?;
        let gate = activation_forward(&gemm(&h, &self.w2, t)?, Activation::Sigmoid)?;
        let y = elementwise_mul(x, &gate, 1.0)?;
        self.saved = (mode == Mode::Train).then(|| [x.clone(), s, h, gate]);
        Ok(y)
    }
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor> {
        let [x, s, h, gate] = self.saved.take().ok_or_else(|| wgpu_cnn::Error::InvalidArgument { op: "SqueezeExcite", msg: "backward without a training forward".into() })?;
        let (shape, (n, c)) = (x.shape().to_vec(), (x.shape()[0], x.shape()[1]));
        let hw = shape[2] * shape[3];
        // y = x·gate: dx gets dy·gate directly, and the gate gets Σ_hw dy·x.
        let dx_direct = elementwise_mul(dy, &gate, 1.0)?;
        let dgate = reduce_rows(&elementwise_mul(dy, &x, 1.0)?.reshape(&[n * c, hw])?)?.reshape(&[n, c])?;
        // Back through the sigmoid (from its output), W₂, the relu (from its output) and W₁.
        let dz2 = activation_backward(&gate, &dgate, Activation::Sigmoid)?;
        let ta = GemmConfig { trans_a: true, ..GemmConfig::default() };
        self.g2.accumulate(gemm(&dz2, &h, ta)?)?; // [c, n]·[n, c/r]
        let dh = gemm(&dz2, &self.w2, GemmConfig::default())?; // [n, c]·[c, c/r]
        let dz1 = activation_backward(&h, &dh, Activation::Relu)?;
        self.g1.accumulate(gemm(&dz1, &s, ta)?)?; // [c/r, n]·[n, c]
        let ds = gemm(&dz1, &self.w1, GemmConfig::default())?; // [n, c]
        // The mean over h·w spreads ds/hw to every position: a gate of ones, scaled.
        let ones = Tensor::full(&x.device(), &shape, 1.0)?;
        let dx_pool = elementwise_mul(&ones, &ds, 1.0 / hw as f32)?;
        elementwise_add(&dx_direct, &dx_pool, 1.0, 1.0)
    }
    fn release(&mut self) {
        self.saved = None;
    }
    fn state(&mut self, prefix: &str) -> Vec<StateEntry<'_>> {
        let name = |n: &str| if prefix.is_empty() { n.to_string() } else { format!("{prefix}.{n}") };
        vec![StateEntry::param(name("fc1.weight"), &mut self.w1, &mut self.g1), StateEntry::param(name("fc2.weight"), &mut self.w2, &mut self.g2)]
    }
}

/// A small CNN for 28×28 digits with a squeeze-and-excitation block after each convolution.
pub fn se_net(dev: &Device, seed: u64) -> Result<Sequential> {
    let init = &mut Initializer::new(seed, Init::PytorchDefault);
    let p1 = Conv2dConfig::default().padding(1);
    Ok(Sequential::new()
        .push(Conv2d::new(dev, 1, 8, [3, 3], p1, true, init)?)
        .push(ActivationLayer::new(Activation::Relu))
        .push(SqueezeExcite::new(dev, 8, 2, init)?)
        .push(MaxPool2d::new(Pool2dConfig::new(2)))
        .push(Conv2d::new(dev, 8, 16, [3, 3], p1, true, init)?)
        .push(ActivationLayer::new(Activation::Relu))
        .push(SqueezeExcite::new(dev, 16, 4, init)?)
        .push(GlobalAvgPool::new())
        .push(Flatten::new())
        .push(Linear::new(dev, 16, 10, true, init)?))
}

/// Gradient check, training (`passes` over `batches` MNIST batches), save and
/// reload, freezing: what the example prints and the test asserts. Returns
/// the mean loss of the first pass and of the last.
pub fn run_on(dev: &Device, batches: usize, passes: usize) -> Result<(f32, f32)> {
    // 1. The block's backward against finite differences.
    let mut se = SqueezeExcite::new(dev, 6, 2, &mut Initializer::new(3, Init::PytorchDefault))?;
    let x = Tensor::from_vec(dev, &[2, 6, 5, 5], (0..300).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect())?;
    let report = check_gradients(&mut se, &x, GradCheck::default())?;
    for (name, n, worst) in &report.tensors {
        println!("  gradient check {name}: {n} entries, largest difference {worst:.2e}");
    }
    // 2. Training a few MNIST batches.
    let data = mnist::load(&mnist::embedded_dir(), Split::Train)?.take(batches * 32);
    let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.1) }))?;
    let mut t = Trainer::new(se_net(dev, 0)?, opt, TrainConfig { progress: false, batch_size: 32, ..TrainConfig::default() }, dev.clone())?;
    let mut means = Vec::new();
    for pass in 0..passes {
        let mut sum = 0.0;
        for idx in data.batches(32, Some(pass as u64)) {
            let (x, labels) = data.batch(dev, &idx, None)?;
            sum += t.train_step(&x, &labels)?.to_vec()?[0];
        }
        means.push(sum / batches as f32);
    }
    println!("  {passes} passes over {batches} batches: mean loss {:.4} → {:.4}", means[0], means[passes - 1]);
    // 3. Saved and reloaded: the same outputs (the block's names are in the file).
    let path = std::env::temp_dir().join(format!("wgpu-cnn-se-{}-{}.safetensors", std::process::id(), dev.is_gpu()));
    save_weights(&path, &mut t.model, &WeightsMeta::default())?;
    let mut again = se_net(dev, 99)?;
    load_weights(&path, &mut again)?;
    std::fs::remove_file(&path).ok();
    let (xb, _) = data.batch(dev, &(0..8).collect::<Vec<_>>(), None)?;
    let (a, b) = (t.model.forward(&xb, Mode::Eval)?.to_vec()?, again.forward(&xb, Mode::Eval)?.to_vec()?);
    if a != b {
        return Err(wgpu_cnn::Error::InvalidArgument { op: "custom_layer", msg: "the reloaded network computes something else".into() });
    }
    println!("  saved and reloaded: the same logits; state names {:?}", t.model.state("").iter().map(|e| e.name.clone()).filter(|n| n.contains("fc")).collect::<Vec<_>>());
    // 4. Frozen by name like any built-in layer: its weights stop changing.
    t.model.freeze(&["2"])?;
    let before = (param(&mut t.model, "2.fc1.weight")?, param(&mut t.model, "4.weight")?);
    let (x, labels) = data.batch(dev, &(0..32).collect::<Vec<_>>(), None)?;
    t.train_step(&x, &labels)?;
    let after = (param(&mut t.model, "2.fc1.weight")?, param(&mut t.model, "4.weight")?);
    if before.0 != after.0 || before.1 == after.1 {
        return Err(wgpu_cnn::Error::InvalidArgument { op: "custom_layer", msg: "a frozen block's weights changed".into() });
    }
    println!("  frozen: the first block's weights stay put while the rest trains");
    Ok((means[0], means[passes - 1]))
}

/// The values of parameter `name`.
fn param(model: &mut dyn Layer, name: &str) -> Result<Vec<f32>> {
    for e in model.state("") {
        if let (true, wgpu_cnn::nn::State::Param { value, .. }) = (e.name == name, e.state) {
            return value.to_vec();
        }
    }
    Err(wgpu_cnn::Error::InvalidArgument { op: "custom_layer", msg: format!("no parameter `{name}`") })
}

#[allow(dead_code)]
fn main() -> Result<()> {
    env_logger::init();
    let mut devices = vec![Device::Cpu];
    match Device::gpu() {
        Ok(gpu) => devices.push(gpu),
        Err(e) => println!("no GPU adapter ({e}): the CPU path only"),
    }
    for dev in &devices {
        println!("{dev}:");
        run_on(dev, 20, 3)?;
    }
    Ok(())
}
