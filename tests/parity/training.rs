//! Training end to end: learning on real MNIST, checkpoints (round trip,
//! exact resume, rejection of bad files, crash safety), a flat memory
//! footprint across epochs, and the MNIST loader's errors.

use std::path::{Path, PathBuf};

use wgpu_cnn::data::mnist::{self, load_files, Split};
use wgpu_cnn::data::Dataset;
use wgpu_cnn::nn::{models, Init, Initializer, Layer};
use wgpu_cnn::ops::optim::{AdamConfig, SgdConfig};
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{Control, TrainConfig, Trainer};
use wgpu_cnn::{checkpoint, Device, Error, FileErrorKind};

use crate::harness::with_gpu;
use wgpu_cnn::Tolerance;

pub(crate) fn mnist_slice(split: Split, n: usize) -> Dataset {
    use std::sync::OnceLock;
    static TRAIN: OnceLock<Dataset> = OnceLock::new();
    static TEST: OnceLock<Dataset> = OnceLock::new();
    let cell = if split == Split::Train { &TRAIN } else { &TEST };
    cell.get_or_init(|| mnist::load(&mnist::embedded_dir(), split).expect("embedded MNIST")).take(n)
}

pub(crate) fn lenet_trainer(dev: &Device, opt: OptimizerConfig, cfg: TrainConfig) -> Trainer {
    let model = models::lenet5(dev, &mut Initializer::new(42, Init::PytorchDefault)).unwrap();
    Trainer::new(model, Optimizer::new(opt).unwrap(), TrainConfig { progress: false, ..cfg }, dev.clone()).unwrap()
}

pub(crate) fn sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.05) })
}

pub(crate) fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-cnn-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The whole pipeline learns: LeNet-5 on 2,000 real MNIST digits, one epoch on the CPU path.
#[test]
fn cpu_learns_mnist_slice() {
    let mut t = lenet_trainer(&Device::Cpu, sgd(), TrainConfig { batch_size: 32, ..Default::default() });
    let hist = t.fit(&mnist_slice(Split::Train, 2000), Some(&mnist_slice(Split::Test, 1000)), |_| Control::Continue).unwrap();
    let acc = hist[0].val_accuracy.unwrap();
    assert!(acc > 0.6, "test accuracy {acc} after one epoch on 2000 images (chance is 0.1)");
}

/// The same on the GPU path, on a smaller slice (lavapipe is slow).
#[test]
fn gpu_learns_mnist_slice() {
    with_gpu("training::gpu_learns_mnist_slice", |dev| {
        let adam = OptimizerConfig::Adam(AdamConfig::adam(2e-3));
        let mut t = lenet_trainer(dev, adam, TrainConfig { batch_size: 32, ..Default::default() });
        let hist = t.fit(&mnist_slice(Split::Train, 640), Some(&mnist_slice(Split::Test, 500)), |_| Control::Continue).unwrap();
        let acc = hist[0].val_accuracy.unwrap();
        assert!(acc > 0.3, "test accuracy {acc} on {dev} (chance is 0.1)");
    });
}

pub(crate) fn weights(t: &mut Trainer) -> Vec<Vec<f32>> {
    let mut v: Vec<Vec<f32>> = t.model.parameters("").unwrap().iter().map(|p| p.value.to_vec().unwrap()).collect();
    v.extend(t.optimizer.state_tensors().iter().map(|(_, s)| s.to_vec().unwrap()));
    v
}

/// Train 1 epoch, save, load into a fresh trainer, train 1 more = 2 epochs
/// straight, bit for bit on the CPU path; Adam exercises two state tensors.
#[test]
fn resume_is_exact_on_cpu() {
    let data = mnist_slice(Split::Train, 192);
    for opt in [sgd(), OptimizerConfig::Adam(AdamConfig::adamw(1e-3))] {
        let cfg = TrainConfig { batch_size: 32, epochs: 2, seed: 7, ..Default::default() };
        let mut straight = lenet_trainer(&Device::Cpu, opt, cfg.clone());
        straight.fit(&data, None, |_| Control::Continue).unwrap();

        let mut first = lenet_trainer(&Device::Cpu, opt, TrainConfig { epochs: 1, ..cfg.clone() });
        first.fit(&data, None, |_| Control::Continue).unwrap();
        let path = tmp("resume.safetensors");
        checkpoint::save(&path, &mut first).unwrap();
        let mut resumed = lenet_trainer(&Device::Cpu, opt, cfg.clone());
        checkpoint::load(&path, &mut resumed).unwrap();
        assert_eq!((resumed.epoch, resumed.step), (1, 6));
        assert_eq!(weights(&mut resumed), weights(&mut first), "round trip changed the state");
        resumed.fit(&data, None, |_| Control::Continue).unwrap();
        assert_eq!(weights(&mut resumed), weights(&mut straight), "resumed run differs from the uninterrupted one ({opt:?})");
    }
}

