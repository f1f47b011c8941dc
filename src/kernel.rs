//! Kernel plumbing: the registry of shaders and kernels, and the one place
//! that turns WGSL into pipelines with explicit bind-group layouts.
//!
//! Adding a kernel: write `shaders/<op>.wgsl`, add a [`Shader`] variant, add a
//! [`KernelId`] variant with its [`KernelSpec`]. The exhaustive matches make
//! the compiler check that every kernel has a spec and every shader a source.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::ops::activation::ActParams;
use crate::ops::batchnorm::BnParams;
use crate::ops::dropout::DropoutParams;
use crate::ops::elementwise::EwParams;
use crate::ops::gemm::GemmParams;
use crate::ops::optim::OptimParams;
use crate::ops::softmax_xent::XentParams;
use crate::ops::im2col::Im2colParams;
use crate::ops::maxpool::PoolParams;
use crate::ops::permute::PermuteParams;
use crate::ops::reduce::ReduceParams;

/// How a kernel binds a buffer; mirrors the WGSL declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
    /// `var<uniform>`: the kernel's params struct.
    Uniform,
}

/// One WGSL file under `shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    Gemm,
    Im2col,
    Col2im,
    Permute,
    Reduce,
    Maxpool,
    Avgpool,
    Batchnorm,
    SoftmaxXent,
    Activation,
    Elementwise,
    Dropout,
    Optim,
}

impl Shader {
    pub const ALL: &'static [Shader] = &[
        Shader::Gemm,
        Shader::Im2col,
        Shader::Col2im,
        Shader::Permute,
        Shader::Reduce,
        Shader::Maxpool,
        Shader::Avgpool,
        Shader::Batchnorm,
        Shader::SoftmaxXent,
        Shader::Activation,
        Shader::Elementwise,
        Shader::Dropout,
        Shader::Optim,
    ];

    /// The file stem: `shaders/<stem>.wgsl`, `src/ops/<stem>.rs`.
    pub fn stem(self) -> &'static str {
        match self {
            Shader::Gemm => "gemm",
            Shader::Im2col => "im2col",
            Shader::Col2im => "col2im",
            Shader::Permute => "permute",
            Shader::Reduce => "reduce",
            Shader::Maxpool => "maxpool",
            Shader::Avgpool => "avgpool",
            Shader::Batchnorm => "batchnorm",
            Shader::SoftmaxXent => "softmax_xent",
            Shader::Activation => "activation",
            Shader::Elementwise => "elementwise",
            Shader::Dropout => "dropout",
            Shader::Optim => "optim",
        }
    }

    pub fn source(self) -> &'static str {
        match self {
            Shader::Gemm => include_str!("../shaders/gemm.wgsl"),
            Shader::Im2col => include_str!("../shaders/im2col.wgsl"),
            Shader::Col2im => include_str!("../shaders/col2im.wgsl"),
            Shader::Permute => include_str!("../shaders/permute.wgsl"),
            Shader::Reduce => include_str!("../shaders/reduce.wgsl"),
            Shader::Maxpool => include_str!("../shaders/maxpool.wgsl"),
            Shader::Avgpool => include_str!("../shaders/avgpool.wgsl"),
            Shader::Batchnorm => include_str!("../shaders/batchnorm.wgsl"),
            Shader::SoftmaxXent => include_str!("../shaders/softmax_xent.wgsl"),
            Shader::Activation => include_str!("../shaders/activation.wgsl"),
            Shader::Elementwise => include_str!("../shaders/elementwise.wgsl"),
            Shader::Dropout => include_str!("../shaders/dropout.wgsl"),
            Shader::Optim => include_str!("../shaders/optim.wgsl"),
        }
    }
}

/// Every pipeline the library can create.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelId {
    GemmBlocked,
    /// gemm_blocked with 16×16 blocks, for large GEMMs on CPU adapters.
    GemmBlockedWide,
    GemmTiled,
    Im2col,
    Col2im,
    PermuteSwap,
    ReduceRows,
    MaxpoolForward,
    MaxpoolBackward,
    AvgpoolForward,
    AvgpoolBackward,
    BatchnormStats,
    BatchnormForward,
    BatchnormBackwardReduce,
    BatchnormBackwardDx,
    SoftmaxXentForward,
    SoftmaxForward,
    ActivationForward,
    ActivationBackward,
    ElementwiseAdd,
    ElementwiseCombine,
    ElementwiseFill,
    BiasAdd,
    BiasGrad,
    CombineSign,
    ClipScale,
    DropoutApply,
    SgdStep,
    AdamStep,
}

/// What a pipeline is made of.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// Label for every wgpu object of this kernel.
    pub name: &'static str,
    pub shader: Shader,
    pub entry: &'static str,
    /// One entry per `@binding(i)`, in order.
    pub bindings: &'static [Access],
    /// `size_of` the Rust params struct; `tests/shaders.rs` checks it against WGSL.
    pub params_size: usize,
    /// Values for the shader's `override` constants.
    pub constants: &'static [(&'static str, f64)],
}

