//! Fine-tuning: freezing by name, a frozen backbone's skipped work, frozen
//! batch-norm, parameter groups, replacing a head on load, and the public
//! gradient checker, on both devices.

use std::collections::BTreeMap;

use wgpu_cnn::data::Dataset;
use wgpu_cnn::nn::{self, check_gradients, models, BatchNorm, GradCheck, Init, Initializer, Layer, Linear, Mode, Sequential};
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::optim::{Optimizer, OptimizerConfig, ParamGroup};
use wgpu_cnn::train::{TrainConfig, Trainer};
use wgpu_cnn::weights::{load_weights_finetune, save_weights, WeightsMeta};
use wgpu_cnn::{Conv2dConfig, Device, Tensor, Tolerance};

use crate::harness::random;
use crate::test_device;

fn data(n: usize, classes: i64) -> Dataset {
    let images: Vec<f32> = random(11, n * 784).iter().map(|v| v.abs()).collect();
    Dataset { images, labels: (0..n as i64).map(|i| (i * 7) % classes).collect(), item_shape: [1, 28, 28] }
}

fn lenet(dev: &Device, classes: usize, seed: u64) -> Sequential {
    models::lenet5_for(models::ModelSpec::new([1, 28, 28], classes), dev, &mut Initializer::new(seed, Init::PytorchDefault)).unwrap()
}

fn trainer(dev: &Device, model: Sequential, opt: Optimizer) -> Trainer {
    Trainer::new(model, opt, TrainConfig { progress: false, batch_size: 16, ..TrainConfig::default() }, dev.clone()).unwrap()
}

fn sgd(lr: f32) -> Optimizer {
    Optimizer::new(OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(lr) })).unwrap()
}

fn values(model: &mut dyn Layer) -> BTreeMap<String, Vec<f32>> {
    model.state("").into_iter().filter_map(|e| match e.state {
        nn::State::Param { value, .. } | nn::State::Buffer(value) => Some((e.name, value.to_vec().unwrap())),
        nn::State::Counter(_) => None,
    }).collect()
}

/// Frozen parameters stay put and get no optimiser state; with the layers
/// before the head frozen, the head's first update is the one it gets when
/// everything trains.
fn freezing(dev: &Device) {
    let d = data(16, 10);
    let (x, labels) = d.batch(dev, &(0..16).collect::<Vec<_>>(), None).unwrap();
    let mut frozen = trainer(dev, lenet(dev, 10, 5), sgd(0.05));
    assert_eq!(frozen.model.freeze(&["0", "3"]).unwrap(), 4, "two convolutions' weights and biases");
    let before = values(&mut frozen.model);
    for _ in 0..2 {
        frozen.train_step(&x, &labels).unwrap();
    }
    let after = values(&mut frozen.model);
    for (name, v) in &after {
        if name.starts_with("0.") || name.starts_with("3.") {
            assert_eq!(v, &before[name], "{name} is frozen and must not change on {dev}");
        } else {
            assert_ne!(v, &before[name], "{name} trains on {dev}");
        }
    }
    let states: Vec<String> = frozen.optimizer.state_tensors().into_iter().map(|(n, _)| n).collect();
    assert!(states.iter().all(|n| !n.starts_with("0.") && !n.starts_with("3.")), "frozen parameters have no state: {states:?}");
    assert_eq!(states.len(), 6, "{states:?}");
    // One step from the same weights: the head's update is the same as when
    // everything trains (frozen layers change nothing before the update).
    let mut a = trainer(dev, lenet(dev, 10, 5), sgd(0.05));
    a.model.freeze(&["0", "3", "7", "9"]).unwrap();
    let mut b = trainer(dev, lenet(dev, 10, 5), sgd(0.05));
    a.train_step(&x, &labels).unwrap();
    b.train_step(&x, &labels).unwrap();
    let (va, vb) = (values(&mut a.model), values(&mut b.model));
    Tolerance::new(1e-6, 1e-5).assert(&format!("head weight, frozen backbone vs all training, on {dev}"), &va["11.weight"], &vb["11.weight"]);
    assert_eq!(va["0.weight"], values(&mut lenet(dev, 10, 5))["0.weight"]);
}
test_device!(freezing_by_prefix, freezing);

