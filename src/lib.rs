//! wgpu-cnn: train convolutional networks on any GPU wgpu reaches (Vulkan,
//! Metal, DX12), with a CPU reference twin for every kernel and PyTorch's
//! conventions (NCHW, `[C_out, C_in/groups, kH, kW]` weights, `state_dict` names).
//!
//! Train LeNet-5 on MNIST, evaluate it, and save its weights for inference or PyTorch:
//!
//! ```no_run
//! use wgpu_cnn::data::mnist::{self, Split};
//! use wgpu_cnn::nn::{models, Init, Initializer};
//! use wgpu_cnn::ops::optim::SgdConfig;
//! use wgpu_cnn::optim::{Optimizer, OptimizerConfig};
//! use wgpu_cnn::train::{Control, TrainConfig, Trainer};
//! use wgpu_cnn::weights::{save_weights, WeightsMeta};
//! use wgpu_cnn::Device;
//! # fn main() -> wgpu_cnn::Result<()> {
//! let dev = Device::best(); // a hardware GPU if there is one, else the CPU path
//! let train = mnist::load(&mnist::embedded_dir(), Split::Train)?;
//! let test = mnist::load(&mnist::embedded_dir(), Split::Test)?;
//! let model = models::lenet5(&dev, &mut Initializer::new(0, Init::PytorchDefault))?;
//! let sgd = OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..SgdConfig::new(0.01) });
//! let mut trainer = Trainer::new(model, Optimizer::new(sgd)?, TrainConfig { epochs: 2, ..TrainConfig::default() }, dev)?;
//! trainer.fit(&train, Some(&test), |epoch| {
//!     println!("epoch {}: test accuracy {:?}", epoch.epoch, epoch.val_accuracy);
//!     Control::Continue
//! })?;
//! let meta = WeightsMeta { model: Some("lenet5".into()), input: Some([1, 28, 28]), ..WeightsMeta::default() };
//! save_weights("lenet5.safetensors".as_ref(), &mut trainer.model, &meta)?;
//! # Ok(()) }
//! ```
//!
//! Kernels can be called directly too (recorded, then submitted at the readback):
//!
//! ```no_run
//! use wgpu_cnn::{ops::gemm::{gemm, GemmConfig}, Device, Tensor};
//! # fn main() -> wgpu_cnn::Result<()> {
//! let dev = Device::best();
//! let a = Tensor::from_vec(&dev, &[2, 3], vec![1., 2., 3., 4., 5., 6.])?;
//! let b = Tensor::from_vec(&dev, &[3, 1], vec![1., 1., 1.])?;
//! let c = gemm(&a, &b, GemmConfig::default())?;
//! assert_eq!(c.to_vec()?, vec![6., 15.]);
//! # Ok(()) }
//! ```
//!
//! Where things are: [`ops`] (each op's kernels, CPU twin and GPU wrapper),
//! [`nn`] (layers, containers, the model zoo), [`train`] (the trainer,
//! metrics, prediction), [`optim`] (optimisers and schedules), [`data`]
//! (MNIST, CIFAR-10, image folders, augmentation), [`checkpoint`] and
//! [`weights`] (files), [`device`] and [`gpu`] (adapters, the host layer).

#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod device;
pub mod error;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fault;
pub mod gpu;
pub mod kernel;
pub mod nn;
pub mod ops;
pub mod optim;
mod plan;
pub mod parallel;
pub mod plot;
pub mod pool;
pub mod profile;
pub mod shape;
pub mod tensor;
pub mod tolerance;
pub mod train;
pub mod weights;

pub use device::{AdapterSummary, Device, GpuOptions, LimitsMode, TuningCache};
pub use error::{Error, FileErrorKind, Result};
pub use shape::{Conv2dConfig, Conv2dGeometry, Padding, Pool2dConfig, Pool2dGeometry};
pub use gpu::{GemmVariant, GpuContext, HostCounters};
pub use tensor::{HalfTensor, Indices, Tensor};
pub use tolerance::Tolerance;

/// The machine's core count, read once: `available_parallelism` reads the
/// cgroup files on every call, tens of µs that a hot path cannot pay.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
