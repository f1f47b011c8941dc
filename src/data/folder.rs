//! Image-folder data sets, as torchvision's `ImageFolder` reads them:
//! `root/<class>/*.{png,jpg,jpeg,bmp,gif,webp}`, classes in sorted order, with
//! optional `train/` and `val/` (or `test/`) sub-roots, else a seeded split.
//!
//! Every image is decoded once, on worker threads, resized so that its shorter
//! side fits the target, centre-cropped, and kept in memory as f32 in [0, 1]
//! (then normalised per channel). The same [`Preprocess`] turns a single image
//! file into a model input for inference.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::DynamicImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::Dataset;
use crate::error::{file_err, Error, FileErrorKind as K, Result};

/// The file extensions read (case-insensitive).
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "gif", "webp"];

/// Grayscale or colour input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    /// Grayscale when every image is, else RGB.
    Auto,
    /// One channel (luma).
    Gray,
    /// Three channels.
    Rgb,
}

/// Per-channel normalisation of pixels in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub enum Normalize {
    /// Pixels stay in [0, 1].
    None,
    /// Subtract these means and divide by these deviations, one per channel.
    Given {
        /// One per channel.
        mean: Vec<f32>,
        /// One per channel, > 0.
        std: Vec<f32>,
    },
    /// Computed from the training split in one pass.
    FromTrain,
}

/// How to read an image folder.
#[derive(Clone, Debug, PartialEq)]
pub struct FolderConfig {
    /// Side of the square crop; `None`: the images' own size when they all
    /// share one (the shorter side when it is not square), else the smallest
    /// shorter side among them.
    pub size: Option<usize>,
    /// Grayscale or RGB.
    pub color: Color,
    /// Fraction held out for validation when there is no `val/` or `test/` folder.
    pub val_split: f32,
    /// Seeds the validation split.
    pub seed: u64,
    /// Skip (and count) files that do not decode instead of failing.
    pub skip_bad: bool,
    /// Per-channel normalisation.
    pub normalize: Normalize,
    /// Resize the shorter side to this first, then centre-crop `size`
    /// (torchvision's `Resize(256)` + `CenterCrop(224)`); `None`: resize
    /// just enough to cover `size`.
    pub resize: Option<usize>,
    /// Decoding threads (0: one per core).
    pub workers: usize,
}

impl Default for FolderConfig {
    fn default() -> FolderConfig {
        FolderConfig { size: None, color: Color::Auto, val_split: 0.1, seed: 0, skip_bad: false, normalize: Normalize::FromTrain, resize: None, workers: 0 }
    }
}

/// What turns an image file into a model input: colour, size, normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// `[channels, height, width]`; channels 1 (grayscale) or 3 (RGB).
    pub input: [usize; 3],
    /// Per-channel mean and std (empty: none).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (empty: none).
    pub std: Vec<f32>,
    /// The shorter side is resized to this before the centre crop
    /// (torchvision's `Resize` then `CenterCrop`); `None`: just enough to cover the crop.
    pub resize: Option<usize>,
}

