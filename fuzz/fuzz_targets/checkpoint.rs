//! Checkpoints: any bytes either load into a small model or are rejected with
//! a file error, leaving the trainer unchanged.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgpu_cnn::nn::{ActivationLayer, BatchNorm, Init, Initializer, Layer, Linear, Sequential};
use wgpu_cnn::ops::activation::Activation;
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{TrainConfig, Trainer};
use wgpu_cnn::{checkpoint, Device, Error};

fn trainer() -> Trainer {
    let dev = Device::Cpu;
    let init = &mut Initializer::new(1, Init::PytorchDefault);
    let model = Sequential::new()
        .push(Linear::new(&dev, 4, 5, true, init).unwrap())
        .push(BatchNorm::new_1d(&dev, 5).unwrap())
        .push(ActivationLayer::new(Activation::Relu))
        .push(Linear::new(&dev, 5, 3, true, init).unwrap());
    let opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.1) })).unwrap();
    Trainer::new(model, opt, TrainConfig { progress: false, ..Default::default() }, dev).unwrap()
}

fn weights(t: &mut Trainer) -> Vec<Vec<f32>> {
    t.model.parameters("").unwrap().into_iter().map(|p| p.value.to_vec().unwrap()).collect()
}

fuzz_target!(|data: &[u8]| {
    let mut t = trainer();
    let before = weights(&mut t);
    match checkpoint::load_bytes(Path::new("ckpt"), data, &mut t) {
        Ok(()) => {}
        Err(Error::File { .. }) => assert_eq!(weights(&mut t), before, "a rejected checkpoint changed the model"),
        Err(e) => panic!("not a file error: {e}"),
    }
});
