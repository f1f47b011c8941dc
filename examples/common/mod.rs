//! What the examples share: the `--device` choice and how it picks a device.
#![allow(dead_code)]

use clap::ValueEnum;
use wgpu_cnn::{Device, GpuOptions};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    /// A hardware GPU if there is one, otherwise the CPU path (never lavapipe).
    Auto,
    /// The best GPU adapter, software ones (lavapipe) included.
    Gpu,
    /// The CPU path (tuned kernels).
    Cpu,
}

/// Opens the device `arg` asks for (`profile`: GPU timestamp queries on).
pub fn open_device(arg: DeviceArg, profile: bool) -> wgpu_cnn::Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Gpu => Device::gpu_with(&GpuOptions { profile, ..GpuOptions::default() })?,
        DeviceArg::Auto => match Device::gpu_with(&GpuOptions { allow_software: false, profile, ..GpuOptions::default() }) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("no hardware GPU ({e}); using the CPU path. Pass --device gpu to use a software adapter.");
                Device::Cpu
            }
        },
    })
}

/// Logging from RUST_LOG (default: warnings), then `run`; an error prints
/// one line and exits 1.
pub fn main_with<A>(args: A, run: impl FnOnce(A) -> wgpu_cnn::Result<()>) -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- image options

/// How images are read: side and colour (`train_images`, `classify`).
#[derive(clap::Args, Debug, Clone)]
pub struct ImageArgs {
    /// Side of the square input (default: the images' own size, or the weights file's).
    #[arg(long)]
    pub size: Option<usize>,
    /// Read the images as grayscale (default: grayscale when every image is, or the file's).
    #[arg(long, conflicts_with = "rgb")]
    pub grayscale: bool,
    /// Read the images as RGB.
    #[arg(long)]
    pub rgb: bool,
    /// Resize the shorter side to this, then centre-crop --size (torchvision's Resize + CenterCrop).
    #[arg(long)]
    pub resize: Option<usize>,
    /// Per-channel mean, comma-separated (default: from the weights file, or from the training images).
    #[arg(long, value_delimiter = ',')]
    pub mean: Vec<f32>,
    /// Per-channel standard deviation, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub std: Vec<f32>,
    /// torchvision's preprocessing for ImageNet-pretrained weights: --size 224
    /// --resize 256 --rgb and ImageNet's mean and std.
    #[arg(long, conflicts_with_all = ["size", "resize", "mean", "std", "grayscale"])]
    pub imagenet: bool,
}

impl ImageArgs {
    /// `--imagenet` spelled out into the options it stands for.
    pub fn resolved(&self) -> ImageArgs {
        use wgpu_cnn::data::folder::{IMAGENET_MEAN, IMAGENET_STD};
        if !self.imagenet {
            return self.clone();
        }
        ImageArgs { size: Some(224), resize: Some(256), rgb: true, mean: IMAGENET_MEAN.to_vec(), std: IMAGENET_STD.to_vec(), ..self.clone() }
    }

    /// The colour these options ask for.
    pub fn color(&self) -> wgpu_cnn::data::folder::Color {
        use wgpu_cnn::data::folder::Color;
        if self.grayscale {
            Color::Gray
        } else if self.rgb {
            Color::Rgb
        } else {
            Color::Auto
        }
    }
}

// ---------------------------------------------------------------- the training examples' options

use std::path::PathBuf;

use wgpu_cnn::data::Dataset;
use wgpu_cnn::nn::Sequential;
use wgpu_cnn::ops::optim::{AdamConfig, SgdConfig};
use wgpu_cnn::ops::softmax_xent::CrossEntropyConfig;
use wgpu_cnn::nn::Layer;
use wgpu_cnn::optim::{LrSchedule, Optimizer, OptimizerConfig, ParamGroup, Plateau};
use wgpu_cnn::train::{EpochStats, StopFlag, TrainConfig, Trainer};
use wgpu_cnn::Error;

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum OptArg {
    /// SGD with momentum 0.9.
    Sgd,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    /// ×0.1 every third of the run.
    Step,
    /// Cosine to 0 over the run, per epoch.
    Cosine,
    /// Per step: cosine annealing to 0 over every step of the run.
    WarmupCosine,
    /// Per step: one-cycle with --lr as the peak.
    OneCycle,
    /// ×0.1 when the test loss has not improved for 2 epochs.
    Plateau,
}

