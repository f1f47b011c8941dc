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

use crate::plan::{plan, Plan, Request};

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
    /// Bytes of the buffers the memory plan in force needs (0 before the
    /// pool has seen the same step twice).
    pub planned_bytes: u64,
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
    /// This submission's storage requests and releases, the one before's,
    /// and the plan made from them (see `plan.rs`).
    trace: Trace,
    last_trace: Trace,
    planned: Option<Planned>,
    stats: PoolStats,
}

/// What the pool saw of one submission's storage buffers.
#[derive(Default)]
struct Trace {
    requests: Vec<Request>,
    /// Who holds each buffer handed out in this submission (request index).
    holder: HashMap<wgpu::Buffer, usize>,
    /// Releases, in this submission, of buffers the submission before kept
    /// past its end: (its request index there, when).
    carried_released: Vec<(usize, u64)>,
    clock: u64,
}

impl Trace {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The requests' sizes and kinds, in order: two submissions with the
    /// same signature are the same step.
    fn signature(&self) -> Vec<(u64, bool)> {
        self.requests.iter().map(|r| (r.class, r.queue_write)).collect()
    }
}

/// A plan in force: request n of a submission with this signature gets the
/// buffer of `plan.buffer[n]` (created at its first request if need be).
struct Planned {
    signature: Vec<(u64, bool)>,
    plan: Plan,
    real: Vec<Option<wgpu::Buffer>>,
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
        // The plan's buffer for this request: found free, or to be created at
        // its planned size. Not free (the step went otherwise): as without a plan.
        let (mut found, mut create) = (None, None);
        match inner.planned_for(kind, class, usage) {
            Some((_, Some(buf), size)) if inner.remove(usage, (kind, size), &buf) => found = Some((buf, size)),
            Some((v, None, size)) => create = Some((v, size)),
            _ => {}
        }
        if found.is_none() && create.is_none() {
            found = inner.find((kind, class), usage);
        }
        if let Some((buf, size)) = found {
            inner.stats.reuses += 1;
            inner.handed_out(kind, class, bytes, usage, &buf, size);
            return Ok((buf, size));
        }
        drop(inner);
        let size = create.map_or(class, |(_, size)| size);
        let buf = guard(size, &|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(kind.label()),
                size,
                usage: kind.usage(),
                mapped_at_creation: false,
            })
        })?;
        let mut inner = self.inner.lock().unwrap();
        if let (Some((v, _)), Some(p)) = (create, inner.planned.as_mut()) {
            p.real[v] = Some(buf.clone());
        }
        inner.stats.allocations += 1;
        inner.stats.allocated_bytes += size;
        inner.handed_out(kind, class, bytes, usage, &buf, size);
        Ok((buf, size))
    }

    /// Returns a buffer taken for `bytes`. `recording` says whether
    /// unsubmitted commands may still use it.
    pub(crate) fn give(&self, kind: BufferKind, class: u64, bytes: u64, buf: wgpu::Buffer, recording: bool) {
        let mut inner = self.inner.lock().unwrap();
        inner.live(kind, -(bytes as i64));
        if kind == BufferKind::Storage {
            let t = &mut inner.trace;
            let now = t.tick();
            if let Some(i) = t.holder.remove(&buf) {
                t.requests[i].freed = Some(now);
            } else if let Some(i) = inner.last_trace.holder.remove(&buf) {
                inner.trace.carried_released.push((i, now));
            }
        }
        let list = if recording { &mut inner.recycled } else { &mut inner.free };
        list.entry((kind, class)).or_default().insert(buf);
    }

    /// Called after a submit: buffers released during the recording may now
    /// take queue writes too (queue order puts those after the submission).
    ///
    /// Returns the bytes of buffers dropped because a new plan has no use
    /// for them (the caller drops cached bind groups, which hold buffers).
    pub(crate) fn unpark(&self) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        let recycled = std::mem::take(&mut inner.recycled);
        for (key, bufs) in recycled {
            inner.free.entry(key).or_default().extend(bufs);
        }
        if !inner.handed.is_empty() {
            inner.last_handed = std::mem::take(&mut inner.handed);
        }
        if inner.trace.requests.is_empty() {
            return 0;
        }
        let trace = std::mem::take(&mut inner.trace);
        let mut last = std::mem::replace(&mut inner.last_trace, trace);
        // Buffers the last submission kept past its end, released in this one.
        for &(i, at) in &inner.last_trace.carried_released {
            if let Some(r) = last.requests.get_mut(i) {
                r.released_next = Some(at);
            }
        }
        let signature = inner.last_trace.signature();
        let steady = signature == last.signature();
        if !steady || inner.planned.as_ref().is_some_and(|p| p.signature == signature) {
            return 0;
        }
        // The same step twice: plan it, with the releases of kept buffers seen this time.
        let mut requests = inner.last_trace.requests.clone();
        for (r, l) in requests.iter_mut().zip(&last.requests) {
            if r.freed.is_none() {
                r.released_next = l.released_next;
            }
        }
        let plan = plan(&requests);
        inner.adopt(signature, plan)
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let inner = self.inner.lock().unwrap();
        PoolStats { planned_bytes: inner.planned.as_ref().map_or(0, |p| p.plan.bytes()), ..inner.stats }
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
        inner.planned = None;
        freed
    }


    /// Starts a new peak-live measurement from the bytes alive now.
    pub(crate) fn reset_peak_live(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.stats.peak_live_bytes = inner.stats.live_bytes;
    }
}

