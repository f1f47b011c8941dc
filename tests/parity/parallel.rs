//! Data parallelism in one process: two replicas (two CPU devices, or two
//! devices opened on the GPU adapter) give the same weights after several
//! steps as one replica on the whole batch, within the parity tolerance.

use wgpu_cnn::nn::{models, Init, Initializer, Layer};
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::optim::OptimizerConfig;
use wgpu_cnn::parallel::DataParallel;
use wgpu_cnn::train::TrainConfig;
use wgpu_cnn::{Device, Tensor, Tolerance};

use crate::harness::with_gpu;
use crate::training::{lenet_trainer, mnist_slice, weights};

fn opt() -> OptimizerConfig {
    OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, weight_decay: 1e-4, ..SgdConfig::new(0.05) })
}

/// Three steps of 33 images (shards of 17 and 16) on `devices` against one
/// trainer on `single` with the whole batches.
fn lockstep(devices: &[Device], single: &Device, tol: Tolerance) {
    let data = mnist_slice(wgpu_cnn::data::mnist::Split::Train, 99);
    let cfg = TrainConfig { clip_grad_norm: Some(5.0), ..TrainConfig::default() };
    // Different seeds per device: the constructor copies replica 0's weights to the others.
    let mut seed = 0;
    let mut dp = DataParallel::new(devices, |d| { seed += 1; models::lenet5(d, &mut Initializer::new(seed, Init::PytorchDefault)) }, opt(), cfg.clone()).unwrap();
    let mut one = lenet_trainer(single, opt(), cfg);
    // lenet_trainer seeds with 42; start it from replica 0's weights instead.
    let start = weights(&mut dp.replicas[0]);
    for (p, w) in one.model.parameters("").unwrap().into_iter().zip(&start) {
        p.value.write(w).unwrap();
    }
    for step in 0..3 {
        let idx: Vec<usize> = (step * 33..(step + 1) * 33).collect();
        let (images, labels) = data.batch_host(&idx, None);
        let loss = dp.train_step(&images, data.item_shape, &labels).unwrap();
        let x = Tensor::from_vec(single, &[33, 1, 28, 28], images).unwrap();
        let want = one.train_step(&x, &labels).unwrap().to_vec().unwrap()[0];
        tol.assert(&format!("loss at step {step}"), &[loss], &[want]);
    }
    let want = weights(&mut one);
    for r in 0..devices.len() {
        for (i, (g, w)) in weights(&mut dp.replicas[r]).iter().zip(&want).enumerate() {
            tol.assert(&format!("replica {r} parameter {i} after 3 steps"), g, w);
        }
    }
    // The replicas are identical to each other, bit for bit.
    assert_eq!(weights(&mut dp.replicas[0]), weights(&mut dp.replicas[1]));
    assert_eq!(dp.bytes_all_reduced_per_step(), one.model.param_count() * 4 * devices.len());
}

#[test]
fn two_cpu_replicas_match_one() {
    lockstep(&[Device::Cpu, Device::Cpu], &Device::Cpu, Tolerance::new(1e-5, 1e-4));
}

#[test]
fn two_gpu_replicas_match_one() {
    with_gpu("parallel::two_gpu_replicas_match_one", |dev| {
        // Two more devices on the same adapter, one per replica.
        let devices = [Device::gpu().unwrap(), Device::gpu().unwrap()];
        lockstep(&devices, dev, Tolerance::new(2e-5, 1e-3));
    });
}

/// An epoch through `train_epoch` learns (loss falls) and replica 0 evaluates.
#[test]
fn data_parallel_epoch() {
    let data = mnist_slice(wgpu_cnn::data::mnist::Split::Train, 256);
    let cfg = TrainConfig { batch_size: 32, ..TrainConfig::default() };
    let mut dp = DataParallel::new(&[Device::Cpu, Device::Cpu], |d| models::lenet5(d, &mut Initializer::new(1, Init::PytorchDefault)), opt(), cfg).unwrap();
    let first = dp.train_epoch(&data).unwrap();
    let second = dp.train_epoch(&data).unwrap();
    assert!(second < first, "mean loss {first} → {second}");
    assert_eq!(dp.replicas[0].epoch, 2);
    let m = dp.evaluate(&data).unwrap();
    assert!(m.loss.is_finite() && m.loss < first, "evaluation loss {} after training (first epoch's mean {first})", m.loss);
    assert!(DataParallel::new(&[], |d| models::lenet5(d, &mut Initializer::new(1, Init::PytorchDefault)), opt(), TrainConfig::default()).is_err());
}
