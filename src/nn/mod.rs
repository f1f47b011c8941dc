//! Layers and models in the modular forward/backward style: `forward` caches
//! what `backward` needs; `backward` takes dL/dy, returns dL/dx and
//! accumulates parameter gradients. The same model runs on any [`Device`](crate::Device).

mod container;
mod gradcheck;
mod init;
mod layers;
pub mod models;

pub use container::{Concat, Residual, Sequential, Summary, SummaryRow};
pub use gradcheck::{check_gradients, GradCheck, GradCheckReport};
pub use init::{Init, Initializer};
pub use layers::{ActivationLayer, AdaptiveAvgPool2d, AvgPool2d, BatchNorm, Conv2d, ConvTranspose2d, Dropout, Flatten, GlobalAvgPool, LayerNorm, Linear, MaxPool2d, Softmax, Upsample, WeightBias, ZeroPad2d};

use crate::device::Device;
use crate::error::Result;
use crate::ops::activation::Activation;
use crate::ops::elementwise::{elementwise_combine, elementwise_fill};
use crate::tensor::Tensor;

/// What a layer keeps for backward in, as PyTorch's autocast does for what
/// its f16 ops save: the arithmetic, the parameters and their gradients,
/// the loss and the optimiser stay f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Activations kept from forward for backward (by convolutions, linear
    /// layers, batch- and layer-norm, pooling, activations, residual blocks)
    /// are stored in f16, round to nearest even: half the bytes a training
    /// step holds for them. Backward reads them back as f32.
    Mixed,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "mixed" => Ok(Precision::Mixed),
            _ => Err(format!("unknown precision '{s}' (f32 or mixed)")),
        }
    }
}

/// Training or inference: batch-norm and dropout behave differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics, dropout on; layers keep what backward needs.
    Train,
    /// Running statistics, dropout off.
    Eval,
}

/// A learnable tensor and its gradient, named like PyTorch's state dict
/// (`"0.weight"`, `"3.body.1.bias"`).
pub struct Param<'a> {
    /// The dotted name.
    pub name: String,
    /// The parameter.
    pub value: &'a mut Tensor,
    /// Its gradient.
    pub grad: &'a mut Tensor,
}

/// One named piece of a layer's state, as [`Layer::state`] lists it.
pub struct StateEntry<'a> {
    /// The PyTorch-style dotted name.
    pub name: String,
    /// What it is.
    pub state: State<'a>,
}