impl KernelId {
    pub const ALL: &'static [KernelId] = &[
        KernelId::GemmBlocked,
        KernelId::GemmBlockedWide,
        KernelId::GemmTiled,
        KernelId::Im2col,
        KernelId::Col2im,
        KernelId::PermuteSwap,
        KernelId::ReduceRows,
        KernelId::MaxpoolForward,
        KernelId::MaxpoolBackward,
        KernelId::AvgpoolForward,
        KernelId::AvgpoolBackward,
        KernelId::BatchnormStats,
        KernelId::BatchnormForward,
        KernelId::BatchnormBackwardReduce,
        KernelId::BatchnormBackwardDx,
        KernelId::SoftmaxXentForward,
        KernelId::SoftmaxForward,
        KernelId::ActivationForward,
        KernelId::ActivationBackward,
        KernelId::ElementwiseAdd,
        KernelId::ElementwiseCombine,
        KernelId::ElementwiseFill,
        KernelId::BiasAdd,
        KernelId::BiasGrad,
        KernelId::CombineSign,
        KernelId::ClipScale,
        KernelId::DropoutApply,
        KernelId::SgdStep,
        KernelId::AdamStep,
    ];

    pub fn spec(self) -> KernelSpec {
        use Access::*;
        const GEMM_BINDINGS: &[Access] = &[Read, Read, ReadWrite, Uniform];
        const UNARY: &[Access] = &[Read, ReadWrite, Uniform];
        const BINARY: &[Access] = &[Read, Read, ReadWrite, Uniform];
        const BN: &[Access] = &[Read, Read, Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite, Uniform];
        const XENT: &[Access] = &[Read, Read, ReadWrite, ReadWrite, Uniform];
        const OPTIM: &[Access] = &[ReadWrite, Read, ReadWrite, ReadWrite, Uniform];
        // One invocation per element: 256 wide, the WGSL default.
        let elementwise = |name: &'static str, shader: Shader, bindings: &'static [Access], params_size: usize| KernelSpec {
            name,
            shader,
            entry: name,
            bindings,
            params_size,
            constants: &[],
        };
        let gemm = |name: &'static str, constants: &'static [(&'static str, f64)]| KernelSpec {
            name,
            shader: Shader::Gemm,
            entry: name,
            bindings: GEMM_BINDINGS,
            params_size: size_of::<GemmParams>(),
            constants,
        };
        match self {
            KernelId::GemmBlocked => gemm("gemm_blocked", &[("WG_X", 8.0), ("WG_Y", 8.0)]),
            KernelId::GemmBlockedWide => gemm("gemm_blocked_wide", &[("WG_X", 8.0), ("WG_Y", 8.0)]),
            KernelId::GemmTiled => gemm("gemm_tiled", &[("WG_X", 16.0), ("WG_Y", 16.0), ("TILE_K", 16.0)]),
            KernelId::Im2col => elementwise("im2col", Shader::Im2col, UNARY, size_of::<Im2colParams>()),
            KernelId::Col2im => elementwise("col2im", Shader::Col2im, UNARY, size_of::<Im2colParams>()),
            KernelId::PermuteSwap => elementwise("permute_swap", Shader::Permute, &[Read, Read, ReadWrite, Uniform], size_of::<PermuteParams>()),
            KernelId::ReduceRows => elementwise("reduce_rows", Shader::Reduce, UNARY, size_of::<ReduceParams>()),
            KernelId::MaxpoolForward => elementwise("maxpool_forward", Shader::Maxpool, &[Read, ReadWrite, ReadWrite, Uniform], size_of::<PoolParams>()),
            KernelId::MaxpoolBackward => elementwise("maxpool_backward", Shader::Maxpool, &[Read, ReadWrite, ReadWrite, Uniform], size_of::<PoolParams>()),
            KernelId::AvgpoolForward => elementwise("avgpool_forward", Shader::Avgpool, UNARY, size_of::<PoolParams>()),
            KernelId::AvgpoolBackward => elementwise("avgpool_backward", Shader::Avgpool, UNARY, size_of::<PoolParams>()),
            KernelId::BatchnormStats => elementwise("batchnorm_stats", Shader::Batchnorm, BN, size_of::<BnParams>()),
            KernelId::BatchnormForward => elementwise("batchnorm_forward", Shader::Batchnorm, BN, size_of::<BnParams>()),
            KernelId::BatchnormBackwardReduce => elementwise("batchnorm_backward_reduce", Shader::Batchnorm, BN, size_of::<BnParams>()),
            KernelId::BatchnormBackwardDx => elementwise("batchnorm_backward_dx", Shader::Batchnorm, BN, size_of::<BnParams>()),
            KernelId::SoftmaxXentForward => elementwise("softmax_xent_forward", Shader::SoftmaxXent, XENT, size_of::<XentParams>()),
            KernelId::SoftmaxForward => elementwise("softmax_forward", Shader::SoftmaxXent, XENT, size_of::<XentParams>()),
            KernelId::ActivationForward => elementwise("activation_forward", Shader::Activation, BINARY, size_of::<ActParams>()),
            KernelId::ActivationBackward => elementwise("activation_backward", Shader::Activation, BINARY, size_of::<ActParams>()),
            KernelId::ElementwiseAdd => elementwise("elementwise_add", Shader::Elementwise, BINARY, size_of::<EwParams>()),
            KernelId::ElementwiseCombine => elementwise("elementwise_combine", Shader::Elementwise, BINARY, size_of::<EwParams>()),
            KernelId::ElementwiseFill => elementwise("elementwise_fill", Shader::Elementwise, BINARY, size_of::<EwParams>()),
            KernelId::BiasAdd => elementwise("bias_add", Shader::Elementwise, BINARY, size_of::<EwParams>()),
            KernelId::BiasGrad => elementwise("bias_grad", Shader::Elementwise, BINARY, size_of::<EwParams>()),
            KernelId::CombineSign => elementwise("elementwise_combine_sign", Shader::Elementwise, BINARY, size_of::<EwParams>()),
            KernelId::ClipScale => elementwise("clip_scale", Shader::Elementwise, BINARY, size_of::<EwParams>()),
            KernelId::DropoutApply => elementwise("dropout_apply", Shader::Dropout, UNARY, size_of::<DropoutParams>()),
            KernelId::SgdStep => elementwise("sgd_step", Shader::Optim, OPTIM, size_of::<OptimParams>()),
            KernelId::AdamStep => elementwise("adam_step", Shader::Optim, OPTIM, size_of::<OptimParams>()),
        }
    }

    /// The value of one of the spec's override constants, or the WGSL default.
    pub fn constant(self, name: &str, default: u32) -> u32 {
        self.spec().constants.iter().find(|(n, _)| *n == name).map_or(default, |(_, v)| *v as u32)
    }
}