/// ImageNet's per-channel mean, as torchvision's pretrained models expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Preprocess {
    /// Pixels in [0, 1], no normalisation.
    pub fn new(input: [usize; 3]) -> Preprocess {
        Preprocess { input, mean: Vec::new(), std: Vec::new(), resize: None }
    }

    /// torchvision's preprocessing for ImageNet-pretrained models: shorter
    /// side to 256, centre crop 224×224, RGB, ImageNet's mean and std.
    pub fn imagenet() -> Preprocess {
        Preprocess { input: [3, 224, 224], mean: IMAGENET_MEAN.to_vec(), std: IMAGENET_STD.to_vec(), resize: Some(256) }
    }

    /// Checks the channel count and that mean/std have one entry per channel.
    pub fn validate(&self) -> Result<()> {
        let [c, h, w] = self.input;
        let bad = |msg: String| Err(Error::InvalidArgument { op: "Preprocess", msg });
        if !(c == 1 || c == 3) || h == 0 || w == 0 {
            return bad(format!("input {c}@{h}×{w}: need 1 or 3 channels and a non-empty size"));
        }
        if self.mean.len() != self.std.len() || !(self.mean.is_empty() || self.mean.len() == c) || self.std.iter().any(|s| !(*s > 0.0)) {
            return bad(format!("mean {:?} and std {:?} need one entry per channel ({c}) and std > 0", self.mean, self.std));
        }
        if let Some(r) = self.resize.filter(|&r| r < h.min(w)) {
            return bad(format!("resize {r} is smaller than the {h}×{w} crop"));
        }
        Ok(())
    }

    /// Decodes `path` and returns it as a `[c, h, w]` input.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        self.validate()?;
        Ok(self.apply(&decode(path)?))
    }

    /// A decoded image as a `[c, h, w]` input: resized to cover the target,
    /// centre-cropped, converted to gray or RGB, normalised.
    pub fn apply(&self, img: &DynamicImage) -> Vec<f32> {
        let [c, h, w] = self.input;
        let img = match self.resize {
            Some(r) => resize_shorter_crop(img, r, h, w),
            None => resize_crop(img, h, w),
        };
        let mut out = vec![0f32; c * h * w];
        if c == 1 {
            for (i, p) in img.to_luma8().pixels().enumerate() {
                out[i] = p.0[0] as f32 / 255.0;
            }
        } else {
            for (i, p) in img.to_rgb8().pixels().enumerate() {
                for ch in 0..3 {
                    out[ch * h * w + i] = p.0[ch] as f32 / 255.0;
                }
            }
        }
        if !self.mean.is_empty() {
            for ch in 0..c {
                out[ch * h * w..(ch + 1) * h * w].iter_mut().for_each(|v| *v = (*v - self.mean[ch]) / self.std[ch]);
            }
        }
        out
    }
}

/// Scales `img` so it covers `h × w` (the shorter side fits), then crops the centre.
fn resize_crop(img: &DynamicImage, h: usize, w: usize) -> DynamicImage {
    let (iw, ih) = (img.width() as f64, img.height() as f64);
    if iw as usize == w && ih as usize == h {
        return img.clone();
    }
    let scale = (w as f64 / iw).max(h as f64 / ih);
    let (rw, rh) = (((iw * scale).round() as u32).max(w as u32), ((ih * scale).round() as u32).max(h as u32));
    let resized = if (rw, rh) == (img.width(), img.height()) { img.clone() } else { img.resize_exact(rw, rh, FilterType::Triangle) };
    resized.crop_imm((rw - w as u32) / 2, (rh - h as u32) / 2, w as u32, h as u32)
}

/// torchvision's `Resize(r)` (the shorter side to `r`, the longer one
/// scaled and truncated) then `CenterCrop((h, w))` (offsets rounded half to even).
fn resize_shorter_crop(img: &DynamicImage, r: usize, h: usize, w: usize) -> DynamicImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (rw, rh) = if iw <= ih { (r, r * ih / iw) } else { (r * iw / ih, r) };
    let resized = if (rw, rh) == (iw, ih) { img.clone() } else { img.resize_exact(rw as u32, rh as u32, FilterType::Triangle) };
    let offset = |big: usize, small: usize| ((big - small) as f64 / 2.0).round_ties_even() as u32;
    resized.crop_imm(offset(rw, w), offset(rh, h), w as u32, h as u32)
}

/// Decodes one image file; the error names it.
pub fn decode(path: &Path) -> Result<DynamicImage> {
    if !path.is_file() {
        return file_err(path, K::Io, "no such image file");
    }
    let reader = image::ImageReader::open(path).and_then(|r| r.with_guessed_format()).or_else(|e| file_err(path, K::Io, e.to_string()))?;
    reader.decode().or_else(|e| file_err(path, K::Corrupt, format!("does not decode as an image: {e}")))
}

