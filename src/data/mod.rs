//! Data sets on the host: loaders (MNIST IDX, CIFAR-10 binary, image
//! folders), seeded shuffling and mini-batches, augmentation and test-time
//! views. Batches are assembled (and augmented) on loader threads ahead of
//! the step that uploads them (`train::Trainer::train_epoch`).

pub mod cifar;
pub mod folder;
pub mod mnist;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;

/// Images (`[n, c, h, w]` as f32, row-major) with their class labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Pixels, `[n, c, h, w]` row-major.
    pub images: Vec<f32>,
    /// Class index of each image.
    pub labels: Vec<i64>,
    /// `[c, h, w]` of one image.
    pub item_shape: [usize; 3],
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn item_len(&self) -> usize {
        self.item_shape.iter().product()
    }

    /// The first `n` items (all when `n ≥ len`).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        Dataset { images: self.images[..n * self.item_len()].to_vec(), labels: self.labels[..n].to_vec(), item_shape: self.item_shape }
    }

    /// Index lists of mini-batches covering every item once; the last batch
    /// may be smaller. Shuffled when a seed is given.
    pub fn batches(&self, batch_size: usize, shuffle_seed: Option<u64>) -> Vec<Vec<usize>> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        if let Some(seed) = shuffle_seed {
            idx.shuffle(&mut StdRng::seed_from_u64(seed));
        }
        idx.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
    }

    /// The images and labels of `indices` on `device`: `[b, c, h, w]` and labels.
    pub fn batch(&self, device: &Device, indices: &[usize], augment: Option<(&Augment, &mut StdRng)>) -> Result<(Tensor, Vec<i64>)> {
        let (data, labels) = self.batch_host(indices, augment);
        let [c, h, w] = self.item_shape;
        Ok((Tensor::from_vec(device, &[indices.len(), c, h, w], data)?, labels))
    }

    /// [`Dataset::batch`] on the host: the images of `indices`, augmented, and their labels.
    pub fn batch_host(&self, indices: &[usize], augment: Option<(&Augment, &mut StdRng)>) -> (Vec<f32>, Vec<i64>) {
        let n = self.item_len();
        let mut data = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            data.extend_from_slice(&self.images[i * n..(i + 1) * n]);
        }
        if let Some((aug, rng)) = augment {
            aug.apply(&mut data, self.item_shape, rng);
        }
        (data, indices.iter().map(|&i| self.labels[i]).collect())
    }

    /// Subtracts `mean` and divides by `std` (per dataset, all channels).
    pub fn normalize(&mut self, mean: f32, std: f32) {
        self.images.iter_mut().for_each(|v| *v = (*v - mean) / std);
    }
}

/// Assembles and augments `batches` of `data` on `workers` loader threads,
/// up to `ahead` batches in front of `consume`, which gets them in order
/// (index, images, labels). Batch `i` is augmented with its own generator
/// seeded from `(seed, i)`, so the batches are the same whatever the number of
/// workers (0: assembled on the calling thread). An error from `consume`
/// stops the loaders and is returned.
pub fn prefetch(
    data: &Dataset,
    batches: &[Vec<usize>],
    augment: Option<&Augment>,
    seed: u64,
    workers: usize,
    ahead: usize,
    mut consume: impl FnMut(usize, Vec<f32>, Vec<i64>) -> Result<()>,
) -> Result<()> {
    let make = |i: usize| {
        let mut rng = StdRng::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        data.batch_host(&batches[i], augment.map(|a| (a, &mut rng)))
    };
    if workers == 0 {
        for i in 0..batches.len() {
            let (x, y) = make(i);
            consume(i, x, y)?;
        }
        return Ok(());
    }
    std::thread::scope(|s| {
        let make = &make;
        let receivers: Vec<_> = (0..workers)
            .map(|w| {
                let (tx, rx) = std::sync::mpsc::sync_channel(ahead.max(1));
                s.spawn(move || {
                    // Stops when the consumer hangs up (its receiver dropped).
                    for i in (w..batches.len()).step_by(workers) {
                        if tx.send(make(i)).is_err() {
                            break;
                        }
                    }
                });
                rx
            })
            .collect();
        for i in 0..batches.len() {
            let (x, y) = receivers[i % workers].recv().expect("a loader thread panicked");
            consume(i, x, y)?;
        }
        Ok(())
    })
}

/// Training-time augmentation, drawn per image: a random shift (a crop from
/// a zero-padded image), a horizontal flip (opt-in: digits must not flip), a
/// small rotation and a zoom (a random-resized crop when > 1), resampled
/// bilinearly with zeros outside the image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Pad each side by this much, then crop back to the original size at a random offset.
    pub crop_padding: usize,
    /// Mirror left-right with probability ½.
    pub horizontal_flip: bool,
    /// Rotate by a uniform angle in ±this many degrees (0: never).
    pub rotate_degrees: f32,
    /// Zoom by a uniform factor in `[min, max]` about the centre ((1, 1): never).
    pub scale: (f32, f32),
}

