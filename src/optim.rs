//! Model-level optimisers and learning-rate schedules. The per-tensor update
//! kernels are in `ops::optim`; this keeps their state (on the parameters'
//! device) by parameter name.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::nn::Layer;
use crate::ops::optim::{optim_adam_step_multi, optim_sgd_step_multi, AdamConfig, SgdConfig, Slot};
use crate::tensor::Tensor;

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// SGD with momentum, dampening, Nesterov and weight decay.
    Sgd(SgdConfig),
    /// Adam, or AdamW when `decoupled`.
    Adam(AdamConfig),
}

impl OptimizerConfig {
    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            OptimizerConfig::Sgd(c) => c.lr,
            OptimizerConfig::Adam(c) => c.lr,
        }
    }

    fn set_lr(&mut self, lr: f32) {
        match self {
            OptimizerConfig::Sgd(c) => c.lr = lr,
            OptimizerConfig::Adam(c) => c.lr = lr,
        }
    }

    fn validate(&self) -> Result<()> {
        match self {
            OptimizerConfig::Sgd(c) => c.validate(),
            OptimizerConfig::Adam(c) => c.validate(),
        }
    }
}

/// Which parameters a [`ParamGroup`] takes.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamSelect {
    /// Those whose state name is one of these or lies under one (`"layer4"`
    /// takes `layer4.0.conv1.weight`; see [`crate::nn::name_matches`]).
    Prefixes(Vec<String>),
    /// Those that are not one of these prefixes (a backbone: everything but the head).
    Except(Vec<String>),
    /// Tensors of at most one dimension: biases and normalisation layers'
    /// scales and shifts (torchvision's and timm's no-decay rule).
    NormAndBias,
}

/// Settings for a set of parameters, as PyTorch's param groups: a
/// learning-rate multiplier (schedules scale every group alike) and a weight
/// decay of its own. A parameter that several groups select takes the
/// product of their multipliers and the last one's weight decay; the rest
/// train with the optimiser's own settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    /// Which parameters.
    pub select: ParamSelect,
    /// Their rate is the optimiser's times this.
    pub lr_mult: f32,
    /// Their weight decay, instead of the optimiser's (`None`: the optimiser's).
    pub weight_decay: Option<f32>,
}

impl ParamGroup {
    /// The parameters under `prefixes`, at `lr_mult` times the rate.
    pub fn prefixes(prefixes: &[&str], lr_mult: f32) -> ParamGroup {
        ParamGroup { select: ParamSelect::Prefixes(prefixes.iter().map(|p| p.to_string()).collect()), lr_mult, weight_decay: None }
    }

    /// Every parameter outside `prefixes` (a backbone, `prefixes` naming the
    /// head) at `lr_mult` times the rate.
    pub fn except(prefixes: &[&str], lr_mult: f32) -> ParamGroup {
        ParamGroup { select: ParamSelect::Except(prefixes.iter().map(|p| p.to_string()).collect()), lr_mult, weight_decay: None }
    }

    /// No weight decay on biases and normalisation parameters (tensors of at
    /// most one dimension), as torchvision's and timm's recipes do.
    pub fn no_decay_on_norm_and_bias() -> ParamGroup {
        ParamGroup { select: ParamSelect::NormAndBias, lr_mult: 1.0, weight_decay: Some(0.0) }
    }

    /// Whether the group takes the parameter `name` of shape `shape`.
    pub fn selects(&self, name: &str, shape: &[usize]) -> bool {
        match &self.select {
            ParamSelect::Prefixes(ps) => ps.iter().any(|p| crate::nn::name_matches(name, p)),
            ParamSelect::Except(ps) => !ps.iter().any(|p| crate::nn::name_matches(name, p)),
            ParamSelect::NormAndBias => shape.len() <= 1,
        }
    }

    fn validate(&self) -> Result<()> {
        if !(self.lr_mult.is_finite() && self.lr_mult >= 0.0) {
            return Err(Error::InvalidArgument { op: "ParamGroup", msg: format!("lr_mult {} must be finite and ≥ 0", self.lr_mult) });
        }
        if let Some(wd) = self.weight_decay.filter(|wd| !(wd.is_finite() && *wd >= 0.0)) {
            return Err(Error::InvalidArgument { op: "ParamGroup", msg: format!("weight decay {wd} must be finite and ≥ 0") });
        }
        Ok(())
    }
}

