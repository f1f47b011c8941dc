//! The f32 tensor: a shape and its data, on the CPU (ndarray) or a GPU (a pooled buffer).

use std::sync::Arc;

use ndarray::{ArcArray, ArrayBase, ArrayD, Dimension, IxDyn};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::gpu::GpuBuffer;
use crate::shape::check_nonempty;

/// An f32 tensor in row-major (NCHW for images) order, living on one device.
///
/// Tensors are values. On the GPU, `clone` shares the buffer and the first
/// in-place write to a shared buffer copies it first (copy-on-write), so a
/// layer can keep its input for backward without a copy per step.
pub struct Tensor {
    shape: Vec<usize>,
    pub(crate) data: Data,
}

/// CPU storage: shared on clone, copied on first mutable access (like the GPU's).
pub(crate) type CpuArray = ArcArray<f32, IxDyn>;

pub(crate) enum Data {
    Cpu(CpuArray),
    Gpu(Arc<GpuBuffer>),
}

impl Tensor {
    /// A tensor holding `data` (row-major) with the given shape.
    pub fn from_vec(device: &Device, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        let n = check_nonempty("Tensor::from_vec", "the tensor", shape)?;
        if data.len() != n {
            return Err(Error::DataLength { op: "Tensor::from_vec", shape: shape.to_vec(), expected: n, got: data.len() });
        }
        Ok(match device {
            Device::Cpu => {
                let array = ArrayD::from_shape_vec(IxDyn(shape), data).expect("length checked above");
                Tensor { shape: shape.to_vec(), data: Data::Cpu(array.into_shared()) }
            }
            Device::Gpu(ctx) => {
                let buf = ctx.upload_new("Tensor::from_vec", n, bytemuck::cast_slice(&data))?;
                Tensor { shape: shape.to_vec(), data: Data::Gpu(Arc::new(buf)) }
            }
        })
    }

    /// A tensor holding a copy of `data` (row-major).
    pub fn from_slice(device: &Device, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Tensor::from_vec(device, shape, data.to_vec())
    }

    /// A tensor holding a copy of an ndarray array of any dimension and layout.
    pub fn from_array<S, D>(device: &Device, array: &ArrayBase<S, D>) -> Result<Tensor>
    where
        S: ndarray::Data<Elem = f32>,
        D: Dimension,
    {
        let shape = array.shape().to_vec();
        let data: Vec<f32> = array.iter().copied().collect();
        Tensor::from_vec(device, &shape, data)
    }

    /// A tensor of zeros.
    pub fn zeros(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Tensor::full(device, shape, 0.0)
    }

    /// A tensor with every element `value`.
    pub fn full(device: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        let n = check_nonempty("Tensor::full", "the tensor", shape)?;
        Tensor::from_vec(device, shape, vec![value; n])
    }

    /// A tensor whose contents are unspecified until written (GPU: a pooled
    /// buffer as found; CPU: zeros). For op outputs that are fully overwritten.
    pub(crate) fn uninit(device: &Device, op: &'static str, shape: &[usize]) -> Result<Tensor> {
        let n = check_nonempty(op, "the output", shape)?;
        Ok(match device {
            Device::Cpu => Tensor { shape: shape.to_vec(), data: Data::Cpu(ArrayD::zeros(IxDyn(shape)).into_shared()) },
            Device::Gpu(ctx) => Tensor { shape: shape.to_vec(), data: Data::Gpu(Arc::new(ctx.alloc(op, n)?)) },
        })
    }

