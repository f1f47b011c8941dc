//! Kernel mechanism: how a kernel is described, and the one place that turns
//! WGSL into pipelines with explicit bind-group layouts. It knows no op: each
//! op declares its own kernels beside its wrapper (`src/ops/<stem>.rs`), as
//! typed [`Kernel`] values, and [`crate::ops::kernels`] lists them all.
//!
//! Adding a kernel: write `shaders/<stem>.wgsl`, then in `src/ops/<stem>.rs`
//!
//! ```text
//! const SHADER: Shader = Shader::new("maxpool", include_str!("../../shaders/maxpool.wgsl"));
//! pub(crate) static MAXPOOL_FORWARD: Kernel<PoolParams> =
//!     Kernel::new(&SHADER, "maxpool_forward", &[Read, ReadWrite, ReadWrite, Read, Uniform]);
//! ```
//!
//! and dispatch it with `ctx.dispatch(&MAXPOOL_FORWARD, &params, &buffers, grid)`:
//! a params struct of the wrong type does not compile. `tests/shaders.rs`
//! checks each declaration's bindings, params size and override names
//! against its WGSL.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// How a kernel binds a buffer; mirrors the WGSL declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `var<storage, read>`
    Read,
    /// `var<storage, read_write>`
    ReadWrite,
    /// `var<uniform>`: the kernel's params struct.
    Uniform,
    /// Declared in the WGSL file but not used by this entry point: left out
    /// of its layout and bind group (the caller still passes a buffer, which
    /// is ignored), so the kernel needs only the storage buffers it uses.
    Unused,
}

/// One WGSL file: `shaders/<stem>.wgsl`, owned by `src/ops/<stem>.rs`.
#[derive(Debug)]
pub struct Shader {
    /// The op stem: `shaders/<stem>.wgsl`.
    pub stem: &'static str,
    /// The WGSL source.
    pub source: &'static str,
}

impl Shader {
    /// A shader named by its stem.
    pub const fn new(stem: &'static str, source: &'static str) -> Shader {
        Shader { stem, source }
    }
}

/// What a pipeline is made of, without its params type: the form the cache,
/// the warm-up and `tests/shaders.rs` work with.
#[derive(Debug)]
pub struct KernelDef {
    /// `<stem>_<phase>`: the label of every wgpu object of this kernel and
    /// the pipeline cache key (unique, checked by a test). Usually the entry point too.
    pub name: &'static str,
    /// The WGSL entry point; differs from `name` for a variant of an entry
    /// point with other override constants.
    pub entry: &'static str,
    /// The shader holding the entry point.
    pub shader: &'static Shader,
    /// One entry per `@binding(i)`, in order.
    pub bindings: &'static [Access],
    /// `size_of` the Rust params struct; `tests/shaders.rs` checks it against WGSL.
    pub params_size: usize,
    /// Values for the shader's `override` constants.
    pub constants: &'static [(&'static str, f64)],
}

impl KernelDef {
    /// The value of one of the override constants, or `default` (the WGSL's).
    pub fn constant(&self, name: &str, default: u32) -> u32 {
        self.constants.iter().find(|(n, _)| *n == name).map_or(default, |(_, v)| *v as u32)
    }

    /// Storage (non-uniform) bindings, which a dispatch fills in order
    /// (an `Unused` one takes a buffer and ignores it).
    pub fn storage_bindings(&self) -> usize {
        self.bindings.iter().filter(|a| **a != Access::Uniform).count()
    }

    /// Storage buffers the kernel binds: what counts against the device's
    /// `max_storage_buffers_per_shader_stage`.
    pub fn used_storage_bindings(&self) -> usize {
        self.bindings.iter().filter(|a| matches!(a, Access::Read | Access::ReadWrite)).count()
    }
}

/// What one dispatch must do at the least: floating-point operations and
/// bytes moved to and from memory (each operand once). The profile divides
/// these by a GPU's peaks for a napkin estimate of its time there.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    /// Floating-point operations.
    pub flops: f64,
    /// Bytes read and written.
    pub bytes: f64,
}

impl Work {
    /// `f32s` values moved, `flops` operations.
    pub fn f32s(f32s: usize, flops: usize) -> Work {
        Work { flops: flops as f64, bytes: 4.0 * f32s as f64 }
    }
}

fn no_work<P>(_: &P) -> Work {
    Work::default()
}

/// A kernel whose params struct is `P`: `GpuContext::dispatch` takes a `&P`,
/// so the compiler checks the pairing. `work` is its napkin math, from the
/// same params.
#[derive(Debug)]
pub struct Kernel<P> {
    /// The untyped declaration (name, entry, bindings, …).
    pub def: KernelDef,
    /// FLOPs and bytes of one dispatch with these params (for the profile's napkin model).
    pub work: fn(&P) -> Work,
    _params: PhantomData<fn(P)>,
}

impl<P: bytemuck::Pod> Kernel<P> {
    /// A kernel of `shader` at entry point `name`, with no override constants.
    pub const fn new(shader: &'static Shader, name: &'static str, bindings: &'static [Access]) -> Kernel<P> {
        Kernel { def: KernelDef { name, entry: name, shader, bindings, params_size: size_of::<P>(), constants: &[] }, work: no_work::<P>, _params: PhantomData }
    }

    /// The same entry point under another name (a variant with its own constants).
    pub const fn named(self, name: &'static str) -> Kernel<P> {
        let KernelDef { entry, shader, bindings, params_size, constants, .. } = self.def;
        Kernel { def: KernelDef { name, entry, shader, bindings, params_size, constants }, work: self.work, _params: PhantomData }
    }

