//! Reliability (issue 8): wgpu failures come back as errors and the device
//! keeps working; a lost device fails every call promptly; waits time out.
//! Every test here opens its own device: faults must not reach the shared one.

use std::time::{Duration, Instant};

use wgpu_cnn::data::mnist::Split;
use wgpu_cnn::device::GpuOptions;
use wgpu_cnn::ops::gemm::{gemm, GemmConfig};
use wgpu_cnn::train::{Control, TrainConfig};
use wgpu_cnn::{fault, Device, Error, Tensor};

use crate::harness::{random, with_gpu};
use crate::training::{lenet_trainer, mnist_slice, sgd};

/// A private GPU with `opts`.
fn private(opts: GpuOptions) -> Device {
    Device::gpu_with(&opts).expect("a second device on the test adapter")
}

/// A small GEMM on `dev` equals the CPU path's: the device still works.
#[track_caller]
fn still_works(dev: &Device) {
    let (a, b) = (random(1, 6 * 5), random(2, 5 * 4));
    let run = |d: &Device| {
        let ta = Tensor::from_vec(d, &[6, 5], a.clone()).unwrap();
        let tb = Tensor::from_vec(d, &[5, 4], b.clone()).unwrap();
        gemm(&ta, &tb, GemmConfig::default()).unwrap().to_vec().unwrap()
    };
    wgpu_cnn::Tolerance::new(1e-5, 1e-5).check("gemm after a fault", &run(dev), &run(&Device::Cpu)).unwrap();
}

#[test]
fn invalid_shader_is_an_error() {
    with_gpu("reliability::invalid_shader_is_an_error", |_| {
        let dev = private(GpuOptions::default());
        // A syntax error, then a type error that parses but fails validation.
        let e = fault::compile_wgsl(&dev, "@compute @workgroup_size(1) fn main( {").unwrap_err();
        assert!(matches!(e, Error::Kernel { kernel: "fault::compile_wgsl", .. }), "{e}");
        let typed = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
                     @compute @workgroup_size(1) fn main() { x[0] = vec2<f32>(1.0, 2.0); }";
        let e = fault::compile_wgsl(&dev, typed).unwrap_err();
        assert!(matches!(e, Error::Kernel { .. }) && e.to_string().contains("fault::compile_wgsl"), "{e}");
        // A valid one compiles, and the library's own kernels still run.
        let ok = "@group(0) @binding(0) var<storage, read_write> x: array<f32>;\n\
                  @compute @workgroup_size(1) fn main() { x[0] = 1.0; }";
        fault::compile_wgsl(&dev, ok).unwrap();
        still_works(&dev);
    });
}

#[test]
fn invalid_binding_is_an_error() {
    with_gpu("reliability::invalid_binding_is_an_error", |_| {
        let dev = private(GpuOptions::default());
        fault::record_undersized_uniform(&dev).unwrap();
        let e = dev.synchronize().unwrap_err();
        assert!(matches!(e, Error::Wgpu(_)), "{e}");
        assert!(e.to_string().contains("elementwise_fill"), "the error should name the kernel's pass: {e}");
        still_works(&dev);
        dev.synchronize().unwrap();
    });
}