/// The same with dropout and batch-norm: the running statistics and the
/// dropout step counter (which picks the masks) survive the round trip.
#[test]
fn resume_is_exact_with_dropout_and_batchnorm() {
    let data = mnist_slice(Split::Train, 128);
    let make = |epochs| {
        let model = models::mlp(&Device::Cpu, 32, 0.3, &mut Initializer::new(5, Init::KaimingUniform)).unwrap();
        let opt = Optimizer::new(OptimizerConfig::Adam(AdamConfig::adam(1e-3))).unwrap();
        Trainer::new(model, opt, TrainConfig { batch_size: 32, epochs, progress: false, ..Default::default() }, Device::Cpu).unwrap()
    };
    let state = |t: &mut Trainer| {
        let mut v = weights(t);
        v.extend(t.model.buffers("").iter().map(|(_, b)| b.to_vec().unwrap()));
        v
    };
    let mut straight = make(2);
    straight.fit(&data, None, |_| Control::Continue).unwrap();
    let mut first = make(1);
    first.fit(&data, None, |_| Control::Continue).unwrap();
    let path = tmp("resume-mlp.safetensors");
    checkpoint::save(&path, &mut first).unwrap();
    let mut resumed = make(2);
    checkpoint::load(&path, &mut resumed).unwrap();
    let steps: Vec<u32> = resumed.model.counters("").into_iter().map(|(_, v)| *v).collect();
    assert_eq!(steps, vec![4, 4], "dropout step counters restored");
    resumed.fit(&data, None, |_| Control::Continue).unwrap();
    assert_eq!(state(&mut resumed), state(&mut straight));
}

/// A checkpoint written on the GPU loads on the CPU and the other way round.
#[test]
fn checkpoint_moves_between_devices() {
    with_gpu("training::checkpoint_moves_between_devices", |dev| {
        let data = mnist_slice(Split::Train, 64);
        let mut g = lenet_trainer(dev, sgd(), TrainConfig { batch_size: 32, ..Default::default() });
        g.fit(&data, None, |_| Control::Continue).unwrap();
        let path = tmp("gpu.safetensors");
        checkpoint::save(&path, &mut g).unwrap();
        let mut c = lenet_trainer(&Device::Cpu, sgd(), TrainConfig::default());
        checkpoint::load(&path, &mut c).unwrap();
        assert_eq!(weights(&mut c), weights(&mut g));
    });
}

fn expect_file_err(r: wgpu_cnn::Result<()>, kind: FileErrorKind, needle: &str) {
    match r {
        Err(Error::File { kind: k, msg, .. }) if k == kind => assert!(msg.contains(needle), "`{msg}` should mention `{needle}`"),
        other => panic!("expected a {kind:?} file error mentioning `{needle}`, got {other:?}"),
    }
}

#[test]
fn bad_checkpoints_are_rejected() {
    let mut t = lenet_trainer(&Device::Cpu, sgd(), TrainConfig::default());
    let path = tmp("good.safetensors");
    checkpoint::save(&path, &mut t).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let truncated = tmp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(checkpoint::load(&truncated, &mut t), Err(Error::File { kind: FileErrorKind::Truncated | FileErrorKind::BadHeader, .. })));
    let garbage = tmp("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint at all").unwrap();
    assert!(matches!(checkpoint::load(&garbage, &mut t), Err(Error::File { .. })));
    expect_file_err(checkpoint::load(Path::new("/nonexistent/x.safetensors"), &mut t), FileErrorKind::Io, "");

    // A different model: the fingerprint says so.
    let mut mlp = Trainer::new(models::mlp(&Device::Cpu, 16, 0.1, &mut Initializer::new(0, Init::PytorchDefault)).unwrap(), Optimizer::new(sgd()).unwrap(), TrainConfig::default(), Device::Cpu).unwrap();
    expect_file_err(checkpoint::load(&path, &mut mlp), FileErrorKind::Mismatch, "different model");

    // Same architecture but one tensor of the wrong shape: named.
    let mut bad = bytes.clone();
    let header_len = u64::from_le_bytes(bad[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bad[8..8 + header_len].to_vec()).unwrap();
    let patched = header.replacen("\"shape\":[6,1,5,5]", "\"shape\":[1,6,5,5]", 1);
    assert_ne!(patched, header, "the header should hold conv1's shape");
    bad[8..8 + header_len].copy_from_slice(patched.as_bytes());
    let wrong = tmp("wrong-shape.safetensors");
    std::fs::write(&wrong, &bad).unwrap();
    expect_file_err(checkpoint::load(&wrong, &mut t), FileErrorKind::Mismatch, "model.0.weight");
}

