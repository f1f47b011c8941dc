//! The training loop: mini-batch epochs with seeded shuffling, an optimiser,
//! LR schedules, regularisation, gradient clipping, early stopping, metrics,
//! a progress bar and a per-epoch hook.
//!
//! On the GPU one training step records every dispatch into one command
//! encoder and submits once; each step's loss is kept on the device and the
//! window is read back every `log_every` steps and at the end of the epoch.
//! A NaN or infinite loss stops training with `Error::NonFinite` naming the
//! exact step; `check_gradients` checks every gradient before each update.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::data::{prefetch, Augment, Dataset};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{Layer, Mode, Precision, Sequential};
use crate::ops::clip::clip_global_norm;
use crate::ops::elementwise::{elementwise_combine, elementwise_combine_sign};
use crate::ops::reduce::reduce_sum_squares;
use crate::ops::softmax_xent::{softmax_xent, softmax_xent_probs_cpu, CrossEntropyConfig, Reduction};
use crate::optim::{check_schedule, LrSchedule, Optimizer, Plateau, PlateauState};
use crate::tensor::Tensor;

/// How to train: epochs, batches, schedule, regularisation, loss, stopping, loading.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Total epochs (counting those a resumed checkpoint already did).
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Seeds shuffling and augmentation (epoch e uses seed + e).
    pub seed: u64,
    /// How the learning rate changes.
    pub schedule: LrSchedule,
    /// Linear warm-up epochs before the schedule.
    pub warmup_epochs: usize,
    /// Clip the global gradient norm to this.
    pub clip_grad_norm: Option<f32>,
    /// Adds l1·sign(w) to every gradient.
    pub l1: f32,
    /// Adds l2·w to every gradient (the optimiser's weight decay does the same for SGD/Adam).
    pub l2: f32,
    /// Stop when validation accuracy has not improved for this many epochs.
    pub early_stopping_patience: Option<usize>,
    /// On early stopping, put back the weights (and batch-norm statistics) of
    /// the epoch with the best validation accuracy.
    pub restore_best: bool,
    /// Lower the rate when the validation loss stops improving.
    pub reduce_on_plateau: Option<Plateau>,
    /// Read the running loss back every this many steps (0: only at epoch end).
    pub log_every: usize,
    /// Training-time augmentation.
    pub augment: Option<Augment>,
    /// Cross-entropy settings (label smoothing, ignore_index, reduction).
    pub loss: CrossEntropyConfig,
    /// Show a progress bar (it stays hidden when stderr is not a terminal).
    pub progress: bool,
    /// Before every update, check that each gradient's norm is finite and stop
    /// (without updating) if one is not. Costs one small readback per step.
    pub check_gradients: bool,
    /// Threads that assemble and augment batches ahead of the step (0: on
    /// the training thread). The batches do not depend on it.
    pub loader_workers: usize,
    /// How many batches each loader thread may have ready ahead of the step.
    pub prefetch: usize,
    /// Gradient accumulation: each batch runs as this many micro-batches
    /// (forward and backward each), their gradients summed with each one's
    /// share of the loss, then one update. Equal to the whole batch's update
    /// for a model without batch-norm, in a fraction of the activation
    /// memory; batch-norm's statistics are then per micro-batch, as in
    /// PyTorch. 1: no accumulation.
    pub accumulate_steps: usize,
    /// Dynamic loss scaling (PyTorch's `GradScaler`): the loss's gradient is
    /// multiplied by a scale before backward and the parameters' gradients
    /// divided by it after; a step whose gradients are not finite is skipped
    /// (no update) and the scale backed off. Mixed precision needs it; in f32
    /// it is a guard that skips non-finite steps. `None`: off.
    pub loss_scale: Option<LossScale>,
    /// How activations kept for backward are stored ([`Precision::Mixed`]:
    /// in f16, half the bytes; the arithmetic, gradients, loss and optimiser
    /// stay f32). The CPU path runs the same policy through its twins.
    pub precision: Precision,
}

/// [`TrainConfig::loss_scale`]'s settings: PyTorch's `GradScaler` defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScale {
    /// The first scale (2^16).
    pub init_scale: f32,
    /// The scale is multiplied by this after `growth_interval` clean steps in a row (2).
    pub growth_factor: f32,
    /// And by this after a step with non-finite gradients (0.5).
    pub backoff_factor: f32,
    /// Clean steps between growths (2000).
    pub growth_interval: u32,
}

impl Default for LossScale {
    fn default() -> LossScale {
        LossScale { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

impl LossScale {
    fn validate(&self) -> Result<()> {
        let ok = self.init_scale.is_finite() && self.init_scale > 0.0 && self.growth_factor >= 1.0 && self.growth_factor.is_finite() && self.backoff_factor > 0.0 && self.backoff_factor < 1.0 && self.growth_interval > 0;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument { op: "LossScale", msg: format!("{self:?}: need a finite init_scale > 0, growth_factor ≥ 1, backoff_factor in (0, 1) and growth_interval ≥ 1") })
        }
    }
}

/// Where dynamic loss scaling stands (kept in checkpoints).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossScaleState {
    /// The scale the next step uses.
    pub scale: f32,
    /// Clean steps since the scale last changed.
    pub growth_tracker: u32,
    /// Steps skipped for non-finite gradients so far.
    pub skipped_steps: u64,
}

impl LossScaleState {
    /// The state before the first step.
    pub fn new(cfg: &LossScale) -> LossScaleState {
        LossScaleState { scale: cfg.init_scale, growth_tracker: 0, skipped_steps: 0 }
    }

