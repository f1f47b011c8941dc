//! The GPU context: device and queue, the buffer pool, the kernel cache, and
//! the recorder that batches every dispatch into one command encoder until
//! the next flush (one submit per training step).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytemuck::Pod;

use crate::device::{choose_adapter, AdapterSummary, GpuOptions, TuningCache};
use crate::error::{Error, Result};
use crate::kernel::{Access, Compiled, Kernel, KernelCache, KernelDef, Work};
use crate::pool::{size_class, BufferKind, BufferPool, PoolStats, SlabRules, Taken, Use};
use crate::profile::{ProfileReport, Profiler};

/// The GEMM kernels (see `shaders/gemm.wgsl`). Without tuning an adapter
/// gets `Blocked` (CPU-type) or `Tiled` (GPUs); with tuning, the fastest of
/// its candidates per shape class (see `ops::gemm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmVariant {
    /// Barrier-free, register-blocked: 8×8 blocks per invocation, 16×16 for
    /// large GEMMs (m ≥ 32, n ≥ 256). For CPU-type adapters.
    Blocked,
    /// Always 8×8 register blocks.
    Blocked8,
    /// Always 16×16 register blocks.
    Blocked16,
    /// Workgroup-memory tiles of 64×64, k-slabs of 16, 4×4 per invocation: for real GPUs.
    Tiled,
    /// Tiles of 32×32 (more workgroups for small GEMMs).
    Tiled32,
    /// Tiles of 64×64 with k-slabs of 32 (fewer barriers per FMA).
    TiledK32,
    /// Tiles of 128×128, 8×8 per invocation, k-slabs of 8.
    Tiled128,
}

impl GemmVariant {
    /// Every variant, in the order the tuner tries them.
    pub const ALL: [GemmVariant; 7] = [
        GemmVariant::Blocked,
        GemmVariant::Blocked8,
        GemmVariant::Blocked16,
        GemmVariant::Tiled,
        GemmVariant::Tiled32,
        GemmVariant::TiledK32,
        GemmVariant::Tiled128,
    ];

    /// The name kept in the tuning table.
    pub fn name(self) -> &'static str {
        match self {
            GemmVariant::Blocked => "blocked",
            GemmVariant::Blocked8 => "blocked8",
            GemmVariant::Blocked16 => "blocked16",
            GemmVariant::Tiled => "tiled",
            GemmVariant::Tiled32 => "tiled32",
            GemmVariant::TiledK32 => "tiled_k32",
            GemmVariant::Tiled128 => "tiled128",
        }
    }

    /// The variant with this name (`blocked`, `tiled`, …), as in tuning files and logs.
    pub fn from_name(name: &str) -> Option<GemmVariant> {
        GemmVariant::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// What the host has asked of wgpu since the device opened: the per-step
/// costs that decide speed on a real GPU, where a small model's step is a
/// few dozen tiny dispatches. Subtract two snapshots for one step's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// Kernel dispatches recorded.
    pub dispatches: u64,
    /// Compute passes begun.
    pub passes: u64,
    /// Bind groups created.
    pub bind_groups: u64,
    /// `queue.write_buffer` calls (params, uploads, overwrites).
    pub queue_writes: u64,
    /// Bytes those writes carried.
    pub bytes_uploaded: u64,
    /// Queue submits.
    pub submits: u64,
}

impl std::ops::Sub for HostCounters {
    type Output = HostCounters;
    fn sub(self, o: HostCounters) -> HostCounters {
        HostCounters {
            dispatches: self.dispatches - o.dispatches,
            passes: self.passes - o.passes,
            bind_groups: self.bind_groups - o.bind_groups,
            queue_writes: self.queue_writes - o.queue_writes,
            bytes_uploaded: self.bytes_uploaded - o.bytes_uploaded,
            submits: self.submits - o.submits,
        }
    }
}

/// An open GPU: create it once (through [`crate::Device::gpu`]) and share it.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter: AdapterSummary,
    limits: wgpu::Limits,
    /// The optional features the device was opened with.
    features: wgpu::Features,
    pub(crate) pool: BufferPool,
    kernels: KernelCache,
    gemm_variant: GemmVariant,
    /// Commands recorded since the last submit: the encoder, its open
    /// compute pass and the params of its dispatches.
    rec: Mutex<Recorder>,
    /// Bind groups by kernel, storage buffers and params chunk: pooled buffers
    /// come back in the same order every step, so a steady step creates none.
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    /// True while `rec` holds unsubmitted work; written only under its lock.
    recording: AtomicBool,
    /// wgpu errors raised outside an error scope, reported at the next flush.
    errors: Arc<Mutex<Vec<String>>>,
    /// Two small storage buffers bound where a kernel has an unused read-write
    /// slot (binding one buffer twice as read-write is a usage conflict).
    scratch: [wgpu::Buffer; 3],
    profiler: Option<Mutex<Profiler>>,
    /// Set by wgpu's device-lost callback (or when we see the device is invalid).
    lost: Arc<Mutex<Option<String>>>,
    /// How long a wait for the GPU may take before it is an error.
    timeout: Option<Duration>,
    /// The kernels recorded since the last submit, so a failed submit can name them.
    recorded: Mutex<Vec<&'static str>>,
    /// While a dry run is on (see [`GpuContext::dry_run`]): the kernels that
    /// would have been dispatched, in order of first use.
    /// Per thread, since threads share a device and only the one in a dry
    /// run may have its dispatches noted instead of recorded.
    dry: Mutex<HashMap<std::thread::ThreadId, Vec<&'static KernelDef>>>,
    /// Threads whose dispatches the profile leaves out (tuning runs).
    untimed: Mutex<std::collections::HashSet<std::thread::ThreadId>>,
    /// Cap on the convolution's column-matrix bytes (`GpuOptions::max_chunk_bytes`).
    max_chunk_bytes: Option<u64>,
    /// Cap on the pool's device bytes (`GpuOptions::memory_budget`).
    memory_budget: Option<u64>,
    counters: Mutex<HostCounters>,
    /// Dispatches gated on the device (see [`GpuContext::gated`]).
    gate: Mutex<Option<Gate>>,
    /// Tuned choices by key (an op's name for a shape class → a variant's
    /// name), loaded from and saved to `tuning_file`.
    tuning: Mutex<HashMap<String, String>>,
    tuning_file: Option<std::path::PathBuf>,
    autotune: bool,
}