/// An image folder read into memory.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    /// The training split.
    pub train: Dataset,
    /// From `val/` or `test/`, or the held-out split (`None` when the split is 0).
    pub val: Option<Dataset>,
    /// Class names (folder names) by label.
    pub classes: Vec<String>,
    /// What was applied to every image; apply the same to new ones.
    pub preprocess: Preprocess,
    /// Files that did not decode and were skipped (`skip_bad`).
    pub skipped: Vec<PathBuf>,
}

/// Reads the image folder at `root` (see the module docs).
pub fn load(root: &Path, cfg: &FolderConfig) -> Result<ImageFolder> {
    if !root.is_dir() {
        return file_err(root, K::Io, "no such folder (expected root/<class>/<images>)");
    }
    if !(0.0..1.0).contains(&cfg.val_split) {
        return Err(Error::InvalidArgument { op: "image folder", msg: format!("val_split {} must be in [0, 1)", cfg.val_split) });
    }
    let (train_root, val_root) = match (root.join("train"), ["val", "test"].map(|d| root.join(d)).into_iter().find(|d| d.is_dir())) {
        (t, v) if t.is_dir() => (t, v),
        _ => (root.to_path_buf(), None),
    };
    let classes = class_dirs(&train_root)?;
    let mut train_files = list_files(&train_root, &classes)?;
    let mut val_files = match &val_root {
        Some(v) => {
            let extra: Vec<String> = class_dirs(v)?.into_iter().filter(|c| !classes.contains(c)).collect();
            if !extra.is_empty() {
                return file_err(v, K::Mismatch, format!("classes {extra:?} are not among the training classes {classes:?}"));
            }
            list_files(v, &classes)?
        }
        None => Vec::new(),
    };
    if val_root.is_none() && cfg.val_split > 0.0 && train_files.len() > 1 {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        train_files.shuffle(&mut rng);
        let n_val = ((train_files.len() as f32 * cfg.val_split).round() as usize).clamp(1, train_files.len() - 1);
        val_files = train_files.split_off(train_files.len() - n_val);
        // Keep a stable order (by class, then file) within each split.
        train_files.sort();
        val_files.sort();
    }
    let mut skipped = Vec::new();
    let workers = if cfg.workers == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { cfg.workers };
    let train_imgs = decode_all(&train_files, workers, cfg.skip_bad, &mut skipped)?;
    let val_imgs = decode_all(&val_files, workers, cfg.skip_bad, &mut skipped)?;
    if train_imgs.is_empty() {
        return file_err(&train_root, K::Inconsistent, "no training image decoded");
    }
    let channels = match cfg.color {
        Color::Gray => 1,
        Color::Rgb => 3,
        Color::Auto => {
            if train_imgs.iter().chain(&val_imgs).all(|(_, img)| !img.color().has_color()) {
                1
            } else {
                3
            }
        }
    };
    let side = match cfg.size {
        Some(0) => return Err(Error::InvalidArgument { op: "image folder", msg: "size must be ≥ 1".into() }),
        Some(s) => s,
        None => train_imgs.iter().chain(&val_imgs).map(|(_, img)| img.width().min(img.height()) as usize).min().unwrap_or(1),
    };
    let mut preprocess = Preprocess { resize: cfg.resize, ..Preprocess::new([channels, side, side]) };
    if let Normalize::Given { mean, std } = &cfg.normalize {
        preprocess.mean = mean.clone();
        preprocess.std = std.clone();
    }
    preprocess.validate()?;
    // Unnormalised first; the training split's statistics may be needed.
    let raw = Preprocess { mean: Vec::new(), std: Vec::new(), ..preprocess.clone() };
    let mut train = to_dataset(&train_imgs, &raw, workers);
    let mut val = (!val_imgs.is_empty()).then(|| to_dataset(&val_imgs, &raw, workers));
    if cfg.normalize == Normalize::FromTrain {
        (preprocess.mean, preprocess.std) = channel_stats(&train);
    }
    if !preprocess.mean.is_empty() {
        for d in std::iter::once(&mut train).chain(val.as_mut()) {
            normalize_channels(d, &preprocess.mean, &preprocess.std);
        }
    }
    Ok(ImageFolder { train, val, classes, preprocess, skipped })
}