    /// After a step: back off (and count the skip) when its gradients were
    /// not finite, else grow after `growth_interval` clean steps.
    fn after_step(&mut self, cfg: &LossScale, found_inf: bool) {
        if found_inf {
            self.scale *= cfg.backoff_factor;
            self.growth_tracker = 0;
            self.skipped_steps += 1;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == cfg.growth_interval {
                // Not past f32's range: a scale of inf would make every step skip.
                self.scale = (self.scale * cfg.growth_factor).min(f32::MAX);
                self.growth_tracker = 0;
            }
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            batch_size: 64,
            seed: 0,
            schedule: LrSchedule::Constant,
            warmup_epochs: 0,
            clip_grad_norm: None,
            l1: 0.0,
            l2: 0.0,
            early_stopping_patience: None,
            restore_best: true,
            reduce_on_plateau: None,
            log_every: 100,
            augment: None,
            loss: CrossEntropyConfig::default(),
            progress: true,
            check_gradients: false,
            loader_workers: 1,
            prefetch: 2,
            accumulate_steps: 1,
            loss_scale: None,
            precision: Precision::F32,
        }
    }
}

/// The device copy of a loss scaler's state: `[scale, clean steps, skipped
/// steps, found]` as the bits of four f32s (`shaders/loss_scale.wgsl`).
fn state_words(s: &LossScaleState) -> Vec<f32> {
    [s.scale.to_bits(), s.growth_tracker, s.skipped_steps.min(u32::MAX as u64) as u32, 0].map(f32::from_bits).to_vec()
}

fn state_tensor(device: &Device, s: &LossScaleState) -> Result<Tensor> {
    Tensor::from_vec(device, &[4], state_words(s))
}

/// What one epoch achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    /// Counting from 1.
    pub epoch: usize,
    /// The learning rate at the epoch's start.
    pub lr: f32,
    /// Mean of the batch losses.
    pub train_loss: f32,
    /// Share of training images classified right during the epoch (as the weights changed).
    pub train_accuracy: Option<f32>,
    /// Validation loss, when a validation set was given.
    pub val_loss: Option<f32>,
    /// Validation accuracy, when a validation set was given.
    pub val_accuracy: Option<f32>,
    /// Training throughput.
    pub images_per_sec: f64,
    /// Wall time of the epoch, evaluation included.
    pub seconds: f64,
    /// Every step's loss, in order.
    pub step_losses: Vec<f32>,
}

/// Returned by the epoch hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop after this epoch.
    Stop,
}

/// Loss and accuracy of a model on a data set, with the confusion matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Metrics {
    /// Mean cross-entropy.
    pub loss: f32,
    /// Share classified right.
    pub accuracy: f32,
    /// Share of items whose label is among the 5 most likely classes (when there are more than 5).
    pub top5: Option<f32>,
    /// `confusion[label][predicted]`: item counts.
    pub confusion: Vec<Vec<u64>>,
}

impl Metrics {
    /// Accuracy per class (the diagonal over each row's total; `None` for a class with no items).
    pub fn per_class_accuracy(&self) -> Vec<Option<f32>> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let total: u64 = row.iter().sum();
                (total > 0).then(|| row[c] as f32 / total as f32)
            })
            .collect()
    }

    /// The confusion matrix as a text table (rows: label, columns: predicted)
    /// with per-class accuracy; `names` label the classes (else their index).
    pub fn confusion_table(&self, names: &[String]) -> String {
        let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| i.to_string());
        let w = (0..self.confusion.len()).map(|i| name(i).chars().count()).chain(self.confusion.iter().flatten().map(|v| v.to_string().len())).max().unwrap_or(1).max(3);
        let mut out = format!("{:>w$} │", "");
        for j in 0..self.confusion.len() {
            out += &format!(" {:>w$}", name(j));
        }
        out += "   accuracy\n";
        for (i, (row, acc)) in self.confusion.iter().zip(self.per_class_accuracy()).enumerate() {
            out += &format!("{:>w$} │", name(i));
            for v in row {
                out += &format!(" {v:>w$}");
            }
            out += &acc.map_or("   —".into(), |a| format!("   {:.2}%", 100.0 * a));
            out += "\n";
        }
        out
    }
}

/// A request to stop training after the current step, shared with whatever
/// sets it (a Ctrl-C handler, another thread, a test).
#[derive(Clone, Debug, Default)]
pub struct StopFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl StopFlag {
    /// A flag not yet set.
    pub fn new() -> StopFlag {
        StopFlag::default()
    }