/// What a piece of state is.
pub enum State<'a> {
    /// A learnable tensor and its gradient.
    Param {
        /// The parameter.
        value: &'a mut Tensor,
        /// Its gradient.
        grad: &'a mut Grad,
    },
    /// Saved but not learned (batch-norm running statistics).
    Buffer(&'a mut Tensor),
    /// Integer state that must be saved (dropout's step counter, which picks its masks).
    Counter(&'a mut u32),
}

impl<'a> StateEntry<'a> {
    /// A parameter entry.
    pub fn param(name: String, value: &'a mut Tensor, grad: &'a mut Grad) -> StateEntry<'a> {
        StateEntry { name, state: State::Param { value, grad } }
    }
    /// A buffer entry.
    pub fn buffer(name: String, t: &'a mut Tensor) -> StateEntry<'a> {
        StateEntry { name, state: State::Buffer(t) }
    }
    /// A counter entry.
    pub fn counter(name: String, c: &'a mut u32) -> StateEntry<'a> {
        StateEntry { name, state: State::Counter(c) }
    }
}

/// The one interface every layer and container implements.
///
/// A layer lists its state once, in [`Layer::state`]; parameters, buffers,
/// counters, parameter counts and `zero_grad` are all derived from that walk
/// (do not override them).
pub trait Layer: Send {
    /// Kind for summaries and parameter breakdowns: "Conv2d", "Linear", ….
    fn kind(&self) -> &'static str;
    /// One line: "Conv2d(1→6, 5×5, stride 1, padding 2)".
    fn describe(&self) -> String;
    /// The output shape for an input shape, validated without running anything.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>>;
    /// Computes the output; in `Train` mode keeps what backward needs.
    fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor>;
    /// dL/dx from dL/dy; adds this batch's parameter gradients to the stored ones.
    fn backward(&mut self, dy: &Tensor) -> Result<Tensor>;
    /// [`Layer::backward`] for a layer whose input needs no gradient (the
    /// model's first): parameter gradients only. Layers that can skip work override it.
    fn backward_params(&mut self, dy: &Tensor) -> Result<()> {
        self.backward(dy).map(drop)
    }
    /// The activation this layer is, when the layer before it may apply it in
    /// its own kernels (ReLU: its backward reads the output as well as the input).
    fn fusable_activation(&self) -> Option<Activation> {
        None
    }
    /// [`Layer::forward`] with `act` applied to the output in the same
    /// kernels; `None` when this layer cannot (the caller then runs both).
    fn forward_fused(&mut self, _x: &Tensor, _mode: Mode, _act: Activation) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// [`Layer::backward`] followed by the backward of `act`, the activation
    /// layer just before this one (so this layer's input is its output), in
    /// this layer's own kernels; `None` when this layer cannot (the caller
    /// then runs both). Parameter gradients accumulate as in `backward`.
    fn backward_fused(&mut self, _dy: &Tensor, _act: Activation) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// For an activation layer whose work the layer before did
    /// ([`Layer::forward_fused`]): keep what backward needs, from the output.
    fn adopt_output(&mut self, _y: &Tensor, _mode: Mode) -> Result<()> {
        Ok(())
    }
    /// How activations kept for backward are stored from the next forward
    /// on (containers: their children too). Layers that keep nothing, or
    /// keep it in f32 whatever the policy (softmax's output), ignore it.
    fn set_precision(&mut self, _precision: Precision) {}
    /// Drops what the last training forward kept for backward (containers:
    /// their children's too). The layer after an activation calls it when it
    /// did that activation's backward in its own kernels
    /// ([`Layer::backward_fused`]), as `backward` would have released it; the
    /// trainer calls it after a failed step, so nothing of it stays held.
    fn release(&mut self) {}
    /// This layer as a [`Sequential`], for walks that expand containers (summaries).
    fn as_sequential(&mut self) -> Option<&mut Sequential> {
        None
    }
    /// Every piece of state (parameters with their gradients, buffers,
    /// counters), names prefixed by `prefix`. Containers visit their children.
    fn state(&mut self, _prefix: &str) -> Vec<StateEntry<'_>> {
        Vec::new()
    }

    /// The parameters that train (frozen ones are left out) with their
    /// gradients (a gradient no backward has written since `zero_grad` reads
    /// as zeros, which costs a fill).
    fn parameters(&mut self, prefix: &str) -> Result<Vec<Param<'_>>> {
        self.state(prefix)
            .into_iter()
            .filter_map(|e| match e.state {
                State::Param { value, grad } if !grad.is_frozen() => Some(grad.get().map(|grad| Param { name: e.name, value, grad })),
                _ => None,
            })
            .collect()
    }
    /// State that is not learned but must be saved (batch-norm running statistics).
    fn buffers(&mut self, prefix: &str) -> Vec<(String, &mut Tensor)> {
        self.state(prefix).into_iter().filter_map(|e| if let State::Buffer(t) = e.state { Some((e.name, t)) } else { None }).collect()
    }
    /// Integer state that must be saved.
    fn counters(&mut self, prefix: &str) -> Vec<(String, &mut u32)> {
        self.state(prefix).into_iter().filter_map(|e| if let State::Counter(c) = e.state { Some((e.name, c)) } else { None }).collect()
    }
    /// Learnable scalars by the kind of the layer that holds them; containers
    /// report their children's (a residual block's convolutions count as `Conv2d`).
    fn param_kinds(&mut self) -> Vec<(&'static str, usize)> {
        let n = self.param_count();
        if n == 0 {
            Vec::new()
        } else {
            vec![(self.kind(), n)]
        }
    }
    /// Number of learnable scalars.
    fn param_count(&mut self) -> usize {
        self.state("").iter().map(|e| if let State::Param { value, .. } = &e.state { value.numel() } else { 0 }).sum()
    }
    /// Number of learnable scalars that train (not frozen).
    fn trainable_count(&mut self) -> usize {
        self.state("").iter().map(|e| if let State::Param { value, grad } = &e.state { if grad.is_frozen() { 0 } else { value.numel() } } else { 0 }).sum()
    }
    /// Freezes every parameter whose name is one of `prefixes` or starts
    /// with one of them and a dot (`"layer1"` freezes `layer1.0.conv1.weight`,
    /// not `layer10.…`); returns how many it froze. A prefix that matches no
    /// parameter is an error that lists the top-level names.
    fn freeze(&mut self, prefixes: &[&str]) -> Result<usize> {
        set_frozen(self.state(""), prefixes, true)
    }
    /// Unfreezes the parameters `prefixes` name (see [`Layer::freeze`]); an
    /// empty list unfreezes every parameter.
    fn unfreeze(&mut self, prefixes: &[&str]) -> Result<usize> {
        set_frozen(self.state(""), prefixes, false)
    }
    /// The names of the frozen parameters.
    fn frozen_names(&mut self) -> Vec<String> {
        self.state("").into_iter().filter_map(|e| matches!(&e.state, State::Param { grad, .. } if grad.is_frozen()).then_some(e.name)).collect()
    }
    /// Forget accumulated gradients and release their memory (the next
    /// backward writes new ones; PyTorch's `zero_grad(set_to_none=True)`).
    fn zero_grad(&mut self) {
        for e in self.state("") {
            if let State::Param { grad, .. } = e.state {
                grad.tensor = None;
            }
        }
    }
}