/// An optimiser with its state: momentum buffers (SGD) or first and second
/// moments (Adam), created on first use beside each parameter, and counted
/// from then (a parameter unfrozen later starts its own moments, as in PyTorch).
pub struct Optimizer {
    /// The update rule and its settings (the rate follows the schedule).
    pub config: OptimizerConfig,
    /// The learning rate before any schedule.
    pub base_lr: f32,
    /// Updates taken so far.
    pub steps: u32,
    /// Per-parameter settings (empty: one setting for all).
    pub groups: Vec<ParamGroup>,
    state: BTreeMap<String, (Tensor, Option<Tensor>)>,
    /// For state made after the first step: the optimiser's step count just
    /// before (its own steps are `steps − born`).
    born: BTreeMap<String, u32>,
}

impl Optimizer {
    /// An optimiser with no state yet.
    pub fn new(config: OptimizerConfig) -> Result<Optimizer> {
        config.validate()?;
        Ok(Optimizer { base_lr: config.lr(), config, steps: 0, groups: Vec::new(), state: BTreeMap::new(), born: BTreeMap::new() })
    }

    /// The optimiser with parameter groups (see [`ParamGroup`]).
    pub fn with_groups(mut self, groups: Vec<ParamGroup>) -> Result<Optimizer> {
        groups.iter().try_for_each(ParamGroup::validate)?;
        self.groups = groups;
        Ok(self)
    }

    /// The (rate multiplier, weight decay) parameter `name` trains with.
    pub fn settings_for(&self, name: &str, shape: &[usize]) -> (f32, f32) {
        let wd = match self.config {
            OptimizerConfig::Sgd(c) => c.weight_decay,
            OptimizerConfig::Adam(c) => c.weight_decay,
        };
        self.groups.iter().filter(|g| g.selects(name, shape)).fold((1.0, wd), |(m, wd), g| (m * g.lr_mult, g.weight_decay.unwrap_or(wd)))
    }

    /// The learning rate the next step uses.
    pub fn lr(&self) -> f32 {
        self.config.lr()
    }