/// Two states that share one architecture: LeNet-5 initialised from seed 42
/// or 43, with Adam (so the optimiser state is saved too, after one step).
fn crash_state(seed: u64) -> Trainer {
    let model = models::lenet5(&Device::Cpu, &mut Initializer::new(seed, Init::PytorchDefault)).unwrap();
    let mut t = Trainer::new(model, Optimizer::new(OptimizerConfig::Adam(AdamConfig::adam(1e-3))).unwrap(), TrainConfig { progress: false, ..Default::default() }, Device::Cpu).unwrap();
    let data = mnist_slice(Split::Train, 8);
    let (x, labels) = data.batch(&Device::Cpu, &(0..8).collect::<Vec<_>>(), None).unwrap();
    t.train_step(&x, &labels).unwrap();
    t
}

/// SIGKILL while saving in a loop: whenever the child dies, the checkpoint on
/// disk is one of the two states it was alternating between, complete (it
/// loads, and its weights equal that state's bit for bit).
#[test]
fn killed_while_saving_leaves_a_complete_checkpoint() {
    let path = tmp("crash.safetensors");
    let states = [weights(&mut crash_state(42)), weights(&mut crash_state(43))];
    let exe = std::env::current_exe().unwrap();
    let mut mid_write = 0;
    for round in 0..6u64 {
        let _ = std::fs::remove_file(&path);
        let mut child = std::process::Command::new(&exe)
            .args(["--exact", "training::save_loop_child", "--nocapture", "--include-ignored"])
            .env("WGPU_CNN_SAVE_LOOP", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the first complete save, then let it run a little while.
        let start = std::time::Instant::now();
        while !path.exists() {
            assert!(start.elapsed().as_secs() < 60, "the child never saved");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20 + 37 * round));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        // Temporary files the child was still writing: never the checkpoint itself.
        for e in std::fs::read_dir(path.parent().unwrap()).unwrap().filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(".crash.safetensors.tmp-") {
                mid_write += 1;
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let mut fresh = crash_state(44);
        checkpoint::load(&path, &mut fresh).unwrap_or_else(|e| panic!("round {round}: the checkpoint does not load after SIGKILL: {e}"));
        let got = weights(&mut fresh);
        assert!(got == states[0] || got == states[1], "round {round}: the checkpoint is neither saved state");
    }
    eprintln!("killed mid-write in {mid_write} of 6 rounds");
}

/// Not a test of its own: the child process of the test above (a no-op
/// unless WGPU_CNN_SAVE_LOOP is set). Saves two states alternately until killed.
#[test]
fn save_loop_child() {
    let Some(target) = std::env::var_os("WGPU_CNN_SAVE_LOOP") else { return };
    let target = PathBuf::from(target);
    let mut states = [crash_state(42), crash_state(43)];
    for i in 0.. {
        checkpoint::save(&target, &mut states[i % 2]).unwrap();
    }
}

/// GPU buffer-pool bytes after epoch 2 equal those after epoch 1, with the
/// steady step planned in the first epoch and kept through the next ones
/// (each epoch's first steps make extra uploads the plan does not expect).
#[test]
fn gpu_memory_is_flat_across_epochs() {
    with_gpu("training::gpu_memory_is_flat_across_epochs", |_| {
        let dev = Device::gpu().unwrap(); // private: parallel tests use the shared one
        let ctx = dev.gpu_context().unwrap().clone();
        let data = mnist_slice(Split::Train, 192);
        let mut t = lenet_trainer(&dev, sgd(), TrainConfig { batch_size: 32, epochs: 3, log_every: 4, ..Default::default() });
        let mut stats = Vec::new();
        t.fit(&data, Some(&mnist_slice(Split::Test, 64)), |_| {
            stats.push(ctx.pool_stats());
            Control::Continue
        })
        .unwrap();
        let bytes: Vec<u64> = stats.iter().map(|s| s.allocated_bytes).collect();
        assert!(stats[0].planned_bytes > 0, "six identical steps were not planned: {stats:?}");
        assert_eq!(bytes[1], bytes[0], "pool grew from epoch 1 to 2: {stats:?}");
        assert_eq!(bytes[2], bytes[1], "pool grew from epoch 2 to 3: {stats:?}");
    });
}

fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
    v.extend_from_slice(payload);
    v
}