/// A parameter's gradient handle: the next backward either adopts its
/// gradient (after `zero_grad`, which releases it) or adds to it, so the usual
/// step costs no extra dispatch and holds no gradient memory before its
/// backward. A frozen one keeps no gradient, and the optimiser skips its
/// parameter; layers skip the work that only it would need.
///
/// A layer written outside the crate holds one per parameter and lists it in
/// [`Layer::state`] with [`StateEntry::param`]; its backward calls
/// [`Grad::accumulate`].
pub struct Grad {
    tensor: Option<Tensor>,
    shape: Vec<usize>,
    device: Device,
    frozen: bool,
}

impl Grad {
    /// An empty gradient for a parameter shaped and placed like `like`.
    pub fn new(like: &Tensor) -> Result<Grad> {
        Ok(Grad { tensor: None, shape: like.shape().to_vec(), device: like.device(), frozen: false })
    }

    /// Adds this batch's gradient `g` (the parameter's shape, on its device);
    /// dropped when the parameter is frozen.
    pub fn accumulate(&mut self, g: Tensor) -> Result<()> {
        crate::ops::check_shape("Grad::accumulate", "gradient", g.shape(), &self.shape)?;
        if self.frozen {
            return Ok(());
        }
        match &mut self.tensor {
            None => {
                self.tensor = Some(g);
                Ok(())
            }
            Some(t) => elementwise_combine(t, &g, 1.0, 1.0),
        }
    }

    /// The gradient as a tensor; zero if no backward ran since `zero_grad`.
    pub fn get(&mut self) -> Result<&mut Tensor> {
        if self.tensor.is_none() {
            let mut t = Tensor::uninit(&self.device, "Grad::get", &self.shape)?;
            elementwise_fill(&mut t, 0.0)?;
            self.tensor = Some(t);
        }
        Ok(self.tensor.as_mut().expect("set above"))
    }

