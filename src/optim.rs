//! Model-level optimisers and learning-rate schedules. The per-tensor update
//! kernels are in `ops::optim`; this keeps their state (on the parameters'
//! device) by parameter name.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::nn::Layer;
use crate::ops::optim::{optim_adam_step, optim_sgd_step, AdamConfig, SgdConfig};
use crate::tensor::Tensor;

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    Sgd(SgdConfig),
    /// Adam, or AdamW when `decoupled`.
    Adam(AdamConfig),
}

impl OptimizerConfig {
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

/// An optimiser with its state: momentum buffers (SGD) or first and second
/// moments (Adam), created on first use beside each parameter.
pub struct Optimizer {
    pub config: OptimizerConfig,
    /// The learning rate before any schedule.
    pub base_lr: f32,
    /// Updates taken so far.
    pub steps: u32,
    state: BTreeMap<String, (Tensor, Option<Tensor>)>,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig) -> Result<Optimizer> {
        config.validate()?;
        Ok(Optimizer { base_lr: config.lr(), config, steps: 0, state: BTreeMap::new() })
    }

    /// The learning rate the next step uses.
    pub fn lr(&self) -> f32 {
        self.config.lr()
    }

    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        let mut c = self.config;
        c.set_lr(lr);
        c.validate()?;
        self.config = c;
        Ok(())
    }

    /// Updates every parameter of `model` from its gradient.
    pub fn step(&mut self, model: &mut dyn Layer) -> Result<()> {
        self.steps += 1;
        for p in model.parameters("")? {
            let (s1, s2) = match self.state.entry(p.name.clone()) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let dev = p.value.device();
                    let second = matches!(self.config, OptimizerConfig::Adam(_)).then(|| Tensor::zeros(&dev, p.value.shape())).transpose()?;
                    e.insert((Tensor::zeros(&dev, p.value.shape())?, second))
                }
            };
            match &self.config {
                OptimizerConfig::Sgd(c) => {
                    let buf = (c.momentum > 0.0).then_some(s1);
                    optim_sgd_step(p.value, p.grad, buf, self.steps == 1, c)?;
                }
                OptimizerConfig::Adam(c) => {
                    let Some(v) = s2.as_mut() else {
                        return Err(Error::InvalidArgument { op: "Optimizer::step", msg: format!("`{}` has no second moment (restored from an SGD checkpoint?)", p.name) });
                    };
                    optim_adam_step(p.value, p.grad, s1, v, self.steps, c)?;
                }
            }
        }
        Ok(())
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

/// How the learning rate changes over epochs (`t` counts from 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    Constant,
    /// Multiply by `gamma` every `every` epochs.
    Step { every: usize, gamma: f32 },
    /// Cosine from the base rate down to `min_lr` over the run.
    Cosine { min_lr: f32 },
}

impl LrSchedule {
    /// The rate for epoch `epoch` of `epochs`, with `warmup` linear warm-up epochs first.
    pub fn lr(&self, base: f32, epoch: usize, epochs: usize, warmup: usize) -> f32 {
        if epoch < warmup {
            return base * (epoch + 1) as f32 / (warmup + 1) as f32;
        }
        match *self {
            LrSchedule::Constant => base,
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
        LrSchedule::Cosine { min_lr } if !(min_lr >= 0.0) => Err(Error::InvalidArgument { op: "LrSchedule", msg: format!("min_lr {min_lr} must be ≥ 0") }),
        _ => Ok(()),
    }
}