#[test]
fn mnist_loader_errors_are_typed() {
    let (img, lab) = (tmp("img.idx"), tmp("lab.idx"));
    let write = |i: Vec<u8>, l: Vec<u8>| {
        std::fs::write(&img, i).unwrap();
        std::fs::write(&lab, l).unwrap();
        load_files(&img, &lab).map(|_| ())
    };
    assert!(write(idx(2051, &[2, 2, 2], &[0, 255, 1, 2, 3, 4, 5, 6]), idx(2049, &[2], &[3, 9])).is_ok());
    let ds = load_files(&img, &lab).unwrap();
    assert_eq!((ds.len(), ds.item_shape, ds.images[1]), (2, [1, 2, 2], 1.0));
    expect_file_err(write(idx(2051, &[2, 2, 2], &[0; 7]), idx(2049, &[2], &[1, 2])), FileErrorKind::Truncated, "8 bytes");
    expect_file_err(write(idx(2051, &[2, 2, 2], &[0; 9]), idx(2049, &[2], &[1, 2])), FileErrorKind::TrailingData, "");
    expect_file_err(write(idx(2052, &[2, 2, 2], &[0; 8]), idx(2049, &[2], &[1, 2])), FileErrorKind::BadMagic, "magic number 2052");
    expect_file_err(write(idx(2051, &[2, 2, 2], &[0; 8]), idx(2049, &[3], &[1, 2, 3])), FileErrorKind::Inconsistent, "3 labels for 2 images");
    expect_file_err(write(idx(2051, &[2, 2, 2], &[0; 8]), idx(2049, &[2], &[1, 10])), FileErrorKind::LabelOutOfRange, "label 10");
    // A header promising 2^32 × 2^32 × 2^32 bytes allocates nothing and says so.
    expect_file_err(write(idx(2051, &[u32::MAX, u32::MAX, u32::MAX], &[]), idx(2049, &[0], &[])), FileErrorKind::Overflow, "overflow");
    expect_file_err(write(vec![0, 0, 8], idx(2049, &[0], &[])), FileErrorKind::Truncated, "header");
    expect_file_err(mnist::load(Path::new("/nonexistent-dir"), Split::Train).map(|_| ()), FileErrorKind::Io, "not found");
    // The embedded copy's provenance catches a file that is not the original.
    let prov = mnist::embedded_dir().join("PROVENANCE.json");
    let fake = tmp("train-labels-idx1-ubyte");
    std::fs::write(&fake, idx(2049, &[1], &[3])).unwrap();
    expect_file_err(mnist::verify(&prov, &fake), FileErrorKind::Checksum, "sha256");
}

#[test]
fn cifar_loader() {
    use wgpu_cnn::data::cifar;
    let dir = tmp("cifar");
    std::fs::create_dir_all(&dir).unwrap();
    let record = |label: u8, fill: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(fill, 3072));
        r
    };
    std::fs::write(dir.join("test_batch.bin"), [record(3, 255), record(9, 0)].concat()).unwrap();
    let d = cifar::load(&dir, false).unwrap();
    assert_eq!((d.len(), d.item_shape, d.labels.clone()), (2, [3, 32, 32], vec![3, 9]));
    Tolerance::new(1e-5, 1e-5).assert("normalised red", &[d.images[0]], &[(1.0 - cifar::MEAN[0]) / cifar::STD[0]]);
    Tolerance::new(1e-5, 1e-5).assert("normalised blue", &[d.images[3072 + 2048]], &[-cifar::MEAN[2] / cifar::STD[2]]);
    std::fs::write(dir.join("test_batch.bin"), [record(3, 1), record(9, 0)].concat()[..5000].to_vec()).unwrap();
    expect_file_err(cifar::load(&dir, false).map(|_| ()), FileErrorKind::Truncated, "3073-byte records");
    std::fs::write(dir.join("test_batch.bin"), record(10, 0)).unwrap();
    expect_file_err(cifar::load(&dir, false).map(|_| ()), FileErrorKind::LabelOutOfRange, "label 10");
    expect_file_err(cifar::load(&dir, true).map(|_| ()), FileErrorKind::Io, "cifar-10-binary");
}

