//! Your own images and weights: image folders (loading, preprocessing, bad
//! input), background batch loading, training from a folder, weights-only
//! files, inference helpers, and PyTorch interop against fixtures made once
//! with PyTorch (`tests/fixtures/make_interop.py`).

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use wgpu_cnn::data::folder::{self, Color, FolderConfig, Normalize, Preprocess};
use wgpu_cnn::data::{prefetch, Augment, View};
use wgpu_cnn::nn::models::{self, ModelSpec};
use wgpu_cnn::nn::{ActivationLayer, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Init, Initializer, Layer, Linear, Mode, Residual, Sequential};
use wgpu_cnn::ops::activation::Activation;
use wgpu_cnn::ops::optim::AdamConfig;
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{predict_proba, predict_proba_views, top_k, Control, TrainConfig, Trainer, Tta};
use wgpu_cnn::weights::{load_weights, load_weights_bytes, read_meta, save_weights, WeightsMeta};
use wgpu_cnn::{Conv2dConfig, Device, Error, FileErrorKind, Tensor, Tolerance};

use crate::test_device;
use crate::training::tmp;

fn repo(p: &str) -> PathBuf {
    crate::harness::repo_path(p)
}

fn digits() -> folder::ImageFolder {
    folder::load(&repo("data/digits-png"), &FolderConfig::default()).expect("the committed digits-png folder")
}

fn expect_file_err<T: std::fmt::Debug>(r: wgpu_cnn::Result<T>, kind: FileErrorKind, needles: &[&str]) -> String {
    match r {
        Err(e @ Error::File { kind: k, .. }) if k == kind => {
            let msg = e.to_string();
            for n in needles {
                assert!(msg.contains(n), "error `{msg}` should mention `{n}`");
            }
            msg
        }
        other => panic!("expected a {kind:?} file error mentioning {needles:?}, got {other:?}"),
    }
}

// ------------------------------------------------------------------ image folders

#[test]
fn digits_folder_loads_like_torchvision() {
    let d = digits();
    assert_eq!(d.classes, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!((d.train.len(), d.val.as_ref().unwrap().len()), (400, 100), "train/ and val/ sub-roots");
    assert_eq!(d.preprocess.input, [1, 28, 28], "grayscale detected, the images' own size");
    // Sorted by class then file name: the first 40 are digit 0.
    assert!(d.train.labels[..40].iter().all(|&l| l == 0) && d.train.labels[360..].iter().all(|&l| l == 9));
    // Normalised with the training split's statistics: mean 0, std 1 there.
    let n = d.train.images.len() as f64;
    let mean = d.train.images.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = d.train.images.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "mean {mean}, var {var}");
    let m = d.preprocess.mean[0];
    assert!(m > 0.05 && m < 0.25, "MNIST's mean pixel is about 0.13, got {m}");
    // The same pixels as the MNIST file they came from (00001.png of val/2 is test image 1, a 2).
    let raw = folder::load(&repo("data/digits-png"), &FolderConfig { normalize: Normalize::None, ..Default::default() }).unwrap();
    let test = crate::training::mnist_slice(wgpu_cnn::data::mnist::Split::Test, 2);
    let val = raw.val.unwrap();
    let i = val.labels.iter().position(|&l| l == 2).unwrap();
    Tolerance::new(1e-6, 0.0).assert("val/2/00001.png vs MNIST test image 1", &val.images[i * 784..(i + 1) * 784], &test.images[784..1568]);
}

/// Writes a PNG (gray or RGB) of `w × h` with a gradient, for folder tests.
fn write_png(path: &Path, w: u32, h: u32, rgb: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if rgb {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 100])).save(path).unwrap();
    } else {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 3 + y * 2) as u8])).save(path).unwrap();
    }
}

