//! MNIST in IDX format (raw or gzip): big-endian header, magic 2051 (images,
//! `[n, rows, cols]` u8) and 2049 (labels, `[n]` u8). Every size is checked
//! against the file before anything is allocated.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};

use crate::data::Dataset;
use crate::error::{file_err, FileErrorKind as K, Result};

/// Which half of MNIST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training images.
    Train,
    /// The 10,000 test images.
    Test,
}

impl Split {
    fn stem(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// The copy of MNIST committed with the crate (`data/mnist`, see its PROVENANCE.json).
///
/// `WGPU_CNN_MNIST_DIR` overrides it: a binary built here and run from
/// another checkout (the device kit, `benches/device/run.sh`) points it there.
/// When the checkout it was compiled in is gone (a cached target directory),
/// the one cargo runs it from (`CARGO_MANIFEST_DIR` at run time) serves.
pub fn embedded_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WGPU_CNN_MNIST_DIR") {
        return PathBuf::from(dir);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(run) if !built.is_dir() => PathBuf::from(run).join("data/mnist"),
        _ => built,
    }
}

/// `raw` itself, or its gzip decompression capped at `limit` bytes (a small
/// file must not expand into an unbounded allocation).
fn gunzip_if_needed(path: &Path, raw: Vec<u8>, limit: u64) -> Result<Vec<u8>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    match GzDecoder::new(&raw[..]).take(limit).read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => file_err(path, K::Truncated, format!("gzip stream ends early: {e}")),
        Err(e) => file_err(path, K::Corrupt, format!("gzip stream: {e}")),
    }
}

/// An IDX file's bytes (raw or gzip) decompressed no further than its own
/// header allows: the header's payload size plus one byte, to detect trailing data.
fn idx_bytes(path: &Path, raw: Vec<u8>, rank: usize) -> Result<Vec<u8>> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let header = 4 + 4 * rank;
    let head = gunzip_if_needed(path, raw.clone(), header as u64)?;
    if head.len() < header {
        return file_err(path, K::Truncated, format!("{} bytes, shorter than the {header}-byte IDX header", head.len()));
    }
    let payload = (1..=rank).map(|i| u32::from_be_bytes(head[4 * i..4 * i + 4].try_into().unwrap()) as u64).try_fold(1u64, |a, d| a.checked_mul(d));
    let limit = payload.and_then(|p| p.checked_add(header as u64 + 1)).unwrap_or(u64::MAX);
    gunzip_if_needed(path, raw, limit)
}

/// Parses an IDX buffer of u8 with the given magic and rank; returns (dims, payload).
pub fn parse_idx<'a>(path: &Path, bytes: &'a [u8], magic: u32, rank: usize) -> Result<(Vec<usize>, &'a [u8])> {
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return file_err(path, K::Truncated, format!("{} bytes, shorter than the {header}-byte IDX header", bytes.len()));
    }
    let word = |i: usize| u32::from_be_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    if word(0) != magic {
        return file_err(path, K::BadMagic, format!("magic number {} (expected {magic})", word(0)));
    }
    let dims: Vec<usize> = (1..=rank).map(|i| word(i) as usize).collect();
    // u32 dims multiply to at most 2^96; checked, so a hostile header cannot overflow.
    let payload = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let Some(payload) = payload else {
        return file_err(path, K::Overflow, format!("dimensions {dims:?} overflow"));
    };
    if dims[1..].contains(&0) {
        return file_err(path, K::BadHeader, format!("dimensions {dims:?}: an item has no pixels"));
    }
    let have = bytes.len() - header;
    if have < payload {
        return file_err(path, K::Truncated, format!("header {dims:?} promises {payload} bytes of data, the file holds {have}"));
    }
    if have > payload {
        return file_err(path, K::TrailingData, format!("header {dims:?} promises {payload} bytes of data, the file holds {have}"));
    }
    Ok((dims, &bytes[header..]))
}