/// What each training example defaults to.
pub struct Defaults {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptArg,
    pub schedule: ScheduleArg,
}

/// The options every training example shares.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Total epochs, counting those a resumed checkpoint already did.
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (default: SGD 0.01 with momentum 0.9, Adam/AdamW 1e-3).
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, value_enum)]
    pub optimizer: Option<OptArg>,
    /// Weight decay (default: 0, AdamW 0.01).
    #[arg(long)]
    pub weight_decay: Option<f32>,
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Linear warm-up epochs before a per-epoch schedule.
    #[arg(long, default_value_t = 0)]
    pub warmup_epochs: usize,
    /// Cross-entropy label smoothing in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Clip the global gradient norm to this.
    #[arg(long)]
    pub clip_grad_norm: Option<f32>,
    /// Gradient accumulation: run each batch as N micro-batches (less device
    /// memory), with one update per batch.
    #[arg(long, default_value_t = 1)]
    pub accumulate: usize,
    /// Dynamic loss scaling (PyTorch's GradScaler defaults): a step whose
    /// gradients are not finite is skipped and the scale halved, instead of
    /// stopping the run.
    #[arg(long)]
    pub loss_scale: bool,
    /// f32, or mixed: activations kept for backward stored in f16 (half
    /// their memory; arithmetic, gradients and the optimiser stay f32).
    #[arg(long, default_value = "f32")]
    pub precision: wgpu_cnn::nn::Precision,
    /// Add l1·sign(w) to every gradient.
    #[arg(long, default_value_t = 0.0)]
    pub l1: f32,
    /// Add l2·w to every gradient.
    #[arg(long, default_value_t = 0.0)]
    pub l2: f32,
    /// Stop when test accuracy has not improved for this many epochs (the best weights are kept).
    #[arg(long)]
    pub early_stopping: Option<usize>,
    /// Also report test accuracy with test-time augmentation (flips and shifts).
    #[arg(long)]
    pub tta: bool,
    /// Save a checkpoint here after every epoch (and on Ctrl-C).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Resume from this checkpoint.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write training curves here (.svg or .png).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the per-epoch history here (.csv, else JSON).
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Data-parallel replicas in this process, one device each (several devices
    /// on one adapter when there is one GPU); each batch is split across them.
    /// Under `mpirun` (built with `--features mpi`) each process is one replica instead.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Train on the first N training images only.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub tune: FineTuneArgs,
    /// What the held-out split is called in the output ("test", or "val"
    /// for an image folder's validation split).
    #[arg(skip = String::from("test"))]
    pub held_out: String,
}

/// Fine-tuning: start from weights, freeze, give the backbone its own rate.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FineTuneArgs {
    /// Start from these weights (ours or a PyTorch state_dict in safetensors);
    /// a head with another class count is replaced by a fresh one.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Freeze the parameters under these state_dict names (comma-separated prefixes).
    #[arg(long, value_delimiter = ',')]
    pub freeze: Vec<String>,
    /// Freeze everything but the model's head (its last layer with parameters).
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Train with the freezing above for N epochs, then everything (fastai's fine_tune).
    #[arg(long)]
    pub unfreeze_after: Option<usize>,
    /// The backbone's (everything but the head's) learning rate is the rate times this.
    #[arg(long)]
    pub backbone_lr_mult: Option<f32>,
    /// No weight decay on biases and normalisation parameters.
    #[arg(long)]
    pub no_decay_on_norm_and_bias: bool,
}