#[test]
fn folder_split_sizes_and_colour() {
    let root = tmp("folder-mixed");
    let _ = std::fs::remove_dir_all(&root);
    for i in 0..6 {
        write_png(&root.join(format!("cat/{i}.png")), 40, 30, false);
        write_png(&root.join(format!("dog/{i}.PNG")), 28, 28, i == 0);
    }
    std::fs::write(root.join("dog/notes.txt"), "not an image").unwrap();
    let cfg = FolderConfig { val_split: 0.25, seed: 3, ..Default::default() };
    let d = folder::load(&root, &cfg).unwrap();
    // Mixed sizes are resized (the smallest shorter side, 28); one RGB file makes it RGB.
    assert_eq!(d.preprocess.input, [3, 28, 28]);
    assert_eq!(d.classes, ["cat", "dog"]);
    assert_eq!((d.train.len(), d.val.as_ref().unwrap().len()), (9, 3), "a seeded 25% split of 12 images");
    let again = folder::load(&root, &cfg).unwrap();
    assert_eq!(again.val.unwrap().labels, d.val.unwrap().labels, "the split is seeded");
    let gray = folder::load(&root, &FolderConfig { color: Color::Gray, size: Some(16), val_split: 0.0, ..Default::default() }).unwrap();
    assert_eq!((gray.preprocess.input, gray.train.len(), gray.val.is_none()), ([1, 16, 16], 12, true));
    // A 40×30 image: the shorter side scaled to 16, the centre 16×16 kept.
    let pre = Preprocess::new([1, 16, 16]);
    let img = pre.load(&root.join("cat/0.png")).unwrap();
    assert_eq!(img.len(), 256);
    assert!(img[0] > 0.0 && img[15] > img[0], "a left-to-right gradient survives the resize and crop");
}

#[test]
fn folder_bad_input_is_named() {
    let root = tmp("folder-bad");
    let _ = std::fs::remove_dir_all(&root);
    expect_file_err(folder::load(&root, &FolderConfig::default()), FileErrorKind::Io, &["no such folder"]);
    std::fs::create_dir_all(&root).unwrap();
    expect_file_err(folder::load(&root, &FolderConfig::default()), FileErrorKind::Inconsistent, &["no class folders"]);
    write_png(&root.join("a/0.png"), 8, 8, false);
    std::fs::create_dir_all(root.join("b")).unwrap();
    expect_file_err(folder::load(&root, &FolderConfig::default()), FileErrorKind::Inconsistent, &["class folder `b` has no images"]);
    write_png(&root.join("b/0.png"), 8, 8, false);
    // A truncated PNG and a text file named .jpg.
    let good = std::fs::read(root.join("b/0.png")).unwrap();
    std::fs::write(root.join("b/1.png"), &good[..good.len() / 2]).unwrap();
    std::fs::write(root.join("a/1.jpg"), "hello").unwrap();
    let cfg = FolderConfig { val_split: 0.0, ..Default::default() };
    expect_file_err(folder::load(&root, &cfg), FileErrorKind::Corrupt, &["1.jpg", "does not decode"]);
    let d = folder::load(&root, &FolderConfig { skip_bad: true, ..cfg.clone() }).unwrap();
    assert_eq!((d.train.len(), d.skipped.len()), (2, 2), "two good images kept, two bad ones skipped: {:?}", d.skipped);
    assert!(d.skipped.iter().any(|p| p.ends_with("b/1.png")));
    // A validation folder with a class the training folder lacks.
    let split = tmp("folder-bad-split");
    let _ = std::fs::remove_dir_all(&split);
    write_png(&split.join("train/a/0.png"), 8, 8, false);
    write_png(&split.join("val/z/0.png"), 8, 8, false);
    expect_file_err(folder::load(&split, &cfg), FileErrorKind::Mismatch, &["\"z\"", "not among the training classes"]);
    expect_file_err(Preprocess::new([1, 8, 8]).load(&split.join("nope.png")), FileErrorKind::Io, &["nope.png", "no such image"]);
    assert!(Preprocess { mean: vec![0.5], std: vec![0.5], ..Preprocess::new([3, 8, 8]) }.validate().is_err(), "one mean for three channels");
    assert!(folder::load(&root, &FolderConfig { val_split: 1.0, ..cfg }).is_err());
}

// ------------------------------------------------------------------ loading and augmentation

