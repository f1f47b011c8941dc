//! Buffer pool: storage, uniform and staging buffers reused by size class, so
//! a training step allocates nothing after the first.
//!
//! A training step is one command encoder and one submit, so a buffer
//! released while commands are being recorded is reused within the step:
//! wgpu orders the dispatches of one encoder and puts a barrier between a
//! dispatch that reads a buffer and a later one that writes it. What a queue
//! write fills is another matter: `queue.write_buffer` lands before the whole
//! pending submission, so it could overwrite data that earlier-recorded
//! commands still have to read. Such buffers are taken with
//! [`Use::QueueWrite`], which never hands out one released during the
//! recording (those become available to it after the submit).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// What a pooled buffer is for; buffers of different kinds never mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferKind {
    /// Tensor storage: STORAGE | COPY_SRC | COPY_DST.
    Storage,
    /// Readback: MAP_READ | COPY_DST.
    Staging,
}

impl BufferKind {
    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            BufferKind::Storage => U::STORAGE | U::COPY_SRC | U::COPY_DST,
            BufferKind::Staging => U::MAP_READ | U::COPY_DST,
        }
    }

    fn label(self) -> &'static str {
        match self {
            BufferKind::Storage => "wgpu-cnn storage",
            BufferKind::Staging => "wgpu-cnn staging",
        }
    }
}

/// How a taken buffer will first be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// By recorded commands (kernels, copies): any free buffer will do,
    /// including one released earlier in the recording.
    Recorded,
    /// By a queue write, which lands before the pending submission: only a
    /// buffer no unsubmitted command refers to.
    QueueWrite,
}

/// Rounds a request up to its size class: sixteen classes per power of two,
/// so a buffer wastes less than an eighth of any request of 1 KiB or more
/// (at least 256 bytes, a multiple of 64).
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let step = (bytes.next_power_of_two() / 16).max(64);
    bytes.div_ceil(step) * step
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
    /// Bytes of tensors alive now (as requested, before rounding to a class).
    pub live_bytes: u64,
    /// The most `live_bytes` seen since the device opened or
    /// [`crate::GpuContext::reset_peak_live`].
    pub peak_live_bytes: u64,
}

#[derive(Default)]
struct Inner {
    /// Free buffers no unsubmitted command uses, by kind and class, in a
    /// fixed order (wgpu's, by identity): `take` hands out the first, so a
    /// step that allocates and frees the same way as the last gets the same
    /// buffers, and its cached bind groups hit.
    free: HashMap<(BufferKind, u64), BTreeSet<wgpu::Buffer>>,
    /// Released while commands were being recorded: free for later recorded
    /// commands, not for queue writes, until the submit.
    recycled: HashMap<(BufferKind, u64), BTreeSet<wgpu::Buffer>>,
    /// The buffers handed out since the last submit, in order, and those of
    /// the submission before: the n-th request of a submission gets the
    /// buffer the n-th request of the last one got, when that one is free.
    /// Training steps repeat their requests, so a step's buffers (and its
    /// cached bind groups) repeat too, even where a tensor kept from one
    /// step to the next (a gradient, the logits) holds a different buffer
    /// each step.
    handed: Vec<(wgpu::Buffer, u64)>,
    last_handed: Vec<(wgpu::Buffer, u64)>,
    stats: PoolStats,
}

#[derive(Default)]
pub(crate) struct BufferPool {
    inner: Mutex<Inner>,
}