#[test]
fn lost_device_fails_every_call_promptly() {
    with_gpu("reliability::lost_device_fails_every_call_promptly", |_| {
        let dev = private(GpuOptions::default());
        let kept = Tensor::from_vec(&dev, &[4], vec![1.0; 4]).unwrap();
        let mut t = lenet_trainer(&dev, sgd(), TrainConfig { batch_size: 32, epochs: 3, log_every: 1, ..Default::default() });
        let data = mnist_slice(Split::Train, 64);
        let mut epochs = 0;
        // The device is destroyed after the first epoch, as a driver reset would lose it.
        let r = t.fit(&data, None, |_| {
            epochs += 1;
            fault::destroy(&dev).unwrap();
            Control::Continue
        });
        let e = r.unwrap_err();
        assert!(matches!(e, Error::DeviceLost(_)), "training on a lost device: {e}");
        assert_eq!(epochs, 1);
        let start = Instant::now();
        for r in [
            kept.to_vec().map(|_| ()),
            Tensor::from_vec(&dev, &[4], vec![0.0; 4]).map(|_| ()),
            gemm(&kept.clone().reshape(&[2, 2]).unwrap(), &kept.clone().reshape(&[2, 2]).unwrap(), GemmConfig::default()).map(|_| ()),
            dev.synchronize(),
        ] {
            let e = r.unwrap_err();
            assert!(matches!(e, Error::DeviceLost(_)), "after the loss: {e}");
        }
        assert!(start.elapsed() < Duration::from_secs(5), "calls on a lost device took {:?}", start.elapsed());
        assert!(dev.gpu_context().unwrap().is_lost());
        // The model's state walk and a checkpoint save say so too, instead of panicking:
        // after zero_grad, reading the parameters must zero-fill their gradients on the device.
        use wgpu_cnn::nn::Layer;
        t.model.zero_grad();
        let e = t.model.parameters("").err().expect("parameters() on a lost device");
        assert!(matches!(e, Error::DeviceLost(_)), "parameters after the loss: {e}");
        let path = std::env::temp_dir().join(format!("wgpu-cnn-lost-{}.safetensors", std::process::id()));
        let e = wgpu_cnn::checkpoint::save(&path, &mut t).unwrap_err();
        assert!(matches!(e, Error::DeviceLost(_)), "checkpoint save after the loss: {e}");
        assert!(!path.exists(), "a failed save left a file");
    });
}

#[test]
fn readback_times_out() {
    with_gpu("reliability::readback_times_out", |_| {
        // No tuning: it would wait for the GPU inside the GEMM, before the readback under test.
        let dev = private(GpuOptions { timeout: Some(Duration::from_micros(1)), autotune: false, ..GpuOptions::default() });
        // ~0.5 GFLOP: far longer than a microsecond on any adapter.
        let a = Tensor::from_vec(&dev, &[640, 640], random(3, 640 * 640)).unwrap();
        let c = gemm(&a, &a, GemmConfig::default()).unwrap();
        let e = c.to_vec().unwrap_err();
        assert!(matches!(e, Error::Timeout { op: "read", .. }), "{e}");
        assert!(e.to_string().contains("GpuOptions::timeout"));
    });
}

/// A device opened with a 1 MiB storage-binding limit and at most 16
/// workgroups per grid dimension, so the chunked and folded paths run here.
fn small_limits() -> Device {
    private(GpuOptions { max_binding_bytes: Some(1 << 20), max_workgroups_per_dimension: Some(16), ..GpuOptions::default() })
}

/// Under forced small limits, whole networks still match the CPU path:
/// LeNet-5's conv1 columns (1.9 MB at batch 24) are chunked, GEMM grids are
/// split into several dispatches, 1-D grids fold into y and z, and batch-norm over 40
/// channels folds its per-channel grid.
#[test]
fn small_limits_match_cpu() {
    with_gpu("reliability::small_limits_match_cpu", |_| {
        let dev = small_limits();
        let ctx = dev.gpu_context().unwrap();
        assert_eq!(ctx.max_binding_bytes(), 1 << 20);
        assert_eq!(ctx.limits().max_compute_workgroups_per_dimension, 16);
        use wgpu_cnn::nn::{models, Init, Initializer};
        crate::nn::gradients_match_cpu(&dev, |d| models::lenet5(d, &mut Initializer::new(3, Init::PytorchDefault)).unwrap(), &[24, 1, 28, 28]);
        crate::nn::gradients_match_cpu(&dev, |d| models::mlp(d, 40, 0.25, &mut Initializer::new(9, Init::KaimingUniform)).unwrap(), &[6, 1, 28, 28]);
        // GEMMs whose row (then column) tiles pass 16 (18 tiles of 64 on a CPU
        // adapter, 35 of 32 on a GPU): split into several dispatches.
        for (m, n) in [(1100, 200), (200, 1100)] {
            let (a, b) = (random(4, m * 40), random(5, 40 * n));
            let run = |d: &Device| {
                let ta = Tensor::from_vec(d, &[m, 40], a.clone()).unwrap();
                let tb = Tensor::from_vec(d, &[40, n], b.clone()).unwrap();
                gemm(&ta, &tb, GemmConfig::default()).unwrap().to_vec().unwrap()
            };
            wgpu_cnn::Tolerance::new(1e-5, 1e-4).check(&format!("gemm {m}×40×{n} split grid"), &run(&dev), &run(&Device::Cpu)).unwrap();
        }
        // 250,000 elements in workgroups of 256: a 16×16×4 grid.
        let v = random(6, 250_000);
        let relu = |d: &Device| {
            let t = Tensor::from_vec(d, &[250_000], v.clone()).unwrap();
            wgpu_cnn::ops::activation::activation_forward(&t, wgpu_cnn::ops::activation::Activation::Relu).unwrap().to_vec().unwrap()
        };
        assert_eq!(relu(&dev), relu(&Device::Cpu));
    });
}