    /// Sets the rate the next step uses.
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        let mut c = self.config;
        c.set_lr(lr);
        c.validate()?;
        self.config = c;
        Ok(())
    }

    /// Updates every parameter of `model` from its gradient: on the GPU a
    /// few multi-tensor dispatches ([`crate::ops::optim::OPTIM_SLOTS`] tensors each), not one per tensor.
    /// Frozen parameters are not updated and get no state. Parameters are
    /// updated in buckets of equal settings (group and own step count), one
    /// multi-tensor call each: one bucket when no groups are set.
    /// A model whose parameters are all frozen is an error ("nothing to train").
    pub fn step(&mut self, model: &mut dyn Layer) -> Result<()> {
        let mut params = model.parameters("")?;
        if params.is_empty() {
            drop(params);
            let frozen = model.frozen_names().len();
            return Err(Error::InvalidArgument { op: "Optimizer::step", msg: format!("nothing to train: the model's {frozen} parameter tensors are all frozen") });
        }
        self.steps += 1;
        let adam = matches!(self.config, OptimizerConfig::Adam(_));
        for p in &params {
            if !self.state.contains_key(&p.name) {
                let dev = p.value.device();
                let second = adam.then(|| Tensor::zeros(&dev, p.value.shape())).transpose()?;
                self.state.insert(p.name.clone(), (Tensor::zeros(&dev, p.value.shape())?, second));
                if self.steps > 1 {
                    self.born.insert(p.name.clone(), self.steps - 1);
                }
            }
        }
        // (rate multiplier, weight decay, own step) → the bucket's slots.
        let keys: Vec<(f32, f32, u32)> = params
            .iter()
            .map(|p| {
                let (m, wd) = self.settings_for(&p.name, p.value.shape());
                (m, wd, self.steps - self.born.get(&p.name).copied().unwrap_or(0))
            })
            .collect();
        let mut state: std::collections::HashMap<&String, &mut (Tensor, Option<Tensor>)> = self.state.iter_mut().collect();
        let mut buckets: Vec<((f32, f32, u32), Vec<Slot>)> = Vec::new();
        for (p, key) in params.iter_mut().zip(keys) {
            let (s1, s2) = state.remove(&p.name).expect("state created above");
            if adam && s2.is_none() {
                return Err(Error::InvalidArgument { op: "Optimizer::step", msg: format!("`{}` has no second moment (restored from an SGD checkpoint?)", p.name) });
            }
            let slot = Slot { param: &mut *p.value, grad: &*p.grad, state1: Some(s1), state2: s2.as_mut() };
            match buckets.iter_mut().find(|(k, _)| *k == key) {
                Some((_, slots)) => slots.push(slot),
                None => buckets.push((key, vec![slot])),
            }
        }
        for ((mult, wd, own_step), mut slots) in buckets {
            match self.config {
                OptimizerConfig::Sgd(c) => optim_sgd_step_multi(&mut slots, own_step == 1, &SgdConfig { lr: c.lr * mult, weight_decay: wd, ..c })?,
                OptimizerConfig::Adam(c) => optim_adam_step_multi(&mut slots, own_step, &AdamConfig { lr: c.lr * mult, weight_decay: wd, ..c })?,
            }
        }
        Ok(())
    }

    /// For checkpoints: the parameters whose state was made after the first
    /// step, with the step count just before (see [`Optimizer::step`]).
    pub fn state_born(&self) -> &BTreeMap<String, u32> {
        &self.born
    }

    /// Restores what [`Optimizer::state_born`] gave.
    pub(crate) fn set_state_born(&mut self, born: BTreeMap<String, u32>) {
        self.born = born;
    }

    /// The step count and which parameters have state, to undo a dry run's step.
    pub(crate) fn checkpoint_marks(&self) -> (u32, Vec<String>) {
        (self.steps, self.state.keys().cloned().collect())
    }

    /// Undoes what a step changed on the host since [`Optimizer::checkpoint_marks`]:
    /// the step count and state created since (a dry run's state was never written).
    pub(crate) fn restore_marks(&mut self, (steps, names): (u32, Vec<String>)) {
        self.steps = steps;
        self.state.retain(|k, _| names.contains(k));
        self.born.retain(|k, _| names.contains(k));
    }

    /// State tensors by name (`"<param>.state1"`, `"<param>.state2"`), for checkpoints.
    pub fn state_tensors(&mut self) -> Vec<(String, &mut Tensor)> {
        let mut out = Vec::new();
        for (name, (s1, s2)) in self.state.iter_mut() {
            out.push((format!("{name}.state1"), s1));
            if let Some(s2) = s2 {
                out.push((format!("{name}.state2"), s2));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_tensors`] (used by checkpoints).
    pub(crate) fn insert_state(&mut self, param: &str, s1: Tensor, s2: Option<Tensor>) {
        self.state.insert(param.to_string(), (s1, s2));
    }
}

/// How the learning rate changes: per epoch (`Constant`, `Step`, `Cosine`,
/// with `TrainConfig::warmup_epochs`) or per optimiser step (`WarmupCosine`,
/// `OneCycle`, whose step count covers the whole run).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        /// Epochs between reductions.
        every: usize,
        /// The factor of each reduction.
        gamma: f32,
    },
    /// Cosine from the base rate down to `min_lr` over the run.
    Cosine {
        /// The rate at the end.
        min_lr: f32,
    },
    /// Per step: linear warm-up over `warmup_steps` from base/warmup_steps to
    /// the base rate, then cosine down to `min_lr` at the last step (PyTorch's
    /// `SequentialLR` of `LinearLR(start_factor = 1/warmup_steps)` and
    /// `CosineAnnealingLR(T_max = total − warmup_steps, eta_min = min_lr)`).
    WarmupCosine {
        /// Steps of linear warm-up.
        warmup_steps: usize,
        /// The rate at the last step.
        min_lr: f32,
    },
    /// Per step: PyTorch's `OneCycleLR` (cosine annealing, two phases): from
    /// `max_lr / div_factor` up to `max_lr` over `pct_start` of the run, then
    /// down to that over `final_div_factor`. The optimiser's base rate is unused.
    OneCycle {
        /// The peak rate.
        max_lr: f32,
        /// Share of the run spent rising.
        pct_start: f32,
        /// The starting rate is `max_lr / div_factor`.
        div_factor: f32,
        /// The final rate is the starting one over this.
        final_div_factor: f32,
    },
}

impl LrSchedule {
    /// PyTorch's `OneCycleLR` defaults (pct_start 0.3, div_factor 25, final_div_factor 1e4).
    pub fn one_cycle(max_lr: f32) -> LrSchedule {
        LrSchedule::OneCycle { max_lr, pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 }
    }

    /// Whether the rate changes every optimiser step (else every epoch).
    pub fn per_step(&self) -> bool {
        matches!(self, LrSchedule::WarmupCosine { .. } | LrSchedule::OneCycle { .. })
    }

    /// The rate for optimiser step `step` (from 0) of `total` steps; per-epoch
    /// schedules return `base`.
    pub fn lr_at_step(&self, base: f32, step: usize, total: usize) -> f32 {
        let cos_anneal = |start: f32, end: f32, pct: f32| end + (start - end) / 2.0 * ((std::f32::consts::PI * pct).cos() + 1.0);
        match *self {
            LrSchedule::WarmupCosine { warmup_steps, min_lr } => {
                if step < warmup_steps {
                    let w = warmup_steps as f32;
                    base * (1.0 / w + (1.0 - 1.0 / w) * step as f32 / w)
                } else {
                    let span = total.saturating_sub(warmup_steps).max(1) as f32;
                    cos_anneal(base, min_lr, ((step - warmup_steps) as f32 / span).min(1.0))
                }
            }
            LrSchedule::OneCycle { max_lr, pct_start, div_factor, final_div_factor } => {
                let initial = max_lr / div_factor;
                let min = initial / final_div_factor;
                let end_up = pct_start * total as f32 - 1.0;
                let end_down = total as f32 - 1.0;
                let t = step as f32;
                if t <= end_up {
                    cos_anneal(initial, max_lr, t / end_up.max(f32::MIN_POSITIVE))
                } else {
                    cos_anneal(max_lr, min, ((t - end_up) / (end_down - end_up).max(f32::MIN_POSITIVE)).min(1.0))
                }
            }
            _ => base,
        }
    }

    /// The rate for epoch `epoch` of `epochs`, with `warmup` linear warm-up epochs first.
    pub fn lr(&self, base: f32, epoch: usize, epochs: usize, warmup: usize) -> f32 {
        if epoch < warmup {
            return base * (epoch + 1) as f32 / (warmup + 1) as f32;
        }
        match *self {
            LrSchedule::Constant | LrSchedule::WarmupCosine { .. } | LrSchedule::OneCycle { .. } => base,
            LrSchedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
            LrSchedule::Cosine { min_lr } => {
                let span = (epochs - warmup).max(1) as f32;
                let t = (epoch - warmup) as f32 / span;
                min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f32::consts::PI * t).cos())
            }
        }
    }
}

/// Rejects a schedule that would produce an invalid rate.
pub fn check_schedule(s: &LrSchedule) -> Result<()> {
    match *s {
        LrSchedule::Step { every: 0, .. } => Err(Error::InvalidArgument { op: "LrSchedule", msg: "step schedule needs every ≥ 1".into() }),
        LrSchedule::Step { gamma, .. } if !(gamma > 0.0) => Err(Error::InvalidArgument { op: "LrSchedule", msg: format!("gamma {gamma} must be > 0") }),
        LrSchedule::Cosine { min_lr } | LrSchedule::WarmupCosine { min_lr, .. } if !(min_lr >= 0.0) => Err(Error::InvalidArgument { op: "LrSchedule", msg: format!("min_lr {min_lr} must be ≥ 0") }),
        LrSchedule::OneCycle { max_lr, pct_start, div_factor, final_div_factor } if !(max_lr > 0.0 && pct_start > 0.0 && pct_start < 1.0 && div_factor > 0.0 && final_div_factor > 0.0) => Err(Error::InvalidArgument {
            op: "LrSchedule",
            msg: format!("one-cycle needs max_lr > 0, pct_start in (0, 1), div factors > 0; got {max_lr}, {pct_start}, {div_factor}, {final_div_factor}"),
        }),
        _ => Ok(()),
    }
}

/// PyTorch's `ReduceLROnPlateau` on the validation loss (mode `min`, relative
/// threshold 1e-4, no cooldown): after more than `patience` epochs without
/// improvement, the rate is multiplied by `factor`, down to `min_lr`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plateau {
    /// Multiplies the rate on a plateau.
    pub factor: f32,
    /// Epochs without improvement before reducing.
    pub patience: usize,
    /// The rate never goes below this.
    pub min_lr: f32,
}

impl Plateau {
    /// PyTorch's defaults: factor 0.1, patience 10, no minimum.
    pub fn new() -> Plateau {
        Plateau { factor: 0.1, patience: 10, min_lr: 0.0 }
    }
}

impl Default for Plateau {
    fn default() -> Plateau {
        Plateau::new()
    }
}

/// The state [`Plateau`] keeps between epochs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlateauState {
    best: Option<f32>,
    bad_epochs: usize,
    /// The multiplier applied on top of the schedule so far.
    pub scale: f32,
}

impl PlateauState {
    /// No history; scale 1.
    pub fn new() -> PlateauState {
        PlateauState { best: None, bad_epochs: 0, scale: 1.0 }
    }

    /// Takes one epoch's validation loss; returns true when the rate was just reduced.
    pub fn observe(&mut self, p: &Plateau, val_loss: f32, lr_now: f32) -> bool {
        let improved = self.best.is_none_or(|b| val_loss < b * (1.0 - 1e-4));
        if improved {
            (self.best, self.bad_epochs) = (Some(val_loss), 0);
            return false;
        }
        self.bad_epochs += 1;
        if self.bad_epochs > p.patience && lr_now > p.min_lr {
            let new_lr = (lr_now * p.factor).max(p.min_lr);
            self.scale *= new_lr / lr_now;
            self.bad_epochs = 0;
            return true;
        }
        false
    }
}
