//! wgpu-cnn: train convolutional networks on any GPU wgpu reaches (Vulkan,
//! Metal, DX12), with a CPU reference twin for every kernel.
//!
//! ```no_run
//! use wgpu_cnn::{ops::gemm::{gemm, GemmConfig}, Device, Tensor};
//! # fn main() -> wgpu_cnn::Result<()> {
//! let dev = Device::best(); // a hardware GPU if there is one, else the CPU path
//! let a = Tensor::from_vec(&dev, &[2, 3], vec![1., 2., 3., 4., 5., 6.])?;
//! let b = Tensor::from_vec(&dev, &[3, 1], vec![1., 1., 1.])?;
//! let c = gemm(&a, &b, GemmConfig::default())?;
//! assert_eq!(c.to_vec()?, vec![6., 15.]);
//! # Ok(()) }
//! ```

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
pub mod plot;
pub mod pool;
pub mod profile;
pub mod shape;
pub mod tensor;
pub mod tolerance;
pub mod train;
pub mod weights;

pub use device::{AdapterSummary, Device, GpuOptions, TuningCache};
pub use error::{Error, FileErrorKind, Result};
pub use shape::{Conv2dConfig, Conv2dGeometry, Padding, Pool2dConfig, Pool2dGeometry};
pub use gpu::{GemmVariant, GpuContext, HostCounters};
pub use tensor::{Indices, Tensor};
pub use tolerance::Tolerance;

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
