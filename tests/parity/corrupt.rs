//! Corrupt files (issue 8, item 5): the IDX, CIFAR and checkpoint parsers
//! take random corruptions of valid files (truncation, flipped bytes,
//! inserted and removed bytes, overwritten header words) and either accept a
//! file that is still consistent or reject it with a typed `Error::File`;
//! they never panic, never allocate more than the file could hold, and a
//! rejected checkpoint leaves the trainer untouched.

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use wgpu_cnn::data::{cifar, mnist};
use wgpu_cnn::nn::{ActivationLayer, BatchNorm, Init, Initializer, Layer, Linear, Sequential};
use wgpu_cnn::ops::activation::Activation;
use wgpu_cnn::ops::optim::SgdConfig;
use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
use wgpu_cnn::train::{TrainConfig, Trainer};
use wgpu_cnn::{checkpoint, Device, Error, FileErrorKind as K, Tensor};

use crate::alloc::largest_allocation;

#[derive(Clone, Debug)]
enum Corruption {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    /// Overwrites the 4-byte word at this index (headers live there).
    Word(usize, u32),
    Append(Vec<u8>),
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        any::<usize>().prop_map(Corruption::Truncate),
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Corruption::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Corruption::Insert(i, b)),
        any::<usize>().prop_map(Corruption::Remove),
        (0..8usize, prop_oneof![any::<u32>(), Just(0u32), Just(u32::MAX), Just(1u32 << 31)]).prop_map(|(i, w)| Corruption::Word(i, w)),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Corruption::Append),
    ]
}

fn apply(mut bytes: Vec<u8>, cs: &[Corruption]) -> Vec<u8> {
    for c in cs {
        let n = bytes.len().max(1);
        match c {
            Corruption::Truncate(i) => bytes.truncate(i % n),
            Corruption::Flip(i, x) if !bytes.is_empty() => bytes[i % n] ^= x,
            Corruption::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), *b),
            Corruption::Remove(i) if !bytes.is_empty() => {
                bytes.remove(i % n);
            }
            Corruption::Word(i, w) if 4 * i + 4 <= bytes.len() => bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes()),
            Corruption::Append(tail) => bytes.extend_from_slice(tail),
            _ => {}
        }
    }
    bytes
}

fn idx(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
    v.extend_from_slice(payload);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Three 4×4 images and their labels.
fn mnist_pair() -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..48).map(|i| (i * 5) as u8).collect();
    (idx(2051, &[3, 4, 4], &pixels), idx(2049, &[3], &[7, 0, 9]))
}

fn parse_mnist(images: Vec<u8>, labels: Vec<u8>) -> wgpu_cnn::Result<wgpu_cnn::data::Dataset> {
    mnist::parse(Path::new("images"), images, Path::new("labels"), labels)
}

/// What every parser promises: Ok only for a consistent file, otherwise a
/// typed file error of one of the expected kinds.
#[track_caller]
fn check_file_error(e: &Error, allowed: &[K]) {
    match e {
        Error::File { kind, .. } => assert!(allowed.contains(kind), "unexpected kind {kind:?}: {e}"),
        other => panic!("not a file error: {other}"),
    }
}

const IDX_KINDS: &[K] = &[K::Truncated, K::TrailingData, K::BadMagic, K::BadHeader, K::Overflow, K::Inconsistent, K::LabelOutOfRange, K::Corrupt];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn idx_survives_corruption(cs in proptest::collection::vec(corruption(), 1..4), which in 0..4usize) {
        let (images, labels) = mnist_pair();
        // Corrupt the images or the labels file, raw or gzip-compressed.
        let (images, labels) = match which {
            0 => (apply(images, &cs), labels),
            1 => (images, apply(labels, &cs)),
            2 => (apply(gzip(&images), &cs), gzip(&labels)),
            _ => (gzip(&images), apply(gzip(&labels), &cs)),
        };
        let limit = 8 * (images.len() + labels.len()) + 4096;
        let (r, largest) = largest_allocation(|| parse_mnist(images, labels));
        match r {
            Ok(d) => {
                let item: usize = d.item_shape.iter().product();
                prop_assert_eq!(d.images.len(), d.len() * item);
                prop_assert!(d.labels.iter().all(|&l| (0..10).contains(&l)));
                prop_assert!(d.images.iter().all(|p| (0.0..=1.0).contains(p)));
            }
            Err(e) => check_file_error(&e, IDX_KINDS),
        }
        // Gzip may legitimately expand; these files are at most ~100 bytes uncompressed.
        prop_assert!(largest <= limit.max(64 * 1024), "{largest} bytes allocated for a corrupt file");
    }

    #[test]
    fn cifar_survives_corruption(cs in proptest::collection::vec(corruption(), 1..4)) {
        let mut bytes = Vec::new();
        for label in [3u8, 9] {
            bytes.push(label);
            bytes.extend((0..3072).map(|i| (i % 251) as u8));
        }
        let bytes = apply(bytes, &cs);
        let (r, largest) = largest_allocation(|| cifar::parse(Path::new("batch.bin"), &bytes));
        match r {
            Ok(d) => {
                prop_assert_eq!(d.len() * cifar::RECORD, bytes.len());
                prop_assert!(d.labels.iter().all(|&l| (0..10).contains(&l)));
            }
            Err(e) => check_file_error(&e, &[K::Truncated, K::LabelOutOfRange]),
        }
        prop_assert!(largest <= 4 * bytes.len() + 4096);
    }
}