/// Images and labels from two IDX files; pixels scaled to [0, 1].
pub fn load_files(images: &Path, labels: &Path) -> Result<Dataset> {
    let ib = std::fs::read(images).or_else(|e| file_err(images, K::Io, e.to_string()))?;
    let lb = std::fs::read(labels).or_else(|e| file_err(labels, K::Io, e.to_string()))?;
    parse(images, ib, labels, lb)
}

/// [`load_files`] on bytes already in memory (raw or gzip); the paths only
/// label errors. Allocates no more than the decompressed data holds.
pub fn parse(images: &Path, image_bytes: Vec<u8>, labels: &Path, label_bytes: Vec<u8>) -> Result<Dataset> {
    let ib = idx_bytes(images, image_bytes, 3)?;
    let lb = idx_bytes(labels, label_bytes, 1)?;
    let (idims, ipix) = parse_idx(images, &ib, 2051, 3)?;
    let (ldims, lab) = parse_idx(labels, &lb, 2049, 1)?;
    if idims[0] != ldims[0] {
        return file_err(labels, K::Inconsistent, format!("{} labels for {} images in {}", ldims[0], idims[0], images.display()));
    }
    if let Some((i, &l)) = lab.iter().enumerate().find(|(_, &l)| l > 9) {
        return file_err(labels, K::LabelOutOfRange, format!("label {l} at index {i} is not a digit 0–9"));
    }
    Ok(Dataset {
        images: ipix.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: lab.iter().map(|&l| l as i64).collect(),
        item_shape: [1, idims[1], idims[2]],
    })
}

/// `<dir>/<split>-images-idx3-ubyte[.gz]` and the matching labels file.
pub fn load(dir: &Path, split: Split) -> Result<Dataset> {
    let find = |kind: &str| -> Result<PathBuf> {
        let base = dir.join(format!("{}-{kind}", split.stem()));
        let gz = PathBuf::from(format!("{}.gz", base.display()));
        match [gz, base.clone()].into_iter().find(|p| p.exists()) {
            Some(p) => Ok(p),
            None => file_err(&base, K::Io, format!("not found (looked for {0} and {0}.gz)", base.display())),
        }
    };
    let (images, labels) = (find("images-idx3-ubyte")?, find("labels-idx1-ubyte")?);
    let provenance = dir.join("PROVENANCE.json");
    if provenance.exists() {
        verify(&provenance, &images)?;
        verify(&provenance, &labels)?;
    }
    load_files(&images, &labels)
}

/// Checks a file's uncompressed SHA-256 against the PROVENANCE.json entry for it.
pub fn verify(provenance: &Path, file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(provenance).or_else(|e| file_err(provenance, K::Io, e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).or_else(|e| file_err(provenance, K::BadHeader, e.to_string()))?;
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    // Entries are keyed by the .gz name; the checksum is of the uncompressed
    // bytes, so it also covers an uncompressed copy.
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let want = [format!("{stem}.gz"), stem.to_string()].iter().find_map(|k| json["files"][k.as_str()]["uncompressed_sha256"].as_str());
    let Some(want) = want else {
        return file_err(provenance, K::Mismatch, format!("no checksum recorded for {name}"));
    };
    // Streamed through the hash: a gzip file is never decompressed into memory.
    let raw = std::fs::File::open(file).or_else(|e| file_err(file, K::Io, e.to_string()))?;
    let mut head = [0u8; 2];
    let gz = std::fs::File::open(file).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == [0x1f, 0x8b];
    let mut hasher = Sha256::new();
    let copied = if gz { std::io::copy(&mut GzDecoder::new(raw), &mut hasher) } else { std::io::copy(&mut &raw, &mut hasher) };
    copied.or_else(|e| file_err(file, K::Corrupt, format!("reading for the checksum: {e}")))?;
    let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != want {
        return file_err(file, K::Checksum, format!("sha256 {got}, PROVENANCE.json records {want}"));
    }
    Ok(())
}
