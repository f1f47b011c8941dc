//! Data parallelism in one process: one replica of the model per device
//! (several adapters, or several devices opened on one adapter), each batch
//! split across them, the gradients summed in a fixed order (replica 0
//! first) and the same update applied on every replica, so the replicas never
//! drift and training matches one device on the whole batch. Batch-norm
//! statistics stay per replica, as PyTorch's DDP does by default.
//!
//! The gradient sum goes through the host (one readback and one upload per
//! parameter per replica each step): simple and exact, and the bytes it moves
//! are [`DataParallel::bytes_all_reduced_per_step`].

use crate::data::{prefetch, Dataset};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{Layer, Sequential, State};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::tensor::Tensor;
use crate::train::{Metrics, TrainConfig, Trainer};

/// A trainer per device, kept in lockstep.
pub struct DataParallel {
    /// One per device; replica 0 evaluates and is the one to checkpoint.
    pub replicas: Vec<Trainer>,
}

impl DataParallel {
    /// Builds `build(device)` on every device and copies replica 0's weights
    /// and buffers to the others, so they start identical whatever `build` does.
    pub fn new(devices: &[Device], mut build: impl FnMut(&Device) -> Result<Sequential>, optimizer: OptimizerConfig, config: TrainConfig) -> Result<DataParallel> {
        if devices.is_empty() {
            return Err(Error::InvalidArgument { op: "DataParallel", msg: "needs at least one device".into() });
        }
        let mut replicas = devices
            .iter()
            .map(|d| Trainer::new(build(d)?, Optimizer::new(optimizer)?, TrainConfig { progress: false, ..config.clone() }, d.clone()))
            .collect::<Result<Vec<_>>>()?;
        let start = state_values(&mut replicas[0].model)?;
        for r in &mut replicas[1..] {
            let mut it = start.iter();
            for e in r.model.state("") {
                if let State::Param { value: t, .. } | State::Buffer(t) = e.state {
                    let v = it.next().ok_or_else(|| Error::InvalidArgument { op: "DataParallel", msg: "the replicas' models differ in structure".into() })?;
                    t.write(v)?;
                }
            }
        }
        Ok(DataParallel { replicas })
    }

    /// The bytes one step sums across replicas: every gradient, once per replica.
    pub fn bytes_all_reduced_per_step(&mut self) -> usize {
        let k = self.replicas.len();
        self.replicas[0].model.param_count() * 4 * k
    }

    /// One step on a batch given on the host (`images` `[n, c, h, w]` row-major):
    /// shard `i` of the batch goes to replica `i` (the first `n mod k` shards
    /// get one image more); returns the loss of the whole batch.
    pub fn train_step(&mut self, images: &[f32], item: [usize; 3], labels: &[i64]) -> Result<f32> {
        let n = labels.len();
        let per: usize = item.iter().product();
        if images.len() != n * per || n == 0 {
            return Err(Error::DataLength { op: "DataParallel::train_step", shape: vec![n, item[0], item[1], item[2]], expected: n * per, got: images.len() });
        }
        let k = self.replicas.len().min(n);
        let shards: Vec<(usize, usize)> = (0..k).map(|i| (i * n / k, (i + 1) * n / k)).collect();
        // Forward and backward on every replica at once (its own thread; the devices overlap).
        let losses: Vec<Result<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = self.replicas[..k]
                .iter_mut()
                .zip(&shards)
                .map(|(r, &(a, b))| {
                    s.spawn(move || -> Result<f32> {
                        let x = Tensor::from_vec(&r.device, &[b - a, item[0], item[1], item[2]], images[a * per..b * per].to_vec())?;
                        let share = (b - a) as f32 / n as f32;
                        let loss = r.gradients(&x, &labels[a..b], share)?;
                        Ok(loss.to_vec()?[0] * share)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(Error::InvalidArgument { op: "DataParallel", msg: "a replica's thread panicked".into() }))).collect()
        });
        let loss = losses.into_iter().sum::<Result<f32>>()?;
        // Sum the gradients in replica order; every replica gets the same sum.
        let mut sums: Vec<Vec<f32>> = Vec::new();
        for r in &mut self.replicas[..k] {
            for (j, p) in r.model.parameters("")?.into_iter().enumerate() {
                let g = p.grad.to_vec()?;
                match sums.get_mut(j) {
                    Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
                    None => sums.push(g),
                }
            }
        }
        for r in &mut self.replicas {
            for (p, g) in r.model.parameters("")?.into_iter().zip(&sums) {
                p.grad.write(g)?;
            }
            r.update(false)?;
        }
        Ok(loss)
    }

    /// One epoch in mini-batches of `config.batch_size` (shuffled by the
    /// seed and epoch, as [`Trainer::train_epoch`]); returns the mean batch loss.
    pub fn train_epoch(&mut self, data: &Dataset) -> Result<f32> {
        let (seed, epoch, batch) = {
            let r = &self.replicas[0];
            (r.config.seed, r.epoch, r.config.batch_size)
        };
        let epoch_seed = seed.wrapping_add(epoch as u64);
        let batches = data.batches(batch, Some(epoch_seed));
        let augment = self.replicas[0].config.augment;
        let mut total = 0f64;
        prefetch(data, &batches, augment.as_ref(), epoch_seed ^ 0x5eed, 1, 2, |_, images, labels| {
            total += self.train_step(&images, data.item_shape, &labels)? as f64;
            Ok(())
        })?;
        for r in &mut self.replicas {
            r.epoch += 1;
        }
        Ok((total / batches.len().max(1) as f64) as f32)
    }

    /// Loss and accuracy on `data`, on replica 0.
    pub fn evaluate(&mut self, data: &Dataset) -> Result<Metrics> {
        self.replicas[0].evaluate(data)
    }
}

fn state_values(model: &mut Sequential) -> Result<Vec<Vec<f32>>> {
    model
        .state("")
        .into_iter()
        .filter_map(|e| match e.state {
            State::Param { value: t, .. } | State::Buffer(t) => Some(t.to_vec()),
            State::Counter(_) => None,
        })
        .collect()
}