fn small_trainer() -> Trainer {
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

fn state(t: &mut Trainer) -> (Vec<Vec<f32>>, usize, u64) {
    let mut v: Vec<Vec<f32>> = t.model.parameters("").unwrap().into_iter().map(|p| p.value.to_vec().unwrap()).collect();
    v.extend(t.model.buffers("").into_iter().map(|(_, b)| b.to_vec().unwrap()));
    (v, t.epoch, t.step)
}

/// A valid checkpoint of `small_trainer` after one step (so it holds
/// optimiser state), and the trainer that wrote it.
fn checkpoint_bytes() -> Vec<u8> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut t = small_trainer();
    let x = Tensor::from_vec(&Device::Cpu, &[6, 4], (0..24).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap();
    t.train_step(&x, &[0, 1, 2, 0, 1, 2]).unwrap();
    let path = crate::training::tmp(&format!("proptest-{n}.safetensors"));
    checkpoint::save(&path, &mut t).unwrap();
    std::fs::read(path).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn checkpoint_survives_corruption(cs in proptest::collection::vec(corruption(), 1..4)) {
        use std::sync::OnceLock;
        static GOOD: OnceLock<Vec<u8>> = OnceLock::new();
        static SAVED: OnceLock<(Vec<Vec<f32>>, usize, u64)> = OnceLock::new();
        let good = GOOD.get_or_init(checkpoint_bytes);
        let saved = SAVED.get_or_init(|| {
            let mut t = small_trainer();
            checkpoint::load_bytes(Path::new("ckpt"), good, &mut t).unwrap();
            state(&mut t)
        });
        let bytes = apply(good.clone(), &cs);
        let mut t = small_trainer();
        let before = state(&mut t);
        let (r, largest) = largest_allocation(|| checkpoint::load_bytes(Path::new("ckpt"), &bytes, &mut t));
        match r {
            Err(e) => {
                check_file_error(&e, &[K::Truncated, K::BadMagic, K::BadHeader, K::Overflow, K::Mismatch, K::Checksum]);
                prop_assert!(state(&mut t) == before, "a rejected checkpoint changed the trainer: {e}");
            }
            // What loads is what was saved (a corruption of header padding, say): never silently different.
            Ok(()) => prop_assert!(&state(&mut t) == saved, "a corrupted checkpoint loaded with different contents"),
        }
        prop_assert!(largest <= 8 * bytes.len() + 64 * 1024, "{largest} bytes allocated for a {}-byte checkpoint", bytes.len());
    }
}

/// Headers that promise far more than the file holds allocate nothing of
/// that size: raw, gzip, and a gzip "bomb" whose payload is much larger than
/// its header says.
#[test]
fn hostile_headers_allocate_nothing_large() {
    let labels = idx(2049, &[3], &[1, 2, 3]);
    // 2^31 × 1000 × 1000 bytes promised by a 16-byte header.
    let huge = idx(2051, &[1 << 31, 1000, 1000], &[]);
    for images in [huge.clone(), gzip(&huge)] {
        let (r, largest) = largest_allocation(|| parse_mnist(images, labels.clone()));
        let e = r.unwrap_err();
        check_file_error(&e, &[K::Truncated]);
        assert!(largest < 64 * 1024, "{largest} bytes allocated: {e}");
    }
    // Header: 3 images of 4×4; gzip payload: 64 MiB of zeros.
    let mut bomb = idx(2051, &[3, 4, 4], &[]);
    bomb.extend(std::iter::repeat_n(0u8, 64 << 20));
    let bomb = gzip(&bomb);
    assert!(bomb.len() < 1 << 20);
    let (r, largest) = largest_allocation(|| parse_mnist(bomb, labels.clone()));
    let e = r.unwrap_err();
    check_file_error(&e, &[K::TrailingData]);
    assert!(largest < 4 << 20, "{largest} bytes allocated for a gzip bomb");
    // The distinct kinds, one each.
    let (images, labels) = mnist_pair();
    let kind = |i: Vec<u8>, l: Vec<u8>| match parse_mnist(i, l) {
        Err(Error::File { kind, .. }) => kind,
        other => panic!("{other:?}"),
    };
    assert_eq!(kind(images[..30].to_vec(), labels.clone()), K::Truncated);
    assert_eq!(kind(idx(2050, &[3, 4, 4], &[0; 48]), labels.clone()), K::BadMagic);
    assert_eq!(kind(idx(2051, &[u32::MAX, u32::MAX, u32::MAX], &[]), labels.clone()), K::Overflow);
    assert_eq!(kind(images.clone(), idx(2049, &[2], &[1, 2])), K::Inconsistent);
    assert_eq!(kind(images.clone(), idx(2049, &[3], &[1, 2, 10])), K::LabelOutOfRange);
    let mut bad_gz = gzip(&images);
    let n = bad_gz.len();
    bad_gz[n - 6] ^= 0xff; // the CRC32 in the trailer
    assert_eq!(kind(bad_gz, labels), K::Corrupt);
}

/// A checkpoint of another format, or one whose tensor has the wrong dtype, is named as such.
#[test]
fn checkpoint_magic_and_dtype() {
    let mut t = small_trainer();
    // A valid safetensors file that is not ours.
    let data = [0u8; 8];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &data).unwrap();
    let other = safetensors::serialize(vec![("w", view)], &None).unwrap();
    match checkpoint::load_bytes(Path::new("other"), &other, &mut t) {
        Err(Error::File { kind: K::BadMagic, msg, .. }) => assert!(msg.contains("not a wgpu-cnn checkpoint"), "{msg}"),
        r => panic!("{r:?}"),
    }
    // Our checkpoint with one tensor's dtype changed in the header.
    let good = checkpoint_bytes();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + header_len].to_vec()).unwrap();
    let patched = header.replacen("\"dtype\":\"F32\"", "\"dtype\":\"I32\"", 1);
    assert_ne!(patched, header);
    let mut bad = good.clone();
    bad[8..8 + header_len].copy_from_slice(patched.as_bytes());
    match checkpoint::load_bytes(Path::new("dtype"), &bad, &mut t) {
        Err(Error::File { kind: K::Mismatch, msg, .. }) => assert!(msg.contains("dtype I32"), "{msg}"),
        r => panic!("{r:?}"),
    }
}