impl BufferPool {
    /// A buffer of at least `bytes` bytes; its contents are whatever was last
    /// written. A new buffer (of `class` bytes) is created through `guard`,
    /// which may refuse it (a budget) and checks for errors.
    pub(crate) fn take(
        &self,
        device: &wgpu::Device,
        kind: BufferKind,
        bytes: u64,
        usage: Use,
        guard: impl FnOnce(u64, &dyn Fn() -> wgpu::Buffer) -> crate::Result<wgpu::Buffer>,
    ) -> crate::Result<(wgpu::Buffer, u64)> {
        let class = size_class(bytes);
        let mut inner = self.inner.lock().unwrap();
        let key = (kind, class);
        if let Some((buf, class)) = inner.find(key, usage) {
            inner.stats.reuses += 1;
            inner.live(kind, bytes as i64);
            inner.handed.push((buf.clone(), class));
            return Ok((buf, class));
        }
        drop(inner);
        let buf = guard(class, &|| {
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
        inner.live(kind, bytes as i64);
        inner.handed.push((buf.clone(), class));
        Ok((buf, class))
    }

    /// Returns a buffer taken for `bytes`. `recording` says whether
    /// unsubmitted commands may still use it.
    pub(crate) fn give(&self, kind: BufferKind, class: u64, bytes: u64, buf: wgpu::Buffer, recording: bool) {
        let mut inner = self.inner.lock().unwrap();
        inner.live(kind, -(bytes as i64));
        let list = if recording { &mut inner.recycled } else { &mut inner.free };
        list.entry((kind, class)).or_default().insert(buf);
    }

    /// Called after a submit: buffers released during the recording may now
    /// take queue writes too (queue order puts those after the submission).
    pub(crate) fn unpark(&self) {
        let mut inner = self.inner.lock().unwrap();
        let recycled = std::mem::take(&mut inner.recycled);
        for (key, bufs) in recycled {
            inner.free.entry(key).or_default().extend(bufs);
        }
        if !inner.handed.is_empty() {
            inner.last_handed = std::mem::take(&mut inner.handed);
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.inner.lock().unwrap().stats
    }

    /// Drops every free buffer (after an out-of-memory, before a retry):
    /// returns the bytes released. wgpu keeps a dropped buffer alive while
    /// submitted or recorded commands use it, so this is always safe.
    pub(crate) fn trim(&self) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        let freed: u64 = inner.free.drain().chain(inner.recycled.drain()).map(|((_, class), bufs)| class * bufs.len() as u64).sum();
        inner.stats.allocated_bytes -= freed;
        inner.handed.clear();
        inner.last_handed.clear();
        freed
    }

    /// Starts a new peak-live measurement from the bytes alive now.
    pub(crate) fn reset_peak_live(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.stats.peak_live_bytes = inner.stats.live_bytes;
    }
}

impl Inner {
    /// A free buffer for `key` and its class: the one the same request got
    /// last time if it can be had, else one of the request's class, else the
    /// smallest of a larger class up to twice the request's (memory the pool
    /// already holds serves rather than a new buffer). Within a class, those
    /// released in this recording come first (for recorded writes only).
    fn find(&mut self, (kind, class): (BufferKind, u64), usage: Use) -> Option<(wgpu::Buffer, u64)> {
        let fits = |c: u64| c >= class && c <= 2 * class;
        if let Some((want, c)) = self.last_handed.get(self.handed.len()).cloned() {
            if fits(c) && self.remove(usage, (kind, c), &want) {
                return Some((want, c));
            }
        }
        let mut classes: Vec<u64> = self.free.keys().chain(self.recycled.keys()).filter(|(k, c)| *k == kind && fits(*c)).map(|(_, c)| *c).collect();
        classes.sort_unstable();
        classes.dedup();
        for c in classes {
            let key = (kind, c);
            let recycled = match usage {
                Use::Recorded => self.recycled.get_mut(&key).and_then(BTreeSet::pop_first),
                Use::QueueWrite => None,
            };
            if let Some(buf) = recycled.or_else(|| self.free.get_mut(&key).and_then(BTreeSet::pop_first)) {
                return Some((buf, c));
            }
        }
        None
    }

    /// Takes `buf` out of the free lists `usage` may draw on, if it is there.
    fn remove(&mut self, usage: Use, key: (BufferKind, u64), buf: &wgpu::Buffer) -> bool {
        (usage == Use::Recorded && self.recycled.get_mut(&key).is_some_and(|s| s.remove(buf))) || self.free.get_mut(&key).is_some_and(|s| s.remove(buf))
    }

    /// Tensor bytes handed out (+) or returned (−); staging is not counted.
    fn live(&mut self, kind: BufferKind, delta: i64) {
        if kind == BufferKind::Storage {
            let s = &mut self.stats;
            s.live_bytes = s.live_bytes.saturating_add_signed(delta);
            s.peak_live_bytes = s.peak_live_bytes.max(s.live_bytes);
        }
    }
}