/// Dispatches recorded as indirect ones whose workgroup counts a kernel
/// writes on the device: dynamic loss scaling zeroes them to skip the
/// optimiser's update without a readback (`shaders/loss_scale.wgsl`).
struct Gate {
    /// `[count, x, y, z, x, y, z, …]`: the gated dispatches' real counts.
    template: wgpu::Buffer,
    /// The counts the dispatches read (`INDIRECT`), written on the device.
    args: wgpu::Buffer,
    /// The thread recording gated dispatches now, and what it has recorded.
    active: Option<std::thread::ThreadId>,
    recorded: Vec<u32>,
    /// What `template` holds.
    written: Vec<u32>,
}

/// Gated dispatches a step may record (the optimiser's: a few per 7 tensors).
const GATE_SLOTS: usize = 4096;

/// Runs `f` inside validation and out-of-memory error scopes; returns what they caught.
pub(crate) fn capture<R>(device: &wgpu::Device, f: impl FnOnce() -> R) -> (R, Option<wgpu::Error>) {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = f();
    let v = pollster::block_on(validation.pop());
    let o = pollster::block_on(oom.pop());
    (out, v.or(o))
}

/// Bind-group entries in declaration order: `params_size` bytes of the
/// params chunk for the uniform (bound at a dynamic offset), `storage` in
/// order for the rest (the caller checked the count).
fn bind_entries<'a>(bindings: &[Access], uniform: &'a wgpu::Buffer, params_size: usize, storage: &[Bind<'a>]) -> Vec<wgpu::BindGroupEntry<'a>> {
    let mut next = storage.iter();
    bindings
        .iter()
        .enumerate()
        .filter_map(|(i, access)| {
            let resource = match access {
                Access::Uniform => wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: uniform, offset: 0, size: wgpu::BufferSize::new(params_size as u64) }),
                Access::Unused => {
                    next.next()?;
                    return None;
                }
                _ => {
                    let b = next.next()?;
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b.buffer, offset: b.offset, size: b.size.and_then(wgpu::BufferSize::new) })
                }
            };
            Some(wgpu::BindGroupEntry { binding: i as u32, resource })
        })
        .collect()
}

/// A cached bind group's identity: kernel, storage bindings, params chunk.
type BindKey = (&'static str, Vec<(wgpu::Buffer, u64, Option<u64>)>, usize);

/// One storage binding: a whole buffer, or a window of one (`offset` a
/// multiple of the adapter's `min_storage_buffer_offset_alignment`, `size`
/// bytes): how a kernel reaches a tensor larger than one binding may cover.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bind<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub offset: u64,
    /// `None`: to the end of the buffer.
    pub size: Option<u64>,
}

impl<'a> Bind<'a> {
    /// `size` bytes of this binding from `offset` (bytes) on: a window.
    pub fn window(self, offset: u64, size: u64) -> Bind<'a> {
        Bind { buffer: self.buffer, offset: self.offset + offset, size: Some(size) }
    }

    /// Elements `[start, start + n)` of the `len`-element tensor bound here
    /// (one of [`GpuContext::binding_windows`]): the binding itself when that is all of it.
    pub fn elements(self, start: usize, n: usize, len: usize) -> Bind<'a> {
        if n == len {
            self
        } else {
            self.window((start * 4) as u64, (n * 4) as u64)
        }
    }

    /// The bytes this binding covers.
    fn bytes(&self) -> u64 {
        self.size.unwrap_or(self.buffer.size() - self.offset)
    }
}

impl<'a> From<&'a wgpu::Buffer> for Bind<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Bind<'a> {
        Bind { buffer, offset: 0, size: None }
    }
}

/// More cached bind groups than this and the cache starts over (a model
/// whose buffers never repeat would otherwise grow it without bound).
const BIND_GROUP_CACHE: usize = 16 * 1024;

/// Params of one submission's dispatches: each takes an aligned slot of a
/// uniform chunk, bound at a dynamic offset; the chunks are written with one
/// queue write each just before the submit.
const PARAMS_CHUNK_BYTES: u64 = 256 << 10;

#[derive(Default)]
struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    /// The open pass: dispatches share it until a copy or a flush ends it.
    pass: Option<wgpu::ComputePass<'static>>,
    /// Uniform chunks, kept across submissions.
    chunks: Vec<wgpu::Buffer>,
    /// This submission's params, chunk by chunk.
    staged: Vec<Vec<u8>>,
}

impl Recorder {
    /// Ends the open pass, so the encoder can record something else.
    fn end_pass(&mut self) {
        self.pass = None;
    }
}

/// A tuning table saved by an earlier run; an unreadable one is ignored (and
/// overwritten by the next choice).
fn load_tuning(path: &std::path::Path) -> HashMap<String, String> {
    std::fs::read_to_string(path).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default()
}

/// The platform's cache directory for this library: `$XDG_CACHE_HOME` or
/// `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on Windows.
fn default_cache_dir() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if cfg!(target_os = "windows") {
        env("LOCALAPPDATA")
    } else if cfg!(target_os = "macos") {
        env("HOME").map(|h| h.join("Library/Caches"))
    } else {
        env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("wgpu-cnn"))
}

/// Whether binding `i` is read-only and its buffer is written through
/// another binding of the same kernel (a wgpu usage conflict).
fn clashes(binds: &[Bind], access: &[Access], i: usize) -> bool {
    access[i] == Access::Read && binds.iter().zip(access).any(|(b, a)| *a == Access::ReadWrite && b.buffer == binds[i].buffer)
}

/// Bytes as MiB for messages.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// `WGPU_CNN_MEMORY_BUDGET`: bytes, or a number with a K, M or G suffix
/// (powers of 1024); anything else is ignored with a warning.
fn budget_from_env() -> Option<u64> {
    let v = std::env::var("WGPU_CNN_MEMORY_BUDGET").ok()?;
    let t = v.trim();
    let (num, mul) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 1u64 << 10),
        'M' => (&t[..t.len() - 1], 1 << 20),
        'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n > 0.0 => Some((n * mul as f64) as u64),
        _ => {
            log::warn!("WGPU_CNN_MEMORY_BUDGET={v:?} is not a size (e.g. 4G, 512M); ignored");
            None
        }
    }
}