/// A tensor past the binding limit may exist (ops that meet large tensors
/// bind them in windows), but a kernel without a windowed path refuses it
/// with the kernel, the sizes and the limit; zero-size work never reaches a binding.
#[test]
fn too_large_and_zero_size_are_errors() {
    with_gpu("reliability::too_large_and_zero_size_are_errors", |_| {
        let dev = small_limits();
        let t = Tensor::zeros(&dev, &[300_000]).unwrap();
        assert_eq!(t.to_vec().unwrap().len(), 300_000);
        let e = wgpu_cnn::ops::activation::activation_forward(&t, wgpu_cnn::ops::activation::Activation::Relu).unwrap_err();
        assert!(matches!(e, Error::TooLarge { limit: 1_048_576, bytes, .. } if bytes >= 1_200_000), "{e}");
        assert!(e.to_string().contains("activation_forward") && e.to_string().contains("1048576"), "{e}");
        let e = Tensor::zeros(&dev, &[4, 0]).unwrap_err();
        assert!(e.to_string().contains("zero-size"), "{e}");
        still_works(&dev);
    });
}

/// 64 MNIST images in which the first image of epoch 2's third batch (of 16)
/// is NaN: in the clean copy none is.
fn poisoned(seed: u64) -> (wgpu_cnn::data::Dataset, wgpu_cnn::data::Dataset) {
    let clean = mnist_slice(Split::Train, 64);
    let mut bad = clean.clone();
    let victim = bad.batches(16, Some(seed + 1))[2][0];
    let item: usize = bad.item_shape.iter().product();
    bad.images[victim * item + 100] = f32::NAN;
    (clean, bad)
}

/// A NaN loss stops training with an error naming the epoch and the exact
/// step, even though the loss is read back only at the end of the epoch, and
/// the checkpoint written before stays intact.
fn nan_loss_stops_training(dev: &Device) {
    let (clean, bad) = poisoned(0);
    let cfg = TrainConfig { batch_size: 16, epochs: 2, log_every: 0, ..Default::default() };
    let mut t = lenet_trainer(dev, sgd(), cfg.clone());
    t.train_epoch(&clean).unwrap();
    let path = crate::training::tmp(&format!("nan-{}.safetensors", dev.is_gpu()));
    wgpu_cnn::checkpoint::save(&path, &mut t).unwrap();
    let saved = crate::training::weights(&mut t);
    let e = t.train_epoch(&bad).unwrap_err();
    assert!(matches!(e, Error::NonFinite { epoch: 2, step: 7, .. }), "{e}");
    assert!(e.to_string().contains("epoch 2, step 7") && e.to_string().contains("loss"), "{e}");
    let mut fresh = lenet_trainer(dev, sgd(), cfg);
    wgpu_cnn::checkpoint::load(&path, &mut fresh).unwrap();
    assert_eq!(crate::training::weights(&mut fresh), saved, "the checkpoint changed");
}
crate::test_device!(nan_loss_stops_training_with_step, nan_loss_stops_training);

/// With `check_gradients`, the bad step is caught before its update: the
/// error names the parameter and every weight is still finite.
fn gradient_check_stops_before_update(dev: &Device) {
    let (clean, bad) = poisoned(0);
    let cfg = TrainConfig { batch_size: 16, epochs: 2, check_gradients: true, ..Default::default() };
    let mut t = lenet_trainer(dev, sgd(), cfg);
    t.train_epoch(&clean).unwrap();
    let e = t.train_epoch(&bad).unwrap_err();
    assert!(matches!(e, Error::NonFinite { epoch: 2, step: 7, .. }), "{e}");
    assert!(e.to_string().contains("the gradient of `"), "{e}");
    assert_eq!(t.step, 6, "the bad step must not count as taken");
    assert!(crate::training::weights(&mut t).iter().flatten().all(|v| v.is_finite()), "an update with NaN gradients was applied");
}
crate::test_device!(gradient_check_stops_before_update_with_name, gradient_check_stops_before_update);

