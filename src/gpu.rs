//! The GPU context: device and queue, the buffer pool, the kernel cache, and
//! the recorder that batches every dispatch into one command encoder until
//! the next flush (one submit per training step).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytemuck::Pod;

use crate::device::{choose_adapter, AdapterSummary, GpuOptions};
use crate::error::{Error, Result};
use crate::kernel::{Access, Compiled, Kernel, KernelCache, KernelDef};
use crate::pool::{BufferKind, BufferPool, PoolStats};
use crate::profile::{ProfileReport, Profiler};

/// Which GEMM kernel the adapter gets (see `shaders/gemm.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmVariant {
    /// Barrier-free, register-blocked: for CPU-type adapters.
    Blocked,
    /// Workgroup-memory tiles with register blocking: for real GPUs.
    Tiled,
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
    pub(crate) pool: BufferPool,
    kernels: KernelCache,
    gemm_variant: GemmVariant,
    /// Commands recorded since the last submit.
    encoder: Mutex<Option<wgpu::CommandEncoder>>,
    /// True while `encoder` holds unsubmitted work; written only under its lock.
    recording: AtomicBool,
    /// wgpu errors raised outside an error scope, reported at the next flush.
    errors: Arc<Mutex<Vec<String>>>,
    /// Two small storage buffers bound where a kernel has an unused read-write
    /// slot (binding one buffer twice as read-write is a usage conflict).
    scratch: [wgpu::Buffer; 2],
    profiler: Option<Mutex<Profiler>>,
    /// Set by wgpu's device-lost callback (or when we see the device is invalid).
    lost: Arc<Mutex<Option<String>>>,
    /// How long a wait for the GPU may take before it is an error.
    timeout: Option<Duration>,
    /// The kernels recorded since the last submit, so a failed submit can name them.
    recorded: Mutex<Vec<&'static str>>,
    /// While a dry run is on (see [`GpuContext::dry_run`]): the kernels that
    /// would have been dispatched, in order of first use.
    dry: Mutex<Option<Vec<&'static KernelDef>>>,
    /// Cap on the convolution's column-matrix bytes (`GpuOptions::max_chunk_bytes`).
    max_chunk_bytes: Option<u64>,
    counters: Mutex<HostCounters>,
}

/// Runs `f` inside validation and out-of-memory error scopes; returns what they caught.
pub(crate) fn capture<R>(device: &wgpu::Device, f: impl FnOnce() -> R) -> (R, Option<wgpu::Error>) {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out = f();
    let v = pollster::block_on(validation.pop());
    let o = pollster::block_on(oom.pop());
    (out, v.or(o))
}

