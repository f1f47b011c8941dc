//! The model zoo against torchvision: parameter counts, every state_dict
//! name and shape, and output shapes at 3@224×224 with 1000 classes (from
//! `tests/fixtures/torchvision_zoo.json`, made by `make_zoo.py`); one training
//! step of each on the CPU path at a small input, and of the small ones on the GPU.


use wgpu_cnn::nn::models::{self, ModelSpec, ZOO};
use wgpu_cnn::nn::{Init, Initializer, Layer};
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{TrainConfig, Trainer};
use wgpu_cnn::weights::state_dict_layout;
use wgpu_cnn::{Device, Tensor};

use crate::harness::{random, with_gpu};

fn fixture() -> serde_json::Value {
    let path = crate::harness::repo_path("tests/fixtures/torchvision_zoo.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn zoo_matches_torchvision() {
    let tv = fixture();
    for &name in ZOO {
        let want = &tv[name];
        // Built once on the CPU path at ImageNet size: the big VGGs hold 138 M parameters.
        let mut m = models::build(name, ModelSpec::new([3, 224, 224], 1000), &Device::Cpu, &mut Initializer::new(0, Init::PytorchDefault)).unwrap();
        assert_eq!(m.param_count() as u64, want["params"].as_u64().unwrap(), "{name}: parameter count");
        let out: Vec<usize> = want["output"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(m.output_shape(&[1, 3, 224, 224]).unwrap(), out, "{name}: output shape");
        // The summary (model_summary --model) lists nested layers by their state path.
        let summary = m.summary(&[1, 3, 224, 224]).unwrap();
        assert_eq!(summary.total_params() as u64, want["params"].as_u64().unwrap(), "{name}: summary total");
        assert_eq!(summary.rows.last().unwrap().output, out);
        let first = &summary.rows[0].name;
        assert!(first == "features.0" || first.starts_with("conv1"), "{name}: first row named {first}");
        let theirs: Vec<(String, Vec<usize>)> = want["state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e[0].as_str().unwrap().to_string(), e[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()))
            .collect();
        let ours = state_dict_layout(&mut m);
        let diff: Vec<String> = ours.iter().zip(&theirs).filter(|(a, b)| a != b).take(5).map(|(a, b)| format!("ours {a:?} vs torchvision {b:?}")).collect();
        assert!(diff.is_empty() && ours.len() == theirs.len(), "{name}: state_dict differs ({} vs {} entries): {diff:?}", ours.len(), theirs.len());
    }
}

/// One SGD step at a small input and batch: the loss is finite and the weights move.
fn one_step(name: &str, dev: &Device, input: [usize; 3]) {
    let spec = ModelSpec::new(input, 10);
    let model = models::build(name, spec, dev, &mut Initializer::new(1, Init::PytorchDefault)).unwrap();
    let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig::new(0.01))).unwrap();
    let mut t = Trainer::new(model, opt, TrainConfig { progress: false, ..TrainConfig::default() }, dev.clone()).unwrap();
    let [c, h, w] = input;
    let x = Tensor::from_vec(dev, &[2, c, h, w], random(3, 2 * c * h * w)).unwrap();
    let before = t.model.parameters("").unwrap().last().unwrap().value.to_vec().unwrap();
    let loss = t.train_step(&x, &[3, 7]).unwrap().to_vec().unwrap()[0];
    assert!(loss.is_finite() && loss > 0.0, "{name} on {dev}: loss {loss}");
    let after = t.model.parameters("").unwrap().last().unwrap().value.to_vec().unwrap();
    assert_ne!(before, after, "{name} on {dev}: the classifier's bias did not move");
}

#[test]
fn zoo_trains_on_cpu() {
    for &name in ZOO {
        let side = if name == "alexnet" { 64 } else { 32 };
        one_step(name, &Device::Cpu, [3, side, side]);
    }
}

#[test]
fn small_zoo_trains_on_gpu() {
    with_gpu("zoo::small_zoo_trains_on_gpu", |dev| {
        for name in ["resnet18", "googlenet"] {
            one_step(name, dev, [3, 32, 32]);
        }
    });
}
