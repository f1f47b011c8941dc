//! GPU timestamp profiling: per-kernel time and share, and a Chrome/Perfetto
//! trace. Opt-in (`GpuOptions::profile`): each flush then reads its
//! timestamps back, which a training step would otherwise never do.
//! Meant for one recording thread: a flush from another thread between a
//! pass taking its slots and being recorded would misattribute that pass.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::kernel::Work;

/// Passes timed per flush; a flush is forced when a step records more.
pub(crate) const CAPACITY: u32 = 2048;

pub(crate) struct Profiler {
    pub query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Kernel names (and napkin work) of the passes recorded since the last flush, in order.
    pub pending: Vec<(&'static str, Work)>,
    period_ns: f64,
    /// Per kernel: calls, GPU ns, and the work those calls did.
    totals: BTreeMap<&'static str, (u64, f64, Work)>,
    events: Vec<(&'static str, f64, f64)>,
    origin: Option<u64>,
}

impl Profiler {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Profiler {
        let bytes = CAPACITY as u64 * 2 * 8;
        Profiler {
            query_set: device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("wgpu-cnn timestamps"), ty: wgpu::QueryType::Timestamp, count: CAPACITY * 2 }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-cnn timestamps resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wgpu-cnn timestamps readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            pending: Vec::new(),
            period_ns: queue.get_timestamp_period() as f64,
            totals: BTreeMap::new(),
            events: Vec::new(),
            origin: None,
        }
    }

    /// The timestamp slots of the next pass, or None when the set is full.
    pub fn next(&mut self, name: &'static str, work: Work) -> Option<(u32, u32)> {
        let i = self.pending.len() as u32;
        (i < CAPACITY).then(|| {
            self.pending.push((name, work));
            (2 * i, 2 * i + 1)
        })
    }

    /// Records the resolve and copy into the encoder about to be submitted.
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        let n = self.pending.len() as u32 * 2;
        if n > 0 {
            enc.resolve_query_set(&self.query_set, 0..n, &self.resolve, 0);
            enc.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, n as u64 * 8);
        }
    }

    /// After the submit: reads the timestamps and adds them up.
    pub fn collect(&mut self, device: &wgpu::Device) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let bytes = self.pending.len() as u64 * 16;
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        self.readback.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None }).map_err(|e| Error::Readback(e.to_string()))?;
        match pollster::block_on(rx.receive()) {
            Some(Ok(())) => {}
            other => return Err(Error::Readback(format!("timestamp readback failed: {other:?}"))),
        }
        let stamps: Vec<u64> = {
            let view = self.readback.get_mapped_range(0..bytes).map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, u64>(&view).to_vec()
        };
        self.readback.unmap();
        for ((name, work), pair) in self.pending.drain(..).zip(stamps.chunks(2)) {
            let origin = *self.origin.get_or_insert(pair[0]);
            let start = pair[0].saturating_sub(origin) as f64 * self.period_ns;
            let dur = pair[1].saturating_sub(pair[0]) as f64 * self.period_ns;
            let t = self.totals.entry(name).or_default();
            t.0 += 1;
            t.1 += dur;
            t.2.flops += work.flops;
            t.2.bytes += work.bytes;
            self.events.push((name, start, dur));
        }
        Ok(())
    }

    pub fn report(&self) -> ProfileReport {
        let total: f64 = self.totals.values().map(|t| t.1).sum();
        let peak = H100_SXM;
        let mut rows: Vec<ProfileRow> = self
            .totals
            .iter()
            .map(|(name, &(calls, ns, work))| ProfileRow {
                kernel: name,
                calls,
                total_ms: ns / 1e6,
                share: if total > 0.0 { ns / total } else { 0.0 },
                gflops: work.flops / 1e9,
                megabytes: work.bytes / 1e6,
                napkin_ms: peak.ms(work),
                memory_bound: work.bytes / peak.bytes_per_s >= work.flops / peak.flops_per_s,
            })
            .collect();
        rows.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then(a.kernel.cmp(b.kernel)));
        let napkin_ms = rows.iter().map(|r| r.napkin_ms).sum();
        ProfileReport { rows, total_ms: total / 1e6, peak, napkin_ms }
    }

    /// Writes the recorded passes as a Chrome/Perfetto trace (`chrome://tracing`, ui.perfetto.dev).
    pub fn write_trace(&self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::File { path: path.to_path_buf(), kind: crate::FileErrorKind::Io, msg: e.to_string() };
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        write!(f, "{{\"traceEvents\":[").map_err(io)?;
        for (i, (name, start, dur)) in self.events.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{{\"name\":\"{name}\",\"cat\":\"gpu\",\"ph\":\"X\",\"ts\":{:.3},\"dur\":{:.3},\"pid\":0,\"tid\":0}}", start / 1e3, dur / 1e3).map_err(io)?;
        }
        writeln!(f, "],\"displayTimeUnit\":\"ms\"}}").map_err(io)?;
        f.flush().map_err(io)
    }

    pub fn reset(&mut self) {
        self.totals.clear();
        self.events.clear();
        self.origin = None;
    }
}