#[test]
fn augmentation_and_tta() {
    use rand::SeedableRng;
    use wgpu_cnn::data::{tta_views, Augment};
    // A 1×3×3 image 1..9: a flip mirrors columns; a crop with padding shifts and zero-fills.
    let img: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let flip = Augment { horizontal_flip: true, ..Augment::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let outs: Vec<Vec<f32>> = (0..8)
        .map(|_| {
            let mut v = img.clone();
            flip.apply(&mut v, [1, 3, 3], &mut rng);
            v
        })
        .collect();
    assert!(outs.contains(&img) && outs.contains(&vec![3., 2., 1., 6., 5., 4., 9., 8., 7.]), "{outs:?}");
    let crop = Augment { crop_padding: 1, ..Augment::default() };
    for _ in 0..20 {
        let mut v = img.clone();
        crop.apply(&mut v, [1, 3, 3], &mut rng);
        let kept = v.iter().filter(|&&x| x != 0.0).count();
        assert!(kept == 9 || kept == 6 || kept == 4, "a shift by at most 1 keeps 9, 6 or 4 pixels: {v:?}");
    }
    let views = tta_views(&img, [1, 3, 3], 1);
    assert_eq!(views.len(), 6);
    assert_eq!(views[0], img);
    assert_eq!(views[1], vec![3., 2., 1., 6., 5., 4., 9., 8., 7.]);
}

/// Test-time augmentation at evaluation: predictions from averaged views.
#[test]
fn predict_with_tta() {
    use wgpu_cnn::train::predict;
    let adam = OptimizerConfig::Adam(AdamConfig::adam(2e-3));
    let mut t = lenet_trainer(&Device::Cpu, adam, TrainConfig { batch_size: 32, ..Default::default() });
    t.fit(&mnist_slice(Split::Train, 1000), None, |_| Control::Continue).unwrap();
    let test = mnist_slice(Split::Test, 200);
    let (x, labels) = test.batch(&Device::Cpu, &(0..200).collect::<Vec<_>>(), None).unwrap();
    for tta in [false, true] {
        let p = predict(&mut t.model, &x, tta).unwrap();
        let acc = p.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count() as f32 / 200.0;
        assert!(acc > 0.5, "accuracy {acc} with tta={tta}");
    }
}

#[test]
fn training_curves_svg() {
    use wgpu_cnn::train::EpochStats;
    let hist: Vec<EpochStats> = (1..=3)
        .map(|e| EpochStats { epoch: e, lr: 0.01, train_loss: 1.0 / e as f32, train_accuracy: Some(0.8 + 0.03 * e as f32), val_loss: Some(1.2 / e as f32), val_accuracy: Some(0.9 + 0.02 * e as f32), images_per_sec: 1.0, seconds: 1.0, step_losses: vec![1.5 / e as f32, 1.0 / e as f32] })
        .collect();
    let path = tmp("curves.svg");
    wgpu_cnn::plot::training_curves(&path, &hist).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("accuracy (%)") && svg.contains("loss per step") && svg.contains("polyline") && svg.contains("<circle"), "{}", &svg[..200.min(svg.len())]);
    // One epoch still draws its points.
    wgpu_cnn::plot::training_curves(&path, &hist[..1]).unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().matches("<circle").count() >= 3);
    let bad = wgpu_cnn::plot::training_curves(Path::new("/nonexistent/dir/c.svg"), &hist);
    assert!(bad.is_err());
    // PNG by the extension (a real PNG: its magic bytes, and it decodes at the plot's size).
    let png = tmp("curves.png");
    wgpu_cnn::plot::training_curves(&png, &hist).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (1350, 400));
    assert!(img.to_rgb8().pixels().any(|p| p.0 == [0, 0, 255]), "the blue train curve is drawn");
    // Another extension: refused, rather than SVG text in it.
    let txt = tmp("curves.txt");
    assert!(matches!(wgpu_cnn::plot::training_curves(&txt, &hist), Err(Error::File { kind: FileErrorKind::Write, .. })) && !txt.exists());
    // The history: CSV with a row per epoch, JSON with the step losses.
    let csv = tmp("history.csv");
    wgpu_cnn::plot::write_history(&csv, &hist).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 4);
    assert!(text.starts_with("epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy") && text.lines().nth(2).unwrap().starts_with("2,0.01,0.5,0.86"), "{text}");
    let json = tmp("history.json");
    wgpu_cnn::plot::write_history(&json, &hist).unwrap();
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[2]["epoch"], 3);
    assert_eq!(v[0]["step_losses"].as_array().unwrap().len(), 2);
}