#[test]
fn prefetched_batches_do_not_depend_on_workers() {
    let d = crate::training::mnist_slice(wgpu_cnn::data::mnist::Split::Train, 200);
    let batches = d.batches(16, Some(5));
    let aug = Augment { crop_padding: 2, rotate_degrees: 10.0, scale: (0.9, 1.1), ..Augment::default() };
    let collect = |workers: usize| {
        let mut out = Vec::new();
        prefetch(&d, &batches, Some(&aug), 99, workers, 2, |i, x, y| {
            out.push((i, x, y));
            Ok(())
        })
        .unwrap();
        out
    };
    let inline = collect(0);
    assert_eq!(inline.len(), batches.len());
    assert!(inline.iter().enumerate().all(|(k, (i, _, y))| *i == k && y.len() == batches[k].len()));
    assert_eq!(collect(1), inline);
    assert_eq!(collect(3), inline);
    assert_ne!(inline[0].1, d.batch_host(&batches[0], None).0, "augmentation changed the images");
    // An error from the consumer stops the loaders and comes back.
    let mut seen = 0;
    let r = prefetch(&d, &batches, None, 0, 2, 1, |i, _, _| {
        seen += 1;
        if i == 3 {
            Err(Error::InvalidArgument { op: "test", msg: "stop".into() })
        } else {
            Ok(())
        }
    });
    assert!(r.is_err() && seen == 4);
}

#[test]
fn rotation_and_zoom() {
    // 3×3 image 1..9; +90° is counter-clockwise as displayed (torchvision's convention).
    let img: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let r = View::Rotate(90.0).apply(&img, [1, 3, 3]);
    Tolerance::new(1e-5, 0.0).assert("rotate 90", &r, &[3., 6., 9., 2., 5., 8., 1., 4., 7.]);
    // Zooming in 2× keeps the centre pixel and spreads it outwards (bilinear).
    use rand::SeedableRng;
    let zoom = Augment { scale: (2.0, 2.0), ..Augment::default() };
    let mut v = img.clone();
    zoom.apply(&mut v, [1, 3, 3], &mut rand::rngs::StdRng::seed_from_u64(0));
    Tolerance::new(1e-5, 0.0).assert("zoom 2x", &v, &[3., 3.5, 4., 4.5, 5., 5.5, 6., 6.5, 7.]);
}

// ------------------------------------------------------------------ training from a folder

fn train_digits(dev: &Device) -> f32 {
    let d = digits();
    let spec = ModelSpec::new(d.preprocess.input, d.classes.len());
    let model = models::build("lenet5", spec, dev, &mut Initializer::new(0, Init::PytorchDefault)).unwrap();
    let opt = Optimizer::new(OptimizerConfig::Adam(AdamConfig::adam(2e-3))).unwrap();
    let cfg = TrainConfig { epochs: 6, batch_size: 32, progress: false, ..TrainConfig::default() };
    let mut t = Trainer::new(model, opt, cfg, dev.clone()).unwrap();
    let hist = t.fit(&d.train, d.val.as_ref(), |_| Control::Continue).unwrap();
    hist.last().unwrap().val_accuracy.unwrap()
}

/// LeNet-5 trained from the PNG folder (400 digits, 6 epochs) reaches 80%
/// on its 100 validation digits (chance is 10%; 92% measured on both devices).
fn learns_from_folder(dev: &Device) {
    let acc = train_digits(dev);
    eprintln!("LeNet-5 from data/digits-png on {dev}: validation accuracy {acc}");
    assert!(acc >= 0.8, "validation accuracy {acc} on {dev}");
}
test_device!(learns_from_folder_dev, learns_from_folder);

// ------------------------------------------------------------------ weights and inference

#[test]
fn models_take_their_input() {
    let dev = Device::Cpu;
    // (The ImageNet zoo is checked in zoo.rs.)
    for name in ["lenet5", "vgg_small", "resnet20"] {
        for (input, classes) in [([3, 40, 40], 7), ([1, 20, 24], 3)] {
            let mut m = models::build(name, ModelSpec::new(input, classes), &dev, &mut Initializer::new(0, Init::PytorchDefault)).unwrap();
            let [c, h, w] = input;
            assert_eq!(m.output_shape(&[2, c, h, w]).unwrap(), vec![2, classes], "{name} for {input:?}");
            let y = m.forward(&Tensor::zeros(&dev, &[2, c, h, w]).unwrap(), Mode::Eval).unwrap();
            assert_eq!(y.shape(), [2, classes]);
        }
    }
    assert!(models::build("lenet5", ModelSpec::new([1, 8, 8], 10), &dev, &mut Initializer::new(0, Init::PytorchDefault)).is_err(), "too small for LeNet-5");
    assert!(models::build("alexnet", ModelSpec::new([3, 32, 32], 10), &dev, &mut Initializer::new(0, Init::PytorchDefault)).is_err());
}