    /// Asks training to stop after the step in progress.
    pub fn stop(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A flag that the first Ctrl-C (SIGINT) sets, saying so on stderr; a
    /// second Ctrl-C exits at once with status 130. One handler per process:
    /// a second call returns an error.
    pub fn on_ctrl_c() -> Result<StopFlag> {
        let flag = StopFlag::new();
        let inner = flag.clone();
        ctrlc::set_handler(move || {
            if inner.is_set() {
                eprintln!("\ninterrupted again: exiting now");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: stopping after this step (Ctrl-C again to quit at once)");
            inner.stop();
        })
        .map_err(|e| Error::InvalidArgument { op: "StopFlag::on_ctrl_c", msg: e.to_string() })?;
        Ok(flag)
    }
}

/// A model, its optimiser and the training state.
pub struct Trainer {
    /// The model.
    pub model: Sequential,
    /// The optimiser and its state.
    pub optimizer: Optimizer,
    /// The settings.
    pub config: TrainConfig,
    /// Where the model lives.
    pub device: Device,
    /// Epochs completed.
    pub epoch: usize,
    /// Optimiser steps taken.
    pub step: u64,
    /// Batches of the current epoch already trained (non-zero only after an
    /// interruption; the epoch's seeded order lets a resume skip exactly these).
    pub epoch_step: usize,
    /// When set, training stops after the current step with [`Error::Interrupted`].
    pub stop: Option<StopFlag>,
    /// Reduce-on-plateau's state (its scale multiplies the schedule's rate).
    pub plateau: PlateauState,
    /// Early stopping: the best validation accuracy so far, epochs since, and
    /// (with `restore_best`) a host copy of that epoch's state.
    best: Option<(f32, Vec<Vec<f32>>)>,
    since_best: usize,
    /// The last epoch's per-step losses and training accuracy, for its stats.
    last_epoch: (Vec<f32>, Option<f32>),
    /// The last training step's logits (for training accuracy).
    last_logits: Option<Tensor>,
    /// With GPU profiling on: the kernels' time in training epochs (not
    /// evaluation), in ms, so a per-step figure counts training only.
    pub train_gpu_ms: f64,
    /// Early stopping ended training (further `fit` calls do nothing).
    pub stopped_early: bool,
    /// Input shapes whose pipelines have been built: (shape, training).
    prepared: std::collections::HashSet<(Vec<usize>, bool)>,
    /// Dynamic loss scaling's state (with [`TrainConfig::loss_scale`]): on
    /// the host for the CPU path; on the GPU, a `[4]` tensor the device
    /// updates (scale bits, clean steps, skipped steps, found), so no step
    /// reads anything back to decide. See [`Trainer::loss_scale_state`].
    loss_scale: Option<LossScaleState>,
    loss_scale_gpu: Option<Tensor>,
}

impl Trainer {
    /// A trainer at epoch 0; errors on settings out of range.
    pub fn new(model: Sequential, optimizer: Optimizer, config: TrainConfig, device: Device) -> Result<Trainer> {
        check_schedule(&config.schedule)?;
        if config.batch_size == 0 {
            return Err(Error::InvalidArgument { op: "Trainer", msg: "batch size 0: a batch needs at least one image".into() });
        }
        if config.accumulate_steps == 0 || config.accumulate_steps > config.batch_size {
            return Err(Error::InvalidArgument {
                op: "Trainer",
                msg: format!("accumulate_steps {} must be between 1 and the batch size {}", config.accumulate_steps, config.batch_size),
            });
        }
        if !(config.l1 >= 0.0 && config.l2 >= 0.0) {
            return Err(Error::InvalidArgument { op: "Trainer", msg: format!("l1 {} and l2 {} must be ≥ 0", config.l1, config.l2) });
        }
        config.loss_scale.as_ref().map(LossScale::validate).transpose()?;
        let mut model = model;
        model.set_precision(config.precision);
        if config.precision == Precision::Mixed {
            log::info!("mixed precision: activations kept for backward in f16 on {device}");
        }
        let loss_scale = config.loss_scale.as_ref().map(LossScaleState::new);
        let loss_scale_gpu = match (&device, loss_scale) {
            (Device::Gpu(_), Some(s)) => Some(state_tensor(&device, &s)?),
            _ => None,
        };
        Ok(Trainer { loss_scale, loss_scale_gpu, model, optimizer, config, device, epoch: 0, step: 0, epoch_step: 0, stop: None, plateau: PlateauState::new(), best: None, since_best: 0, last_epoch: (Vec::new(), None), last_logits: None, train_gpu_ms: 0.0, stopped_early: false, prepared: Default::default() })
    }

    /// Dynamic loss scaling's state (`None` without [`TrainConfig::loss_scale`]);
    /// on the GPU this reads the device's copy back.
    pub fn loss_scale_state(&self) -> Result<Option<LossScaleState>> {
        match &self.loss_scale_gpu {
            Some(t) => {
                let v: Vec<u32> = t.to_vec()?.iter().map(|f| f.to_bits()).collect();
                Ok(Some(LossScaleState { scale: f32::from_bits(v[0]), growth_tracker: v[1], skipped_steps: v[2] as u64 }))
            }
            None => Ok(self.loss_scale),
        }
    }

    /// Sets the loss scaler's state (a checkpoint's); ignored without one.
    pub fn set_loss_scale_state(&mut self, state: LossScaleState) -> Result<()> {
        if self.loss_scale.is_some() {
            self.loss_scale = Some(state);
        }
        if let Some(t) = &mut self.loss_scale_gpu {
            t.write(&state_words(&state))?;
        }
        Ok(())
    }

    /// On the GPU, builds every pipeline that training on `train` and
    /// evaluating on `val` will use, in parallel, so the first step does not
    /// pay for them. It records one training step per batch shape (and one
    /// evaluation forward) as a dry run: every kernel is noted, none runs, and
    /// no state changes (weights, running statistics, optimiser state,
    /// dropout counters, the step count). [`Trainer::fit`] calls it; a no-op
    /// on the CPU and for shapes already prepared.
    pub fn prepare(&mut self, train: &Dataset, val: Option<&Dataset>) -> Result<()> {
        let item = train.item_shape;
        let eval_batch = self.eval_batch_size();
        for n in batch_sizes(train.len(), self.config.batch_size) {
            self.prepare_shape(&[n, item[0], item[1], item[2]], true)?;
        }
        if let Some(v) = val {
            let item = v.item_shape;
            for n in batch_sizes(v.len(), eval_batch) {
                self.prepare_shape(&[n, item[0], item[1], item[2]], false)?;
            }
        }
        Ok(())
    }

    /// The dry run behind [`Trainer::prepare`] for one input shape: a
    /// training step (`training`) or an evaluation forward.
    fn prepare_shape(&mut self, shape: &[usize], training: bool) -> Result<()> {
        let Device::Gpu(ctx) = &self.device else { return Ok(()) };
        let key = (shape.to_vec(), training);
        if self.prepared.contains(&key) {
            return Ok(());
        }
        let ctx = ctx.clone();
        let x = Tensor::uninit(&self.device, "Trainer::prepare", shape)?;
        let labels = vec![0i64; shape[0]];
        // Host-side state a step changes; the device-side state cannot change (no kernel runs).
        let counters: Vec<u32> = self.model.counters("").into_iter().map(|(_, c)| *c).collect();
        let marks = self.optimizer.checkpoint_marks();
        let out = ctx.dry_run(|| {
            if training {
                self.step_inner(&x, &labels, true).map(drop)
            } else {
                self.model.forward(&x, Mode::Eval).map(drop)
            }
        });
        for ((_, c), v) in self.model.counters("").into_iter().zip(counters) {
            *c = v;
        }
        self.optimizer.restore_marks(marks);
        self.model.zero_grad();
        out?;
        self.prepared.insert(key);
        Ok(())
    }

    fn eval_batch_size(&self) -> usize {
        self.config.batch_size.max(256)
    }

    /// One step on one batch: forward, loss, backward, regularisation,
    /// clipping, update. Returns the loss as a `[1]` tensor on the device
    /// (reading it is the caller's choice); on the GPU this is one submit.
    /// The first step of each input shape builds its pipelines first (see
    /// [`Trainer::prepare`]).
    ///
    /// A step that fails (out of memory, say) releases what its layers kept
    /// for backward and its gradients, so the trainer can go on, with a
    /// smaller batch for one.
    pub fn train_step(&mut self, x: &Tensor, labels: &[i64]) -> Result<Tensor> {
        let out = self.prepare_shape(x.shape(), true).and_then(|_| self.step_inner(x, labels, false));
        if out.is_err() {
            self.model.release();
            self.model.zero_grad();
            self.last_logits = None;
            if let Device::Gpu(ctx) = &self.device {
                // Submits whatever was recorded before the failure, so its buffers return.
                let _ = ctx.flush();
            }
        }
        out
    }

    /// [`Trainer::train_step`]; a `dry` step (inside a dry run) skips the
    /// gradient check's verdict (nothing was computed) and counts no step.
    fn step_inner(&mut self, x: &Tensor, labels: &[i64], dry: bool) -> Result<Tensor> {
        let loss = match self.config.accumulate_steps.min(labels.len()) {
            0 | 1 => self.gradients(x, labels, 1.0)?,
            parts => self.accumulated_gradients(x, labels, parts)?,
        };
        self.update(dry)?;
        Ok(loss)
    }

    /// [`Trainer::gradients`] over `parts` micro-batches of `x` (sizes
    /// differing by at most one): each one's gradient is weighted by its
    /// share of the batch's loss (the rows it counts, for a mean) and added
    /// into the parameters' gradients. Returns the batch's loss; the logits
    /// of the whole batch are kept for training accuracy.
    fn accumulated_gradients(&mut self, x: &Tensor, labels: &[i64], parts: usize) -> Result<Tensor> {
        let n = labels.len();
        if x.shape().first() != Some(&n) {
            return Err(Error::Shape { op: "Trainer::train_step", msg: format!("{} labels for a batch of shape {:?}", n, x.shape()) });
        }
        let cfg = self.config.loss;
        let counted = |ls: &[i64]| ls.iter().filter(|&&l| Some(l) != cfg.ignore_index).count();
        let total = counted(labels);
        self.model.zero_grad();
        self.last_logits = None;
        let (mut loss, mut logits): (Option<Tensor>, Option<Tensor>) = (None, None);
        let mut start = 0;
        for i in 0..parts {
            let len = n / parts + usize::from(i < n % parts);
            let part = &labels[start..start + len];
            let weight = match cfg.reduction {
                Reduction::Sum => 1.0,
                Reduction::Mean if total == 0 => 0.0,
                Reduction::Mean => counted(part) as f32 / total as f32,
            };
            let out = self.model.forward(&x.narrow(start, len)?, Mode::Train)?;
            let (l, dl) = softmax_xent(&out, part, cfg)?;
            if weight > 0.0 {
                let dl = match &self.loss_scale_gpu {
                    Some(state) => crate::ops::loss_scale::loss_scale_apply(&dl, state, weight)?,
                    None => crate::ops::elementwise::elementwise_add(&dl, &dl, weight * self.loss_scale.map_or(1.0, |s| s.scale), 0.0)?,
                };
                self.model.backward_params(&dl)?;
                loss = Some(match loss {
                    None => crate::ops::elementwise::elementwise_add(&l, &l, weight, 0.0)?,
                    Some(acc) => crate::ops::elementwise::elementwise_add(&l, &acc, weight, 1.0)?,
                });
            } else {
                self.model.release();
            }
            let classes = out.shape()[1];
            let all = match &mut logits {
                Some(t) => t,
                None => logits.insert(Tensor::uninit(&self.device, "Trainer::train_step", &[n, classes])?),
            };
            all.set_from(start * classes, &out.reshape(&[len * classes])?)?;
            start += len;
        }
        self.last_logits = logits;
        match loss {
            Some(l) => Ok(l),
            // Every row ignored: a mean over no rows, as PyTorch gives (NaN).
            None => Tensor::from_vec(&self.device, &[1], vec![f32::NAN]),
        }
    }

    /// Forward and backward on one batch: the parameters' gradients (scaled
    /// by `scale`, e.g. a shard's share of the whole batch) replace the old
    /// ones; returns the (unscaled) loss as a `[1]` tensor on the device.
    pub(crate) fn gradients(&mut self, x: &Tensor, labels: &[i64], scale: f32) -> Result<Tensor> {
        self.model.zero_grad();
        // Released before the step records anything: a tensor held from one
        // step into the next would take a different buffer each step (and
        // the step's bind groups would never repeat).
        self.last_logits = None;
        let logits = self.model.forward(x, Mode::Train)?;
        let (loss, mut dlogits) = softmax_xent(&logits, labels, self.config.loss)?;
        self.last_logits = Some(logits);
        if let Some(state) = &self.loss_scale_gpu {
            dlogits = crate::ops::loss_scale::loss_scale_apply(&dlogits, state, scale)?;
        } else {
            let scale = scale * self.loss_scale.map_or(1.0, |s| s.scale);
            if scale != 1.0 {
                dlogits = crate::ops::elementwise::elementwise_add(&dlogits, &dlogits, scale, 0.0)?;
            }
        }
        // The input needs no gradient: the first layer computes its parameters' only.
        self.model.backward_params(&dlogits)?;
        Ok(loss)
    }

    /// Regularisation, clipping, the gradient check and the optimiser step
    /// on the gradients in place; on the GPU the step is submitted here.
    /// A `dry` step (inside a dry run) skips the check's verdict and counts no step.
    pub(crate) fn update(&mut self, dry: bool) -> Result<()> {
        // On the GPU the loss scaler decides on the device: gradients unscaled
        // and checked there, and the optimiser's dispatches gated on the result.
        let mut gate = None;
        if let (Some(cfg), Some(state), Device::Gpu(ctx)) = (self.config.loss_scale, &self.loss_scale_gpu, &self.device) {
            let mut params = self.model.parameters("")?;
            let mut grads: Vec<&mut Tensor> = params.iter_mut().map(|p| &mut *p.grad).collect();
            crate::ops::loss_scale::loss_scale_unscale(&mut grads, state)?;
            drop(params);
            let (template, args) = ctx.gate_buffers();
            crate::ops::loss_scale::loss_scale_update(state, &cfg, (&template).into(), (&args).into())?;
            gate = Some(ctx.clone());
        } else if let (Some(cfg), Some(state)) = (self.config.loss_scale, self.loss_scale) {
            // The CPU path decides on the host: unscale, then check every gradient.
            let mut params = self.model.parameters("")?;
            for p in params.iter_mut() {
                *p.grad = crate::ops::elementwise::elementwise_add(p.grad, p.grad, 1.0 / state.scale, 0.0)?;
            }
            let grads: Vec<&Tensor> = params.iter().map(|p| &*p.grad).collect();
            let found_inf = !dry && reduce_sum_squares(&grads)?.iter().any(|v| !v.is_finite());
            drop(params);
            if !dry {
                self.loss_scale.as_mut().expect("checked above").after_step(&cfg, found_inf);
            }
            if found_inf {
                // Skipped: no update, no optimiser state; the batch still counts.
                self.model.zero_grad();
                self.step += 1;
                return Ok(());
            }
        }
        let (l1, l2) = (self.config.l1, self.config.l2);
        if l1 > 0.0 || l2 > 0.0 || self.config.clip_grad_norm.is_some() {
            let mut params = self.model.parameters("")?;
            for p in params.iter_mut() {
                if l2 > 0.0 {
                    elementwise_combine(p.grad, p.value, l2, 1.0)?;
                }
                if l1 > 0.0 {
                    elementwise_combine_sign(p.grad, p.value, l1, 1.0)?;
                }
            }
            if let Some(max) = self.config.clip_grad_norm {
                let mut grads: Vec<&mut Tensor> = params.into_iter().map(|p| p.grad).collect();
                clip_global_norm(&mut grads, max)?;
            }
        }
        if self.config.check_gradients {
            let params = self.model.parameters("")?;
            let grads: Vec<&Tensor> = params.iter().map(|p| &*p.grad).collect();
            let norms = reduce_sum_squares(&grads)?;
            if let Some(i) = norms.iter().position(|v| !v.is_finite()).filter(|_| !dry) {
                return Err(Error::NonFinite {
                    what: format!("the gradient of `{}` (squared norm {})", params[i].name, norms[i]),
                    epoch: self.epoch + 1,
                    step: self.step + 1,
                });
            }
        }
        match gate {
            Some(ctx) => ctx.gated(|| self.optimizer.step(&mut self.model))?,
            None => self.optimizer.step(&mut self.model)?,
        }
        if let Device::Gpu(ctx) = &self.device {
            ctx.flush()?;
        }
        if !dry {
            self.step += 1;
        }
        Ok(())
    }

    /// One pass over `data` (the rest of it, after an interruption); returns
    /// (mean batch loss, images per second). With a [`StopFlag`] set, stops
    /// after the current step with [`Error::Interrupted`].
    pub fn train_epoch(&mut self, data: &Dataset) -> Result<(f32, f64)> {
        let epoch_seed = self.config.seed.wrapping_add(self.epoch as u64);
        let mut batches = data.batches(self.config.batch_size, Some(epoch_seed));
        let skip = self.epoch_step.min(batches.len());
        batches.drain(..skip);
        let mut progress = Progress::new(self.config.progress, batches.len(), self.epoch + 1, self.config.epochs, data.len());
        let start = Instant::now();
        // Each step's loss goes into its slot of a device-side window, read back
        // when full (every log_every steps) or at the end of the epoch: the
        // first non-finite entry names the exact step.
        let window_len = if self.config.log_every > 0 { self.config.log_every } else { batches.len() }.clamp(1, batches.len().max(1));
        let mut window = Tensor::zeros(&self.device, &[window_len])?;
        let (mut sum, mut filled, mut first_step) = (0f64, 0usize, self.step);
        // The window's logits stay on the device too, read back with the losses
        // (training accuracy without a readback per step).
        let mut logit_window: Option<(Tensor, usize)> = None;
        let mut window_labels: Vec<i64> = Vec::new();
        let (mut step_losses, mut seen, mut right) = (Vec::with_capacity(batches.len()), 0usize, 0usize);
        let [c, h, w] = data.item_shape;
        let augment = self.config.augment;
        let (workers, ahead) = (self.config.loader_workers, self.config.prefetch);
        let per_epoch = data.len().div_ceil(self.config.batch_size.max(1));
        let total_steps = per_epoch * self.config.epochs;
        prefetch(data, &batches, augment.as_ref(), epoch_seed ^ 0x5eed, workers, ahead, |i, images, labels| {
            if self.config.schedule.per_step() {
                let at = self.epoch * per_epoch + self.epoch_step;
                let lr = self.config.schedule.lr_at_step(self.optimizer.base_lr, at, total_steps) * self.plateau.scale;
                self.optimizer.set_lr(lr)?;
            }
            let x = Tensor::from_vec(&self.device, &[labels.len(), c, h, w], images)?;
            let loss = self.train_step(&x, &labels)?;
            self.epoch_step += 1;
            window.set_from(filled, &loss)?;
            if let Some(logits) = self.last_logits.take() {
                let classes = logits.shape()[1];
                let (lw, _) = match &mut logit_window {
                    Some(t) => t,
                    None => logit_window.insert((Tensor::zeros(&self.device, &[window_len * self.config.batch_size.max(labels.len()) * classes])?, classes)),
                };
                lw.set_from(window_labels.len() * classes, &logits.reshape(&[labels.len() * classes])?)?;
                window_labels.extend_from_slice(&labels);
            }
            filled += 1;
            progress.step(labels.len());
            let stopping = self.stop.as_ref().is_some_and(StopFlag::is_set);
            if filled == window_len || i + 1 == batches.len() || stopping {
                let losses = window.to_vec()?;
                if let Some(j) = losses[..filled].iter().position(|v| !v.is_finite()) {
                    progress.bar.abandon();
                    return Err(Error::NonFinite { what: format!("the loss ({})", losses[j]), epoch: self.epoch + 1, step: first_step + j as u64 + 1 });
                }
                sum += losses[..filled].iter().map(|&v| v as f64).sum::<f64>();
                step_losses.extend_from_slice(&losses[..filled]);
                if let Some((lw, classes)) = &logit_window {
                    let (all, classes) = (lw.to_vec()?, *classes);
                    for (r, &l) in window_labels.iter().enumerate() {
                        let row = &all[r * classes..(r + 1) * classes];
                        right += (argmax(row) as i64 == l) as usize;
                    }
                    seen += window_labels.len();
                    window_labels.clear();
                }
                progress.loss = Some(sum / (i + 1) as f64);
                (filled, first_step) = (0, self.step);
            }
            if stopping {
                progress.bar.abandon();
                return Err(Error::Interrupted { epoch: self.epoch + 1, epoch_step: self.epoch_step, step: self.step });
            }
            Ok(())
        })?;
        self.epoch_step = 0;
        self.last_epoch = (step_losses, (seen > 0).then(|| right as f32 / seen as f32));
        let mean = (sum / batches.len().max(1) as f64) as f32;
        progress.bar.finish_and_clear();
        let secs = start.elapsed().as_secs_f64();
        self.epoch += 1;
        Ok((mean, data.len() as f64 / secs))
    }

    /// Loss and accuracy in eval mode (logits are read back per batch).
    pub fn evaluate(&mut self, data: &Dataset) -> Result<Metrics> {
        let batch = self.eval_batch_size();
        for n in batch_sizes(data.len(), batch) {
            let item = data.item_shape;
            self.prepare_shape(&[n, item[0], item[1], item[2]], false)?;
        }
        evaluate_with(&mut self.model, &self.device, data, batch, self.config.progress)
    }

    /// Trains for `config.epochs` epochs (from the current one), evaluating
    /// on `val` after each; `hook` sees every epoch and may stop the run.
    pub fn fit(&mut self, train: &Dataset, val: Option<&Dataset>, hook: impl FnMut(&EpochStats) -> Control) -> Result<Vec<EpochStats>> {
        self.fit_until(train, val, self.config.epochs, hook)
    }

    /// [`Trainer::fit`] up to epoch `until` (of `config.epochs`, which the
    /// schedules span): run one epoch at a time to checkpoint between them.
    pub fn fit_until(&mut self, train: &Dataset, val: Option<&Dataset>, until: usize, mut hook: impl FnMut(&EpochStats) -> Control) -> Result<Vec<EpochStats>> {
        let mut history = Vec::new();
        let until = until.min(self.config.epochs);
        if self.epoch < until {
            self.prepare(train, val)?;
        }
        while self.epoch < until && !self.stopped_early {
            let lr = if self.config.schedule.per_step() {
                self.optimizer.lr()
            } else {
                self.config.schedule.lr(self.optimizer.base_lr, self.epoch, self.config.epochs, self.config.warmup_epochs) * self.plateau.scale
            };
            self.optimizer.set_lr(lr)?;
            let t0 = Instant::now();
            let gpu_before = self.profiled_ms()?;
            let (train_loss, ips) = self.train_epoch(train)?;
            self.train_gpu_ms += self.profiled_ms()? - gpu_before;
            let metrics = val.map(|v| self.evaluate(v)).transpose()?;
            let stats = EpochStats {
                epoch: self.epoch,
                lr,
                train_loss,
                train_accuracy: self.last_epoch.1,
                step_losses: std::mem::take(&mut self.last_epoch.0),
                val_loss: metrics.as_ref().map(|m| m.loss),
                val_accuracy: metrics.as_ref().map(|m| m.accuracy),
                images_per_sec: ips,
                seconds: t0.elapsed().as_secs_f64(),
            };
            let stop = hook(&stats) == Control::Stop;
            history.push(stats);
            if let (Some(p), Some(m)) = (self.config.reduce_on_plateau, &metrics) {
                if self.plateau.observe(&p, m.loss, self.optimizer.lr()) {
                    log::info!("validation loss has not improved for {} epochs: learning rate × {}", p.patience + 1, p.factor);
                }
            }
            if let (Some(patience), Some(m)) = (self.config.early_stopping_patience, &metrics) {
                if self.best.as_ref().is_none_or(|(b, _)| m.accuracy > *b) {
                    let snapshot = if self.config.restore_best { crate::nn::state_values(&mut self.model)? } else { Vec::new() };
                    (self.best, self.since_best) = (Some((m.accuracy, snapshot)), 0);
                } else {
                    self.since_best += 1;
                    if self.since_best >= patience {
                        log::info!("early stopping: no improvement for {patience} epochs");
                        self.stopped_early = true;
                        if self.config.restore_best {
                            if let Some((acc, values)) = self.best.take() {
                                crate::nn::write_state_values(&mut self.model, &values)?;
                                log::info!("restored the weights of the best epoch (validation accuracy {acc})");
                            }
                        }
                        break;
                    }
                }
            }
            if stop {
                break;
            }
        }
        Ok(history)
    }

    /// The profiler's total so far (0 without profiling), after the work recorded so far.
    fn profiled_ms(&self) -> Result<f64> {
        let Device::Gpu(ctx) = &self.device else { return Ok(0.0) };
        if !ctx.is_profiling() {
            return Ok(0.0); // no submit just to read nothing
        }
        ctx.flush()?;
        Ok(ctx.profile_report().map_or(0.0, |r| r.total_ms))
    }
}

/// An epoch's progress: a bar on a terminal (`epoch 3/10`, images/s, the
/// loss so far, the epoch's and the whole run's ETA), else a plain line on
/// stderr every 10 seconds so piped output shows progress too.
struct Progress {
    bar: ProgressBar,
    plain: bool,
    last_line: Instant,
    start: Instant,
    images: usize,
    done: usize,
    total: usize,
    epoch: usize,
    epochs: usize,
    epoch_images: usize,
    loss: Option<f64>,
}

impl Progress {
    fn new(on: bool, batches: usize, epoch: usize, epochs: usize, epoch_images: usize) -> Progress {
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        let bar = if on && terminal { ProgressBar::new(batches as u64) } else { ProgressBar::hidden() };
        bar.set_style(ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} batches, epoch eta {eta}").unwrap().progress_chars("=> "));
        let now = Instant::now();
        let p = Progress { bar, plain: on && !terminal, last_line: now, start: now, images: 0, done: 0, total: batches, epoch, epochs: epochs.max(epoch), epoch_images, loss: None };
        p.bar.set_message(p.message());
        p
    }

    fn message(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let ips = self.images as f64 / secs;
        let mut m = format!("epoch {}/{}", self.epoch, self.epochs);
        if let Some(l) = self.loss {
            m += &format!(" loss {l:.4}");
        }
        if self.images > 0 {
            m += &format!(", {ips:.0} images/s");
            // The rest of this epoch and every later one at this speed.
            let left = (self.total - self.done) as f64 / self.done.max(1) as f64 * secs + (self.epochs - self.epoch) as f64 * self.epoch_images as f64 / ips;
            m += &format!(", run eta {}", indicatif::HumanDuration(std::time::Duration::from_secs_f64(left)));
        }
        m
    }

    fn step(&mut self, images: usize) {
        self.images += images;
        self.done += 1;
        self.bar.set_message(self.message());
        self.bar.inc(1);
        if self.plain && self.last_line.elapsed().as_secs() >= 10 {
            eprintln!("{} ({}/{} batches)", self.message(), self.done, self.total);
            self.last_line = Instant::now();
        }
    }
}

/// The distinct batch sizes of `len` items in batches of `batch`: the full
/// one and the remainder.
fn batch_sizes(len: usize, batch: usize) -> Vec<usize> {
    let batch = batch.max(1);
    let mut v = Vec::new();
    if len >= batch {
        v.push(batch);
    }
    if len % batch != 0 {
        v.push(len % batch);
    }
    v
}

/// Loss and accuracy of `model` on `data` in eval mode, in batches of
/// `batch_size`, with a progress bar on a terminal.
pub fn evaluate(model: &mut Sequential, device: &Device, data: &Dataset, batch_size: usize) -> Result<Metrics> {
    evaluate_with(model, device, data, batch_size, true)
}

fn evaluate_with(model: &mut Sequential, device: &Device, data: &Dataset, batch_size: usize, progress: bool) -> Result<Metrics> {
    let (mut loss, mut correct) = (0f64, 0usize);
    let batches = data.batches(batch_size, None);
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if progress && terminal { ProgressBar::new(batches.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("evaluating [{bar:30}] {pos}/{len} batches, {per_sec}, eta {eta}").unwrap().progress_chars("=> "));
    let mut confusion: Vec<Vec<u64>> = Vec::new();
    let mut in_top5 = 0usize;
    for idx in batches {
        bar.inc(1);
        let (x, labels) = data.batch(device, &idx, None)?;
        let logits = model.forward(&x, Mode::Eval)?;
        let c = logits.shape()[1];
        if confusion.is_empty() {
            confusion = vec![vec![0; c]; c];
        }
        let logp = softmax_xent_probs_cpu(&logits.to_vec()?, idx.len(), c, true);
        for (r, &l) in labels.iter().enumerate() {
            let row = &logp[r * c..(r + 1) * c];
            if l < 0 || l as usize >= c {
                return Err(Error::InvalidArgument { op: "evaluate", msg: format!("label {l} is out of range for the model's {c} classes") });
            }
            loss -= row[l as usize] as f64;
            let predicted = argmax(row);
            correct += (predicted == l as usize) as usize;
            confusion[l as usize][predicted] += 1;
            // In the top 5: fewer than 5 classes score higher (ties to the lower index).
            let above = row.iter().enumerate().filter(|&(j, &v)| v > row[l as usize] || (v == row[l as usize] && j < l as usize)).count();
            in_top5 += (above < 5) as usize;
        }
    }
    bar.finish_and_clear();
    let n = data.len().max(1) as f64;
    let top5 = (confusion.len() > 5).then(|| (in_top5 as f64 / n) as f32);
    Ok(Metrics { loss: (loss / n) as f32, accuracy: (correct as f64 / n) as f32, top5, confusion })
}

/// Class predictions (argmax of the logits) for a batch of images; with
/// `tta`, the softmax is averaged over flips and shifted crops first.
pub fn predict(model: &mut Sequential, x: &Tensor, tta: bool) -> Result<Vec<usize>> {
    let probs = predict_proba_views(model, x, if tta { Tta::Default } else { Tta::None })?;
    Ok(probs.iter().map(|p| argmax(p)).collect())
}

/// Which views of a batch to average predictions over (test-time augmentation).
#[derive(Clone, Debug, PartialEq)]
pub enum Tta {
    /// The images as given.
    None,
    /// The original, its horizontal flip, and four crops shifted by 2 pixels.
    Default,
    /// These views, in this order.
    Views(Vec<crate::data::View>),
}

/// Softmax probabilities `[n][classes]` for a batch of images in eval mode.
pub fn predict_proba(model: &mut Sequential, x: &Tensor) -> Result<Vec<Vec<f32>>> {
    predict_proba_views(model, x, Tta::None)
}

/// [`predict_proba`] averaged over the views `tta` names.
pub fn predict_proba_views(model: &mut Sequential, x: &Tensor, tta: Tta) -> Result<Vec<Vec<f32>>> {
    use crate::data::View;
    let shape = x.shape().to_vec();
    if shape.len() != 4 {
        return crate::error::shape_err("predict", format!("expects a batch [n, c, h, w], got {shape:?}"));
    }
    let (n, item) = (shape[0], [shape[1], shape[2], shape[3]]);
    let views = match tta {
        Tta::None => vec![View::Identity],
        Tta::Default => View::default_tta(2),
        Tta::Views(v) if v.is_empty() => return Err(Error::InvalidArgument { op: "predict", msg: "the list of test-time views is empty".into() }),
        Tta::Views(v) => v,
    };
    let host = if views == [View::Identity] { Vec::new() } else { x.to_vec()? };
    let mut probs: Vec<f32> = Vec::new();
    for view in &views {
        let input = if *view == View::Identity { x.clone() } else { Tensor::from_vec(&x.device(), &shape, view.apply(&host, item))? };
        let logits = model.forward(&input, Mode::Eval)?;
        let c = logits.shape()[1];
        let p = softmax_xent_probs_cpu(&logits.to_vec()?, n, c, false);
        if probs.is_empty() {
            probs = p;
        } else {
            probs.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
    }
    let scale = 1.0 / views.len() as f32;
    let c = probs.len() / n;
    Ok(probs.chunks(c).map(|row| row.iter().map(|p| p * scale).collect()).collect())
}

/// The index of the largest value (the first of ties).
fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best })
}

/// The `k` most likely classes of one row of probabilities, most likely
/// first, as (class, probability); ties go to the lower class index.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.into_iter().take(k).map(|i| (i, probs[i])).collect()
}
