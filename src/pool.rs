//! Buffer pool: storage, uniform and staging buffers reused by size class, so
//! a training step allocates nothing after the first.
//!
//! A buffer released while commands are still being recorded may still be
//! read by them, so it is parked and only becomes reusable once that work has
//! been submitted (queue order then protects it: later writes land after).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// What a pooled buffer is for; buffers of different kinds never mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferKind {
    /// Tensor storage: STORAGE | COPY_SRC | COPY_DST.
    Storage,
    /// Kernel params: UNIFORM | COPY_DST.
    Uniform,
    /// Readback: MAP_READ | COPY_DST.
    Staging,
}

impl BufferKind {
    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            BufferKind::Storage => U::STORAGE | U::COPY_SRC | U::COPY_DST,
            BufferKind::Uniform => U::UNIFORM | U::COPY_DST,
            BufferKind::Staging => U::MAP_READ | U::COPY_DST,
        }
    }

    fn label(self) -> &'static str {
        match self {
            BufferKind::Storage => "wgpu-cnn storage",
            BufferKind::Uniform => "wgpu-cnn params",
            BufferKind::Staging => "wgpu-cnn staging",
        }
    }
}

/// Rounds a request up to its size class: powers of two up to 64 MiB, then
/// whole MiB (so a 1.1 GiB tensor does not become a 2 GiB buffer).
pub fn size_class(bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    let bytes = bytes.max(256);
    if bytes <= 64 * MIB {
        bytes.next_power_of_two()
    } else {
        bytes.div_ceil(MIB) * MIB
    }
}

/// Counters for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created since the device was opened.
    pub allocations: u64,
    /// Requests served from the free lists.
    pub reuses: u64,
    /// Bytes in all buffers the pool has created (live or free).
    pub allocated_bytes: u64,
}

#[derive(Default)]
struct Inner {
    /// Free buffers by kind and class, in a fixed order (wgpu's, by identity):
    /// `take` hands out the first, so a step that allocates and frees the same
    /// way as the last gets the same buffers, and its cached bind groups hit.
    free: HashMap<(BufferKind, u64), BTreeSet<wgpu::Buffer>>,
    parked: Vec<(BufferKind, u64, wgpu::Buffer)>,
    stats: PoolStats,
}

#[derive(Default)]
pub(crate) struct BufferPool {
    inner: Mutex<Inner>,
}

impl BufferPool {
    /// A buffer of at least `bytes` bytes; its contents are whatever was last
    /// written. A new buffer is created through `guard` (which checks for errors).
    pub(crate) fn take(
        &self,
        device: &wgpu::Device,
        kind: BufferKind,
        bytes: u64,
        guard: impl FnOnce(&dyn Fn() -> wgpu::Buffer) -> crate::Result<wgpu::Buffer>,
    ) -> crate::Result<(wgpu::Buffer, u64)> {
        let class = size_class(bytes);
        let mut inner = self.inner.lock().unwrap();
        if let Some(buf) = inner.free.get_mut(&(kind, class)).and_then(BTreeSet::pop_first) {
            inner.stats.reuses += 1;
            return Ok((buf, class));
        }
        drop(inner);
        let buf = guard(&|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(kind.label()),
                size: class,
                usage: kind.usage(),
                mapped_at_creation: false,
            })
        })?;
        let mut inner = self.inner.lock().unwrap();
        inner.stats.allocations += 1;
        inner.stats.allocated_bytes += class;
        Ok((buf, class))
    }

    /// Returns a buffer. `recording` says whether unsubmitted commands may still use it.
    pub(crate) fn give(&self, kind: BufferKind, class: u64, buf: wgpu::Buffer, recording: bool) {
        let mut inner = self.inner.lock().unwrap();
        if recording {
            inner.parked.push((kind, class, buf));
        } else {
            inner.free.entry((kind, class)).or_default().insert(buf);
        }
    }

    /// Called after a submit: parked buffers become reusable.
    pub(crate) fn unpark(&self) {
        let mut inner = self.inner.lock().unwrap();
        let parked = std::mem::take(&mut inner.parked);
        for (kind, class, buf) in parked {
            inner.free.entry((kind, class)).or_default().insert(buf);
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.inner.lock().unwrap().stats
    }
}