/// A captured wgpu error as ours, naming what was being done.
pub(crate) fn from_wgpu(op: &'static str, e: wgpu::Error) -> Error {
    match e {
        wgpu::Error::OutOfMemory { source } => Error::OutOfMemory { op, msg: source.to_string() },
        other => Error::Wgpu(format!("{op}: {other}")),
    }
}

impl GpuContext {
    pub(crate) fn new(opts: &GpuOptions) -> Result<GpuContext> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = choose_adapter(&instance, opts)?;
        let summary = AdapterSummary::from_info(&adapter.get_info());
        // Everything the adapter offers by default (storage bindings of 2 GiB
        // rather than WebGPU's 128 MiB, for one), or WebGPU's defaults on request.
        let mode = crate::device::LimitsMode::from_env().unwrap_or(opts.limits);
        let mut limits = mode.resolve(&adapter.limits());
        if let Some(msg) = crate::kernel::short_of(&limits) {
            return Err(Error::RequestDevice { adapter: summary.to_string(), msg });
        }
        // Lower limits on request, so the chunked and folded paths can be
        // exercised on any adapter (tests force a 1 MiB binding limit).
        if let Some(b) = opts.max_binding_bytes {
            limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(b);
        }
        if let Some(w) = opts.max_workgroups_per_dimension {
            limits.max_compute_workgroups_per_dimension = limits.max_compute_workgroups_per_dimension.min(w);
        }
        if opts.profile && !adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::RequestDevice { adapter: summary.to_string(), msg: "profiling needs timestamp queries, which this adapter does not offer".into() });
        }
        let mut required_features = if opts.profile { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
        // f16 in shaders, where offered: what mixed precision's kernels need
        // (issue 29); asking for it costs nothing where it is not used.
        required_features |= adapter.features() & wgpu::Features::SHADER_F16;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpu-cnn"),
            required_features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::RequestDevice { adapter: summary.to_string(), msg: e.to_string() })?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        // wgpu's default handler panics; keep the message and return it as an Error.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| sink.lock().unwrap().push(e.to_string())));
        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut l = lost_sink.lock().unwrap();
            if l.is_none() {
                *l = Some(format!("{reason:?}: {msg}"));
            }
        });
        let scratch = [0, 1, 2].map(|_| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-cnn scratch"),
                size: 256,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        });
        let profiler = opts.profile.then(|| Mutex::new(Profiler::new(&device, &queue)));
        let gemm_variant = opts.gemm_variant.unwrap_or(if summary.is_software() { GemmVariant::Blocked } else { GemmVariant::Tiled });
        let autotune = opts.autotune && opts.gemm_variant.is_none() && std::env::var("WGPU_CNN_AUTOTUNE").map_or(true, |v| v != "0");
        let tuning_file = match &opts.tuning_cache {
            TuningCache::Default => default_cache_dir().map(|d| d.join(format!("tuning-{}.json", summary.file_key()))),
            TuningCache::File(p) => Some(p.clone()),
            TuningCache::Memory => None,
        };
        log::info!("opened {summary}; GEMM kernel {gemm_variant:?}");
        // Slabs: bindings at offsets aligned as the device requires; none
        // larger than a buffer may be, nor than 1 GiB (smaller slabs place easier).
        let pool = BufferPool::new(SlabRules { align: (limits.min_storage_buffer_offset_alignment as u64).max(256), capacity: limits.max_buffer_size.min(1 << 30) });
        Ok(GpuContext {
            device,
            queue,
            adapter: summary,
            features: required_features,
            limits,
            pool,
            kernels: KernelCache::default(),
            gemm_variant,
            rec: Mutex::default(),
            bind_groups: Mutex::default(),
            recording: AtomicBool::new(false),
            errors,
            scratch,
            profiler,
            lost,
            timeout: opts.timeout,
            recorded: Mutex::default(),
            dry: Mutex::default(),
            gate: Mutex::default(),
            untimed: Mutex::default(),
            max_chunk_bytes: opts.max_chunk_bytes,
            memory_budget: opts.memory_budget.or_else(budget_from_env),
            counters: Mutex::default(),
            tuning: Mutex::new(tuning_file.as_deref().map(load_tuning).unwrap_or_default()),
            tuning_file,
            autotune,
        })
    }

    /// The adapter this context runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// The gate's buffers (made on first use): the template of real counts
    /// and the indirect arguments, for the kernel that writes the one from
    /// the other.
    pub(crate) fn gate_buffers(&self) -> (wgpu::Buffer, wgpu::Buffer) {
        let mut g = self.gate.lock().unwrap();
        let g = g.get_or_insert_with(|| {
            let bytes = ((1 + 3 * GATE_SLOTS) * 4) as u64;
            let make = |label, usage| self.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size: bytes, usage, mapped_at_creation: false });
            let template = make("wgpu-cnn gate template", wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST);
            let args = make("wgpu-cnn gate args", wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT);
            Gate { template, args, active: None, recorded: Vec::new(), written: Vec::new() }
        });
        (g.template.clone(), g.args.clone())
    }

    /// Records the dispatches `f` makes on this thread as indirect ones
    /// that run only if the gate's kernel, recorded before them, let them
    /// (dynamic loss scaling's update). Their real counts reach the template
    /// by a queue write when they differ from the last step's.
    pub(crate) fn gated<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        self.gate_buffers();
        {
            let mut g = self.gate.lock().unwrap();
            let g = g.as_mut().expect("made above");
            g.active = Some(std::thread::current().id());
            g.recorded.clear();
        }
        let out = f();
        let mut g = self.gate.lock().unwrap();
        let g = g.as_mut().expect("made above");
        g.active = None;
        // A dry run records nothing: the template stays.
        if out.is_ok() && !g.recorded.is_empty() && g.recorded != g.written {
            let mut words = vec![(g.recorded.len() / 3) as u32];
            words.extend_from_slice(&g.recorded);
            self.queue.write_buffer(&g.template, 0, bytemuck::cast_slice(&words));
            self.count(|c| c.queue_writes += 1);
            g.written = g.recorded.clone();
        }
        out
    }

    /// For a dispatch recorded while this thread is gated: the args buffer
    /// and its slot, the real counts noted for the template.
    fn gate_slot(&self, groups: [u32; 3]) -> Result<Option<(wgpu::Buffer, u64)>> {
        let mut g = self.gate.lock().unwrap();
        let Some(g) = g.as_mut().filter(|g| g.active == Some(std::thread::current().id())) else { return Ok(None) };
        let slot = g.recorded.len() / 3;
        if slot >= GATE_SLOTS {
            return Err(Error::TooLarge { op: "gated dispatch", what: format!("more than {GATE_SLOTS} gated dispatches in one step"), bytes: 0, limit: 0 });
        }
        g.recorded.extend_from_slice(&groups);
        Ok(Some((g.args.clone(), slot as u64)))
    }

    /// Whether the device runs WGSL's `f16` (wgpu's `SHADER_F16`: Vulkan's
    /// `shaderFloat16` with 16-bit storage, Metal, DX12 with SM 6.2).
    pub fn supports_f16(&self) -> bool {
        self.features.contains(wgpu::Features::SHADER_F16)
    }

    /// The limits the device was opened with (`GpuOptions::limits`).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The GEMM kernel chosen for this adapter.
    pub fn gemm_variant(&self) -> GemmVariant {
        self.gemm_variant
    }

    /// Whether kernels are being timed (`GpuOptions::profile`).
    pub fn is_profiling(&self) -> bool {
        self.profiler.is_some()
    }

    /// Time per kernel since the context opened (or the last reset); `None`
    /// unless opened with `GpuOptions::profile`. Flush first to include pending work.
    pub fn profile_report(&self) -> Option<ProfileReport> {
        self.profiler.as_ref().map(|p| p.lock().unwrap().report())
    }

    /// Writes the timed passes as a Chrome/Perfetto trace JSON.
    pub fn write_trace(&self, path: &std::path::Path) -> Result<()> {
        match &self.profiler {
            Some(p) => p.lock().unwrap().write_trace(path),
            None => Err(Error::InvalidArgument { op: "write_trace", msg: "the device was opened without GpuOptions::profile".into() }),
        }
    }

    /// Forgets the timings so far (e.g. after a warm-up step).
    pub fn reset_profile(&self) {
        if let Some(p) = &self.profiler {
            p.lock().unwrap().reset();
        }
    }

    /// Whether ops may time candidate kernels and keep the fastest
    /// (`GpuOptions::autotune`, unless `WGPU_CNN_AUTOTUNE=0`).
    pub fn autotune(&self) -> bool {
        self.autotune
    }

    /// The tuned choices so far (key → choice), as saved in the tuning file.
    pub fn tuning_table(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self.tuning.lock().unwrap().iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        v.sort();
        v
    }

    /// A tuned choice, if one was made for `key` (here or in an earlier run).
    pub(crate) fn tuned(&self, key: &str) -> Option<String> {
        self.tuning.lock().unwrap().get(key).cloned()
    }

    /// Keeps a tuned choice, and saves the table (atomically: temp file,
    /// rename) so later runs on this adapter reuse it. A file that cannot be
    /// written costs only the reuse; it is logged, not an error.
    pub(crate) fn remember_tuned(&self, key: String, choice: String) {
        let table = {
            let mut t = self.tuning.lock().unwrap();
            t.insert(key, choice);
            serde_json::to_string_pretty(&*t).unwrap_or_default()
        };
        let Some(path) = &self.tuning_file else { return };
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let saved = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, table))
            .and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = saved {
            let _ = std::fs::remove_file(&tmp);
            log::warn!("could not save the tuning table to {}: {e}", path.display());
        }
    }

    /// Runs an op's timing of its candidates: for real even inside a dry run
    /// (the trainer prepares with one), and left out of the profile.
    pub(crate) fn tuning_run<R>(&self, f: impl FnOnce() -> R) -> R {
        let me = std::thread::current().id();
        let saved = self.dry.lock().unwrap().remove(&me);
        self.untimed.lock().unwrap().insert(me);
        let out = f();
        self.untimed.lock().unwrap().remove(&me);
        if let Some(seen) = saved {
            self.dry.lock().unwrap().insert(me, seen);
        }
        out
    }

    /// Dispatches, passes, bind groups, queue writes and submits so far.
    pub fn host_counters(&self) -> HostCounters {
        *self.counters.lock().unwrap()
    }

    fn count(&self, f: impl FnOnce(&mut HostCounters)) {
        f(&mut self.counters.lock().unwrap());
    }

    /// `queue.write_buffer`, counted.
    fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        self.count(|c| {
            c.queue_writes += 1;
            c.bytes_uploaded += bytes.len() as u64;
        });
        self.queue.write_buffer(buffer, offset, bytes);
    }

    /// Buffer-pool counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Starts a new `PoolStats::peak_live_bytes` measurement from the bytes alive now.
    pub fn reset_peak_live(&self) {
        self.pool.reset_peak_live();
    }

    /// The cap on a convolution's column matrix set by `GpuOptions::max_chunk_bytes`.
    pub fn max_chunk_bytes(&self) -> Option<u64> {
        self.max_chunk_bytes
    }

    /// Whether a kernel's pipeline fits this device's limits (storage
    /// buffers a stage); ops with a fallback ask before choosing.
    pub fn fits(&self, def: &crate::kernel::KernelDef) -> bool {
        def.used_storage_bindings() as u32 <= self.limits.max_storage_buffers_per_shader_stage
    }

    /// The largest buffer one storage binding may cover.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// Builds the given kernels' pipelines now rather than at their first
    /// dispatch: shader modules one by one, then pipelines on as many threads
    /// as there are cores (the driver's compiler is the slow part).
    pub fn prepare(&self, kernels: &[&'static KernelDef]) -> Result<()> {
        self.alive()?;
        let mut todo: Vec<&'static KernelDef> = Vec::new();
        for &def in kernels {
            if !todo.iter().any(|d| d.name == def.name) && !self.kernels.is_built(def) {
                todo.push(def);
            }
        }
        for &def in &todo {
            self.kernels.module(&self.device, def)?;
        }
        let threads = crate::cores().min(todo.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        while let Some(&def) = todo.get(next.fetch_add(1, Ordering::Relaxed)) {
                            self.kernels.get(&self.device, def)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| w.join().expect("pipeline builder panicked"))
        })?;
        self.warm_up(&todo)
    }

    /// One empty dispatch per kernel (zero sizes, scratch buffers), waited
    /// for: drivers that compile at first dispatch (llvmpipe JIT-compiles its
    /// shader variants then) do it now, not inside the first training step.
    fn warm_up(&self, kernels: &[&'static KernelDef]) -> Result<()> {
        if kernels.is_empty() {
            return Ok(());
        }
        let mut held = Vec::new();
        let zeros = [0u8; 256];
        for &def in kernels {
            // A buffer of its own per binding: two writable bindings may not share one.
            let mut bufs = Vec::new();
            for _ in 0..def.storage_bindings() {
                bufs.push(self.take(def.name, BufferKind::Storage, 256, Use::Recorded)?);
            }
            let storage: Vec<Bind> = bufs.iter().map(|t| Bind { buffer: &t.buffer, offset: t.offset, size: Some(256) }).collect();
            self.dispatch_raw(def, &zeros[..def.params_size], &storage, [1, 1, 1], None)?;
            held.push(bufs);
        }
        self.synchronize()?;
        for bufs in held {
            for b in bufs {
                self.pool.give(BufferKind::Storage, b, 256, false);
            }
        }
        Ok(())
    }

    /// Runs `f` as a dry run: every kernel it would dispatch is noted instead
    /// of recorded (no pass, no bind group, no params; copies and uploads into
    /// the buffers it allocates still happen), then all of them are built in
    /// parallel and warmed by [`GpuContext::prepare`]. No kernel runs, so no
    /// device-side state changes: the trainer uses this to build every
    /// pipeline a step needs without taking the step.
    pub fn dry_run<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        self.alive()?;
        {
            let mut dry = self.dry.lock().unwrap();
            let me = std::thread::current().id();
            if dry.contains_key(&me) {
                return Err(Error::InvalidArgument { op: "dry_run", msg: "a dry run is already in progress on this thread".into() });
            }
            dry.insert(me, Vec::new());
        }
        let out = f();
        let seen = self.dry.lock().unwrap().remove(&std::thread::current().id()).unwrap_or_default();
        // Copies recorded in the dry run (copy-on-write, narrowing) are real: submit them.
        self.flush()?;
        let out = out?;
        self.prepare(&seen)?;
        Ok(out)
    }

    /// The kernels whose pipelines this context has built (by dispatch,
    /// warm-up or `prepare`), sorted by name.
    pub fn kernels_built(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.kernels.names();
        names.sort_unstable();
        names
    }

    /// Pipelines built since the device was opened.
    pub fn pipelines_built(&self) -> usize {
        self.kernels.built.load(Ordering::Relaxed)
    }

    /// `Err(DeviceLost)` once the device is gone; every entry point asks first.
    pub(crate) fn alive(&self) -> Result<()> {
        match &*self.lost.lock().unwrap() {
            None => Ok(()),
            Some(why) => Err(Error::DeviceLost(why.clone())),
        }
    }

    /// True once the device has been lost.
    pub fn is_lost(&self) -> bool {
        self.lost.lock().unwrap().is_some()
    }

    /// After a failure: lets wgpu run its callbacks, then prefers
    /// `DeviceLost` to whatever error the loss caused on the way.
    fn explain(&self, err: Error) -> Error {
        let _ = self.device.poll(wgpu::PollType::Poll);
        match self.alive() {
            Err(lost) => lost,
            Ok(()) => err,
        }
    }

    /// Takes a buffer from the pool; creating one is checked for validation
    /// and out-of-memory errors.
    fn take(&self, op: &'static str, kind: BufferKind, bytes: u64, usage: Use) -> Result<Taken> {
        self.alive()?;
        self.pool.take(&self.device, kind, bytes, usage, |class, create| {
            // Out of memory: free the pool's idle buffers (of other sizes) and try once more.
            let over = |ctx: &Self| ctx.memory_budget.filter(|&b| ctx.pool.stats().allocated_bytes + class > b);
            if over(self).is_some() {
                self.trim();
            }
            if let Some(budget) = over(self) {
                return Err(self.out_of_memory(op, bytes, format!("the memory budget is {} (GpuOptions::memory_budget)", mib(budget))));
            }
            let (mut buf, mut err) = capture(&self.device, create);
            if matches!(err, Some(wgpu::Error::OutOfMemory { .. })) && self.trim() > 0 {
                (buf, err) = capture(&self.device, create);
            }
            match err {
                None => Ok(buf),
                Some(wgpu::Error::OutOfMemory { source }) => Err(self.explain(self.out_of_memory(op, bytes, format!("the device refused it ({source})")))),
                Some(e) => Err(self.explain(from_wgpu(op, e))),
            }
        })
    }

    /// Frees the pool's idle buffers (and the cached bind groups, which hold
    /// buffers): the bytes released.
    fn trim(&self) -> u64 {
        self.bind_groups.lock().unwrap().clear();
        let freed = self.pool.trim();
        log::info!("out of device memory: released {} of idle buffers", mib(freed));
        freed
    }

    /// An out-of-memory error that says what was asked, what is held and what to do.
    fn out_of_memory(&self, op: &'static str, bytes: u64, why: String) -> Error {
        let s = self.pool.stats();
        Error::OutOfMemory {
            op,
            msg: format!(
                "a buffer of {} was needed with {} already in device buffers ({} of it in live tensors): {why}. \
                 Try a smaller batch, or gradient accumulation (TrainConfig::accumulate_steps, --accumulate N) to keep the batch's update",
                mib(bytes),
                mib(s.allocated_bytes),
                mib(s.live_bytes)
            ),
        }
    }

    /// A pooled storage buffer for `len` f32 values, to be written by
    /// recorded commands (it may be one that earlier commands of this
    /// submission used).
    pub(crate) fn alloc(self: &Arc<Self>, op: &'static str, len: usize) -> Result<GpuBuffer> {
        self.alloc_for(op, len, Use::Recorded)
    }

    fn alloc_for(self: &Arc<Self>, op: &'static str, len: usize, usage: Use) -> Result<GpuBuffer> {
        let bytes = (len as u64) * 4;
        // A tensor may be larger than one binding (ops that meet such tensors
        // bind it in windows) but not than one buffer.
        let limit = self.limits.max_buffer_size;
        if size_class(bytes) > limit {
            return Err(Error::TooLarge { op, what: format!("a tensor of {len} f32"), bytes, limit });
        }
        let t = self.take(op, BufferKind::Storage, bytes, usage)?;
        Ok(GpuBuffer { buffer: Some(t.buffer), offset: t.offset, class: t.size, planned: t.planned, len, ctx: self.clone(), half: Default::default() })
    }

    /// A pooled storage buffer of `len` 4-byte elements holding `bytes`
    /// (a queue write, so never a buffer that unsubmitted commands use).
    pub(crate) fn upload_new(self: &Arc<Self>, op: &'static str, len: usize, bytes: &[u8]) -> Result<GpuBuffer> {
        debug_assert_eq!(bytes.len(), len * 4);
        let buf = self.alloc_for(op, len, Use::QueueWrite)?;
        self.alive()?;
        self.write(buf.raw(), buf.offset, bytes);
        Ok(buf)
    }

    /// Runs `f` on the pending command encoder, creating it if needed.
    pub(crate) fn record<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut rec = self.rec.lock().unwrap();
        rec.end_pass();
        let enc = rec.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-cnn step") })
        });
        self.recording.store(true, Ordering::SeqCst);
        f(enc)
    }

    /// Records one dispatch of `kernel`. `buffers` fill the kernel's storage
    /// bindings in declaration order; `params` fills its uniform.
    pub(crate) fn dispatch<P: Pod>(&self, kernel: &'static Kernel<P>, params: &P, binds: &[Bind], groups: [u32; 3]) -> Result<()> {
        // The napkin math is only wanted by the profile.
        let timed = self.profiler.is_some() && !self.untimed.lock().unwrap().contains(&std::thread::current().id());
        let work = timed.then(|| (kernel.work)(params));
        self.dispatch_raw(&kernel.def, bytemuck::bytes_of(params), binds, groups, work)
    }

    /// The windows a tensor of `len` f32 is bound in by kernels that take
    /// tensors larger than one binding (the optimiser, loss scaling):
    /// (first element, elements), one window when it fits.
    pub(crate) fn binding_windows(&self, len: usize) -> impl Iterator<Item = (usize, usize)> {
        let align = self.binding_alignment().max(4);
        let per = ((self.max_binding_bytes() / align * align) / 4) as usize;
        (0..len).step_by(per).map(move |start| (start, per.min(len - start)))
    }

    /// The alignment of a windowed binding's offset, in bytes.
    pub(crate) fn binding_alignment(&self) -> u64 {
        self.limits.min_storage_buffer_offset_alignment as u64
    }

    /// [`GpuContext::dispatch`] with the params as bytes (`def.params_size`
    /// of them); timed when profiling is on and `work` is given (warm-ups are not).
    fn dispatch_raw(&self, spec: &'static KernelDef, params: &[u8], buffers: &[Bind], groups: [u32; 3], work: Option<Work>) -> Result<()> {
        self.alive()?;
        // A binding past the limit is our error, named, never wgpu's validation panic.
        let limit = self.max_binding_bytes();
        let access: Vec<Access> = spec.bindings.iter().copied().filter(|a| *a != Access::Uniform).collect();
        if let Some((b, _)) = buffers.iter().zip(&access).find(|(b, a)| b.bytes() > limit && **a != Access::Unused) {
            return Err(Error::TooLarge {
                op: spec.name,
                what: "a storage binding (this kernel has no windowed path for a tensor larger than one binding)".into(),
                bytes: b.bytes(),
                limit,
            });
        }
        let storage = spec.storage_bindings();
        if buffers.len() != storage || params.len() != spec.params_size {
            return Err(Error::Kernel {
                kernel: spec.name,
                msg: format!("{} storage buffers and {} bytes of params given; the kernel declares {storage} and {}", buffers.len(), params.len(), spec.params_size),
            });
        }
        let max = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::TooLarge {
                op: spec.name,
                what: format!("a grid of {groups:?} workgroups (at most {max} per dimension)"),
                bytes: 0,
                limit: 0,
            });
        }
        // What an `Unused` binding is given is not bound: it neither clashes nor is kept apart.
        self.pool.note_together(&buffers.iter().zip(&access).filter(|(_, a)| **a != Access::Unused).map(|(b, a)| (b.buffer, b.offset, *a == Access::ReadWrite)).collect::<Vec<_>>());
        if let Some(seen) = self.dry.lock().unwrap().get_mut(&std::thread::current().id()) {
            if !seen.iter().any(|d| d.name == spec.name) {
                seen.push(spec);
            }
            return Ok(());
        }
        // Zero-size work never reaches a binding.
        if groups.contains(&0) {
            return Ok(());
        }
        // A buffer read through one binding and written through another is a
        // wgpu usage conflict. The memory plan keeps such tensors in different
        // buffers; a step that departs from its plan reads a copy instead.
        let (temps, fixed): (Vec<Option<wgpu::Buffer>>, Vec<Bind>);
        let buffers = if (0..buffers.len()).any(|i| clashes(buffers, &access, i)) {
            temps = self.copies_for_clashes(buffers, &access);
            fixed = buffers.iter().zip(&temps).map(|(b, t)| t.as_ref().map_or(*b, Bind::from)).collect();
            &fixed[..]
        } else {
            buffers
        };
        let kernel = self.kernels.get(&self.device, spec)?;
        // With profiling on, each dispatch gets a pass that writes begin/end
        // timestamps (a full set forces a flush).
        let mut slots = None;
        if let (Some(p), Some(work)) = (&self.profiler, work) {
            slots = p.lock().unwrap().next(spec.name, work);
            if slots.is_none() {
                self.flush()?;
                slots = p.lock().unwrap().next(spec.name, work);
            }
        }
        // A handle, so no profiler lock is held while the recorder lock is taken
        // (flush takes them in the other order).
        let query_set = self.profiler.as_ref().map(|p| p.lock().unwrap().query_set.clone());
        self.note_kernel(spec.name);
        let mut rec = self.rec.lock().unwrap();
        let (chunk, offset) = self.params_slot(&mut rec, params)?;
        let bind_group = self.bind_group(&kernel, buffers, &rec.chunks[chunk], chunk);
        let rec = &mut *rec;
        let enc = rec.encoder.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-cnn step") })
        });
        self.recording.store(true, Ordering::SeqCst);
        let mut new_pass = |timestamp_writes| {
            self.count(|c| c.passes += 1);
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-cnn"), timestamp_writes }).forget_lifetime()
        };
        let pass = match (&query_set, slots) {
            (Some(qs), Some((b, e))) => {
                rec.pass = None;
                let ts = wgpu::ComputePassTimestampWrites { query_set: qs, beginning_of_pass_write_index: Some(b), end_of_pass_write_index: Some(e) };
                rec.pass.insert(new_pass(Some(ts)))
            }
            _ => rec.pass.get_or_insert_with(|| new_pass(None)),
        };
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind_group, &[offset]);
        match self.gate_slot(groups)? {
            Some((args, slot)) => pass.dispatch_workgroups_indirect(&args, slot * 12),
            None => pass.dispatch_workgroups(groups[0], groups[1], groups[2]),
        }
        if query_set.is_some() {
            rec.pass = None;
        }
        self.count(|c| c.dispatches += 1);
        Ok(())
    }

    /// For each read-only binding whose buffer the kernel also writes through
    /// another binding: a copy of its bytes in a buffer of its own (recorded
    /// now, before the dispatch). `None` elsewhere; all `None` normally.
    fn copies_for_clashes(&self, binds: &[Bind], access: &[Access]) -> Vec<Option<wgpu::Buffer>> {
        binds
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if !clashes(binds, access, i) {
                    return None;
                }
                log::debug!("a kernel reads and writes parts of one buffer: reading a copy");
                let size = b.bytes();
                let tmp = self.device.create_buffer(&wgpu::BufferDescriptor { label: Some("wgpu-cnn clash copy"), size, usage: BufferKind::Storage.usage(), mapped_at_creation: false });
                self.record(|enc| enc.copy_buffer_to_buffer(b.buffer, b.offset, &tmp, 0, size));
                Some(tmp)
            })
            .collect()
    }

    /// Records a copy of `bytes` from `src` to `dst` (through a temporary
    /// when both are parts of one buffer, which wgpu does not copy within).
    pub(crate) fn copy(&self, src: Bind, dst: Bind, bytes: u64) {
        self.pool.note_together(&[(src.buffer, src.offset, false), (dst.buffer, dst.offset, true)]);
        if src.buffer == dst.buffer {
            let tmp = self.device.create_buffer(&wgpu::BufferDescriptor { label: Some("wgpu-cnn copy"), size: bytes, usage: BufferKind::Storage.usage(), mapped_at_creation: false });
            self.record(|enc| {
                enc.copy_buffer_to_buffer(src.buffer, src.offset, &tmp, 0, bytes);
                enc.copy_buffer_to_buffer(&tmp, 0, dst.buffer, dst.offset, bytes);
            });
        } else {
            self.record(|enc| enc.copy_buffer_to_buffer(src.buffer, src.offset, dst.buffer, dst.offset, bytes));
        }
    }

    /// Copies `params` into the next aligned slot of this submission's
    /// params chunks (creating a chunk when they are full): (chunk, offset).
    fn params_slot(&self, rec: &mut Recorder, params: &[u8]) -> Result<(usize, u32)> {
        let align = self.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        let fits = |staged: &Vec<u8>| staged.len().next_multiple_of(align) + params.len() <= PARAMS_CHUNK_BYTES as usize;
        if rec.staged.last().is_none_or(|s| !fits(s)) {
            rec.staged.push(Vec::with_capacity(PARAMS_CHUNK_BYTES as usize));
        }
        let chunk = rec.staged.len() - 1;
        if chunk == rec.chunks.len() {
            let (buf, err) = capture(&self.device, || {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgpu-cnn params"),
                    size: PARAMS_CHUNK_BYTES,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
            if let Some(e) = err {
                rec.staged.pop();
                return Err(self.explain(from_wgpu("params", e)));
            }
            rec.chunks.push(buf);
        }
        let staged = &mut rec.staged[chunk];
        let offset = staged.len().next_multiple_of(align);
        staged.resize(offset, 0);
        staged.extend_from_slice(params);
        Ok((chunk, offset as u32))
    }

    /// The bind group of `kernel` over `buffers` and params chunk `chunk`,
    /// from the cache or created (and counted).
    fn bind_group(&self, kernel: &Compiled, buffers: &[Bind], params: &wgpu::Buffer, chunk: usize) -> wgpu::BindGroup {
        let key: BindKey = (kernel.def.name, buffers.iter().map(|b| (b.buffer.clone(), b.offset, b.size)).collect(), chunk);
        let mut cache = self.bind_groups.lock().unwrap();
        if let Some(bg) = cache.get(&key) {
            return bg.clone();
        }
        if cache.len() >= BIND_GROUP_CACHE {
            cache.clear();
        }
        let entries = bind_entries(kernel.def.bindings, params, kernel.def.params_size, buffers);
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(kernel.def.name), layout: &kernel.layout, entries: &entries });
        self.count(|c| c.bind_groups += 1);
        cache.insert(key, bg.clone());
        bg
    }

    /// Remembers that a pass of `kernel` is in the pending submission.
    pub(crate) fn note_kernel(&self, kernel: &'static str) {
        let mut r = self.recorded.lock().unwrap();
        if !r.contains(&kernel) {
            r.push(kernel);
        }
    }

    /// The compiled kernel (from the cache).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub(crate) fn compiled(&self, def: &'static KernelDef) -> Result<Arc<Compiled>> {
        self.alive()?;
        self.kernels.get(&self.device, def)
    }


    /// A placeholder for an unused read-write binding (`i` is 0 or 1).
    pub(crate) fn scratch(&self, i: usize) -> Bind<'_> {
        Bind::from(&self.scratch[i])
    }

    /// A grid of `total` invocations in workgroups of `wg`, folded into y and
    /// then z when x would pass the per-dimension limit. Kernels index
    /// `gid.x + (gid.y + gid.z·nwg.y)·nwg.x·wg` and bounds-check the result.
    /// A grid that would pass the limit in z too is left for `dispatch` to reject.
    pub(crate) fn grid_1d(&self, total: usize, wg: usize) -> [u32; 3] {
        let groups = total.div_ceil(wg).max(1);
        let max = self.limits.max_compute_workgroups_per_dimension as usize;
        let x = groups.min(max);
        let rest = groups.div_ceil(x);
        let y = rest.min(max);
        let z = rest.div_ceil(y);
        [x as u32, y as u32, z.min(u32::MAX as usize) as u32]
    }

    /// Submits everything recorded so far (one submit), without waiting.
    pub fn flush(&self) -> Result<()> {
        let mut guard = self.rec.lock().unwrap();
        let mut caught = None;
        let kernels = std::mem::take(&mut *self.recorded.lock().unwrap());
        guard.end_pass();
        // This submission's params, one write per chunk used, land before its commands run.
        let staged = std::mem::take(&mut guard.staged);
        for (chunk, bytes) in staged.iter().enumerate() {
            self.write(&guard.chunks[chunk], 0, bytes);
        }
        if let Some(mut enc) = guard.encoder.take() {
            if let Some(p) = &self.profiler {
                p.lock().unwrap().resolve(&mut enc);
            }
            // Encoding errors (a bad binding in some pass) surface here.
            self.count(|c| c.submits += 1);
            caught = capture(&self.device, || self.queue.submit(Some(enc.finish()))).1;
        }
        // Under the lock, so no new recording can claim a buffer parked here.
        let dropped = self.pool.unpark();
        if !dropped.is_empty() {
            // Cached bind groups hold buffers the memory plan dropped: forget those.
            let dropped: std::collections::HashSet<wgpu::Buffer> = dropped.into_iter().collect();
            self.bind_groups.lock().unwrap().retain(|(_, binds, _), _| !binds.iter().any(|(b, ..)| dropped.contains(b)));
        }
        self.recording.store(false, Ordering::SeqCst);
        drop(guard);
        if let Some(e) = caught {
            let e = match from_wgpu("submit", e) {
                Error::Wgpu(msg) => Error::Wgpu(format!("{msg}\n(kernels in this submission: {})", kernels.join(", "))),
                other => other,
            };
            return Err(self.explain(e));
        }
        self.alive()?;
        if let Some(p) = &self.profiler {
            p.lock().unwrap().collect(&self.device)?;
        }
        self.take_error()
    }

    /// Waits for submitted work, at most `GpuOptions::timeout`.
    fn wait(&self, op: &'static str) -> Result<()> {
        match self.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: self.timeout }) {
            Ok(_) => self.alive(),
            Err(wgpu::PollError::Timeout) => {
                Err(self.explain(Error::Timeout { op, seconds: self.timeout.map_or(f64::INFINITY, |d| d.as_secs_f64()) }))
            }
            Err(e) => Err(self.explain(Error::Wgpu(format!("{op}: {e}")))),
        }
    }

    /// Flushes and waits until the GPU is idle.
    pub fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.wait("synchronize")?;
        self.take_error()
    }

    fn take_error(&self) -> Result<()> {
        let mut errors = self.errors.lock().unwrap();
        if errors.is_empty() {
            Ok(())
        } else {
            let msg = errors.join("\n");
            errors.clear();
            Err(Error::Wgpu(msg))
        }
    }

    /// Copies the first `len` f32 of `src` to the host: one submit, one map.
    pub(crate) fn read(&self, src: Bind, len: usize) -> Result<Vec<f32>> {
        let bytes = (len * 4) as u64;
        let taken = self.take("read", BufferKind::Staging, bytes, Use::QueueWrite)?;
        let staging = taken.buffer.clone();
        self.record(|enc| enc.copy_buffer_to_buffer(src.buffer, src.offset, &staging, 0, bytes));
        self.flush()?;
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        staging.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        // On a timeout the staging buffer is dropped, not pooled: its map is still pending.
        self.wait("read")?;
        let mapped = pollster::block_on(rx.receive());
        self.take_error()?;
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(self.explain(Error::Readback(e.to_string()))),
            None => return Err(self.explain(Error::Readback("the map callback never ran".into()))),
        }
        let out = {
            let view = staging.get_mapped_range(0..bytes).map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        drop(staging);
        self.pool.give(BufferKind::Staging, taken, bytes, false);
        Ok(out)
    }

    /// Overwrites the start of a buffer that recorded commands may use: queued
    /// writes land before unsubmitted commands, so those are submitted first.
    pub(crate) fn overwrite(&self, dst: Bind, data: &[f32]) -> Result<()> {
        self.alive()?;
        if self.recording.load(Ordering::SeqCst) {
            self.flush()?;
        }
        self.write(dst.buffer, dst.offset, bytemuck::cast_slice(data));
        Ok(())
    }
}