impl FineTuneArgs {
    /// Loads `--weights`, freezes, and sets parameter groups on `t`.
    pub fn apply(&self, t: &mut Trainer) -> wgpu_cnn::Result<()> {
        if let Some(path) = &self.weights {
            let (_, replaced) = wgpu_cnn::weights::load_weights_finetune(path, &mut t.model)?;
            println!("weights: {}{}", path.display(), replaced.map_or(String::new(), |r| format!(" ({r})")));
        }
        let head = wgpu_cnn::nn::head_prefix(&mut t.model).unwrap_or_default();
        if self.freeze_backbone {
            wgpu_cnn::nn::freeze_backbone(&mut t.model)?;
        }
        if !self.freeze.is_empty() {
            t.model.freeze(&self.freeze.iter().map(String::as_str).collect::<Vec<_>>())?;
        }
        let frozen = t.model.frozen_names().len();
        if frozen > 0 {
            println!("frozen: {frozen} parameter tensors ({} of {} scalars train)", t.model.trainable_count(), t.model.param_count());
        }
        match self.unfreeze_after {
            Some(0) => return Err(Error::InvalidArgument { op: "--unfreeze-after", msg: "0 epochs frozen is no freezing: leave out --freeze-backbone / --freeze instead".into() }),
            Some(n) if n >= t.config.epochs => {
                return Err(Error::InvalidArgument { op: "--unfreeze-after", msg: format!("{n} is not below --epochs {}: nothing would train unfrozen", t.config.epochs) });
            }
            Some(_) if frozen == 0 => return Err(Error::InvalidArgument { op: "--unfreeze-after", msg: "nothing is frozen (add --freeze-backbone or --freeze)".into() }),
            _ => {}
        }
        let mut groups = Vec::new();
        if let Some(m) = self.backbone_lr_mult {
            if head.is_empty() {
                return Err(Error::InvalidArgument { op: "--backbone-lr-mult", msg: "the model has no head apart from its backbone".into() });
            }
            groups.push(ParamGroup::except(&[&head], m));
        }
        if self.no_decay_on_norm_and_bias {
            groups.push(ParamGroup::no_decay_on_norm_and_bias());
        }
        if !groups.is_empty() {
            let fresh = Optimizer::new(t.optimizer.config)?;
            t.optimizer = std::mem::replace(&mut t.optimizer, fresh).with_groups(groups)?;
        }
        Ok(())
    }

    /// The data-parallel trainers build their replicas afresh: they do not
    /// take these options yet, so asking for both is an error, not a silent drop.
    pub fn single_device(&self, how: &str) -> wgpu_cnn::Result<()> {
        let used = self.weights.is_some() || !self.freeze.is_empty() || self.freeze_backbone || self.backbone_lr_mult.is_some() || self.no_decay_on_norm_and_bias;
        if used {
            return Err(Error::InvalidArgument { op: "fine-tuning", msg: format!("--weights, --freeze, --freeze-backbone, --backbone-lr-mult and --no-decay-on-norm-and-bias train on one device; they are not supported {how}") });
        }
        Ok(())
    }

    /// After epoch `epoch` (1-based): unfreezes everything at `--unfreeze-after`.
    pub fn after_epoch(&self, t: &mut Trainer, epoch: usize) -> wgpu_cnn::Result<()> {
        if self.unfreeze_after == Some(epoch) {
            let n = t.model.unfreeze(&[])?;
            println!("unfrozen after epoch {epoch}: all {n} parameter tensors train from here");
        }
        Ok(())
    }
}

impl TrainArgs {
    /// The training set cut to `--limit`; a limit of 0 is an error, not a silent no-op.
    pub fn limit(&self, train: Dataset) -> wgpu_cnn::Result<Dataset> {
        match self.limit {
            Some(0) => Err(Error::InvalidArgument { op: "--limit", msg: "0 images leaves nothing to train on".into() }),
            Some(n) => Ok(train.take(n)),
            None => Ok(train),
        }
    }

