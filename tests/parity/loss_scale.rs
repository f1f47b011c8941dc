//! Dynamic loss scaling (`shaders/loss_scale.wgsl` on the GPU, decided on
//! the device; the host's `LossScaleState` on the CPU path): the same skips,
//! scales and weights on both devices.

use wgpu_cnn::data::Dataset;
use wgpu_cnn::nn::{models, Init, Initializer, Layer};
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{TrainConfig, Trainer};
use wgpu_cnn::Device;

use crate::harness::random;
use crate::test_device;

fn tiny_data() -> Dataset {
    let n = 16;
    let images: Vec<f32> = random(3, n * 784).iter().map(|v| v.abs()).collect();
    Dataset { images, labels: (0..n as i64).map(|i| i % 10).collect(), item_shape: [1, 28, 28] }
}

/// Dynamic loss scaling: a scale that makes the gradients overflow skips the
/// step (weights and optimiser state untouched, the scale halved, the skip
/// counted); power-of-two scales otherwise change nothing, bit for bit; the
/// scale grows after `growth_interval` clean steps; checkpoints keep it.
fn loss_scaling(dev: &Device) {
    use wgpu_cnn::train::{LossScale, LossScaleState};
    let data = tiny_data();
    let (x, labels) = data.batch(dev, &(0..16).collect::<Vec<_>>(), None).unwrap();
    let params = |t: &mut Trainer| -> Vec<Vec<f32>> { t.model.parameters("").unwrap().iter().map(|p| p.value.to_vec().unwrap()).collect() };
    let momentum = || Optimizer::new(OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.05) })).unwrap();
    let scaled = |ls: LossScale| {
        let model = models::lenet5(dev, &mut Initializer::new(4, Init::PytorchDefault)).unwrap();
        Trainer::new(model, momentum(), TrainConfig { progress: false, batch_size: 16, loss_scale: Some(ls), ..TrainConfig::default() }, dev.clone()).unwrap()
    };
    // Inputs of a million times the usual size and a scale of 2^120 overflow
    // the weight gradients: skipped.
    let big: Vec<f32> = x.to_vec().unwrap().iter().map(|v| v * 1e6).collect();
    let big = wgpu_cnn::Tensor::from_vec(dev, x.shape(), big).unwrap();
    let mut t = scaled(LossScale { init_scale: 2f32.powi(120), growth_interval: 2, ..LossScale::default() });
    let before = params(&mut t);
    t.train_step(&big, &labels).unwrap();
    assert!(params(&mut t) == before, "a skipped step leaves the weights alone on {dev}");
    // No optimiser state, or (on the GPU, which decides on the device) state that is still zero.
    assert!(t.optimizer.state_tensors().iter().all(|(_, s)| s.to_vec().unwrap().iter().all(|v| *v == 0.0)), "and leaves no optimiser state");
    assert_eq!(t.loss_scale_state().unwrap(), Some(LossScaleState { scale: 2f32.powi(119), growth_tracker: 0, skipped_steps: 1 }));
    // Power-of-two scales are exact: the same weights as without scaling.
    let mut a = scaled(LossScale { init_scale: 1024.0, growth_interval: 2, ..LossScale::default() });
    let model = models::lenet5(dev, &mut Initializer::new(4, Init::PytorchDefault)).unwrap();
    let mut b = Trainer::new(model, momentum(), TrainConfig { progress: false, batch_size: 16, ..TrainConfig::default() }, dev.clone()).unwrap();
    for _ in 0..3 {
        a.train_step(&x, &labels).unwrap();
        b.train_step(&x, &labels).unwrap();
    }
    assert!(params(&mut a) == params(&mut b), "scaled by 1024 and 2048 then unscaled: the same bits on {dev}");
    assert_eq!(a.loss_scale_state().unwrap(), Some(LossScaleState { scale: 2048.0, growth_tracker: 1, skipped_steps: 0 }), "grown after two clean steps");
    // On the GPU a steady scaled step is still one submit with no readback
    // (a readback would be a second submit), no new bind groups and at most
    // the two usual queue writes: the skip is decided on the device. A device
    // of its own, so other tests' work does not reach its counters.
    if dev.is_gpu() {
        let own = Device::gpu_with(&wgpu_cnn::GpuOptions::default()).unwrap();
        let ctx = own.gpu_context().unwrap().clone();
        let (x, labels) = data.batch(&own, &(0..16).collect::<Vec<_>>(), None).unwrap();
        let steady = |loss_scale: Option<LossScale>| {
            let model = models::lenet5(&own, &mut Initializer::new(4, Init::PytorchDefault)).unwrap();
            let cfg = TrainConfig { progress: false, batch_size: 16, loss_scale, ..TrainConfig::default() };
            let mut t = Trainer::new(model, momentum(), cfg, own.clone()).unwrap();
            for _ in 0..4 {
                t.train_step(&x, &labels).unwrap();
            }
            let before = ctx.host_counters();
            t.train_step(&x, &labels).unwrap();
            ctx.host_counters() - before
        };
        let (plain, d) = (steady(None), steady(Some(LossScale::default())));
        assert_eq!((d.submits, d.bind_groups, d.passes), (1, 0, 1), "{d:?}");
        assert!(d.queue_writes <= 2, "{d:?}");
        // LeNet-5's ten gradients: the scaling, two unscaling dispatches (seven a dispatch) and the update.
        assert_eq!(d.dispatches, plain.dispatches + 4, "{d:?} against {plain:?}");
    }
    // Kept by checkpoints.
    let path = crate::training::tmp(&format!("loss-scale-{}.ckpt", dev.is_gpu()));
    wgpu_cnn::checkpoint::save(&path, &mut a).unwrap();
    let mut c = scaled(LossScale { init_scale: 1024.0, growth_interval: 2, ..LossScale::default() });
    wgpu_cnn::checkpoint::load(&path, &mut c).unwrap();
    assert_eq!(c.loss_scale_state().unwrap(), a.loss_scale_state().unwrap());
    std::fs::remove_file(&path).ok();
    // Through fit (its dry run records the gated step without running it).
    let mut f = scaled(LossScale { init_scale: 1024.0, growth_interval: 2, ..LossScale::default() });
    f.fit(&data, None, |_| wgpu_cnn::train::Control::Continue).unwrap();
    assert_eq!(f.loss_scale_state().unwrap(), Some(LossScaleState { scale: 1024.0, growth_tracker: 1, skipped_steps: 0 }), "one clean step of one epoch");
    // Bad settings are errors.
    let model = models::lenet5(dev, &mut Initializer::new(4, Init::PytorchDefault)).unwrap();
    let bad = TrainConfig { loss_scale: Some(LossScale { backoff_factor: 1.5, ..LossScale::default() }), ..TrainConfig::default() };
    assert!(Trainer::new(model, momentum(), bad, dev.clone()).is_err());
}
test_device!(loss_scaling_dev, loss_scaling);