    /// A CPU tensor from data computed by a CPU reference op (no copy).
    pub(crate) fn from_cpu(shape: &[usize], data: Vec<f32>) -> Tensor {
        let array = ArrayD::from_shape_vec(IxDyn(shape), data).expect("CPU ops produce shape-sized data");
        Tensor { shape: shape.to_vec(), data: Data::Cpu(array.into_shared()) }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of axes.
    pub fn ndim(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The device this tensor lives on.
    pub fn device(&self) -> Device {
        match &self.data {
            Data::Cpu(_) => Device::Cpu,
            Data::Gpu(buf) => Device::Gpu(buf.context().clone()),
        }
    }

    /// The same data under another shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        let n = check_nonempty("Tensor::reshape", "the new shape", shape)?;
        if n != self.numel() {
            return Err(Error::Shape {
                op: "Tensor::reshape",
                msg: format!("cannot view {:?} ({} elements) as {shape:?} ({n} elements)", self.shape, self.numel()),
            });
        }
        if let Data::Cpu(a) = self.data {
            let a = a.into_shape_with_order(IxDyn(shape)).expect("element count checked above");
            self.data = Data::Cpu(a);
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Copies the data to the host, row-major. On the GPU this submits pending
    /// work and waits: call it when you need the numbers, not per op.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.data {
            Data::Cpu(_) => Ok(self.host("Tensor::to_vec")?.to_vec()),
            Data::Gpu(buf) => buf.context().read(buf.buffer(), self.numel()),
        }
    }

    /// Copies the data to the host as an ndarray array.
    pub fn to_array(&self) -> Result<ArrayD<f32>> {
        let v = self.to_vec()?;
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).map_err(|e| Error::Shape { op: "Tensor::to_array", msg: e.to_string() })
    }