    /// The optimiser and configuration these options and `d` give.
    pub fn trainer(&self, d: &Defaults, model: Sequential, device: wgpu_cnn::Device) -> wgpu_cnn::Result<Trainer> {
        let opt = self.optimizer.unwrap_or(d.optimizer);
        let lr = self.lr.unwrap_or(if opt == OptArg::Sgd { 0.01 } else { 1e-3 });
        let config = match opt {
            OptArg::Sgd => OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, weight_decay: self.weight_decay.unwrap_or(0.0), ..SgdConfig::new(lr) }),
            OptArg::Adam => OptimizerConfig::Adam(AdamConfig { weight_decay: self.weight_decay.unwrap_or(0.0), ..AdamConfig::adam(lr) }),
            OptArg::Adamw => OptimizerConfig::Adam(AdamConfig { weight_decay: self.weight_decay.unwrap_or(0.01), ..AdamConfig::adamw(lr) }),
        };
        let epochs = self.epochs.unwrap_or(d.epochs);
        let batch_size = self.batch_size.unwrap_or(d.batch_size);
        let (schedule, plateau) = match self.schedule.unwrap_or(d.schedule) {
            ScheduleArg::Constant => (LrSchedule::Constant, None),
            ScheduleArg::Step => (LrSchedule::Step { every: (epochs / 3).max(1), gamma: 0.1 }, None),
            ScheduleArg::Cosine => (LrSchedule::Cosine { min_lr: 0.0 }, None),
            ScheduleArg::WarmupCosine => (LrSchedule::WarmupCosine { warmup_steps: 0, min_lr: 0.0 }, None),
            ScheduleArg::OneCycle => (LrSchedule::one_cycle(lr), None),
            ScheduleArg::Plateau => (LrSchedule::Constant, Some(Plateau { patience: 2, ..Plateau::new() })),
        };
        let cfg = TrainConfig {
            epochs,
            batch_size,
            seed: self.seed,
            schedule,
            warmup_epochs: self.warmup_epochs,
            clip_grad_norm: self.clip_grad_norm,
            l1: self.l1,
            l2: self.l2,
            early_stopping_patience: self.early_stopping,
            reduce_on_plateau: plateau,
            loss: CrossEntropyConfig { label_smoothing: self.label_smoothing, ..CrossEntropyConfig::default() },
            accumulate_steps: self.accumulate,
            loss_scale: self.loss_scale.then(wgpu_cnn::train::LossScale::default),
            precision: self.precision,
            ..TrainConfig::default()
        };
        let mut t = Trainer::new(model, Optimizer::new(config)?, cfg, device)?;
        self.tune.apply(&mut t)?;
        Ok(t)
    }

    /// Checks the output paths before any training.
    pub fn check_paths(&self) -> wgpu_cnn::Result<()> {
        for path in [&self.checkpoint, &self.plot, &self.history].into_iter().flatten() {
            wgpu_cnn::checkpoint::check_writable(path)?;
        }
        Ok(())
    }
}

/// The command line that resumes this run from `checkpoint`.
fn resume_command(checkpoint: &std::path::Path) -> String {
    let mut args: Vec<String> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--resume" {
            it.next();
        } else if !a.starts_with("--resume=") {
            args.push(a);
        }
    }
    let example = std::env::args().next().and_then(|p| std::path::Path::new(&p).file_stem().map(|s| s.to_string_lossy().into_owned())).unwrap_or_default();
    format!("cargo run --release --example {example} -- {} --resume {}", args.join(" "), checkpoint.display())
}