fn weights_round_trip(dev: &Device) {
    let spec = ModelSpec::new([3, 16, 16], 4);
    let mut a = models::build("resnet20", spec, dev, &mut Initializer::new(1, Init::PytorchDefault)).unwrap();
    // Non-trivial running statistics: a few training forwards.
    for s in 0..2 {
        let x = Tensor::from_vec(dev, &[4, 3, 16, 16], crate::harness::random(s, 4 * 3 * 256)).unwrap();
        a.forward(&x, Mode::Train).unwrap();
    }
    let meta = WeightsMeta { model: Some("resnet20".into()), input: Some(spec.input), classes: vec!["a".into(), "b".into(), "c".into(), "d".into()], mean: vec![0.1, 0.2, 0.3], std: vec![1.0, 2.0, 3.0], resize: Some(40) };
    let path = tmp(&format!("round-trip-{}.safetensors", if dev.is_gpu() { "gpu" } else { "cpu" }));
    save_weights(&path, &mut a, &meta).unwrap();
    assert_eq!(read_meta(&path).unwrap(), meta);
    let mut b = models::build("resnet20", spec, dev, &mut Initializer::new(2, Init::PytorchDefault)).unwrap();
    assert_eq!(load_weights(&path, &mut b).unwrap(), meta);
    let x = Tensor::from_vec(dev, &[3, 3, 16, 16], crate::harness::random(9, 3 * 3 * 256)).unwrap();
    let (ya, yb) = (a.forward(&x, Mode::Eval).unwrap().to_vec().unwrap(), b.forward(&x, Mode::Eval).unwrap().to_vec().unwrap());
    assert_eq!(ya, yb, "the loaded model computes exactly what the saved one did");
    // A flipped bit in a tensor is caught by the checksum.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    expect_file_err(load_weights_bytes(&path, &bytes, &mut b), FileErrorKind::Checksum, &["corrupt"]);
    // Weights for another architecture: names and shapes listed.
    let mut lenet = models::lenet5(dev, &mut Initializer::new(0, Init::PytorchDefault)).unwrap();
    expect_file_err(load_weights(&path, &mut lenet), FileErrorKind::Mismatch, &["not for this model", "the model expects", "missing `11.weight`", "unexpected"]);
    // A training checkpoint is not a weights file.
    let t = crate::training::lenet_trainer(dev, crate::training::sgd(), TrainConfig::default());
    let ck = tmp(&format!("ck-{}.safetensors", if dev.is_gpu() { "gpu" } else { "cpu" }));
    let mut t = t;
    wgpu_cnn::checkpoint::save(&ck, &mut t).unwrap();
    expect_file_err(load_weights(&ck, &mut lenet), FileErrorKind::BadMagic, &["checkpoint::load"]);
}
test_device!(weights_round_trip_dev, weights_round_trip);

#[test]
fn probabilities_and_top_k() {
    let dev = Device::Cpu;
    let mut m = models::lenet5(&dev, &mut Initializer::new(0, Init::PytorchDefault)).unwrap();
    let x = Tensor::from_vec(&dev, &[3, 1, 28, 28], crate::harness::random(4, 3 * 784)).unwrap();
    let p = predict_proba(&mut m, &x).unwrap();
    assert_eq!((p.len(), p[0].len()), (3, 10));
    for row in &p {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5 && row.iter().all(|&v| v > 0.0));
        let top = top_k(row, 3);
        assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
        assert_eq!(top[0].0, wgpu_cnn::train::predict(&mut m, &x, false).unwrap()[p.iter().position(|r| r == row).unwrap()]);
    }
    assert_eq!(top_k(&[0.2, 0.5, 0.2, 0.1], 3), vec![(1, 0.5), (0, 0.2), (2, 0.2)], "ties go to the lower index");
    let views = predict_proba_views(&mut m, &x, Tta::Views(vec![View::Identity, View::HorizontalFlip, View::Rotate(5.0)])).unwrap();
    assert!(views.iter().all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-5));
    assert!(predict_proba_views(&mut m, &x, Tta::Views(vec![])).is_err());
}

// ------------------------------------------------------------------ PyTorch interop