impl Inner {
    /// The planned buffer of the next request, if a plan is in force and
    /// this request is the one it expects: (its index in the plan, the
    /// buffer if created yet, its size).
    fn planned_for(&self, kind: BufferKind, class: u64, usage: Use) -> Option<(usize, Option<wgpu::Buffer>, u64)> {
        let p = self.planned.as_ref().filter(|_| kind == BufferKind::Storage)?;
        let n = self.trace.requests.len();
        if p.signature.get(n) != Some(&(class, usage == Use::QueueWrite)) {
            return None;
        }
        let v = p.plan.buffer[n];
        Some((v, p.real[v].clone(), p.plan.sizes[v]))
    }

    /// Notes a buffer handed out: live bytes, the replay list, the trace.
    fn handed_out(&mut self, kind: BufferKind, class: u64, bytes: u64, usage: Use, buf: &wgpu::Buffer, size: u64) {
        self.live(kind, bytes as i64);
        self.handed.push((buf.clone(), size));
        if kind == BufferKind::Storage {
            let t = &mut self.trace;
            let at = t.tick();
            t.holder.insert(buf.clone(), t.requests.len());
            t.requests.push(Request { class, queue_write: usage == Use::QueueWrite, at, freed: None, released_next: None });
        }
    }

    /// Puts a new plan in force: each planned buffer is one the pool holds
    /// where one fits (first those the planned requests hold across the
    /// step's end, then free ones, smallest that fits), else created at its
    /// first request; free buffers the plan has no use for are dropped.
    /// Returns their bytes.
    fn adopt(&mut self, signature: Vec<(u64, bool)>, plan: Plan) -> u64 {
        let mut real: Vec<Option<wgpu::Buffer>> = vec![None; plan.sizes.len()];
        for (buf, &i) in &self.last_trace.holder {
            let v = plan.buffer[i];
            if real[v].is_none() && buf.size() >= plan.sizes[v] && !real.iter().flatten().any(|b| b == buf) {
                real[v] = Some(buf.clone());
            }
        }
        let mut order: Vec<usize> = (0..plan.sizes.len()).filter(|&v| real[v].is_none()).collect();
        order.sort_by_key(|&v| std::cmp::Reverse(plan.sizes[v]));
        let mut chosen = Vec::new();
        for v in order {
            let key = self.free.iter().filter(|((k, c), set)| *k == BufferKind::Storage && *c >= plan.sizes[v] && !set.is_empty()).map(|(key, _)| *key).min_by_key(|&(_, c)| c);
            if let Some(buf) = key.and_then(|key| self.free.get_mut(&key).and_then(BTreeSet::pop_first)) {
                real[v] = Some(buf.clone());
                chosen.push(buf);
            }
        }
        // Free buffers the plan does not use go; those it chose go back.
        let mut dropped = 0;
        for ((kind, class), set) in self.free.iter_mut() {
            if *kind == BufferKind::Storage {
                dropped += *class * set.len() as u64;
                set.clear();
            }
        }
        for buf in chosen {
            self.free.entry((BufferKind::Storage, buf.size())).or_default().insert(buf);
        }
        self.free.retain(|_, set| !set.is_empty());
        self.stats.allocated_bytes -= dropped;
        self.last_handed.clear();
        self.planned = Some(Planned { signature, plan, real });
        dropped
    }

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
