//! CIFAR-10, binary version: records of 3073 bytes (label, then 3×32×32
//! pixels, channel-major), 10,000 per file: `data_batch_1.bin` …
//! `data_batch_5.bin` and `test_batch.bin`. Get them from
//! <https://www.cs.toronto.edu/~kriz/cifar.html> ("CIFAR-10 binary version").

use std::path::Path;

use crate::data::Dataset;
use crate::error::{file_err, FileErrorKind as K, Result};

/// Bytes of one record: the label, then 3×32×32 pixels.
pub const RECORD: usize = 1 + 3 * 32 * 32;
/// Per-channel mean and std of the training set (the usual normalisation).
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of the training set (for normalisation).
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

/// Where to get the data, for error messages.
pub const HOW_TO_GET: &str = "download the CIFAR-10 binary version from https://www.cs.toronto.edu/~kriz/cifar.html \
     (cifar-10-binary.tar.gz), unpack it, and pass the folder holding data_batch_1.bin … test_batch.bin";

/// Records from one file; its size must be a whole number of records.
pub fn load_file(path: &Path) -> Result<Dataset> {
    let bytes = std::fs::read(path).or_else(|e| file_err(path, K::Io, format!("{e}; {HOW_TO_GET}")))?;
    parse(path, &bytes)
}

/// [`load_file`] on bytes in memory; `path` only labels errors.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Dataset> {
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return file_err(path, K::Truncated, format!("{} bytes is not a whole number of {RECORD}-byte records", bytes.len()));
    }
    let n = bytes.len() / RECORD;
    let mut images = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks(RECORD).enumerate() {
        if rec[0] > 9 {
            return file_err(path, K::LabelOutOfRange, format!("label {} in record {i} is not a class 0–9", rec[0]));
        }
        labels.push(rec[0] as i64);
        images.extend(rec[1..].iter().enumerate().map(|(j, &p)| {
            let c = j / 1024;
            (p as f32 / 255.0 - MEAN[c]) / STD[c]
        }));
    }
    Ok(Dataset { images, labels, item_shape: [3, 32, 32] })
}

/// The training set (five files) or the test set from `dir`.
pub fn load(dir: &Path, train: bool) -> Result<Dataset> {
    let names: Vec<String> = if train { (1..=5).map(|i| format!("data_batch_{i}.bin")).collect() } else { vec!["test_batch.bin".into()] };
    let mut all: Option<Dataset> = None;
    for name in names {
        let d = load_file(&dir.join(name))?;
        match &mut all {
            None => all = Some(d),
            Some(a) => {
                a.images.extend(d.images);
                a.labels.extend(d.labels);
            }
        }
    }
    Ok(all.expect("at least one file"))
}