/// The model `tests/fixtures/make_interop.py` calls small_resnet, built here.
fn small_resnet(dev: &Device) -> Sequential {
    let init = &mut Initializer::new(0, Init::PytorchDefault);
    let conv = |ci, co, k: usize, cfg: Conv2dConfig, init: &mut Initializer| Conv2d::new(dev, ci, co, [k, k], cfg, false, init).unwrap();
    let bn = |c| BatchNorm::new_2d(dev, c).unwrap();
    let relu = || ActivationLayer::new(Activation::Relu);
    let p1 = Conv2dConfig::default().padding(1);
    let body = Sequential::new().push(conv(8, 16, 3, p1.stride(2), init)).push(bn(16)).push(relu()).push(conv(16, 16, 3, p1, init)).push(bn(16));
    let shortcut = Sequential::new().push(conv(8, 16, 1, Conv2dConfig::default().stride(2), init)).push(bn(16));
    Sequential::new()
        .push(conv(3, 8, 3, p1, init))
        .push(bn(8))
        .push(relu())
        .push(Residual::new(body, Some(shortcut)))
        .push(relu())
        .push(Residual::new(Sequential::new().push(conv(16, 16, 3, p1, init)).push(bn(16)), None))
        .push(relu())
        .push(GlobalAvgPool::new())
        .push(Flatten::new())
        .push(Linear::new(dev, 16, 5, true, init).unwrap())
}

