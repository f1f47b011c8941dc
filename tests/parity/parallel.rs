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
    lockstep_with(devices, single, tol, TrainConfig { clip_grad_norm: Some(5.0), ..TrainConfig::default() });
}

fn lockstep_with(devices: &[Device], single: &Device, tol: Tolerance, cfg: TrainConfig) {
    let data = mnist_slice(wgpu_cnn::data::mnist::Split::Train, 99);
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

/// With dynamic loss scaling: each replica unscales the summed gradients and
/// decides (on its device) as one trainer on the whole batch does.
#[test]
fn loss_scaled_replicas_match_one() {
    let loss_scale = Some(wgpu_cnn::train::LossScale { init_scale: 1024.0, growth_interval: 2, ..Default::default() });
    let cfg = TrainConfig { loss_scale, ..TrainConfig::default() };
    lockstep_with(&[Device::Cpu, Device::Cpu], &Device::Cpu, Tolerance::new(1e-5, 1e-4), cfg.clone());
    with_gpu("parallel::loss_scaled_replicas_match_one", |dev| {
        let devices = [Device::gpu().unwrap(), Device::gpu().unwrap()];
        lockstep_with(&devices, dev, Tolerance::new(2e-5, 1e-3), cfg);
    });
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

/// `mpirun -np 2` of the child below: two processes, each with its shard of
/// every batch, end with the weights one process gets on the combined
/// batches (feature `mpi`; scripts/test.sh runs it when Open MPI is there).
#[cfg(feature = "mpi")]
#[test]
fn mpi_two_ranks_match_one_process() {
    let out = crate::training::tmp("mpi-weights.bin");
    let _ = std::fs::remove_file(&out);
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new("mpirun");
    if unsafe_is_root() {
        cmd.arg("--allow-run-as-root");
    }
    let status = cmd
        .args(["--oversubscribe", "-np", "2"])
        .arg(&exe)
        .args(["--exact", "parallel::mpi_child", "--nocapture", "--test-threads", "1"])
        .env("WGPU_CNN_MPI_OUT", &out)
        .status()
        .expect("mpirun (Open MPI) is installed");
    assert!(status.success(), "mpirun: {status}");
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&std::fs::read(&out).unwrap());
    // One process on the same global batches: rank 0's slice, then rank 1's.
    let data = mnist_slice(wgpu_cnn::data::mnist::Split::Train, 90);
    let mut one = lenet_trainer(&Device::Cpu, opt(), TrainConfig { batch_size: 16, ..TrainConfig::default() });
    let order: Vec<usize> = data.batches(data.len(), Some(one.config.seed)).concat();
    let shards: Vec<Vec<usize>> = (0..2).map(|r| order.iter().skip(r).step_by(2).copied().collect()).collect();
    for s in 0..3 {
        let idx: Vec<usize> = shards.iter().flat_map(|sh| sh[(s * 16).min(sh.len())..((s + 1) * 16).min(sh.len())].to_vec()).collect();
        let (x, labels) = data.batch(&Device::Cpu, &idx, None).unwrap();
        one.train_step(&x, &labels).unwrap();
    }
    let want: Vec<f32> = weights(&mut one).concat();
    Tolerance::new(1e-5, 1e-4).assert("rank 0's weights after an epoch vs one process", &got, &want);
}

/// A rank that fails ends the whole job with its error (the other rank is
/// waiting in the gradient exchange and must not hang).
#[cfg(feature = "mpi")]
#[test]
fn mpi_failed_rank_stops_the_job() {
    let out = crate::training::tmp("mpi-fail.bin");
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new("mpirun");
    if unsafe_is_root() {
        cmd.arg("--allow-run-as-root");
    }
    let start = std::time::Instant::now();
    let run = cmd
        .args(["--oversubscribe", "-np", "2"])
        .arg(&exe)
        .args(["--exact", "parallel::mpi_child", "--nocapture", "--test-threads", "1"])
        .env("WGPU_CNN_MPI_OUT", &out)
        .env("WGPU_CNN_MPI_FAIL", "1")
        .output()
        .expect("mpirun (Open MPI) is installed");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "the job should fail");
    assert!(stderr.contains("rank 1 of 2") && stderr.contains("label 99"), "{stderr}");
    assert!(start.elapsed().as_secs() < 60, "the job ended promptly");
}

#[cfg(feature = "mpi")]
fn unsafe_is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Not a test of its own: each MPI rank of the test above (a no-op unless
/// WGPU_CNN_MPI_OUT is set). Trains one epoch of 90 images, 16 per rank per
/// step; rank 0 writes its weights and optimiser state.
#[cfg(feature = "mpi")]
#[test]
fn mpi_child() {
    let Some(out) = std::env::var_os("WGPU_CNN_MPI_OUT") else { return };
    let universe = mpi::initialize().expect("MPI initialises");
    let world = universe.world();
    let mut data = mnist_slice(wgpu_cnn::data::mnist::Split::Train, 90);
    if std::env::var_os("WGPU_CNN_MPI_FAIL").is_some() && mpi::traits::Communicator::rank(&world) == 1 {
        data.labels[1] = 99; // out of range: rank 1 fails in its first step
    }
    let mut t = lenet_trainer(&Device::Cpu, opt(), TrainConfig { batch_size: 16, ..TrainConfig::default() });
    // A different start on rank 1: Distributed::new must broadcast rank 0's weights.
    if mpi::traits::Communicator::rank(&world) == 1 {
        for p in t.model.parameters("").unwrap() {
            let v = vec![0.5; p.value.numel()];
            p.value.write(&v).unwrap();
        }
    }
    let mut d = wgpu_cnn::parallel::Distributed::new(world, t).unwrap();
    if let Err(e) = d.train_epoch(&data) {
        d.abort(&e, 1);
    }
    if d.rank() == 0 {
        let w: Vec<f32> = weights(&mut d.trainer).concat();
        std::fs::write(out, bytemuck::cast_slice(&w)).unwrap();
    }
}

/// With batch-norm, replicas keep their own running statistics unless
/// `sync_buffers` averages them after every step; the weights stay identical either way.
#[test]
fn batchnorm_buffers_per_replica_or_synchronised() {
    let data = mnist_slice(wgpu_cnn::data::mnist::Split::Train, 64);
    let build = |d: &Device| models::mlp(d, 32, 0.0, &mut Initializer::new(3, Init::KaimingUniform));
    for sync in [false, true] {
        let mut dp = DataParallel::new(&[Device::Cpu, Device::Cpu], build, opt(), TrainConfig::default()).unwrap();
        dp.sync_buffers = sync;
        let (images, labels) = data.batch_host(&(0..64).collect::<Vec<_>>(), None);
        dp.train_step(&images, data.item_shape, &labels).unwrap();
        let bufs = |dp: &mut DataParallel, r: usize| -> Vec<Vec<f32>> { dp.replicas[r].model.buffers("").into_iter().map(|(_, b)| b.to_vec().unwrap()).collect() };
        let (b0, b1) = (bufs(&mut dp, 0), bufs(&mut dp, 1));
        assert_eq!(b0 == b1, sync, "running statistics equal across replicas iff synchronised");
        assert_eq!(weights(&mut dp.replicas[0]), weights(&mut dp.replicas[1]));
    }
}