/// A pooled storage buffer holding `len` f32; returns to the pool when dropped.
pub struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    /// Where the tensor starts in `buffer` (bytes; a multiple of the binding alignment).
    offset: u64,
    class: u64,
    /// Bytes of a memory plan's slab rather than a whole buffer.
    planned: bool,
    len: usize,
    ctx: Arc<GpuContext>,
    /// This f32 tensor's f16 copy while one lives ([`crate::Tensor::to_half`]
    /// casts once however many layers keep the same activation); cleared by
    /// an in-place write.
    pub(crate) half: std::sync::Mutex<std::sync::Weak<GpuBuffer>>,
}

impl GpuBuffer {
    /// The tensor's binding: its bytes of the underlying buffer.
    pub(crate) fn buffer(&self) -> Bind<'_> {
        Bind { buffer: self.raw(), offset: self.offset, size: Some(self.len as u64 * 4) }
    }

    /// The underlying wgpu buffer (which may hold other tensors beside this
    /// one, from [`GpuBuffer::offset`] on).
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }

    /// Where the tensor starts in [`GpuBuffer::raw`], in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length in f32 elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The context that owns the buffer.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(buf) = self.buffer.take() {
            let recording = self.ctx.recording.load(Ordering::SeqCst);
            let taken = Taken { buffer: buf, offset: self.offset, size: self.class, planned: self.planned };
            self.ctx.pool.give(BufferKind::Storage, taken, self.len as u64 * 4, recording);
        }
    }
}

impl GpuBuffer {
    /// Before an in-place write: an f16 copy made earlier no longer matches.
    pub(crate) fn forget_half(&self) {
        *self.half.lock().unwrap_or_else(|e| e.into_inner()) = std::sync::Weak::new();
    }
}