    /// The same kernel with values for its `override` constants.
    pub const fn with_constants(self, constants: &'static [(&'static str, f64)]) -> Kernel<P> {
        let KernelDef { name, entry, shader, bindings, params_size, .. } = self.def;
        Kernel { def: KernelDef { name, entry, shader, bindings, params_size, constants }, work: self.work, _params: PhantomData }
    }

    /// The same kernel with its napkin math: the work one dispatch with these params does.
    pub const fn with_work(self, work: fn(&P) -> Work) -> Kernel<P> {
        Kernel { def: self.def, work, _params: PhantomData }
    }
}

/// A compiled kernel.
pub(crate) struct Compiled {
    pub def: &'static KernelDef,
    pub layout: wgpu::BindGroupLayout,
    pub pipeline: wgpu::ComputePipeline,
}

/// Pipelines are created on first use (or by `GpuContext::prepare`) and kept,
/// keyed by kernel name.
#[derive(Default)]
pub(crate) struct KernelCache {
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    kernels: Mutex<HashMap<&'static str, Arc<Compiled>>>,
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
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
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
    pub(crate) fn get(&self, device: &wgpu::Device, def: &'static KernelDef) -> Result<Arc<Compiled>> {
        if let Some(k) = self.kernels.lock().unwrap().get(def.name) {
            return Ok(k.clone());
        }
        let module = self.module(device, def)?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = def
            .bindings
            .iter()
            .enumerate()
            .filter(|(_, access)| **access != Access::Unused)
            .map(|(i, access)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match access {
                        Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                        Access::Uniform | Access::Unused => wgpu::BufferBindingType::Uniform,
                    },
                    // The params uniform is a slot of a per-submission chunk.
                    has_dynamic_offset: *access == Access::Uniform,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let kernel = scoped(device, def.name, || {
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(def.name), entries: &entries });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(def.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(def.name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(def.entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: def.constants,
                    // Kernels initialise the workgroup memory they read; zeroing it
                    // costs a barrier-heavy prologue on CPU adapters.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            Arc::new(Compiled { def, layout, pipeline })
        })?;
        let mut map = self.kernels.lock().unwrap();
        // Two threads may have built the same kernel at once; keep the first.
        if let Some(k) = map.get(def.name) {
            return Ok(k.clone());
        }
        map.insert(def.name, kernel.clone());
        self.built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(kernel)
    }

    pub(crate) fn names(&self) -> Vec<&'static str> {
        self.kernels.lock().unwrap().keys().copied().collect()
    }

    pub(crate) fn is_built(&self, def: &KernelDef) -> bool {
        self.kernels.lock().unwrap().contains_key(def.name)
    }

    pub(crate) fn module(&self, device: &wgpu::Device, def: &'static KernelDef) -> Result<wgpu::ShaderModule> {
        if let Some(m) = self.modules.lock().unwrap().get(def.shader.stem) {
            return Ok(m.clone());
        }
        let module = compile_module(device, def.name, def.shader.source)?;
        self.modules.lock().unwrap().insert(def.shader.stem, module.clone());
        Ok(module)
    }
}

/// The most any kernel the library may choose needs of a device, the
/// fallbacks taken where an op has one (the multi-tensor optimiser's 28
/// storage buffers fall back to two tensors a dispatch). `tests/shaders.rs`
/// derives these from the kernels themselves and checks they agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// `max_storage_buffers_per_shader_stage`
    pub storage_buffers_per_stage: u32,
    /// `max_compute_invocations_per_workgroup`
    pub invocations_per_workgroup: u32,
    /// `max_compute_workgroup_size_x`
    pub workgroup_size_x: u32,
    /// `max_compute_workgroup_size_y`
    pub workgroup_size_y: u32,
    /// `max_compute_workgroup_storage_size`, bytes
    pub workgroup_storage_bytes: u32,
}

/// See [`Needs`].
pub const NEEDS: Needs = Needs { storage_buffers_per_stage: 8, invocations_per_workgroup: 256, workgroup_size_x: 256, workgroup_size_y: 16, workgroup_storage_bytes: 16384 };

/// What `limits` lacks of [`NEEDS`], as a sentence naming each limit, what
/// the device offers and what the library needs; `None` when nothing.
pub fn short_of(limits: &wgpu::Limits) -> Option<String> {
    let n = NEEDS;
    let rows = [
        ("max_storage_buffers_per_shader_stage", limits.max_storage_buffers_per_shader_stage, n.storage_buffers_per_stage),
        ("max_compute_invocations_per_workgroup", limits.max_compute_invocations_per_workgroup, n.invocations_per_workgroup),
        ("max_compute_workgroup_size_x", limits.max_compute_workgroup_size_x, n.workgroup_size_x),
        ("max_compute_workgroup_size_y", limits.max_compute_workgroup_size_y, n.workgroup_size_y),
        ("max_compute_workgroup_storage_size", limits.max_compute_workgroup_storage_size, n.workgroup_storage_bytes),
    ];
    let short: Vec<String> = rows.iter().filter(|(_, have, need)| have < need).map(|(name, have, need)| format!("{name} is {have}, wgpu-cnn needs at least {need}")).collect();
    (!short.is_empty()).then(|| format!("the device's limits are below what wgpu-cnn's kernels need: {} (see the README's limits table)", short.join("; ")))
}