/// Trains `t` (after `--resume`) to `--epochs`, printing each epoch, saving
/// the checkpoint after each, the plot and history at the end; evaluates on
/// `test` after each epoch and prints the confusion matrix (≤ 20 classes) at
/// the end. Ctrl-C finishes the step, saves everything asked for, prints the
/// command that resumes, and exits with 130.
pub fn run_training(args: &TrainArgs, t: &mut Trainer, train: &Dataset, test: Option<&Dataset>, class_names: &[String]) -> wgpu_cnn::Result<Vec<EpochStats>> {
    args.check_paths()?;
    if let Some(path) = &args.resume {
        wgpu_cnn::checkpoint::load(path, t)?;
        println!("resumed from {} at epoch {} ({} batches into the next), step {}", path.display(), t.epoch, t.epoch_step, t.step);
    }
    let epochs = t.config.epochs;
    if epochs == 0 {
        return Err(Error::InvalidArgument { op: "--epochs", msg: "0 epochs: nothing to do".into() });
    }
    if t.epoch >= epochs {
        return Err(Error::InvalidArgument {
            op: "--epochs",
            msg: format!("nothing to do: the checkpoint has finished {} epochs and --epochs is {epochs} (it counts the resumed epochs: raise it to train more)", t.epoch),
        });
    }
    t.stop = Some(StopFlag::on_ctrl_c()?);
    let mut history: Vec<EpochStats> = Vec::new();
    let finish = |t: &mut Trainer, history: &[EpochStats]| -> wgpu_cnn::Result<()> {
        if let Some(path) = &args.checkpoint {
            wgpu_cnn::checkpoint::save(path, t)?;
        }
        if let Some(path) = &args.plot {
            wgpu_cnn::plot::training_curves(path, history)?;
            println!("curves written to {}", path.display());
        }
        if let Some(path) = &args.history {
            wgpu_cnn::plot::write_history(path, history)?;
            println!("history written to {}", path.display());
        }
        Ok(())
    };
    while t.epoch < epochs {
        let r = t.fit_until(train, test, t.epoch + 1, |s| {
            let test_part = match (s.val_loss, s.val_accuracy) {
                (Some(l), Some(a)) => format!("  {ho} loss {l:.4}  {ho} accuracy {:.2}%", 100.0 * a, ho = args.held_out),
                _ => String::new(),
            };
            let train_acc = s.train_accuracy.map_or(String::new(), |a| format!("  train accuracy {:.2}%", 100.0 * a));
            println!("epoch {:>3}/{epochs}  lr {:.5}  train loss {:.4}{train_acc}{test_part}  {:.0} images/s  ({:.1} s)", s.epoch, s.lr, s.train_loss, s.images_per_sec, s.seconds);
            wgpu_cnn::train::Control::Continue
        });
        match r {
            Ok(h) => history.extend(h),
            Err(Error::Interrupted { epoch, epoch_step, step }) => {
                println!("\ninterrupted in epoch {epoch} after {epoch_step} of its batches (step {step})");
                finish(t, &history)?;
                match &args.checkpoint {
                    Some(path) => println!("checkpoint written to {}; resume with:\n  {}", path.display(), resume_command(path)),
                    None => println!("no checkpoint was asked for (--checkpoint PATH saves one, also on Ctrl-C)"),
                }
                std::process::exit(130);
            }
            Err(e) => return Err(e),
        }
        args.tune.after_epoch(t, t.epoch)?;
        if let Some(path) = &args.checkpoint {
            wgpu_cnn::checkpoint::save(path, t)?;
        }
        if t.stopped_early {
            println!("early stopping: {} accuracy has not improved for {} epochs; the best epoch's weights are kept", args.held_out, args.early_stopping.unwrap_or(0));
            break;
        }
    }
    finish(t, &history)?;
    if let Some(test) = test {
        let m = t.evaluate(test)?;
        if m.confusion.len() <= 20 {
            println!("\nconfusion matrix on the {} set (rows: label, columns: predicted):\n{}", args.held_out, m.confusion_table(class_names));
        }
        if let Some(path) = &args.history {
            // Beside the history: one CSV row per label, one column per prediction.
            let path = path.with_extension("confusion.csv");
            let mut csv = String::from("label");
            for j in 0..m.confusion.len() {
                csv += &format!(",{}", class_names.get(j).cloned().unwrap_or_else(|| j.to_string()));
            }
            for (i, row) in m.confusion.iter().enumerate() {
                csv += &format!("\n{}", class_names.get(i).cloned().unwrap_or_else(|| i.to_string()));
                for v in row {
                    csv += &format!(",{v}");
                }
            }
            wgpu_cnn::checkpoint::write_atomic(&path, (csv + "\n").as_bytes())?;
            println!("confusion matrix written to {}", path.display());
        }
        if let Some(top5) = m.top5 {
            println!("{} top-5 accuracy {:.2}%", args.held_out, 100.0 * top5);
        }
        if args.tta {
            let (mut right, mut n) = (0usize, 0usize);
            for idx in test.batches(256, None) {
                let (x, labels) = test.batch(&t.device, &idx, None)?;
                let pred = wgpu_cnn::train::predict(&mut t.model, &x, true)?;
                right += pred.iter().zip(&labels).filter(|(p, l)| **p as i64 == **l).count();
                n += labels.len();
            }
            println!("{} accuracy with test-time augmentation {:.2}% (without {:.2}%)", args.held_out, 100.0 * right as f64 / n.max(1) as f64, 100.0 * m.accuracy);
        }
    }
    Ok(history)
}