/// Timestamp profiling: every dispatched kernel shows up with its calls, and
/// the trace is valid JSON with one event per pass.
#[test]
fn gpu_profile_and_trace() {
    with_gpu("training::gpu_profile_and_trace", |_| {
        use wgpu_cnn::GpuOptions;
        let dev = Device::gpu_with(&GpuOptions { profile: true, ..GpuOptions::default() }).unwrap();
        let ctx = dev.gpu_context().unwrap().clone();
        let mut t = lenet_trainer(&dev, sgd(), TrainConfig::default());
        let data = mnist_slice(Split::Train, 32);
        let (x, labels) = data.batch(&dev, &(0..32).collect::<Vec<_>>(), None).unwrap();
        for _ in 0..2 {
            t.train_step(&x, &labels).unwrap();
        }
        ctx.flush().unwrap();
        let report = ctx.profile_report().unwrap();
        let calls = |k: &str| report.rows.iter().find(|r| r.kernel == k).map_or(0, |r| r.calls);
        // Two convs, two steps; backward reuses the columns kept from forward.
        assert_eq!(calls("im2col"), 4, "{report}");
        // Only conv2 folds its input gradient back: conv1's input (the images) needs none.
        assert_eq!(calls("col2im"), 2, "{report}");
        // Ten parameter tensors, seven a dispatch (two under WebGPU's limits).
        let per = wgpu_cnn::ops::optim::optim_tensors_per_dispatch(&dev, false);
        let optim = if per == 2 { "optim_sgd_step_two" } else { "optim_sgd_step" };
        assert_eq!(calls(optim), 2 * 10u64.div_ceil(per as u64), "{report}");
        // Every ReLU follows a convolution or a linear layer, which applies it; biases ride in the GEMM.
        assert_eq!((calls("activation_forward"), calls("bias_add")), (0, 0), "{report}");
        // Their backward rides in the max-pool backward after them and the linear layers' dx GEMMs.
        assert_eq!((calls("activation_backward"), calls("maxpool_backward"), calls("maxpool_backward_relu")), (0, 0, 2 * 2), "{report}");
        // The convolutions' GEMMs read and write NCHW, and bias gradients come out of
        // the weight gradients' GEMMs: no permute, no separate bias reduction.
        assert_eq!((calls("permute_swap"), calls("bias_grad")), (0, 0), "{report}");
        // A batch of 32 fits one workgroup: the loss adds its mean in its own kernel.
        assert_eq!((calls("reduce_rows"), calls("softmax_xent_forward_one")), (0, 2), "{report}");
        assert!(report.total_ms > 0.0 && (report.rows.iter().map(|r| r.share).sum::<f64>() - 1.0).abs() < 1e-6);
        let path = tmp("trace.json");
        ctx.write_trace(&path).unwrap();
        let trace: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        assert_eq!(events.len() as u64, report.rows.iter().map(|r| r.calls).sum::<u64>());
        assert!(events.iter().all(|e| e["ph"] == "X" && e["dur"].as_f64().unwrap() >= 0.0));
        // Without profiling there is no report, and asking for a trace is an error.
        assert!(Device::gpu().unwrap().gpu_context().unwrap().profile_report().is_none());
        // The napkin columns: column building only moves bytes, so it is memory-bound anywhere.
        let im2col = report.rows.iter().find(|r| r.kernel == "im2col").unwrap();
        assert!(im2col.memory_bound && im2col.gflops == 0.0 && im2col.megabytes > 0.0, "{report}");
        assert!(report.napkin_ms > 0.0 && report.to_string().contains("H100 SXM ms"), "{report}");

        // A GEMM's work is exact: 2·m·n·k FLOPs, each operand moved once.
        use wgpu_cnn::ops::gemm::{gemm, GemmConfig};
        use wgpu_cnn::Tensor;
        ctx.reset_profile();
        let (m, n, k) = (64, 48, 32);
        let a = Tensor::zeros(&dev, &[m, k]).unwrap();
        let b = Tensor::zeros(&dev, &[k, n]).unwrap();
        gemm(&a, &b, GemmConfig::default()).unwrap();
        ctx.flush().unwrap();
        let report = ctx.profile_report().unwrap();
        let row = report.rows.iter().find(|r| r.kernel.starts_with("gemm_")).unwrap();
        assert_eq!((row.calls, row.gflops * 1e9, row.megabytes * 1e6), (1, (2 * m * n * k) as f64, (4 * (m * k + k * n + m * n)) as f64), "{report}");
        let peak = wgpu_cnn::profile::H100_SXM;
        let want = 1e3 * ((2 * m * n * k) as f64 / peak.flops_per_s).max((4 * (m * k + k * n + m * n)) as f64 / peak.bytes_per_s);
        assert!((row.napkin_ms - want).abs() <= 1e-12, "{} vs {want}", row.napkin_ms);
    });
}