/// A compiled kernel.
pub(crate) struct Kernel {
    pub spec: KernelSpec,
    pub layout: wgpu::BindGroupLayout,
    pub pipeline: wgpu::ComputePipeline,
}

/// Pipelines are created on first use (or by `GpuContext::prepare`) and kept.
#[derive(Default)]
pub(crate) struct KernelCache {
    modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    kernels: Mutex<HashMap<KernelId, Arc<Kernel>>>,
    /// Pipelines built so far (tests check that a training step builds none
    /// after the trainer has prepared its model's).
    pub built: std::sync::atomic::AtomicUsize,
}

/// Runs `f` inside validation and out-of-memory error scopes; a captured
/// error names the kernel.
fn scoped<R>(device: &wgpu::Device, kernel: &'static str, f: impl FnOnce() -> R) -> Result<R> {
    match crate::gpu::capture(device, f) {
        (out, None) => Ok(out),
        (_, Some(e)) => Err(Error::Kernel { kernel, msg: e.to_string() }),
    }
}

/// Compiles WGSL into a module, turning a parse or validation failure into
/// `Error::Kernel` (the device stays usable).
pub(crate) fn compile_module(device: &wgpu::Device, label: &'static str, source: &str) -> Result<wgpu::ShaderModule> {
    scoped(device, label, || {
        device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(source.into()) })
    })
}

/// A compute pipeline with the layout wgpu derives from the shader.
pub(crate) fn compile_auto(device: &wgpu::Device, label: &'static str, source: &str, entry: &str) -> Result<wgpu::ComputePipeline> {
    let module = compile_module(device, label, source)?;
    scoped(device, label, || {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        })
    })
}

impl KernelCache {
    pub(crate) fn get(&self, device: &wgpu::Device, id: KernelId) -> Result<Arc<Kernel>> {
        if let Some(k) = self.kernels.lock().unwrap().get(&id) {
            return Ok(k.clone());
        }
        let spec = id.spec();
        let module = self.module(device, spec)?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
            .bindings
            .iter()
            .enumerate()
            .map(|(i, access)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match access {
                        Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                        Access::Uniform => wgpu::BufferBindingType::Uniform,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let kernel = scoped(device, spec.name, || {
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(spec.name), entries: &entries });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: spec.constants,
                    // Kernels initialise the workgroup memory they read; zeroing it
                    // costs a barrier-heavy prologue on CPU adapters.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            Arc::new(Kernel { spec, layout, pipeline })
        })?;
        let mut map = self.kernels.lock().unwrap();
        // Two threads may have built the same kernel at once; keep the first.
        if let Some(k) = map.get(&id) {
            return Ok(k.clone());
        }
        map.insert(id, kernel.clone());
        self.built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(kernel)
    }

    pub(crate) fn is_built(&self, id: KernelId) -> bool {
        self.kernels.lock().unwrap().contains_key(&id)
    }

    pub(crate) fn module(&self, device: &wgpu::Device, spec: KernelSpec) -> Result<wgpu::ShaderModule> {
        if let Some(m) = self.modules.lock().unwrap().get(&spec.shader) {
            return Ok(m.clone());
        }
        let module = compile_module(device, spec.name, spec.shader.source())?;
        self.modules.lock().unwrap().insert(spec.shader, module.clone());
        Ok(module)
    }
}