impl Default for Augment {
    /// No augmentation; set the fields wanted.
    fn default() -> Augment {
        Augment { crop_padding: 0, horizontal_flip: false, rotate_degrees: 0.0, scale: (1.0, 1.0) }
    }
}

impl Augment {
    /// Augments a batch of images `[b, c, h, w]` in place.
    pub fn apply(&self, data: &mut [f32], [c, h, w]: [usize; 3], rng: &mut StdRng) {
        let n = c * h * w;
        let p = self.crop_padding as i64;
        for img in data.chunks_mut(n) {
            let (dy, dx) = if p > 0 { (rng.random_range(-p..=p) as isize, rng.random_range(-p..=p) as isize) } else { (0, 0) };
            let flip = self.horizontal_flip && rng.random::<bool>();
            if dy != 0 || dx != 0 || flip {
                let src = img.to_vec();
                shift_flip(&src, img, [c, h, w], dy, dx, flip);
            }
            let deg = if self.rotate_degrees > 0.0 { rng.random_range(-self.rotate_degrees..=self.rotate_degrees) } else { 0.0 };
            let (lo, hi) = self.scale;
            let zoom = if hi > lo { rng.random_range(lo..=hi) } else { lo };
            if deg != 0.0 || zoom != 1.0 {
                let src = img.to_vec();
                rotate_zoom(&src, img, [c, h, w], deg.to_radians(), zoom);
            }
        }
    }
}

/// dst = src rotated by `theta` (counter-clockwise as displayed, like
/// torchvision) and zoomed by `zoom` about the centre (bilinear, zeros outside).
fn rotate_zoom(src: &[f32], dst: &mut [f32], [c, h, w]: [usize; 3], theta: f32, zoom: f32) {
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let (sin, cos) = theta.sin_cos();
    let at = |ch: usize, y: isize, x: isize| if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w { src[(ch * h + y as usize) * w + x as usize] } else { 0.0 };
    for y in 0..h {
        for x in 0..w {
            // The output pixel's source: the inverse rotation and zoom.
            let (u, v) = ((x as f32 - cx) / zoom, (y as f32 - cy) / zoom);
            let (sx, sy) = (cos * u - sin * v + cx, sin * u + cos * v + cy);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            for ch in 0..c {
                let top = at(ch, y0, x0) * (1.0 - fx) + at(ch, y0, x0 + 1) * fx;
                let bottom = at(ch, y0 + 1, x0) * (1.0 - fx) + at(ch, y0 + 1, x0 + 1) * fx;
                dst[(ch * h + y) * w + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
}

/// dst = src shifted by (dy, dx) (zero-filled), mirrored left-right first when `flip`.
fn shift_flip(src: &[f32], dst: &mut [f32], [c, h, w]: [usize; 3], dy: isize, dx: isize, flip: bool) {
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                let sx = if flip { w - 1 - x } else { x } as isize + dx;
                let sy = y as isize + dy;
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w;
                dst[(ch * h + y) * w + x] = if inside { src[(ch * h + sy as usize) * w + sx as usize] } else { 0.0 };
            }
        }
    }
}

/// One test-time view of a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum View {
    /// The images as they are.
    Identity,
    /// Mirrored left-right.
    HorizontalFlip,
    /// Shifted by (dy, dx) pixels, zero-filled.
    Shift {
        /// Rows down (negative: up).
        dy: isize,
        /// Columns right (negative: left).
        dx: isize,
    },
    /// Rotated by this many degrees about the centre.
    Rotate(f32),
}

impl View {
    /// The original, its horizontal flip, and four crops shifted by `shift` pixels diagonally.
    pub fn default_tta(shift: usize) -> Vec<View> {
        let s = shift as isize;
        let mut v = vec![View::Identity, View::HorizontalFlip];
        v.extend([(-s, -s), (-s, s), (s, -s), (s, s)].map(|(dy, dx)| View::Shift { dy, dx }));
        v
    }

    /// This view of a batch `[b, c, h, w]` (host data, `item` = `[c, h, w]`).
    pub fn apply(&self, data: &[f32], item: [usize; 3]) -> Vec<f32> {
        let n: usize = item.iter().product();
        let mut out = data.to_vec();
        for (img, src) in out.chunks_mut(n).zip(data.chunks(n)) {
            match *self {
                View::Identity => {}
                View::HorizontalFlip => shift_flip(src, img, item, 0, 0, true),
                View::Shift { dy, dx } => shift_flip(src, img, item, dy, dx, false),
                View::Rotate(deg) => rotate_zoom(src, img, item, deg.to_radians(), 1.0),
            }
        }
        out
    }
}

/// Test-time augmentation views of one batch ([`View::default_tta`] applied).
pub fn tta_views(data: &[f32], item: [usize; 3], shift: usize) -> Vec<Vec<f32>> {
    View::default_tta(shift).iter().map(|v| v.apply(data, item)).collect()
}
