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
use crate::nn::{state_values, write_state_values, Layer, Sequential};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::tensor::Tensor;
use crate::train::{Metrics, TrainConfig, Trainer};

/// A trainer per device, kept in lockstep.
pub struct DataParallel {
    /// One per device; replica 0 evaluates and is the one to checkpoint.
    pub replicas: Vec<Trainer>,
    /// After every step, set every replica's buffers (batch-norm running
    /// statistics) to their mean over the replicas, so all evaluate alike.
    /// Off by default: each keeps its own, as PyTorch's DDP without SyncBatchNorm.
    pub sync_buffers: bool,
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
            write_state_values(&mut r.model, &start)?;
        }
        Ok(DataParallel { replicas, sync_buffers: false })
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
        if self.sync_buffers {
            let k = self.replicas[..k].len();
            let mut means: Vec<Vec<f32>> = Vec::new();
            for r in &mut self.replicas[..k] {
                for (j, (_, b)) in r.model.buffers("").into_iter().enumerate() {
                    let v = b.to_vec()?;
                    match means.get_mut(j) {
                        Some(acc) => acc.iter_mut().zip(&v).for_each(|(a, x)| *a += x),
                        None => means.push(v),
                    }
                }
            }
            means.iter_mut().flatten().for_each(|v| *v /= k as f32);
            for r in &mut self.replicas {
                for ((_, b), m) in r.model.buffers("").into_iter().zip(&means) {
                    b.write(m)?;
                }
            }
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


/// Data parallelism across processes and hosts through MPI (cargo feature
/// `mpi`): one process per device under `mpirun -np N`. Every rank shuffles
/// each epoch's order with the same seed and takes its own shard of it
/// (PyTorch's `DistributedSampler`); each step's gradients are gathered from
/// every rank and summed in rank order, so the sum does not depend on timing
/// and every rank applies the same update. Rank 0 is the one to log,
/// evaluate and checkpoint. An error on any rank should end the job with
/// [`Distributed::abort`] rather than leave the others waiting.
#[cfg(feature = "mpi")]
pub struct Distributed {
    world: mpi::topology::SimpleCommunicator,
    /// This rank's replica.
    pub trainer: Trainer,
}

#[cfg(feature = "mpi")]
impl Distributed {
    /// Wraps this rank's trainer; every rank must call it, and all start from rank 0's weights.
    pub fn new(world: mpi::topology::SimpleCommunicator, mut trainer: Trainer) -> Result<Distributed> {
        use mpi::traits::*;
        let mut values = state_values(&mut trainer.model)?;
        let root = world.process_at_rank(0);
        for v in values.iter_mut() {
            root.broadcast_into(&mut v[..]);
        }
        write_state_values(&mut trainer.model, &values)?;
        Ok(Distributed { world, trainer })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        use mpi::traits::*;
        self.world.rank() as usize
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        use mpi::traits::*;
        self.world.size() as usize
    }

    /// Ends every process of the job with `code` after printing `error` (use on any rank's error).
    pub fn abort(&self, error: &Error, code: i32) -> ! {
        use mpi::traits::*;
        // One write: stderr is unbuffered, and a formatted line would go out in
        // pieces that mpirun's own abort banner can land between.
        let line = format!("rank {} of {}: {error}; stopping the job\n", self.rank(), self.size());
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        self.world.abort(code)
    }

    /// One epoch: this rank's shard of the seeded order, in batches of
    /// `config.batch_size` per rank; returns the mean of the global batches' losses.
    pub fn train_epoch(&mut self, data: &Dataset) -> Result<f32> {
        use mpi::traits::*;
        let (rank, size) = (self.rank(), self.size());
        let t = &mut self.trainer;
        let epoch_seed = t.config.seed.wrapping_add(t.epoch as u64);
        let order: Vec<usize> = data.batches(data.len().max(1), Some(epoch_seed)).concat();
        // Rank r takes every size-th index from r; every rank takes the same number of steps.
        let shard: Vec<usize> = order.iter().skip(rank).step_by(size).copied().collect();
        let per_rank = order.len().div_ceil(size);
        let steps = per_rank.div_ceil(t.config.batch_size.max(1));
        let mut total = 0f64;
        for s in 0..steps {
            let lo = (s * t.config.batch_size).min(shard.len());
            let hi = ((s + 1) * t.config.batch_size).min(shard.len());
            let mine = &shard[lo..hi];
            // Every rank's count for this step, to weight its gradient by its share.
            let counts: Vec<u64> = (0..size).map(|r| {
                let len = order.iter().skip(r).step_by(size).count();
                let (a, b) = ((s * t.config.batch_size).min(len), ((s + 1) * t.config.batch_size).min(len));
                (b - a) as u64
            }).collect();
            let global: u64 = counts.iter().sum();
            let local_loss = if mine.is_empty() {
                // No images this step: zero gradients (reading them after zero_grad fills zeros).
                t.model.zero_grad();
                0.0
            } else {
                let (x, labels) = data.batch(&t.device, mine, None)?;
                let share = mine.len() as f32 / global as f32;
                t.gradients(&x, &labels, share)?.to_vec()?[0] * share
            };
            // Gather every rank's gradients (and loss share) and sum them in rank order.
            let mut local: Vec<f32> = vec![local_loss];
            for p in t.model.parameters("")? {
                local.extend(p.grad.to_vec()?);
            }
            let mut all = vec![0f32; local.len() * size];
            self.world.all_gather_into(&local[..], &mut all[..]);
            let mut sum = all[..local.len()].to_vec();
            for r in 1..size {
                sum.iter_mut().zip(&all[r * local.len()..(r + 1) * local.len()]).for_each(|(a, b)| *a += b);
            }
            total += sum[0] as f64;
            let mut at = 1;
            for p in t.model.parameters("")? {
                let n = p.grad.numel();
                p.grad.write(&sum[at..at + n])?;
                at += n;
            }
            t.update(false)?;
        }
        t.epoch += 1;
        Ok((total / steps.max(1) as f64) as f32)
    }
}