/// A GPU's peak rates, for the napkin column of a profile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Peak {
    /// The GPU's name.
    pub name: &'static str,
    /// fp32 FLOP/s (no tensor cores: the kernels are plain fp32).
    pub flops_per_s: f64,
    /// Memory bandwidth, bytes/s.
    pub bytes_per_s: f64,
}

/// NVIDIA H100 SXM: 66.9 TFLOP/s fp32, 3.35 TB/s HBM3 (the datasheet's figures).
pub const H100_SXM: Peak = Peak { name: "H100 SXM", flops_per_s: 66.9e12, bytes_per_s: 3.35e12 };

impl Peak {
    /// The time `work` takes at these peaks: whichever of compute and memory is longer.
    pub fn ms(&self, work: Work) -> f64 {
        1e3 * (work.flops / self.flops_per_s).max(work.bytes / self.bytes_per_s)
    }
}

/// Time per kernel, largest first, beside the napkin estimate of the same
/// work on a real GPU (`peak`): where its step would go, and which kernels
/// memory bounds.
#[derive(Clone, Debug)]
pub struct ProfileReport {
    /// One row per kernel, slowest first.
    pub rows: Vec<ProfileRow>,
    /// GPU time of every kernel together.
    pub total_ms: f64,
    /// The GPU the napkin model uses.
    pub peak: Peak,
    /// Σ of the rows' `napkin_ms`.
    pub napkin_ms: f64,
}

/// One kernel's share of the profile.
#[derive(Clone, Debug)]
pub struct ProfileRow {
    /// The kernel's name.
    pub kernel: &'static str,
    /// Dispatches.
    pub calls: u64,
    /// GPU time of all its dispatches.
    pub total_ms: f64,
    /// Fraction of all timed GPU work.
    pub share: f64,
    /// FLOPs of all calls, in 10⁹ (see `Kernel::with_work`).
    pub gflops: f64,
    /// Bytes all calls must move at the least, in 10⁶.
    pub megabytes: f64,
    /// The time that work takes at the report's `peak`.
    pub napkin_ms: f64,
    /// At that peak, moving the bytes takes longer than the arithmetic.
    pub memory_bound: bool,
}

impl fmt::Display for ProfileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peak = format!("{} ms", self.peak.name);
        writeln!(f, "{:<28} {:>8} {:>11} {:>7} {:>10} {:>10} {:>13} {:>7}", "kernel", "calls", "GPU ms", "share", "GFLOP", "MB", peak, "bound")?;
        for r in &self.rows {
            let bound = if r.memory_bound { "memory" } else { "compute" };
            writeln!(
                f,
                "{:<28} {:>8} {:>11.3} {:>6.1}% {:>10.3} {:>10.2} {:>13.4} {:>7}",
                r.kernel,
                r.calls,
                r.total_ms,
                100.0 * r.share,
                r.gflops,
                r.megabytes,
                r.napkin_ms,
                bound
            )?;
        }
        write!(f, "{:<28} {:>8} {:>11.3} {:>7} {:>10} {:>10} {:>13.4}", "total", "", self.total_ms, "", "", "", self.napkin_ms)
    }
}
