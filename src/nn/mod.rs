//! Layers and models in the modular forward/backward style: `forward` caches
//! what `backward` needs; `backward` takes dL/dy, returns dL/dx and
//! accumulates parameter gradients. The same model runs on any [`Device`](crate::Device).

mod container;
mod init;
mod layers;
pub mod models;

pub use container::{Residual, Sequential, Summary, SummaryRow};
pub use init::{Init, Initializer};
pub use layers::{ActivationLayer, AvgPool2d, BatchNorm, Conv2d, Dropout, Flatten, GlobalAvgPool, Linear, MaxPool2d, WeightBias};

use crate::error::Result;
use crate::gpu::GpuContext;
use crate::kernel::KernelId;
use crate::ops::elementwise::{combine_into, fill};
use crate::tensor::Tensor;

/// Training or inference: batch-norm and dropout behave differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// A learnable tensor and its gradient, named like PyTorch's state dict
/// (`"0.weight"`, `"3.body.1.bias"`).
pub struct Param<'a> {
    pub name: String,
    pub value: &'a mut Tensor,
    pub grad: &'a mut Tensor,
}

/// The one interface every layer and container implements.
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
    /// Learnable parameters with their gradients, names prefixed by `prefix`.
    fn parameters(&mut self, _prefix: &str) -> Vec<Param<'_>> {
        Vec::new()
    }
    /// State that is not learned but must be saved (batch-norm running statistics).
    fn buffers(&mut self, _prefix: &str) -> Vec<(String, &mut Tensor)> {
        Vec::new()
    }
    /// Integer state that must be saved (dropout's step counter, which picks its masks).
    fn counters(&mut self, _prefix: &str) -> Vec<(String, &mut u32)> {
        Vec::new()
    }
    /// Number of learnable scalars.
    fn param_count(&self) -> usize {
        0
    }
    /// Forget accumulated gradients (the next backward overwrites them).
    fn zero_grad(&mut self) {}
    /// The GPU kernels forward and backward (in either mode) may dispatch, so
    /// their pipelines can be built with the model instead of at the first step.
    fn kernels(&self, _ctx: &GpuContext) -> Vec<KernelId> {
        Vec::new()
    }
}

/// Kernels every layer with parameters uses: gradient accumulation and zeroing.
pub(crate) const GRAD_KERNELS: &[KernelId] = &[KernelId::ElementwiseCombine, KernelId::ElementwiseFill];

/// A parameter gradient that the next backward either replaces (after
/// `zero_grad`) or adds to, so the usual step costs no extra dispatch.
pub(crate) struct Grad {
    pub tensor: Tensor,
    pub fresh: bool,
}

impl Grad {
    pub fn new(like: &Tensor) -> Result<Grad> {
        Ok(Grad { tensor: Tensor::zeros(&like.device(), like.shape())?, fresh: true })
    }

    pub fn accumulate(&mut self, g: Tensor) -> Result<()> {
        if self.fresh {
            self.tensor = g;
            self.fresh = false;
            Ok(())
        } else {
            combine_into(&mut self.tensor, &g, 1.0, 1.0)
        }
    }

    /// The gradient as a tensor; zero if no backward ran since `zero_grad`.
    pub fn get(&mut self) -> &mut Tensor {
        if self.fresh {
            // Cannot fail for a tensor that already exists on its device.
            fill(&mut self.tensor, 0.0).expect("filling an existing gradient");
            self.fresh = false;
        }
        &mut self.tensor
    }
}

/// `prefix.name`, or `name` at the top level.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
