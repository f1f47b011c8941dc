//! Trainer features: LR schedules, gradient clipping, L1/L2, early stopping,
//! seeded initialisation, the model zoo's shapes.

use wgpu_cnn::data::Dataset;
use wgpu_cnn::nn::{models, Init, Initializer, Layer};
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::optim::{LrSchedule, Optimizer, OptimizerConfig};
use wgpu_cnn::train::{Control, TrainConfig, Trainer};
use wgpu_cnn::{Device, Tolerance};

use crate::harness::random;
use crate::test_device;

#[test]
fn lr_schedules() {
    let t = Tolerance::new(1e-7, 1e-6);
    let step = LrSchedule::Step { every: 2, gamma: 0.1 };
    t.assert("step", &(0..5).map(|e| step.lr(1.0, e, 5, 0)).collect::<Vec<_>>(), &[1.0, 1.0, 0.1, 0.1, 0.01]);
    let cos = LrSchedule::Cosine { min_lr: 0.0 };
    t.assert("cosine", &[cos.lr(1.0, 0, 4, 0), cos.lr(1.0, 2, 4, 0)], &[1.0, 0.5]);
    // Warm-up ramps linearly, then the schedule starts from its beginning.
    t.assert("warm-up", &(0..4).map(|e| LrSchedule::Constant.lr(0.3, e, 4, 2)).collect::<Vec<_>>(), &[0.1, 0.2, 0.3, 0.3]);
    t.assert("warm-up + cosine", &[cos.lr(1.0, 1, 5, 1)], &[1.0]);
}

fn tiny_data() -> Dataset {
    let n = 48;
    let images: Vec<f32> = random(3, n * 784).iter().map(|v| v.abs()).collect();
    Dataset { images, labels: (0..n as i64).map(|i| i % 10).collect(), item_shape: [1, 28, 28] }
}

fn trainer(dev: &Device, cfg: TrainConfig) -> Trainer {
    let model = models::lenet5(dev, &mut Initializer::new(4, Init::PytorchDefault)).unwrap();
    let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig::new(0.05))).unwrap();
    Trainer::new(model, opt, TrainConfig { progress: false, batch_size: 16, ..cfg }, dev.clone()).unwrap()
}

/// L2 adds l2·w and L1 adds l1·sign(w) to every gradient; clipping bounds the
/// update. Checked by comparing one step's weight change with a plain step.
fn regularisation(dev: &Device) {
    let data = tiny_data();
    let (x, labels) = data.batch(dev, &(0..16).collect::<Vec<_>>(), None).unwrap();
    let step = |cfg: TrainConfig| {
        let mut t = trainer(dev, cfg);
        let before: Vec<Vec<f32>> = t.model.parameters("").unwrap().iter().map(|p| p.value.to_vec().unwrap()).collect();
        t.train_step(&x, &labels).unwrap();
        let after: Vec<Vec<f32>> = t.model.parameters("").unwrap().iter().map(|p| p.value.to_vec().unwrap()).collect();
        (before, after)
    };
    let (w0, plain) = step(TrainConfig::default());
    let (_, l2) = step(TrainConfig { l2: 0.1, ..Default::default() });
    let (_, l1) = step(TrainConfig { l1: 0.01, ..Default::default() });
    let (_, clipped) = step(TrainConfig { clip_grad_norm: Some(1e-3), ..Default::default() });
    let lr = 0.05;
    for i in 0..w0.len() {
        let want_l2: Vec<f32> = plain[i].iter().zip(&w0[i]).map(|(p, w)| p - lr * 0.1 * w).collect();
        Tolerance::new(1e-6, 1e-4).assert(&format!("L2 param {i} on {dev}"), &l2[i], &want_l2);
        let want_l1: Vec<f32> = plain[i].iter().zip(&w0[i]).map(|(p, w)| p - lr * 0.01 * w.signum() * (*w != 0.0) as u8 as f32).collect();
        Tolerance::new(1e-6, 1e-4).assert(&format!("L1 param {i} on {dev}"), &l1[i], &want_l1);
    }
    let moved: f64 = clipped.iter().zip(&w0).flat_map(|(a, b)| a.iter().zip(b).map(|(a, b)| ((a - b) as f64).powi(2))).sum::<f64>().sqrt();
    assert!(moved <= lr as f64 * 1e-3 * 1.001, "clipped step moved the weights by {moved}");
}
test_device!(trainer_regularisation_and_clipping, regularisation);