/// Bind-group entries in declaration order: the params buffer for the
/// uniform, `storage` in order for the rest (the caller checked the count).
fn bind_entries<'a>(bindings: &[Access], uniform: &'a wgpu::Buffer, storage: &[&'a wgpu::Buffer]) -> Vec<wgpu::BindGroupEntry<'a>> {
    let mut next = storage.iter();
    bindings
        .iter()
        .enumerate()
        .filter_map(|(i, access)| {
            let buffer = if *access == Access::Uniform { uniform } else { next.next()? };
            Some(wgpu::BindGroupEntry { binding: i as u32, resource: buffer.as_entire_binding() })
        })
        .collect()
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
        // Ask for everything the adapter offers, not the WebGPU defaults:
        // storage bindings of 2 GiB rather than 128 MiB, for one.
        let mut limits = adapter.limits();
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
        let required_features = if opts.profile { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() };
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
        let scratch = [0, 1].map(|_| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-cnn scratch"),
                size: 256,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        });
        let profiler = opts.profile.then(|| Mutex::new(Profiler::new(&device, &queue)));
        let gemm_variant = if summary.is_software() { GemmVariant::Blocked } else { GemmVariant::Tiled };
        log::info!("opened {summary}; GEMM kernel {gemm_variant:?}");
        Ok(GpuContext {
            device,
            queue,
            adapter: summary,
            limits,
            pool: BufferPool::default(),
            kernels: KernelCache::default(),
            gemm_variant,
            encoder: Mutex::new(None),
            recording: AtomicBool::new(false),
            errors,
            scratch,
            profiler,
            lost,
            timeout: opts.timeout,
            recorded: Mutex::default(),
            dry: Mutex::default(),
            max_chunk_bytes: opts.max_chunk_bytes,
            counters: Mutex::default(),
        })
    }

    /// The adapter this context runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// The limits the device was opened with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The GEMM kernel chosen for this adapter.
    pub fn gemm_variant(&self) -> GemmVariant {
        self.gemm_variant
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

    /// The cap on a convolution's column matrix set by `GpuOptions::max_chunk_bytes`.
    pub fn max_chunk_bytes(&self) -> Option<u64> {
        self.max_chunk_bytes
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
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(todo.len().max(1));
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
        for &def in kernels {
            let kernel = self.kernels.get(&self.device, def)?;
            let (ubuf, uclass) = self.take(def.name, BufferKind::Uniform, def.params_size as u64)?;
            self.queue.write_buffer(&ubuf, 0, &vec![0u8; def.params_size]);
            // A buffer of its own per binding: two writable bindings may not share one.
            let mut bufs = Vec::new();
            for access in kernel.def.bindings {
                if *access != Access::Uniform {
                    bufs.push(self.take(kernel.def.name, BufferKind::Storage, 256)?);
                }
            }
            let storage: Vec<&wgpu::Buffer> = bufs.iter().map(|(b, _)| b).collect();
            let entries = bind_entries(def.bindings, &ubuf, &storage);
            let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some("warm-up"), layout: &kernel.layout, entries: &entries });
            self.note_kernel(kernel.def.name);
            self.record(|enc| {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kernel.def.name), timestamp_writes: None });
                pass.set_pipeline(&kernel.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            });
            held.push((ubuf, uclass, bufs));
        }
        self.synchronize()?;
        for (ubuf, uclass, bufs) in held {
            self.pool.give(BufferKind::Uniform, uclass, ubuf, false);
            for (b, class) in bufs {
                self.pool.give(BufferKind::Storage, class, b, false);
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
            if dry.is_some() {
                return Err(Error::InvalidArgument { op: "dry_run", msg: "a dry run is already in progress on this device".into() });
            }
            *dry = Some(Vec::new());
        }
        let out = f();
        let seen = self.dry.lock().unwrap().take().unwrap_or_default();
        // Copies recorded in the dry run (copy-on-write, narrowing) are real: submit them.
        self.flush()?;
        let out = out?;
        self.prepare(&seen)?;
        Ok(out)
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
    fn take(&self, op: &'static str, kind: BufferKind, bytes: u64) -> Result<(wgpu::Buffer, u64)> {
        self.alive()?;
        self.pool.take(&self.device, kind, bytes, |create| {
            let (buf, err) = capture(&self.device, create);
            match err {
                None => Ok(buf),
                Some(e) => Err(self.explain(from_wgpu(op, e))),
            }
        })
    }

    /// A pooled storage buffer for `len` f32 values.
    pub(crate) fn alloc(self: &Arc<Self>, op: &'static str, len: usize) -> Result<GpuBuffer> {
        let bytes = (len as u64) * 4;
        let limit = self.max_binding_bytes();
        if bytes > limit {
            return Err(Error::TooLarge { op, what: format!("a tensor of {len} f32"), bytes, limit });
        }
        let (buffer, class) = self.take(op, BufferKind::Storage, bytes)?;
        Ok(GpuBuffer { buffer: Some(buffer), class, len, ctx: self.clone() })
    }

    /// Runs `f` on the pending command encoder, creating it if needed.
    pub(crate) fn record<R>(&self, f: impl FnOnce(&mut wgpu::CommandEncoder) -> R) -> R {
        let mut guard = self.encoder.lock().unwrap();
        let enc = guard.get_or_insert_with(|| {
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-cnn step") })
        });
        self.recording.store(true, Ordering::SeqCst);
        f(enc)
    }

    /// Records one dispatch of kernel `id`. `buffers` fill the kernel's storage
    /// bindings in declaration order; `params` fills its uniform.
    pub(crate) fn dispatch<P: Pod>(&self, kernel: &'static Kernel<P>, params: &P, buffers: &[&wgpu::Buffer], groups: [u32; 3]) -> Result<()> {
        self.alive()?;
        let spec = &kernel.def;
        let storage = spec.storage_bindings();
        if buffers.len() != storage {
            return Err(Error::Kernel { kernel: spec.name, msg: format!("{} storage buffers given; the kernel declares {storage}", buffers.len()) });
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
        if let Some(seen) = self.dry.lock().unwrap().as_mut() {
            if !seen.iter().any(|d| d.name == spec.name) {
                seen.push(spec);
            }
            return Ok(());
        }
        // Zero-size work never reaches a binding.
        if groups.contains(&0) {
            return Ok(());
        }
        let kernel = self.kernels.get(&self.device, spec)?;
        let (ubuf, uclass) = self.take(spec.name, BufferKind::Uniform, size_of::<P>() as u64)?;
        self.write(&ubuf, 0, bytemuck::bytes_of(params));
        let entries = bind_entries(spec.bindings, &ubuf, buffers);
        self.count(|c| {
            c.dispatches += 1;
            c.passes += 1;
            c.bind_groups += 1;
        });
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(spec.name),
            layout: &kernel.layout,
            entries: &entries,
        });
        // With profiling on, the pass writes begin/end timestamps (a full set forces a flush).
        let mut slots = None;
        if let Some(p) = &self.profiler {
            slots = p.lock().unwrap().next(spec.name);
            if slots.is_none() {
                self.flush()?;
                slots = p.lock().unwrap().next(spec.name);
            }
        }
        // A handle, so no profiler lock is held while the encoder lock is taken
        // (flush takes them in the other order).
        let query_set = self.profiler.as_ref().map(|p| p.lock().unwrap().query_set.clone());
        let timestamp_writes = match (&query_set, slots) {
            (Some(qs), Some((b, e))) => Some(wgpu::ComputePassTimestampWrites { query_set: qs, beginning_of_pass_write_index: Some(b), end_of_pass_write_index: Some(e) }),
            _ => None,
        };
        self.note_kernel(spec.name);
        self.record(|enc| {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(spec.name), timestamp_writes });
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        });
        // The queued write above lands before this submission runs; the buffer
        // must not be rewritten until then, so it is parked.
        self.pool.give(BufferKind::Uniform, uclass, ubuf, true);
        Ok(())
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
    pub(crate) fn scratch(&self, i: usize) -> &wgpu::Buffer {
        &self.scratch[i]
    }

    /// Uploads raw bytes into a buffer fresh from the pool (see [`Self::upload`]).
    pub(crate) fn upload_bytes(&self, dst: &GpuBuffer, bytes: &[u8]) -> Result<()> {
        self.alive()?;
        self.write(dst.buffer(), 0, bytes);
        Ok(())
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
        let mut guard = self.encoder.lock().unwrap();
        let mut caught = None;
        let kernels = std::mem::take(&mut *self.recorded.lock().unwrap());
        if let Some(mut enc) = guard.take() {
            if let Some(p) = &self.profiler {
                p.lock().unwrap().resolve(&mut enc);
            }
            // Encoding errors (a bad binding in some pass) surface here.
            self.count(|c| c.submits += 1);
            caught = capture(&self.device, || self.queue.submit(Some(enc.finish()))).1;
        }
        // Under the lock, so no new recording can claim a buffer parked here.
        self.pool.unpark();
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
    pub(crate) fn read(&self, src: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let bytes = (len * 4) as u64;
        let (staging, class) = self.take("read", BufferKind::Staging, bytes)?;
        self.record(|enc| enc.copy_buffer_to_buffer(src, 0, &staging, 0, bytes));
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
        self.pool.give(BufferKind::Staging, class, staging, false);
        Ok(out)
    }

    /// Writes host data into a buffer fresh from the pool (no recorded command
    /// can refer to it yet, so no flush is needed).
    pub(crate) fn upload(&self, dst: &GpuBuffer, data: &[f32]) -> Result<()> {
        self.upload_bytes(dst, bytemuck::cast_slice(data))
    }

    /// Overwrites the start of a buffer that recorded commands may use: queued
    /// writes land before unsubmitted commands, so those are submitted first.
    pub(crate) fn overwrite(&self, dst: &wgpu::Buffer, data: &[f32]) -> Result<()> {
        self.alive()?;
        if self.recording.load(Ordering::SeqCst) {
            self.flush()?;
        }
        self.write(dst, 0, bytemuck::cast_slice(data));
        Ok(())
    }
}

/// A pooled storage buffer holding `len` f32; returns to the pool when dropped.
pub struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    class: u64,
    len: usize,
    ctx: Arc<GpuContext>,
}

impl GpuBuffer {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer present until drop")
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(buf) = self.buffer.take() {
            let recording = self.ctx.recording.load(Ordering::SeqCst);
            self.ctx.pool.give(BufferKind::Storage, self.class, buf, recording);
        }
    }
}