/// Sorted names of the class folders under `dir` (hidden ones skipped).
fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).or_else(|e| file_err(dir, K::Io, e.to_string()))?;
    let mut classes: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return file_err(dir, K::Inconsistent, "has no class folders (expected <folder>/<class>/<images>)");
    }
    Ok(classes)
}

/// (path, label) of every image under `dir/<class>/`, sorted by class then name.
fn list_files(dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, i64)>> {
    let mut out = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let cdir = dir.join(class);
        if !cdir.is_dir() {
            continue; // a validation folder may lack a class
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cdir)
            .or_else(|e| file_err(&cdir, K::Io, e.to_string()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().and_then(|x| x.to_str()).is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str())))
            .collect();
        if files.is_empty() {
            return file_err(&cdir, K::Inconsistent, format!("class folder `{class}` has no images ({})", EXTENSIONS.join(", ")));
        }
        files.sort();
        out.extend(files.into_iter().map(|p| (p, label as i64)));
    }
    Ok(out)
}

/// Decodes `files` on `workers` threads, in order; a bad file fails the
/// load or, with `skip_bad`, is left out and listed in `skipped`.
fn decode_all(files: &[(PathBuf, i64)], workers: usize, skip_bad: bool, skipped: &mut Vec<PathBuf>) -> Result<Vec<(i64, DynamicImage)>> {
    let chunk = files.len().div_ceil(workers.max(1)).max(1);
    let results: Vec<Result<DynamicImage>> = std::thread::scope(|s| {
        let handles: Vec<_> = files.chunks(chunk).map(|part| s.spawn(move || part.iter().map(|(p, _)| decode(p)).collect::<Vec<_>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("decoding thread panicked")).collect()
    });
    let mut out = Vec::with_capacity(files.len());
    for ((path, label), r) in files.iter().zip(results) {
        match r {
            Ok(img) => out.push((*label, img)),
            Err(e) if skip_bad => {
                log::warn!("skipping {e}");
                skipped.push(path.clone());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn to_dataset(imgs: &[(i64, DynamicImage)], pre: &Preprocess, workers: usize) -> Dataset {
    let chunk = imgs.len().div_ceil(workers.max(1)).max(1);
    let images: Vec<f32> = std::thread::scope(|s| {
        let handles: Vec<_> = imgs.chunks(chunk).map(|part| s.spawn(move || part.iter().flat_map(|(_, img)| pre.apply(img)).collect::<Vec<f32>>())).collect();
        handles.into_iter().flat_map(|h| h.join().expect("preprocessing thread panicked")).collect()
    });
    Dataset { images, labels: imgs.iter().map(|(l, _)| *l).collect(), item_shape: pre.input }
}

/// Per-channel mean and (population) standard deviation of a data set.
pub fn channel_stats(d: &Dataset) -> (Vec<f32>, Vec<f32>) {
    let [c, h, w] = d.item_shape;
    let plane = h * w;
    let mut sums = vec![(0f64, 0f64); c];
    for img in d.images.chunks(c * plane) {
        for (ch, s) in sums.iter_mut().enumerate() {
            for &v in &img[ch * plane..(ch + 1) * plane] {
                s.0 += v as f64;
                s.1 += (v as f64) * (v as f64);
            }
        }
    }
    let n = (d.len() * plane).max(1) as f64;
    let mean: Vec<f32> = sums.iter().map(|s| (s.0 / n) as f32).collect();
    let std = sums.iter().map(|s| ((s.1 / n - (s.0 / n).powi(2)).max(0.0).sqrt() as f32).max(1e-6)).collect();
    (mean, std)
}

/// Normalises each channel of every image in place.
pub fn normalize_channels(d: &mut Dataset, mean: &[f32], std: &[f32]) {
    let [c, h, w] = d.item_shape;
    let plane = h * w;
    for img in d.images.chunks_mut(c * plane) {
        for ch in 0..c {
            img[ch * plane..(ch + 1) * plane].iter_mut().for_each(|v| *v = (*v - mean[ch]) / std[ch]);
        }
    }
}