/// NaN inputs reach the output instead of vanishing in a comparison: max
/// pooling picks a NaN (the first), ReLU passes it on (PyTorch's semantics).
fn nan_propagates(dev: &Device) {
    use wgpu_cnn::ops::activation::{activation_forward, Activation};
    use wgpu_cnn::ops::maxpool::maxpool_forward;
    let mut v = vec![1.0f32; 16];
    v[5] = f32::NAN; // window (0, 0) of a 2×2 pooling over 4×4
    v[6] = f32::NAN; // window (0, 1)
    let x = Tensor::from_vec(dev, &[1, 1, 4, 4], v).unwrap();
    let (y, mask) = maxpool_forward(&x, wgpu_cnn::Pool2dConfig::new(2)).unwrap();
    let y = y.to_vec().unwrap();
    assert!(y[0].is_nan() && y[1].is_nan() && y[2] == 1.0 && y[3] == 1.0, "{y:?}");
    assert_eq!(&mask.to_vec().unwrap()[..2], &[5, 6]);
    let r = activation_forward(&Tensor::from_vec(dev, &[3], vec![f32::NAN, -1.0, 2.0]).unwrap(), Activation::Relu).unwrap().to_vec().unwrap();
    assert!(r[0].is_nan() && r[1] == 0.0 && r[2] == 2.0, "{r:?}");
}
crate::test_device!(nan_propagates_through_pool_and_relu, nan_propagates);

/// Same seed, same device: two runs of eight training steps (Adam, dropout,
/// batch-norm, convolutions, shuffling and augmentation) give bitwise-identical
/// weights. No float atomics, fixed reduction order, counter-based dropout RNG.
fn deterministic(dev: &Device) {
    use wgpu_cnn::data::Augment;
    use wgpu_cnn::nn::{models, Init, Initializer, Layer};
    use wgpu_cnn::ops::optim::AdamConfig;
    use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
    use wgpu_cnn::train::Trainer;
    let data = mnist_slice(Split::Train, 64);
    let run = |mlp: bool| -> Vec<Vec<u32>> {
        let init = &mut Initializer::new(11, Init::KaimingUniform);
        let model = if mlp { models::mlp(dev, 32, 0.3, init).unwrap() } else { models::lenet5(dev, init).unwrap() };
        let cfg = TrainConfig {
            batch_size: 16,
            epochs: 2,
            seed: 5,
            progress: false,
            augment: Some(Augment { crop_padding: 2, ..Augment::default() }),
            ..Default::default()
        };
        let mut t = Trainer::new(model, Optimizer::new(OptimizerConfig::Adam(AdamConfig::adamw(1e-3))).unwrap(), cfg, dev.clone()).unwrap();
        t.fit(&data, None, |_| Control::Continue).unwrap();
        t.model.parameters("").unwrap().into_iter().map(|p| p.value.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()).collect()
    };
    for mlp in [true, false] {
        let (a, b) = (run(mlp), run(mlp));
        assert!(a == b, "{} on {dev}: two runs with one seed differ", if mlp { "MLP" } else { "LeNet-5" });
    }
}
crate::test_device!(same_seed_gives_identical_weights, deterministic);