/// A flipped bit anywhere in the tensor data, or in a metadata value, is a
/// checksum error naming the file, not a silently different model.
#[test]
fn checkpoint_bit_flips_are_caught() {
    let good = checkpoint_bytes();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let payload = 8 + header_len;
    for (what, at) in [("first payload byte", payload), ("middle", payload + (good.len() - payload) / 2), ("last byte", good.len() - 1)] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        match checkpoint::load_bytes(Path::new("flipped.safetensors"), &bad, &mut small_trainer()) {
            Err(e @ Error::File { kind: K::Checksum, .. }) => assert!(e.to_string().contains("flipped.safetensors"), "{e}"),
            r => panic!("{what}: {r:?}"),
        }
    }
    // The step count in the metadata: "step":"1" → "step":"3".
    let header = String::from_utf8(good[8..payload].to_vec()).unwrap();
    let patched = header.replacen("\"step\":\"1\"", "\"step\":\"3\"", 1);
    assert_ne!(patched, header, "{header}");
    let mut bad = good.clone();
    bad[8..payload].copy_from_slice(patched.as_bytes());
    assert!(matches!(checkpoint::load_bytes(Path::new("meta"), &bad, &mut small_trainer()), Err(Error::File { kind: K::Checksum, .. })));
    // Not a safetensors file at all.
    let e = checkpoint::load_bytes(Path::new("notes.txt"), b"these are my notes, not a checkpoint", &mut small_trainer()).unwrap_err();
    assert!(e.to_string().contains("not a checkpoint"), "{e}");
}

/// A save that cannot complete says "cannot write" and leaves no temporary
/// file; `check_writable` finds such paths before training starts.
#[test]
fn failed_saves_clean_up() {
    let dir = crate::training::tmp(&format!("failed-save-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The target is a directory: the final rename fails after the temp file was written.
    let target = dir.join("ckpt");
    std::fs::create_dir_all(target.join("occupied")).unwrap();
    let e = checkpoint::save(&target, &mut small_trainer()).unwrap_err();
    assert!(matches!(e, Error::File { kind: K::Write, .. }) && e.to_string().contains("cannot write"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("ckpt")], "a temp file was left behind");
    assert!(checkpoint::check_writable(&target).is_err(), "a directory is not a file to write");
    assert!(checkpoint::check_writable(&dir.join("missing/ckpt")).is_err(), "a missing directory");
    checkpoint::check_writable(&dir.join("fine.safetensors")).unwrap();
    assert!(!dir.join("fine.safetensors").exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the probe was removed");
    std::fs::remove_dir_all(&dir).unwrap();
}