#[test]
fn early_stopping_and_hook() {
    // Validation on random labels does not improve for long: patience 1 stops early.
    let data = tiny_data();
    let mut t = trainer(&Device::Cpu, TrainConfig { epochs: 30, early_stopping_patience: Some(1), ..Default::default() });
    let hist = t.fit(&data, Some(&data.take(16)), |_| Control::Continue).unwrap();
    assert!(hist.len() < 30, "early stopping never triggered");
    let mut t = trainer(&Device::Cpu, TrainConfig { epochs: 5, ..Default::default() });
    let hist = t.fit(&data, None, |s| if s.epoch == 2 { Control::Stop } else { Control::Continue }).unwrap();
    assert_eq!(hist.len(), 2, "the hook stops the run");
}

#[test]
fn initialisation_is_seeded_and_scaled() {
    let draw = |scheme, seed| Initializer::new(seed, scheme).weights(100_000, 200, 100);
    assert_eq!(draw(Init::KaimingNormal, 1), draw(Init::KaimingNormal, 1));
    assert_ne!(draw(Init::KaimingNormal, 1), draw(Init::KaimingNormal, 2));
    let std = |v: &[f32]| (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt() as f32;
    let max = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs()));
    Tolerance::new(0.0, 0.02).assert("kaiming normal std", &[std(&draw(Init::KaimingNormal, 3))], &[(2.0f32 / 200.0).sqrt()]);
    Tolerance::new(0.0, 0.02).assert("xavier normal std", &[std(&draw(Init::XavierNormal, 3))], &[(2.0f32 / 300.0).sqrt()]);
    assert!(max(&draw(Init::KaimingUniform, 3)) <= (6.0f32 / 200.0).sqrt());
    assert!(max(&draw(Init::XavierUniform, 3)) <= (6.0f32 / 300.0).sqrt());
    assert!(max(&draw(Init::PytorchDefault, 3)) <= 1.0 / 200f32.sqrt());
    // The same seed gives the same weights on every device.
    crate::harness::with_gpu("trainer::initialisation_is_seeded_and_scaled", |dev| {
        let mut gpu = models::lenet5(dev, &mut Initializer::new(9, Init::KaimingNormal)).unwrap();
        let mut cpu = models::lenet5(&Device::Cpu, &mut Initializer::new(9, Init::KaimingNormal)).unwrap();
        for (g, c) in gpu.parameters("").unwrap().iter().zip(cpu.parameters("").unwrap()) {
            assert_eq!(g.value.to_vec().unwrap(), c.value.to_vec().unwrap(), "{}", g.name);
        }
    });
}

#[test]
fn model_zoo_shapes() {
    let init = &mut Initializer::new(0, Init::KaimingNormal);
    let r = models::resnet20(&Device::Cpu, init).unwrap().summary(&[2, 3, 32, 32]).unwrap();
    assert_eq!(r.rows.last().unwrap().output, [2, 10]);
    // ResNet-20 for CIFAR has about 0.27 M parameters (He et al. 2016, table 6).
    assert!((265_000..280_000).contains(&r.total_params()), "{}", r.total_params());
    // By kind, inside the residual blocks too, each kind listed once.
    assert_eq!(r.kinds(), ["Conv2d", "BatchNorm2d", "Linear"]);
    assert_eq!(r.params_of("Conv2d") + r.params_of("BatchNorm2d") + r.params_of("Linear"), r.total_params());
    assert_eq!(r.params_of("Linear"), 64 * 10 + 10);
    let line = r.to_string().lines().last().unwrap().to_string();
    assert_eq!(line.matches("Conv2d").count(), 1, "{line}");
    assert!(!line.contains("Residual"), "{line}");
    let v = models::vgg_small(&Device::Cpu, init).unwrap().summary(&[2, 3, 32, 32]).unwrap();
    assert_eq!(v.rows.last().unwrap().output, [2, 10]);
    let m = models::mlp(&Device::Cpu, 64, 0.2, init).unwrap().summary(&[2, 1, 28, 28]).unwrap();
    assert_eq!(m.rows.last().unwrap().output, [2, 10]);
}

/// Per-step schedules against PyTorch 2.15's schedulers, step by step
/// (`SequentialLR(LinearLR, CosineAnnealingLR)` and `OneCycleLR`), and
/// reduce-on-plateau against `ReduceLROnPlateau` on a sequence of losses.
#[test]
fn per_step_schedules_and_plateau_match_pytorch() {
    use crate::harness::torch_value;
    use wgpu_cnn::optim::{Plateau, PlateauState};
    let t = Tolerance::new(1e-6, 1e-4);
    let warm = LrSchedule::WarmupCosine { warmup_steps: 5, min_lr: 0.001 };
    assert!(warm.per_step() && !LrSchedule::Cosine { min_lr: 0.0 }.per_step());
    t.assert("warm-up cosine", &(0..40).map(|s| warm.lr_at_step(0.1, s, 40)).collect::<Vec<_>>(), &torch_value("sched.warmcos").1);
    let one = LrSchedule::one_cycle(0.5);
    t.assert("one-cycle", &(0..50).map(|s| one.lr_at_step(0.1, s, 50)).collect::<Vec<_>>(), &torch_value("sched.onecycle").1);
    let p = Plateau { factor: 0.5, patience: 2, min_lr: 0.01 };
    let mut state = PlateauState::new();
    let lrs: Vec<f32> = torch_value("sched.plateau.losses")
        .1
        .iter()
        .map(|&l| {
            let lr = 0.1 * state.scale;
            state.observe(&p, l, lr);
            0.1 * state.scale
        })
        .collect();
    t.assert("reduce on plateau", &lrs, &torch_value("sched.plateau.lr").1);
}