/// A stop request ends training after the current step with `Interrupted`;
/// the checkpoint then holds how far into the epoch it got, and resuming
/// from it, interrupted after every single step, ends bit-identical to an
/// uninterrupted run.
#[test]
fn interrupted_every_step_resumes_exactly() {
    use wgpu_cnn::train::StopFlag;
    let data = mnist_slice(Split::Train, 96);
    let cfg = TrainConfig { batch_size: 16, epochs: 2, ..Default::default() };
    let mut straight = lenet_trainer(&Device::Cpu, sgd(), cfg.clone());
    straight.fit(&data, None, |_| Control::Continue).unwrap();
    let path = tmp("interrupted.safetensors");
    let mut stops = 0;
    let mut t = lenet_trainer(&Device::Cpu, sgd(), cfg.clone());
    loop {
        let flag = StopFlag::new();
        flag.stop(); // already set: one step, then stop
        t.stop = Some(flag);
        match t.fit(&data, None, |_| Control::Continue) {
            Err(Error::Interrupted { epoch_step, step, .. }) => {
                stops += 1;
                assert_eq!(step, stops as u64);
                assert_eq!(epoch_step, (stops - 1) % 6 + 1, "batches into the epoch");
                checkpoint::save(&path, &mut t).unwrap();
                t = lenet_trainer(&Device::Cpu, sgd(), cfg.clone());
                checkpoint::load(&path, &mut t).unwrap();
            }
            Ok(_) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(stops, 12, "two epochs of six batches, one step per run");
    assert_eq!(weights(&mut t), weights(&mut straight), "resumed mid-epoch after every step vs straight through");
}

/// SIGINT to a training process: it finishes the step, writes its
/// checkpoint and exits with 130; the checkpoint loads and says where it stopped.
#[test]
fn sigint_saves_and_exits_130() {
    let dir = tmp("sigint");
    std::fs::create_dir_all(&dir).unwrap();
    let (ready, ckpt) = (dir.join("ready"), dir.join("ckpt.safetensors"));
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_file(&ckpt);
    let exe = std::env::current_exe().unwrap();
    let child = std::process::Command::new(&exe)
        .args(["--exact", "training::sigint_child", "--nocapture", "--test-threads", "1"])
        .env("WGPU_CNN_SIGINT_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !ready.exists() {
        assert!(start.elapsed().as_secs() < 60, "the child never started training");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "exit status; stderr:\n{stderr}");
    assert!(stderr.contains("stopping after this step"), "{stderr}");
    let mut t = lenet_trainer(&Device::Cpu, sgd(), TrainConfig { batch_size: 8, epochs: 1000, ..Default::default() });
    checkpoint::load(&ckpt, &mut t).unwrap();
    assert!(t.step >= 1 && t.epoch_step >= 1 || t.epoch >= 1, "the checkpoint records progress: epoch {} step {}", t.epoch, t.step);
}

/// Not a test of its own: the child of the test above (a no-op unless
/// WGPU_CNN_SIGINT_DIR is set). Trains until Ctrl-C, then saves and exits 130.
#[test]
fn sigint_child() {
    let Some(dir) = std::env::var_os("WGPU_CNN_SIGINT_DIR") else { return };
    let dir = PathBuf::from(dir);
    let mut t = lenet_trainer(&Device::Cpu, sgd(), TrainConfig { batch_size: 8, epochs: 1000, ..Default::default() });
    t.stop = Some(wgpu_cnn::train::StopFlag::on_ctrl_c().unwrap());
    let data = mnist_slice(Split::Train, 64);
    let ready = dir.join("ready");
    let r = t.fit(&data, None, |_| {
        let _ = std::fs::write(&ready, "");
        Control::Continue
    });
    match r {
        Err(Error::Interrupted { .. }) => {
            checkpoint::save(&dir.join("ckpt.safetensors"), &mut t).unwrap();
            std::process::exit(130);
        }
        other => panic!("expected an interruption, got {other:?}"),
    }
}

/// Gradient accumulation: a batch of 10 as 3 micro-batches (4, 3, 3 rows)
/// gives LeNet-5 (no batch-norm) the whole batch's loss, gradients and
/// update, up to rounding; and the training accuracy still sees every row.
fn accumulation_equals_whole_batch(dev: &Device) {
    let data = mnist_slice(Split::Train, 10);
    let idx: Vec<usize> = (0..10).collect();
    let (x, labels) = data.batch(dev, &idx, None).unwrap();
    let run = |parts: usize| {
        let mut t = lenet_trainer(dev, sgd(), TrainConfig { batch_size: 10, accumulate_steps: parts, ..Default::default() });
        let loss = t.train_step(&x, &labels).unwrap().to_vec().unwrap()[0];
        let grads: Vec<f32> = t.model.parameters("").unwrap().into_iter().flat_map(|p| p.grad.to_vec().unwrap()).collect();
        let loss2 = t.train_step(&x, &labels).unwrap().to_vec().unwrap()[0];
        let values: Vec<f32> = t.model.parameters("").unwrap().into_iter().flat_map(|p| p.value.to_vec().unwrap()).collect();
        (loss, grads, loss2, values)
    };
    let (whole, parts) = (run(1), run(3));
    // Summation order differs (three partial sums of the weight gradients).
    let tol = Tolerance::new(2e-5, 1e-3);
    tol.assert("accumulated loss", &[parts.0], &[whole.0]);
    tol.assert("accumulated gradients", &parts.1, &whole.1);
    tol.assert("loss after one accumulated update", &[parts.2], &[whole.2]);
    tol.assert("weights after two accumulated updates", &parts.3, &whole.3);
    assert_ne!(whole.0, whole.2, "the update changed nothing");
}
crate::test_device!(gradient_accumulation, accumulation_equals_whole_batch);

/// A batch that cannot fit fails before any kernel runs with an error that
/// says what it needed and what to do, and leaves the trainer usable with a
/// smaller batch; accumulation makes the large batch fit.
#[test]
fn gpu_out_of_memory_is_an_error_and_recoverable() {
    with_gpu("training::gpu_out_of_memory_is_an_error_and_recoverable", |_| {
        let budget = 12 << 20;
        let dev = Device::gpu_with(&wgpu_cnn::GpuOptions { memory_budget: Some(budget), autotune: false, ..Default::default() }).unwrap();
        let ctx = dev.gpu_context().unwrap().clone();
        let data = mnist_slice(Split::Train, 256);
        let big: Vec<usize> = (0..256).collect();
        let (xb, lb) = data.batch(&dev, &big, None).unwrap();
        let mut t = lenet_trainer(&dev, sgd(), TrainConfig { batch_size: 256, ..Default::default() });
        let before = ctx.host_counters();
        let err = t.train_step(&xb, &lb).err().expect("a 256-image LeNet-5 step does not fit in 12 MiB");
        let msg = err.to_string();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{msg}");
        assert!(msg.contains("MiB") && msg.contains("smaller batch") && msg.contains("accumulate"), "{msg}");
        assert_eq!(ctx.host_counters().dispatches, before.dispatches, "a kernel ran before the error: {msg}");
        assert!(ctx.pool_stats().allocated_bytes <= budget);
        // The same trainer goes on with a smaller batch.
        let small: Vec<usize> = (0..16).collect();
        let (xs, ls) = data.batch(&dev, &small, None).unwrap();
        let loss = t.train_step(&xs, &ls).unwrap().to_vec().unwrap()[0];
        assert!(loss.is_finite());
        // The big batch fits as 16 micro-batches of 16.
        drop(t);
        let mut t = lenet_trainer(&dev, sgd(), TrainConfig { batch_size: 256, accumulate_steps: 16, ..Default::default() });
        let loss = t.train_step(&xb, &lb).unwrap().to_vec().unwrap()[0];
        assert!(loss.is_finite());
        assert!(ctx.pool_stats().allocated_bytes <= budget);
    });
}

/// Tensors larger than one storage binding: with the binding limit lowered to
/// 16 KiB, two linear layers' weights (100 KB and 32 KB), their gradients and
/// momentum span several windows; forward (bias, fused ReLU), both weight
/// gradients (bias gradients as row sums), the input gradient through a ReLU
/// and the optimiser all run windowed, and three SGD-momentum steps match the
/// CPU path's.
#[test]
fn gpu_trains_weights_larger_than_one_binding() {
    use wgpu_cnn::nn::{ActivationLayer, Flatten, Linear, Sequential};
    use wgpu_cnn::ops::activation::Activation;
    with_gpu("training::gpu_trains_weights_larger_than_one_binding", |_| {
        let gpu = Device::gpu_with(&wgpu_cnn::GpuOptions { max_binding_bytes: Some(16 << 10), ..Default::default() }).unwrap();
        let data = mnist_slice(Split::Train, 4);
        let run = |dev: &Device| {
            let init = &mut Initializer::new(7, Init::PytorchDefault);
            let model = Sequential::new()
                .push(Flatten::new())
                .push(Linear::new(dev, 784, 32, true, init).unwrap())
                .push(ActivationLayer::new(Activation::Relu))
                .push(Linear::new(dev, 32, 256, true, init).unwrap())
                .push(ActivationLayer::new(Activation::Relu))
                .push(Linear::new(dev, 256, 10, true, init).unwrap());
            let mut t = Trainer::new(model, Optimizer::new(sgd()).unwrap(), TrainConfig { batch_size: 4, progress: false, ..Default::default() }, dev.clone()).unwrap();
            let (x, labels) = data.batch(dev, &[0, 1, 2, 3], None).unwrap();
            let losses: Vec<f32> = (0..3).map(|_| t.train_step(&x, &labels).unwrap().to_vec().unwrap()[0]).collect();
            let params: Vec<Vec<f32>> = t.model.parameters("").unwrap().into_iter().map(|p| p.value.to_vec().unwrap()).collect();
            (losses, params)
        };
        let (cpu, on_gpu) = (run(&Device::Cpu), run(&gpu));
        let tol = Tolerance::new(1e-5, 1e-3);
        tol.assert("losses", &on_gpu.0, &cpu.0);
        for (i, (g, c)) in on_gpu.1.iter().zip(&cpu.1).enumerate() {
            tol.assert(&format!("parameter {i} after three steps"), g, c);
        }
        assert!(cpu.0[2] < cpu.0[0], "the loss should fall: {:?}", cpu.0);
        // A kernel without a windowed path says so rather than failing inside wgpu.
        let big = wgpu_cnn::Tensor::from_vec(&gpu, &[64, 256], vec![1.0; 64 * 256]).unwrap();
        let err = wgpu_cnn::ops::activation::activation_forward(&big, Activation::Relu).err().expect("a 64 KiB tensor at a 16 KiB binding limit");
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    });
}