/// `freeze_backbone` keeps the head training; unfreezing brings the rest back.
fn backbone(dev: &Device) {
    let mut m = lenet(dev, 10, 1);
    assert_eq!(nn::head_prefix(&mut m).as_deref(), Some("11"));
    assert_eq!(nn::freeze_backbone(&mut m).unwrap(), "11");
    assert_eq!(m.trainable_count(), 84 * 10 + 10);
    assert_eq!(m.frozen_names().len(), 8);
    assert_eq!(m.unfreeze(&[]).unwrap(), 10);
    assert_eq!(m.trainable_count(), m.param_count());
    // A frozen backbone trains on both devices; the head moves.
    let d = data(16, 10);
    let (x, labels) = d.batch(dev, &(0..16).collect::<Vec<_>>(), None).unwrap();
    let mut t = trainer(dev, lenet(dev, 10, 1), sgd(0.05));
    nn::freeze_backbone(&mut t.model).unwrap();
    let before = values(&mut t.model);
    t.train_step(&x, &labels).unwrap();
    let after = values(&mut t.model);
    assert_ne!(after["11.weight"], before["11.weight"]);
    assert_eq!(after["9.weight"], before["9.weight"]);
}
test_device!(freeze_backbone_trains_the_head, backbone);

#[test]
fn freezing_errors() {
    let mut m = lenet(&Device::Cpu, 10, 1);
    let e = m.freeze(&["conv1"]).unwrap_err().to_string();
    assert!(e.contains("`conv1` names no parameter") && e.contains("0, 3, 7, 9, 11"), "{e}");
    // `1` is a prefix of `11` as text, not as a name: it names nothing.
    assert!(m.freeze(&["1"]).is_err());
    m.freeze(&["0", "3", "7", "9", "11"]).unwrap();
    let mut t = trainer(&Device::Cpu, m, sgd(0.1));
    let d = data(16, 10);
    let (x, labels) = d.batch(&Device::Cpu, &(0..16).collect::<Vec<_>>(), None).unwrap();
    let e = t.train_step(&x, &labels).unwrap_err().to_string();
    assert!(e.contains("nothing to train"), "{e}");
}

/// A frozen batch-norm normalises with its running statistics in training
/// too, leaves them alone, and its backward goes through them.
fn frozen_batchnorm(dev: &Device) {
    let mut bn = BatchNorm::new_2d(dev, 3).unwrap();
    let stats = Tensor::from_vec(dev, &[2, 3], vec![0.5, -0.25, 1.0, 2.0, 0.5, 1.5]).unwrap();
    for e in bn.state("") {
        if let nn::State::Buffer(t) = e.state {
            *t = stats.clone();
        }
    }
    bn.freeze(&["weight", "bias"]).unwrap();
    let x = Tensor::from_vec(dev, &[2, 3, 2, 2], random(4, 24)).unwrap();
    let train = bn.forward(&x, Mode::Train).unwrap().to_vec().unwrap();
    let eval = bn.forward(&x, Mode::Eval).unwrap().to_vec().unwrap();
    assert_eq!(train, eval, "frozen batch-norm in training normalises as in eval on {dev}");
    bn.forward(&x, Mode::Train).unwrap();
    let dy = random(5, 24);
    let dx = bn.backward(&Tensor::from_vec(dev, &[2, 3, 2, 2], dy.clone()).unwrap()).unwrap().to_vec().unwrap();
    let r = stats.to_vec().unwrap();
    let want: Vec<f32> = (0..24).map(|i| dy[i] / (r[3 + (i / 4) % 3] + 1e-5).sqrt()).collect();
    Tolerance::new(1e-6, 1e-5).assert(&format!("frozen batch-norm dx on {dev}"), &dx, &want);
    assert_eq!(values(&mut bn)["running_stats"], r, "running statistics unchanged");
}
test_device!(frozen_batchnorm_uses_running_stats, frozen_batchnorm);

/// Groups: a multiplier scales one group's step; no decay on 1-d tensors.
fn groups(dev: &Device) {
    let d = data(16, 10);
    let (x, labels) = d.batch(dev, &(0..16).collect::<Vec<_>>(), None).unwrap();
    let plain_sgd = |wd: f32| Optimizer::new(OptimizerConfig::Sgd(SgdConfig { weight_decay: wd, ..SgdConfig::new(0.1) })).unwrap();
    let step = |opt: Optimizer| {
        let mut t = trainer(dev, lenet(dev, 10, 2), opt);
        let before = values(&mut t.model);
        t.train_step(&x, &labels).unwrap();
        (before, values(&mut t.model))
    };
    let (w0, plain) = step(plain_sgd(0.0));
    let (_, grouped) = step(plain_sgd(0.0).with_groups(vec![ParamGroup::except(&["11"], 0.25)]).unwrap());
    let (_, decayed) = step(plain_sgd(0.5).with_groups(vec![ParamGroup::no_decay_on_norm_and_bias()]).unwrap());
    let t = Tolerance::new(1e-6, 1e-4);
    for (name, w) in &w0 {
        let full: Vec<f32> = plain[name].iter().zip(w).map(|(p, w)| p - w).collect();
        let mult = if name.starts_with("11.") { 1.0 } else { 0.25 };
        let want: Vec<f32> = w.iter().zip(&full).map(|(w, d)| w + mult * d).collect();
        t.assert(&format!("{name} with lr × {mult} on {dev}"), &grouped[name], &want);
        let wd = if name.ends_with(".bias") { 0.0 } else { 0.5 };
        let want: Vec<f32> = plain[name].iter().zip(w).map(|(p, w)| p - 0.1 * wd * w).collect();
        t.assert(&format!("{name} with weight decay {wd} on {dev}"), &decayed[name], &want);
    }
    assert!(Optimizer::new(OptimizerConfig::Sgd(SgdConfig::new(0.1))).unwrap().with_groups(vec![ParamGroup::prefixes(&["0"], f32::NAN)]).is_err());
}
test_device!(parameter_groups, groups);

