//! Data sets on the host: loaders (MNIST IDX, CIFAR-10 binary), seeded
//! shuffling and mini-batches, and augmentation. Batches are uploaded per step.

pub mod cifar;
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
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// `[c, h, w]` of one image.
    pub item_shape: [usize; 3],
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

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
        let n = self.item_len();
        let mut data = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            data.extend_from_slice(&self.images[i * n..(i + 1) * n]);
        }
        if let Some((aug, rng)) = augment {
            aug.apply(&mut data, self.item_shape, rng);
        }
        let [c, h, w] = self.item_shape;
        let x = Tensor::from_vec(device, &[indices.len(), c, h, w], data)?;
        Ok((x, indices.iter().map(|&i| self.labels[i]).collect()))
    }

    /// Subtracts `mean` and divides by `std` (per dataset, all channels).
    pub fn normalize(&mut self, mean: f32, std: f32) {
        self.images.iter_mut().for_each(|v| *v = (*v - mean) / std);
    }
}

/// Training-time augmentation: random crops from a zero-padded image and
/// random horizontal flips.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Pad each side by this much, then crop back to the original size at a random offset.
    pub crop_padding: usize,
    pub horizontal_flip: bool,
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

/// Test-time augmentation views of one batch: the original, its horizontal
/// flip, and four crops shifted by `shift` pixels (zero-filled), for averaging predictions.
pub fn tta_views(data: &[f32], item: [usize; 3], shift: usize) -> Vec<Vec<f32>> {
    let [c, h, w] = item;
    let s = shift as isize;
    let n = c * h * w;
    let mut views = vec![data.to_vec()];
    for (dy, dx, flip) in [(0, 0, true), (-s, -s, false), (-s, s, false), (s, -s, false), (s, s, false)] {
        let mut v = data.to_vec();
        for (img, src) in v.chunks_mut(n).zip(data.chunks(n)) {
            shift_flip(src, img, item, dy, dx, flip);
        }
        views.push(v);
    }
    views
}