    /// A copy of this tensor on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(device, &self.shape, self.to_vec()?)
    }

    /// Items `start..start + len` of the leading axis, as a new tensor (a
    /// device-side copy; no readback).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Tensor> {
        let Some(&rows) = self.shape.first() else {
            return Err(Error::Shape { op: "Tensor::narrow", msg: "a scalar has no leading axis".into() });
        };
        if len == 0 || start + len > rows {
            return Err(Error::Shape { op: "Tensor::narrow", msg: format!("rows {start}..{} of a tensor of shape {:?}", start + len, self.shape) });
        }
        let row = self.numel() / rows;
        let mut shape = self.shape.clone();
        shape[0] = len;
        match &self.data {
            Data::Cpu(_) => {
                let v = self.host("Tensor::narrow")?[start * row..(start + len) * row].to_vec();
                Tensor::from_vec(&Device::Cpu, &shape, v)
            }
            Data::Gpu(src) => {
                let ctx = src.context();
                let dst = ctx.alloc("Tensor::narrow", len * row)?;
                let (s, d) = (src.buffer(), dst.buffer());
                let bytes = (len * row * 4) as u64;
                ctx.copy(s.window((start * row * 4) as u64, bytes), d, bytes);
                Ok(Tensor { shape, data: Data::Gpu(Arc::new(dst)) })
            }
        }
    }

    /// Replaces the contents with host data of the same length.
    pub fn write(&mut self, data: &[f32]) -> Result<()> {
        if data.len() != self.numel() {
            return Err(Error::DataLength { op: "Tensor::write", shape: self.shape.clone(), expected: self.numel(), got: data.len() });
        }
        match &mut self.data {
            Data::Cpu(_) => self.host_mut("Tensor::write")?.copy_from_slice(data),
            // Shared: the whole content is replaced, so a fresh buffer needs no copy.
            Data::Gpu(buf) if Arc::strong_count(buf) > 1 => {
                let ctx = buf.context().clone();
                let fresh = ctx.upload_new("Tensor::write", data.len(), bytemuck::cast_slice(data))?;
                *buf = Arc::new(fresh);
            }
            Data::Gpu(buf) => {
                buf.forget_half();
                buf.context().overwrite(buf.buffer(), data)?
            }
        }
        Ok(())
    }

    /// Before an in-place write: a GPU buffer shared with another tensor is
    /// copied so the write is not seen through the other one.
    pub(crate) fn make_unique(&mut self) -> Result<()> {
        if let Data::Gpu(buf) = &mut self.data {
            if Arc::strong_count(buf) > 1 {
                let ctx = buf.context().clone();
                let dst = ctx.alloc("Tensor::make_unique", buf.len())?;
                let (s, d) = (buf.buffer(), dst.buffer());
                ctx.copy(s, d, (buf.len() * 4) as u64);
                *buf = Arc::new(dst);
            } else {
                buf.forget_half();
            }
        }
        Ok(())
    }

    /// `self[at..at + src.numel()] = src` (flat), on the device (no readback).
    pub(crate) fn set_from(&mut self, at: usize, src: &Tensor) -> Result<()> {
        same_device("Tensor::set_from", &[self, src])?;
        let n = src.numel();
        if at + n > self.numel() {
            return Err(Error::Shape { op: "Tensor::set_from", msg: format!("elements {at}..{} of a tensor of shape {:?}", at + n, self.shape) });
        }
        self.make_unique()?;
        match self.device() {
            Device::Cpu => {
                let v = src.host("Tensor::set_from")?.to_vec();
                self.host_mut("Tensor::set_from")?[at..at + n].copy_from_slice(&v);
            }
            Device::Gpu(ctx) => {
                ctx.alive()?;
                let (s, d) = (src.buffer("Tensor::set_from")?, self.buffer("Tensor::set_from")?);
                let bytes = (n * 4) as u64;
                ctx.copy(s, d.window((at * 4) as u64, bytes), bytes);
            }
        }
        Ok(())
    }

    pub(crate) fn gpu(&self) -> Option<&GpuBuffer> {
        match &self.data {
            Data::Gpu(b) => Some(b.as_ref()),
            Data::Cpu(_) => None,
        }
    }

    /// The CPU data, row-major, for `op`'s CPU twin; an error if the tensor lives on a GPU.
    pub(crate) fn host(&self, op: &'static str) -> Result<&[f32]> {
        match &self.data {
            Data::Cpu(a) => a.as_slice().ok_or_else(|| not_contiguous(op, &self.shape)),
            Data::Gpu(_) => Err(wrong_device(op, "the CPU", self)),
        }
    }

    /// [`Tensor::host`], writable (a shared array is copied first).
    pub(crate) fn host_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        let dev = self.device();
        match &mut self.data {
            Data::Cpu(a) => a.as_slice_mut().ok_or_else(|| not_contiguous(op, &self.shape)),
            Data::Gpu(_) => Err(Error::DeviceMismatch { op, a: "the CPU".into(), b: dev.to_string() }),
        }
    }

    /// The GPU buffer, for `op`'s kernels; an error if the tensor lives on the CPU.
    pub(crate) fn buffer(&self, op: &'static str) -> Result<crate::gpu::Bind<'_>> {
        match &self.data {
            Data::Gpu(b) => Ok(b.buffer()),
            Data::Cpu(_) => Err(wrong_device(op, "a GPU", self)),
        }
    }

    /// A GPU tensor of `shape` whose contents are unspecified until a kernel writes them.
    pub(crate) fn uninit_gpu(ctx: &Arc<crate::gpu::GpuContext>, op: &'static str, shape: &[usize]) -> Result<Tensor> {
        let n = check_nonempty(op, "the output", shape)?;
        Ok(Tensor { shape: shape.to_vec(), data: Data::Gpu(Arc::new(ctx.alloc(op, n)?)) })
    }
}

fn wrong_device(op: &'static str, want: &str, t: &Tensor) -> Error {
    Error::DeviceMismatch { op, a: want.to_string(), b: t.device().to_string() }
}

fn not_contiguous(op: &'static str, shape: &[usize]) -> Error {
    Error::Shape { op, msg: format!("a tensor of shape {shape:?} is not contiguous in memory") }
}

impl Clone for Tensor {
    /// Shares the data (CPU array or GPU buffer) until one side writes in place.
    fn clone(&self) -> Tensor {
        let data = match &self.data {
            Data::Cpu(a) => Data::Cpu(a.clone()),
            Data::Gpu(b) => Data::Gpu(b.clone()),
        };
        Tensor { shape: self.shape.clone(), data }
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?} on {})", self.shape, if self.gpu().is_some() { "GPU" } else { "CPU" })
    }
}