    /// Whether the parameter is frozen (not trained).
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Freezes or unfreezes the parameter; freezing drops its gradient.
    pub fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
        if frozen {
            self.tensor = None;
        }
    }
}

/// Whether state name `name` is `prefix` or lies under it.
pub fn name_matches(name: &str, prefix: &str) -> bool {
    prefix.is_empty() || name == prefix || name.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.'))
}

/// The distinct first components of `names`, in order ("conv1", "bn1", "layer1", …).
pub fn top_level_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let top = n.split('.').next().unwrap_or(n);
        if !out.iter().any(|o| o == top) {
            out.push(top.to_string());
        }
    }
    out
}

fn set_frozen(state: Vec<StateEntry<'_>>, prefixes: &[&str], frozen: bool) -> Result<usize> {
    let names: Vec<String> = state.iter().filter(|e| matches!(e.state, State::Param { .. })).map(|e| e.name.clone()).collect();
    let op = if frozen { "freeze" } else { "unfreeze" };
    for p in prefixes {
        if !names.iter().any(|n| name_matches(n, p)) {
            return Err(crate::Error::InvalidArgument {
                op,
                msg: format!("`{p}` names no parameter; the model's top-level names are: {}", top_level_names(names.iter().map(String::as_str)).join(", ")),
            });
        }
    }
    let mut count = 0;
    for e in state {
        if let State::Param { grad, .. } = e.state {
            if prefixes.is_empty() || prefixes.iter().any(|p| name_matches(&e.name, p)) {
                grad.set_frozen(frozen);
                count += 1;
            }
        }
    }
    Ok(count)
}

/// The name prefix of a model's head: the layer that holds its last
/// parameter (`"fc"` for a ResNet, `"classifier.6"` for VGG, `"4"` for a
/// plain `Sequential`); `None` for a model without parameters.
pub fn head_prefix(model: &mut dyn Layer) -> Option<String> {
    let last = model.state("").into_iter().filter(|e| matches!(e.state, State::Param { .. })).last()?.name;
    Some(last.rsplit_once('.').map_or(String::new(), |(head, _)| head.to_string()))
}

/// Freezes every parameter outside the model's head ([`head_prefix`]);
/// returns the head's prefix.
pub fn freeze_backbone(model: &mut dyn Layer) -> Result<String> {
    let head = head_prefix(model).filter(|h| !h.is_empty()).ok_or_else(|| crate::Error::InvalidArgument { op: "freeze_backbone", msg: "the model has no head apart from its backbone (no parameters, or one layer)".into() })?;
    for e in model.state("") {
        if let State::Param { grad, .. } = e.state {
            if !name_matches(&e.name, &head) {
                grad.set_frozen(true);
            }
        }
    }
    Ok(head)
}

/// `prefix.name`, or `name` at the top level.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Every parameter and buffer of `model`, copied to the host in the state
/// walk's order (for snapshots and for copying weights between replicas).
pub(crate) fn state_values(model: &mut dyn Layer) -> Result<Vec<Vec<f32>>> {
    model
        .state("")
        .into_iter()
        .filter_map(|e| match e.state {
            State::Param { value: t, .. } | State::Buffer(t) => Some(t.to_vec()),
            State::Counter(_) => None,
        })
        .collect()
}

/// Writes values taken by [`state_values`] (from a model of the same structure) back.
pub(crate) fn write_state_values(model: &mut dyn Layer, values: &[Vec<f32>]) -> Result<()> {
    let mut it = values.iter();
    for e in model.state("") {
        if let State::Param { value: t, .. } | State::Buffer(t) = e.state {
            let v = it.next().ok_or_else(|| crate::Error::InvalidArgument { op: "write_state_values", msg: "fewer values than the model has tensors".into() })?;
            t.write(v)?;
        }
    }
    Ok(())
}