/// A gradient larger than one storage binding (an MLP's 784×400 weight under
/// a 1 MiB limit) is unscaled in windows, and the step matches the CPU path.
#[test]
fn gradients_past_one_binding() {
    use wgpu_cnn::train::LossScale;
    crate::harness::with_gpu("loss_scale::gradients_past_one_binding", |_| {
        let small = Device::gpu_with(&wgpu_cnn::GpuOptions { max_binding_bytes: Some(1 << 20), ..wgpu_cnn::GpuOptions::default() }).unwrap();
        let data = tiny_data();
        let cfg = TrainConfig { progress: false, batch_size: 16, loss_scale: Some(LossScale { init_scale: 4096.0, ..LossScale::default() }), ..TrainConfig::default() };
        let run = |dev: &Device| {
            let model = models::mlp(dev, 400, 0.0, &mut Initializer::new(5, Init::KaimingUniform)).unwrap();
            let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig::new(0.05))).unwrap();
            let mut t = Trainer::new(model, opt, cfg.clone(), dev.clone()).unwrap();
            let (x, labels) = data.batch(dev, &(0..16).collect::<Vec<_>>(), None).unwrap();
            for _ in 0..2 {
                t.train_step(&x, &labels).unwrap();
            }
            t.model.parameters("").unwrap().into_iter().map(|p| p.value.to_vec().unwrap()).collect::<Vec<_>>()
        };
        let (gpu, cpu) = (run(&small), run(&Device::Cpu));
        for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
            wgpu_cnn::Tolerance::new(2e-5, 1e-3).assert(&format!("parameter {i} under a 1 MiB binding"), g, c);
        }
    });
}