/// Checks that every operand of `op` lives on the first operand's device.
pub(crate) fn same_device(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let dev = tensors[0].device();
    for t in &tensors[1..] {
        let other = t.device();
        if !dev.same(&other) {
            return Err(Error::DeviceMismatch { op, a: dev.to_string(), b: other.to_string() });
        }
    }
    Ok(dev)
}

/// A u32 tensor of flat indices (max-pooling argmax masks), on one device.
pub struct Indices {
    shape: Vec<usize>,
    pub(crate) data: IndexData,
}

pub(crate) enum IndexData {
    Cpu(Vec<u32>),
    Gpu(GpuBuffer),
}

impl Indices {
    pub(crate) fn new(shape: &[usize], data: IndexData) -> Indices {
        Indices { shape: shape.to_vec(), data }
    }

    /// The shape of the index tensor.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Copies the indices to the host (on the GPU: a submit and a wait).
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        match &self.data {
            IndexData::Cpu(v) => Ok(v.clone()),
            IndexData::Gpu(buf) => {
                let raw = buf.context().read(buf.buffer(), buf.len())?;
                Ok(bytemuck::cast_slice::<f32, u32>(&raw).to_vec())
            }
        }
    }
}

/// An f16 copy of a [`Tensor`] (IEEE binary16, rounded to nearest even), as
/// mixed precision keeps activations for backward: half the bytes. It is
/// storage only (no op takes it): [`HalfTensor::to_f32`] gives a tensor back.
/// On the GPU the halves are packed two to a 32-bit word.
#[derive(Clone)]
pub struct HalfTensor {
    shape: Vec<usize>,
    pub(crate) data: HalfData,
}

#[derive(Clone)]
pub(crate) enum HalfData {
    Cpu(Arc<Vec<u16>>),
    Gpu(Arc<GpuBuffer>),
}

impl HalfTensor {
    pub(crate) fn new(shape: &[usize], data: HalfData) -> HalfTensor {
        HalfTensor { shape: shape.to_vec(), data }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of storage (on the GPU whole 32-bit words: an odd count rounds up).
    pub fn bytes(&self) -> usize {
        match &self.data {
            HalfData::Cpu(v) => v.len() * 2,
            HalfData::Gpu(b) => b.len() * 4,
        }
    }

    /// The device this tensor lives on.
    pub fn device(&self) -> Device {
        match &self.data {
            HalfData::Cpu(_) => Device::Cpu,
            HalfData::Gpu(buf) => Device::Gpu(buf.context().clone()),
        }
    }

    /// The values as f32 (exact), in a new tensor on the same device.
    pub fn to_f32(&self) -> Result<Tensor> {
        crate::ops::cast::cast_to_f32(self)
    }

    /// The binary16 bit patterns, row-major (on the GPU a submit and a wait).
    pub fn to_bits(&self) -> Result<Vec<u16>> {
        match &self.data {
            HalfData::Cpu(v) => Ok(v.to_vec()),
            HalfData::Gpu(buf) => {
                let words = buf.context().read(buf.buffer(), buf.len())?;
                let bits = bytemuck::cast_slice::<f32, u16>(&words);
                Ok(bits[..self.numel()].to_vec())
            }
        }
    }
}

impl std::fmt::Debug for HalfTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HalfTensor({:?} on {})", self.shape, if matches!(self.data, HalfData::Gpu(_)) { "GPU" } else { "CPU" })
    }
}

impl Tensor {
    /// An f16 copy (round to nearest even; beyond ±65504 → ±inf). On the GPU
    /// a second call on the same unchanged buffer returns the first copy
    /// while it lives, so layers that keep the same activation share it.
    pub fn to_half(&self) -> Result<HalfTensor> {
        crate::ops::cast::cast_to_f16(self)
    }
}