/// Loading a file whose head has another class count keeps the backbone's
/// weights and a fresh head, and says so; another backbone is an error.
fn head(dev: &Device) {
    let dir = std::env::temp_dir().join(format!("wgpu-cnn-head-{}-{}", std::process::id(), dev.is_gpu()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("six.safetensors");
    let mut six = lenet(dev, 6, 7);
    save_weights(&path, &mut six, &WeightsMeta::default()).unwrap();
    let mut four = lenet(dev, 4, 8);
    let fresh_head = values(&mut four)["11.weight"].clone();
    let (_, replaced) = load_weights_finetune(&path, &mut four).unwrap();
    let r = replaced.expect("the head has 6 classes in the file, 4 in the model");
    assert_eq!(r.to_string(), "head '11' replaced: 6 → 4 classes");
    let (a, b) = (values(&mut six), values(&mut four));
    assert_eq!(a["7.weight"], b["7.weight"]);
    assert_eq!(b["11.weight"], fresh_head);
    // Same class count: everything loads, nothing replaced.
    let mut six_again = lenet(dev, 6, 9);
    assert!(load_weights_finetune(&path, &mut six_again).unwrap().1.is_none());
    assert_eq!(values(&mut six_again)["11.weight"], a["11.weight"]);
    // A backbone of another shape fails with the names that differ.
    let mut other = models::lenet5_for(models::ModelSpec::new([3, 28, 28], 4), dev, &mut Initializer::new(1, Init::PytorchDefault)).unwrap();
    let e = load_weights_finetune(&path, &mut other).unwrap_err().to_string();
    assert!(e.contains("`0.weight` has shape [6, 1, 5, 5], the model expects [6, 3, 5, 5]"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
test_device!(replace_head_on_load, head);

/// The public gradient checker passes built-in layers and catches a wrong backward.
fn gradcheck(dev: &Device) {
    let mut init = Initializer::new(3, Init::PytorchDefault);
    let x = Tensor::from_vec(dev, &[2, 3, 6, 6], random(8, 216)).unwrap();
    let mut conv = Sequential::new().push(nn::Conv2d::new(dev, 3, 4, [3, 3], Conv2dConfig::default().padding(1), true, &mut init).unwrap()).push(BatchNorm::new_2d(dev, 4).unwrap());
    let report = check_gradients(&mut conv, &x, GradCheck::default()).unwrap();
    assert_eq!(report.tensors.iter().map(|(n, ..)| n.as_str()).collect::<Vec<_>>(), ["input", "0.weight", "0.bias", "1.weight", "1.bias"]);
    // A layer whose backward is wrong by a factor fails, naming the tensor.
    struct Doubled(Linear);
    impl Layer for Doubled {
        fn kind(&self) -> &'static str { "Doubled" }
        fn describe(&self) -> String { "Doubled".into() }
        fn output_shape(&self, input: &[usize]) -> wgpu_cnn::Result<Vec<usize>> { self.0.output_shape(input) }
        fn forward(&mut self, x: &Tensor, mode: Mode) -> wgpu_cnn::Result<Tensor> { self.0.forward(x, mode) }
        fn backward(&mut self, dy: &Tensor) -> wgpu_cnn::Result<Tensor> {
            let dx = self.0.backward(dy)?;
            wgpu_cnn::ops::elementwise::elementwise_add(&dx, &dx, 1.0, 1.0)
        }
        fn state(&mut self, prefix: &str) -> Vec<nn::StateEntry<'_>> { self.0.state(prefix) }
    }
    let mut bad = Doubled(Linear::new(dev, 5, 3, true, &mut init).unwrap());
    let e = check_gradients(&mut bad, &Tensor::from_vec(dev, &[2, 5], random(9, 10)).unwrap(), GradCheck::default()).unwrap_err().to_string();
    assert!(e.contains("input["), "{e}");
}
test_device!(check_gradients_public, gradcheck);

// The file allows its own dead code (each example uses part of it).
#[path = "../../examples/common/mod.rs"]
mod common;

/// The training examples' fine-tuning options: bad combinations are errors
/// before any training, and the options set what they say.
#[test]
fn example_options() {
    let t = |epochs: usize| Trainer::new(lenet(&Device::Cpu, 10, 1), sgd(0.1), TrainConfig { progress: false, epochs, ..TrainConfig::default() }, Device::Cpu).unwrap();
    let args = |f: fn(&mut common::FineTuneArgs)| {
        let mut a = common::FineTuneArgs::default();
        f(&mut a);
        a
    };
    let e = args(|a| (a.freeze_backbone, a.unfreeze_after) = (true, Some(5))).apply(&mut t(5)).unwrap_err().to_string();
    assert!(e.contains("--unfreeze-after") && e.contains("not below --epochs 5"), "{e}");
    let e = args(|a| (a.freeze_backbone, a.unfreeze_after) = (true, Some(0))).apply(&mut t(5)).unwrap_err().to_string();
    assert!(e.contains("--unfreeze-after") && e.contains("0 epochs"), "{e}");
    let e = args(|a| a.unfreeze_after = Some(1)).apply(&mut t(5)).unwrap_err().to_string();
    assert!(e.contains("nothing is frozen"), "{e}");
    let e = args(|a| a.freeze = vec!["fc".into()]).apply(&mut t(5)).unwrap_err().to_string();
    assert!(e.contains("`fc` names no parameter") && e.contains("0, 3, 7, 9, 11"), "{e}");
    let mut tr = t(5);
    args(|a| (a.freeze_backbone, a.unfreeze_after, a.backbone_lr_mult) = (true, Some(2), Some(0.1))).apply(&mut tr).unwrap();
    assert_eq!(tr.model.trainable_count(), 84 * 10 + 10);
    assert_eq!(tr.optimizer.settings_for("0.weight", &[6, 1, 5, 5]).0, 0.1);
    assert_eq!(tr.optimizer.settings_for("11.weight", &[10, 84]).0, 1.0);
    let opts = args(|a| (a.freeze_backbone, a.unfreeze_after) = (true, Some(2)));
    opts.after_epoch(&mut tr, 1).unwrap();
    assert_eq!(tr.model.trainable_count(), 84 * 10 + 10, "still frozen after epoch 1");
    opts.after_epoch(&mut tr, 2).unwrap();
    assert_eq!(tr.model.trainable_count(), tr.model.param_count(), "everything trains after epoch 2");
}

/// With the stem frozen, the first layer that trains is a residual block:
/// its `backward_params` (no input gradient) gives the gradients a full
/// backward of the same frozen model gives.
fn residual_first_trainable(dev: &Device) {
    let build = || models::build("resnet20", models::ModelSpec::new([3, 16, 16], 10), dev, &mut Initializer::new(2, Init::PytorchDefault)).unwrap();
    let x = Tensor::from_vec(dev, &[4, 3, 16, 16], random(6, 4 * 3 * 256)).unwrap();
    let labels = [1i64, 4, 7, 9];
    let grads = |m: &mut Sequential, params_only: bool| -> BTreeMap<String, Vec<f32>> {
        m.zero_grad();
        let y = m.forward(&x, Mode::Train).unwrap();
        let (_, dl) = wgpu_cnn::ops::softmax_xent::softmax_xent(&y, &labels, Default::default()).unwrap();
        if params_only {
            m.backward_params(&dl).unwrap();
        } else {
            m.backward(&dl).unwrap();
        }
        m.parameters("").unwrap().into_iter().map(|p| (p.name, p.grad.to_vec().unwrap())).collect()
    };
    let frozen = || {
        let mut m = build();
        let names: Vec<String> = m.state("").into_iter().map(|e| e.name).collect();
        let stem: Vec<String> = nn::top_level_names(names.iter().map(String::as_str)).into_iter().take(2).collect();
        m.freeze(&stem.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        m
    };
    let mut m = frozen();
    assert!(m.layers[..3].iter_mut().all(|l| l.trainable_count() == 0) && m.layers[3].kind() == "Residual", "the stem is conv, bn, relu; a block follows");
    let (a, b) = (grads(&mut m, true), grads(&mut frozen(), false));
    assert_eq!(a.len(), b.len());
    assert_eq!(a.len(), build().parameters("").unwrap().len() - 3, "all but the stem's three tensors train");
    for (name, g) in &a {
        Tolerance::new(1e-6, 1e-5).assert(&format!("{name} on {dev}"), g, &b[name]);
    }
}
test_device!(residual_block_first_to_train, residual_first_trainable);