/// Data-parallel training when asked for: `--devices N` (N > 1) trains N
/// replicas in this process; a launch by `mpirun` (with the `mpi` feature)
/// trains one replica per process, rank 0 printing and checkpointing. Returns
/// false when neither applies (train with [`run_training`]); afterwards `t`
/// holds the trained model (replica 0's or this rank's).
pub fn run_parallel(
    args: &TrainArgs,
    t: &mut Trainer,
    build: &dyn Fn(&wgpu_cnn::Device, u64) -> wgpu_cnn::Result<Sequential>,
    device: &wgpu_cnn::Device,
    train: &Dataset,
    test: Option<&Dataset>,
) -> wgpu_cnn::Result<bool> {
    #[cfg(feature = "mpi")]
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some() || std::env::var_os("PMI_SIZE").is_some() {
        args.tune.single_device("under mpirun")?;
        let universe = mpi::initialize().ok_or_else(|| Error::InvalidArgument { op: "mpi", msg: "MPI was already initialised".into() })?;
        let replica = Trainer::new(build(device, args.seed)?, Optimizer::new(t.optimizer.config)?, TrainConfig { progress: false, ..t.config.clone() }, device.clone())?;
        let mut d = wgpu_cnn::parallel::Distributed::new(universe.world(), replica)?;
        if d.rank() == 0 {
            println!("{} MPI ranks", d.size());
        }
        while d.trainer.epoch < d.trainer.config.epochs {
            let t0 = std::time::Instant::now();
            let loss = match d.train_epoch(train) {
                Ok(l) => l,
                Err(e) => d.abort(&e, 1),
            };
            if d.rank() == 0 {
                let secs = t0.elapsed().as_secs_f64();
                let m = test.map(|v| d.trainer.evaluate(v)).transpose()?;
                let test_part = m.map_or(String::new(), |m| format!("  {ho} loss {:.4}  {ho} accuracy {:.2}%", m.loss, 100.0 * m.accuracy, ho = args.held_out));
                println!("epoch {:>3}/{}  train loss {loss:.4}{test_part}  {:.0} images/s (all ranks)  ({secs:.1} s)", d.trainer.epoch, d.trainer.config.epochs, train.len() as f64 / secs);
                if let Some(path) = &args.checkpoint {
                    wgpu_cnn::checkpoint::save(path, &mut d.trainer)?;
                }
            }
        }
        *t = d.trainer;
        return Ok(true);
    }
    if args.devices <= 1 {
        return Ok(false);
    }
    args.tune.single_device("with --devices > 1")?;
    use wgpu_cnn::parallel::DataParallel;
    let devices = (0..args.devices).map(|_| if device.is_gpu() { wgpu_cnn::Device::gpu() } else { Ok(wgpu_cnn::Device::Cpu) }).collect::<wgpu_cnn::Result<Vec<_>>>()?;
    let mut seed = args.seed;
    let mut dp = DataParallel::new(&devices, |d| build(d, seed).inspect(|_| seed += 1), t.optimizer.config, t.config.clone())?;
    for r in &mut dp.replicas {
        r.config.augment = t.config.augment;
    }
    println!("{} replicas; {} bytes of gradients summed per step", args.devices, dp.bytes_all_reduced_per_step());
    while dp.replicas[0].epoch < dp.replicas[0].config.epochs {
        let t0 = std::time::Instant::now();
        let loss = dp.train_epoch(train)?;
        let secs = t0.elapsed().as_secs_f64();
        let test_part = test.map(|v| dp.evaluate(v)).transpose()?.map_or(String::new(), |m| format!("  {ho} loss {:.4}  {ho} accuracy {:.2}%", m.loss, 100.0 * m.accuracy, ho = args.held_out));
        println!("epoch {:>3}/{}  train loss {loss:.4}{test_part}  {:.0} images/s  ({secs:.1} s)", dp.replicas[0].epoch, dp.replicas[0].config.epochs, train.len() as f64 / secs);
        if let Some(path) = &args.checkpoint {
            wgpu_cnn::checkpoint::save(path, &mut dp.replicas[0])?;
        }
    }
    *t = dp.replicas.swap_remove(0);
    Ok(true)
}

/// Reproducible values in [-1, 1) (an LCG; no rand dependency), `len` of them.
pub fn lcg_values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}