/// `Trainer::new` builds every pipeline its model, loss and optimiser use: a
/// training epoch and an evaluation afterwards build none (a kernel missing
/// from a layer's `kernels()` list would show up here).
/// `Trainer::prepare` records a step as a dry run: pipelines get built, but
/// weights, running statistics, dropout counters, optimiser state and the
/// step count are exactly as before, and training afterwards matches a
/// trainer that was never prepared.
#[test]
fn prepare_changes_no_state() {
    with_gpu("reliability::prepare_changes_no_state", |_| {
        use wgpu_cnn::nn::{models, Init, Initializer, Layer};
        use wgpu_cnn::ops::optim::AdamConfig;
        use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
        use wgpu_cnn::train::Trainer;
        let data = mnist_slice(Split::Train, 12);
        let dev = private(GpuOptions::default());
        let make = || {
            let model = models::mlp(&dev, 16, 0.2, &mut Initializer::new(3, Init::KaimingUniform)).unwrap();
            let cfg = TrainConfig { batch_size: 8, epochs: 1, progress: false, clip_grad_norm: Some(1.0), check_gradients: true, l1: 1e-5, ..Default::default() };
            Trainer::new(model, Optimizer::new(OptimizerConfig::Adam(AdamConfig::adamw(1e-3))).unwrap(), cfg, dev.clone()).unwrap()
        };
        let snapshot = |t: &mut Trainer| -> (Vec<Vec<u32>>, Vec<u32>, u32, u64, usize) {
            let mut tensors: Vec<Vec<u32>> = t.model.parameters("").unwrap().iter().map(|p| bits(p.value)).collect();
            tensors.extend(t.model.buffers("").into_iter().map(|(_, b)| bits(b)));
            let counters = t.model.counters("").into_iter().map(|(_, c)| *c).collect();
            (tensors, counters, t.optimizer.steps, t.step, t.optimizer.state_tensors().len())
        };
        let mut t = make();
        let before = snapshot(&mut t);
        let built = dev.gpu_context().unwrap().pipelines_built();
        t.prepare(&data, Some(&data)).unwrap();
        assert!(dev.gpu_context().unwrap().pipelines_built() > built, "prepare built nothing");
        assert!(before == snapshot(&mut t), "prepare changed the trainer's state");
        // One epoch from the prepared trainer equals one from a fresh one.
        let mut fresh = make();
        t.fit(&data, None, |_| Control::Continue).unwrap();
        fresh.fit(&data, None, |_| Control::Continue).unwrap();
        assert!(snapshot(&mut t) == snapshot(&mut fresh), "training after prepare differs");
    });
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn trainer_builds_all_pipelines_up_front() {
    with_gpu("reliability::trainer_builds_all_pipelines_up_front", |_| {
        use wgpu_cnn::data::Dataset;
        use wgpu_cnn::nn::{models, Init, Initializer, Sequential};
        use wgpu_cnn::ops::optim::{AdamConfig, SgdConfig};
        use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
        use wgpu_cnn::train::Trainer;
        let mnist = mnist_slice(Split::Train, 8);
        let cifar = Dataset { images: random(9, 4 * 3 * 32 * 32), labels: vec![1, 2, 3, 4], item_shape: [3, 32, 32] };
        type Build = fn(&Device, &mut Initializer) -> Sequential;
        let sgd = OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, nesterov: true, ..SgdConfig::new(0.01) });
        let adam = OptimizerConfig::Adam(AdamConfig::adamw(1e-3));
        let cases: [(&str, Build, &Dataset, OptimizerConfig, TrainConfig); 4] = [
            ("LeNet-5", |d, i| models::lenet5(d, i).unwrap(), &mnist, sgd, TrainConfig::default()),
            ("MLP", |d, i| models::mlp(d, 16, 0.2, i).unwrap(), &mnist, adam, TrainConfig { l1: 1e-5, l2: 1e-4, clip_grad_norm: Some(1.0), check_gradients: true, ..Default::default() }),
            ("VGG-small", |d, i| models::vgg_small(d, i).unwrap(), &cifar, sgd, TrainConfig::default()),
            ("ResNet-20", |d, i| models::resnet20(d, i).unwrap(), &cifar, adam, TrainConfig::default()),
        ];
        for (name, build, data, opt, cfg) in cases {
            let dev = private(GpuOptions::default());
            let ctx = dev.gpu_context().unwrap().clone();
            let model = build(&dev, &mut Initializer::new(1, Init::KaimingUniform));
            let cfg = TrainConfig { batch_size: 4, epochs: 1, progress: false, ..cfg };
            let mut t = Trainer::new(model, Optimizer::new(opt).unwrap(), cfg, dev.clone()).unwrap();
            t.prepare(data, Some(data)).unwrap();
            let built = ctx.pipelines_built();
            assert!(built > 0, "{name}: nothing was built up front");
            t.fit(data, Some(data), |_| Control::Continue).unwrap();
            assert_eq!(ctx.pipelines_built(), built, "{name}: the first step built pipelines that Trainer::prepare did not");
        }
    });
}