fn fixture_io(name: &str, dev: &Device) -> (Tensor, Vec<f32>) {
    let bytes = std::fs::read(repo(&format!("tests/fixtures/{name}_io.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let get = |k: &str| {
        let v = st.tensor(k).unwrap();
        (v.shape().to_vec(), bytemuck::pod_collect_to_vec::<u8, f32>(v.data()))
    };
    let (shape, x) = get("x");
    (Tensor::from_vec(dev, &shape, x).unwrap(), get("logits").1)
}

/// A PyTorch `state_dict` saved with safetensors loads and gives PyTorch's
/// logits: within 1e-5 on the CPU path, within the GPU tolerance there.
fn pytorch_weights_load(dev: &Device) {
    let tol = if dev.is_gpu() { Tolerance::new(1e-4, 1e-3) } else { Tolerance::new(1e-5, 1e-5) };
    for (name, mut model) in [("lenet5", models::lenet5(dev, &mut Initializer::new(0, Init::PytorchDefault)).unwrap()), ("small_resnet", small_resnet(dev))] {
        let meta = load_weights(&repo(&format!("tests/fixtures/{name}.safetensors")), &mut model).unwrap();
        assert_eq!(meta, WeightsMeta::default(), "PyTorch's file carries no wgpu-cnn metadata");
        let (x, want) = fixture_io(name, dev);
        let got = model.forward(&x, Mode::Eval).unwrap().to_vec().unwrap();
        tol.assert(&format!("{name} logits vs PyTorch on {dev}"), &got, &want);
    }
}
test_device!(pytorch_weights_load_dev, pytorch_weights_load);

/// What we write has exactly the names, shapes and dtypes PyTorch's
/// `state_dict` has (so `load_state_dict(strict=True)` takes it), and loading
/// reports a PyTorch file's missing and extra keys by name.
#[test]
fn written_weights_match_pytorch_state_dict() {
    let dev = Device::Cpu;
    let fixture = std::fs::read(repo("tests/fixtures/small_resnet.safetensors")).unwrap();
    let theirs = SafeTensors::deserialize(&fixture).unwrap();
    let mut model = small_resnet(&dev);
    let path = tmp("ours-small-resnet.safetensors");
    save_weights(&path, &mut model, &WeightsMeta::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let ours = SafeTensors::deserialize(&bytes).unwrap();
    let layout = |st: &SafeTensors| {
        let mut v: Vec<(String, Vec<usize>, Dtype)> = st.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec(), t.dtype())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(layout(&ours), layout(&theirs));
    // PyTorch's file minus one key and plus another.
    let mut tensors: Vec<(String, TensorView)> = theirs.tensors().into_iter().filter(|(n, _)| n != "3.body.1.running_var").collect();
    let extra = [0u8; 8];
    tensors.push(("3.body.9.weight".into(), TensorView::new(Dtype::F32, vec![2], &extra).unwrap()));
    let edited = safetensors::serialize(tensors, &None).unwrap();
    let msg = expect_file_err(load_weights_bytes(&path, &edited, &mut model), FileErrorKind::Mismatch, &["missing `3.body.1.running_var`", "unexpected `3.body.9.weight`"]);
    assert!(!msg.contains("num_batches_tracked"), "{msg}");
    // Without num_batches_tracked (older PyTorch files) it still loads.
    let without: Vec<(String, TensorView)> = theirs.tensors().into_iter().filter(|(n, _)| !n.ends_with("num_batches_tracked")).collect();
    load_weights_bytes(&path, &safetensors::serialize(without, &None).unwrap(), &mut model).unwrap();
}

/// The fixture's LCG (`tests/fixtures/make_imagenet.py`): values in [-1, 1).
fn lcg(seed: u64, n: usize) -> Vec<f64> {
    let step = |s: u64| s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut s = step(seed);
    (0..n)
        .map(|_| {
            s = step(s);
            (s >> 40) as f64 / (1u64 << 24) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// The fixture's value for every `state_dict` tensor, seeded by its name.
fn imagenet_fixture_value(name: &str, shape: &[usize]) -> Vec<f32> {
    let seed = 1000 + name.bytes().enumerate().map(|(i, b)| (i as u64 + 1) * b as u64).sum::<u64>();
    let u = lcg(seed, shape.iter().product());
    let v: Vec<f64> = if name.ends_with("running_var") {
        u.iter().map(|u| 1.0 + 0.5 * u.abs()).collect()
    } else if name.ends_with("running_mean") || name.ends_with("bias") {
        u.iter().map(|u| 0.1 * u).collect()
    } else if shape.len() == 1 {
        u.iter().map(|u| 1.0 + 0.1 * u).collect()
    } else {
        let fan_in: usize = shape[1..].iter().product();
        u.iter().map(|u| u * (6.0 / fan_in as f64).sqrt()).collect()
    };
    v.into_iter().map(|x| x as f32).collect()
}

/// torchvision's ImageNet preprocessing (Resize(256), CenterCrop(224),
/// Normalize) and ResNet-18 against our `Preprocess::imagenet()` and zoo
/// ResNet-18: the same logits for images that need no resampling or odd
/// crop offsets; the downscaled one within what bilinear resampling in PIL
/// (8-bit between passes) and `image` (floats) leaves.
fn imagenet_preprocessing(dev: &Device) {
    let dir = repo("tests/fixtures/imagenet");
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("logits.json")).unwrap()).unwrap();
    let mut model = models::build("resnet18", ModelSpec::new([3, 224, 224], 10), dev, &mut Initializer::new(0, Init::PytorchDefault)).unwrap();
    // The fixture's weights, written as a PyTorch state_dict and loaded by name.
    let layout = wgpu_cnn::weights::state_dict_layout(&mut model);
    let data: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = layout
        .into_iter()
        .map(|(n, s)| if n.ends_with("num_batches_tracked") { (n, s, 0i64.to_le_bytes().to_vec(), Dtype::I64) } else { let v = imagenet_fixture_value(&n, &s); (n, s, bytemuck::cast_slice(&v).to_vec(), Dtype::F32) })
        .collect();
    let views: Vec<(String, TensorView)> = data.iter().map(|(n, s, b, d)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let bytes = safetensors::serialize(views, &None).unwrap();
    load_weights_bytes(Path::new("imagenet fixture"), &bytes, &mut model).unwrap();
    let pre = Preprocess::imagenet();
    for img in fixture["images"].as_array().unwrap() {
        let file = img["file"].as_str().unwrap();
        let x = pre.load(&dir.join(file)).unwrap();
        let want_first: Vec<f32> = img["input_first"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let want: Vec<f32> = img["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let got = model.forward(&Tensor::from_vec(dev, &[1, 3, 224, 224], x.clone()).unwrap(), Mode::Eval).unwrap().to_vec().unwrap();
        if file.starts_with("down") {
            // Resampled: PIL rounds to 8 bits between its two passes, `image` does not.
            Tolerance::new(2.0 / 255.0 / 0.224, 0.0).assert(&format!("{file}: input vs torchvision"), &x[..8], &want_first);
            Tolerance::new(0.1, 0.02).assert(&format!("{file}: logits vs torchvision on {dev}"), &got, &want);
        } else {
            Tolerance::new(1e-6, 1e-6).assert(&format!("{file}: input vs torchvision"), &x[..8], &want_first);
            let tol = if dev.is_gpu() { Tolerance::new(1e-3, 1e-3) } else { Tolerance::new(1e-4, 1e-4) };
            tol.assert(&format!("{file}: logits vs torchvision on {dev}"), &got, &want);
        }
    }
}
test_device!(imagenet_preprocessing_dev, imagenet_preprocessing);