/// A per-step schedule drives the optimiser's rate during training: after an
/// epoch of 3 steps of a 2-epoch warm-up cosine run, the rate is the 4th step's.
#[test]
fn per_step_schedule_in_training() {
    let sched = LrSchedule::WarmupCosine { warmup_steps: 2, min_lr: 0.0 };
    let mut t = trainer(&Device::Cpu, TrainConfig { epochs: 2, schedule: sched, ..Default::default() });
    t.fit_until(&tiny_data(), None, 1, |_| Control::Continue).unwrap();
    assert_eq!(t.epoch, 1);
    Tolerance::new(1e-7, 1e-6).assert("rate of the last step taken", &[t.optimizer.lr()], &[sched.lr_at_step(0.05, 2, 6)]);
}

/// Early stopping puts back the best epoch's weights: afterwards the model
/// scores the best validation accuracy seen, not the last epoch's.
#[test]
fn early_stopping_restores_the_best_weights() {
    // Validation labels unrelated to the images: accuracy wanders, and a
    // patience of 2 stops after two epochs that do not beat the best. The
    // first labelling whose last epoch scores below the best shows the restore.
    let train = tiny_data();
    for k in [7, 3, 9, 11, 13, 17, 19, 23] {
        // 480 images: accuracy in steps of 1/480, so epochs rarely tie.
        let n = 480;
        let images: Vec<f32> = random(k as u64, n * 784).iter().map(|v| v.abs()).collect();
        let val = Dataset { images, labels: (0..n).map(|i| ((i * k + k) % 10) as i64).collect(), item_shape: [1, 28, 28] };
        let mut t = trainer(&Device::Cpu, TrainConfig { epochs: 30, early_stopping_patience: Some(2), ..Default::default() });
        let hist = t.fit(&train, Some(&val), |_| Control::Continue).unwrap();
        let accs: Vec<f32> = hist.iter().map(|s| s.val_accuracy.unwrap()).collect();
        let best = accs.iter().copied().fold(f32::MIN, f32::max);
        if hist.len() == 30 || *accs.last().unwrap() == best {
            continue;
        }
        assert_eq!(t.evaluate(&val).unwrap().accuracy, best, "after restoring (labels ×{k}): {accs:?}");
        return;
    }
    panic!("no labelling ended below its best epoch");
}

/// Epoch stats carry every step's loss and the training accuracy (from
/// logits kept on the device); evaluation gives the confusion matrix,
/// per-class accuracy and top-5. Both devices agree.
fn metrics(dev: &Device) {
    let data = tiny_data();
    let mut t = trainer(dev, TrainConfig { epochs: 2, log_every: 2, ..Default::default() });
    let hist = t.fit(&data, Some(&data), |_| Control::Continue).unwrap();
    for s in &hist {
        assert_eq!(s.step_losses.len(), 3, "48 images in batches of 16");
        let mean = s.step_losses.iter().sum::<f32>() / 3.0;
        Tolerance::new(1e-6, 1e-5).assert("mean of the step losses", &[mean], &[s.train_loss]);
        let acc = s.train_accuracy.unwrap();
        assert!((0.0..=1.0).contains(&acc) && (acc * 48.0).fract() < 1e-4, "a share of 48 images: {acc}");
    }
    let m = t.evaluate(&data).unwrap();
    assert_eq!(m.confusion.len(), 10);
    assert_eq!(m.confusion.iter().flatten().sum::<u64>(), 48);
    let diag: u64 = (0..10).map(|i| m.confusion[i][i]).sum();
    assert_eq!(diag as f32 / 48.0, m.accuracy);
    let top5 = m.top5.unwrap();
    assert!(top5 >= m.accuracy && top5 <= 1.0);
    assert!(m.per_class_accuracy().iter().all(|a| a.is_some_and(|a| (0.0..=1.0).contains(&a))));
    let table = m.confusion_table(&[]);
    assert_eq!(table.lines().count(), 11, "{table}");
}
test_device!(epoch_and_eval_metrics, metrics);