/// The host-side counters the bench reports, and what a steady step costs
/// the host: after a few steps the pool hands out the same buffers each
/// step, so a LeNet-5 step creates no bind group, records one compute pass,
/// writes the queue twice (its params, the labels) and submits once.
#[test]
fn host_counters_count_a_step() {
    with_gpu("reliability::host_counters_count_a_step", |_| {
        let dev = private(GpuOptions::default());
        let ctx = dev.gpu_context().unwrap().clone();
        let mut t = lenet_trainer(&dev, sgd(), TrainConfig { batch_size: 16, ..Default::default() });
        let data = mnist_slice(Split::Train, 16);
        let (x, labels) = data.batch(&dev, &(0..16).collect::<Vec<_>>(), None).unwrap();
        let mut steps = Vec::new();
        for _ in 0..10 {
            dev.synchronize().unwrap();
            let before = ctx.host_counters();
            t.train_step(&x, &labels).unwrap();
            steps.push(ctx.host_counters() - before);
        }
        let s = steps[9];
        assert_eq!(steps[8], s, "two steady steps differ: {steps:?}");
        // Fused epilogues, NCHW loads and stores, bias gradients from the weight
        // gradients' GEMMs, the loss's mean in its kernel, a multi-tensor
        // optimiser: 26 (55 when issue 13 began), two of them the optimiser's
        // (ten tensors, seven a dispatch; two under WebGPU's limits).
        let optim = 10usize.div_ceil(wgpu_cnn::ops::optim::optim_tensors_per_dispatch(&dev, false)) as u64;
        assert!(s.dispatches > 10 && s.dispatches <= 24 + optim, "{s:?}");
        assert_eq!((s.bind_groups, s.passes, s.queue_writes, s.submits), (0, 1, 2, 1), "{s:?}");
        // The labels go up every step (16 × 4 bytes), and every dispatch's params.
        assert!(s.bytes_uploaded >= 64 + 16 * s.dispatches, "{s:?}");
        assert!(steps[0].bind_groups > 0, "the first step creates its bind groups");
        // Batch-norm's backward writes dγ and dβ itself (no copy to end the pass): still one pass.
        use wgpu_cnn::nn::{models, Init, Initializer};
        use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
        use wgpu_cnn::train::Trainer;
        use wgpu_cnn::ops::optim::SgdConfig;
        let mlp = models::mlp(&dev, 16, 0.2, &mut Initializer::new(2, Init::KaimingUniform)).unwrap();
        let mut t = Trainer::new(mlp, Optimizer::new(OptimizerConfig::Sgd(SgdConfig::new(0.01))).unwrap(), TrainConfig { progress: false, ..Default::default() }, dev.clone()).unwrap();
        let mut last = Default::default();
        for _ in 0..10 {
            dev.synchronize().unwrap();
            let before = ctx.host_counters();
            t.train_step(&x, &labels).unwrap();
            last = ctx.host_counters() - before;
        }
        assert_eq!((last.bind_groups, last.passes, last.queue_writes), (0, 1, 2), "MLP with batch-norm and dropout: {last:?}");
    });
}

/// A dry run belongs to the thread that started it: another thread's ops on
/// the same device, while it is on, run for real.
#[test]
fn dry_runs_are_per_thread() {
    with_gpu("reliability::dry_runs_are_per_thread", |_| {
        let dev = private(GpuOptions::default());
        let ctx = dev.gpu_context().unwrap().clone();
        let barrier = std::sync::Barrier::new(2);
        let a = Tensor::from_vec(&dev, &[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                ctx.dry_run(|| {
                    barrier.wait(); // the other thread computes now
                    barrier.wait();
                    Ok(())
                })
                .unwrap();
            });
            barrier.wait();
            let c = gemm(&a, &a, GemmConfig::default()).unwrap();
            // Still inside the other thread's dry run: recorded and run, not noted.
            let got = c.to_vec().unwrap();
            barrier.wait();
            assert_eq!(got, vec![7.0, 10.0, 15.0, 22.0]);
        });
    });
}

/// The device asks for f16 shaders exactly when its adapter offers them
/// (mixed precision's kernels need them; `doctor` reports it).
#[test]
fn f16_feature_follows_the_adapter() {
    crate::harness::with_gpu("reliability::f16_feature_follows_the_adapter", |dev| {
        let ctx = dev.gpu_context().unwrap();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let offered = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
            .into_iter()
            .find(|a| a.get_info().name == ctx.adapter().name)
            .map(|a| a.features().contains(wgpu::Features::SHADER_F16));
        assert_eq!(Some(ctx.supports_f16()), offered, "{}", ctx.adapter());
    });
}
