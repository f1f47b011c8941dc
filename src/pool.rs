//! Buffer pool: storage and staging buffers reused, so a training step
//! allocates nothing after the first, and a steady step's memory planned.
//!
//! A training step is one command encoder and one submit, so a buffer
//! released while commands are being recorded is reused within the step:
//! wgpu orders the dispatches of one encoder and puts a barrier between a
//! dispatch that reads a buffer and a later one that writes it. What a queue
//! write fills is another matter: `queue.write_buffer` lands before the whole
//! pending submission, so it could overwrite data that earlier-recorded
//! commands still have to read. Such buffers are taken with
//! [`Use::QueueWrite`], which never hands out memory used during the
//! recording (it becomes available to it after the submit).
//!
//! Until a step repeats, requests are served whole buffers by size class
//! (uploads, which are mostly long-lived parameters, by their exact size).
//! Once the pool has seen the same submission twice (the same requests in
//! the same order), it packs that step's tensors into a few large buffers
//! (slabs) at offsets planned from their lifetimes (`plan.rs`), serves every
//! later step from the plan and drops the whole buffers it no longer needs.
//! Each planned hand-out is checked: none of the tensors planned into the
//! same bytes may be alive (nor, for a queue write, touched in this
//! submission); otherwise the request gets a whole buffer, as before a plan.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::plan::{pack, Packing, Request};

/// What a pooled buffer is for; buffers of different kinds never mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferKind {
    /// Tensor storage: STORAGE | COPY_SRC | COPY_DST.
    Storage,
    /// Readback: MAP_READ | COPY_DST.
    Staging,
}

impl BufferKind {
    pub(crate) fn usage(self) -> wgpu::BufferUsages {
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
    /// the submission before: before a plan, the n-th request of a
    /// submission gets the buffer the n-th request of the last one got, when
    /// that one is free, so a step's buffers (and its cached bind groups)
    /// repeat from the second step on.
    handed: Vec<(wgpu::Buffer, u64)>,
    last_handed: Vec<(wgpu::Buffer, u64)>,
    /// This submission's storage requests and releases, the one before's,
    /// and the plan made from them.
    trace: Trace,
    last_trace: Trace,
    planned: Option<Planned>,
    /// The plan's next request in this submission: a request the plan does
    /// not expect here (an extra upload between steps, say) gets a whole
    /// buffer and leaves the cursor where it is.
    plan_pos: usize,
    /// Drop the free whole buffers at the next submit (after a plan's first
    /// step, when the buffers kept across the step's end have been released).
    trim_next: bool,
    stats: PoolStats,
}

/// What the pool saw of one submission's storage buffers.
#[derive(Default)]
struct Trace {
    requests: Vec<Request>,
    /// Who holds each buffer (and offset) handed out in this submission (request index).
    holder: HashMap<(wgpu::Buffer, u64), usize>,
    /// Releases, in this submission, of buffers the submission before kept
    /// past its end: (its request index there, when).
    carried_released: Vec<(usize, u64)>,
    /// Requests bound together by one kernel or copy, one of them written:
    /// they must live in different buffers.
    apart: Vec<(usize, usize)>,
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

/// A plan in force: request n of a submission with this signature lives at
/// `packing.offset[n]` of slab `packing.slab[n]` (slabs created at their first request).
struct Planned {
    signature: Vec<(u64, bool)>,
    packing: Packing,
    conflicts: Vec<Vec<usize>>,
    slabs: Vec<Option<wgpu::Buffer>>,
    /// Whether request n's bytes are held by a tensor now.
    held: Vec<bool>,
    /// Whether request n's bytes were handed out or released in this
    /// submission (a queue write into bytes that overlap them must wait).
    touched: Vec<bool>,
    /// Which request holds the bytes at (slab, offset).
    at: HashMap<(usize, u64), usize>,
}

impl Planned {
    /// Whether request n may have its planned bytes now.
    fn can_take(&self, n: usize, usage: Use) -> bool {
        self.conflicts[n].iter().all(|&m| !self.held[m] && (usage == Use::Recorded || !self.touched[m]))
    }

    /// The slab index of a buffer, if it is one of this plan's.
    fn slab_of(&self, buf: &wgpu::Buffer) -> Option<usize> {
        self.slabs.iter().position(|s| s.as_ref() == Some(buf))
    }
}

/// Submissions with fewer storage requests than this are not planned.
const MIN_PLANNED: usize = 16;

/// What [`BufferPool::take`] hands out: `size` bytes of `buffer` from
/// `offset` (0 and the whole buffer, unless planned into a slab).
#[derive(Clone, Debug)]
pub(crate) struct Taken {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: u64,
    /// Bytes of a plan's slab (returned to the plan, or dropped with the
    /// slab once the plan is gone), not a whole buffer for the free lists.
    pub planned: bool,
}

/// Bytes of the binding-offset alignment and the largest buffer: the slabs' rules.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlabRules {
    pub align: u64,
    pub capacity: u64,
}

pub(crate) struct BufferPool {
    inner: Mutex<Inner>,
    rules: SlabRules,
}

impl BufferPool {
    /// A pool whose slabs follow `rules`.
    pub(crate) fn new(rules: SlabRules) -> BufferPool {
        BufferPool { inner: Mutex::default(), rules }
    }

    /// A buffer of at least `bytes` bytes; its contents are whatever was last
    /// written. A new buffer (of `class` bytes) is created through `guard`,
    /// which may refuse it (a budget) and checks for errors.
    pub(crate) fn take(
        &self,
        device: &wgpu::Device,
        kind: BufferKind,
        bytes: u64,
        usage: Use,
        guard: impl Fn(u64, &dyn Fn() -> wgpu::Buffer) -> crate::Result<wgpu::Buffer>,
    ) -> crate::Result<Taken> {
        let create = |size: u64| {
            guard(size, &|| {
                device.create_buffer(&wgpu::BufferDescriptor { label: Some(kind.label()), size, usage: kind.usage(), mapped_at_creation: false })
            })
        };
        let class = size_class(bytes);
        // Planned bytes and uploads' buffers (parameters, optimiser state:
        // they live long) are exact; the rest rounds up to its class so that
        // buffers serve the next request of a similar size.
        let exact = bytes.max(4).next_multiple_of(4);
        let mut inner = self.inner.lock().unwrap();
        if let Some(n) = inner.planned_request(kind, exact, usage) {
            let p = inner.planned.as_ref().expect("planned_request found a plan");
            let s = p.packing.slab[n];
            if p.slabs[s].is_none() {
                let size = p.packing.slabs[s];
                drop(inner);
                let slab = create(size)?;
                inner = self.inner.lock().unwrap();
                let p = inner.planned.as_mut().filter(|p| p.slabs.len() > s && p.slabs[s].is_none());
                if let Some(p) = p {
                    p.slabs[s] = Some(slab);
                    inner.stats.allocations += 1;
                    inner.stats.allocated_bytes += size;
                }
            }
            // The plan may have changed while the lock was released.
            if inner.planned_request(kind, exact, usage) == Some(n) {
                inner.plan_pos = n + 1;
                let p = inner.planned.as_mut().expect("still planned");
                let (slab, offset, size) = (p.slabs[s].clone().expect("created above"), p.packing.offset[n], p.packing.size[n]);
                p.held[n] = true;
                p.touched[n] = true;
                p.at.insert((s, offset), n);
                inner.stats.reuses += 1;
                inner.handed_out(kind, exact, bytes, usage, &slab, offset, size);
                return Ok(Taken { buffer: slab, offset, size, planned: true });
            }
        }
        if let Some((buf, size)) = inner.find(kind, exact, class, usage) {
            inner.stats.reuses += 1;
            inner.handed_out(kind, exact, bytes, usage, &buf, 0, size);
            return Ok(Taken { buffer: buf, offset: 0, size, planned: false });
        }
        drop(inner);
        let size = if usage == Use::QueueWrite { exact } else { class };
        let buf = create(size)?;
        let mut inner = self.inner.lock().unwrap();
        inner.stats.allocations += 1;
        inner.stats.allocated_bytes += size;
        inner.handed_out(kind, exact, bytes, usage, &buf, 0, size);
        Ok(Taken { buffer: buf, offset: 0, size, planned: false })
    }

    /// Returns a buffer taken for `bytes`. `recording` says whether
    /// unsubmitted commands may still use it.
    pub(crate) fn give(&self, kind: BufferKind, taken: Taken, bytes: u64, recording: bool) {
        let mut inner = self.inner.lock().unwrap();
        inner.live(kind, -(bytes as i64));
        let Taken { buffer: buf, offset, size, planned } = taken;
        if kind == BufferKind::Storage {
            let t = &mut inner.trace;
            let now = t.tick();
            let key = (buf.clone(), offset);
            if let Some(i) = t.holder.remove(&key) {
                t.requests[i].freed = Some(now);
            } else if let Some(i) = inner.last_trace.holder.remove(&key) {
                inner.trace.carried_released.push((i, now));
            }
            // Planned bytes: free again (and touched, when commands may still use them).
            if let Some(p) = inner.planned.as_mut() {
                if let Some(s) = p.slab_of(&buf) {
                    if let Some(n) = p.at.remove(&(s, offset)) {
                        p.held[n] = false;
                        p.touched[n] |= recording;
                    }
                    return;
                }
            }
            // Bytes of a slab no longer planned (its bytes were written off
            // when the plan went): the slab goes with its last tensor.
            if planned {
                return;
            }
        }
        let list = if recording { &mut inner.recycled } else { &mut inner.free };
        list.entry((kind, size)).or_default().insert(buf);
    }

    /// Called after a submit: buffers released during the recording may now
    /// take queue writes too (queue order puts those after the submission).
    ///
    /// Returns the bytes of buffers dropped because a new plan has no use
    /// for them (the caller drops cached bind groups, which hold buffers).
    pub(crate) fn unpark(&self) -> Vec<wgpu::Buffer> {
        let mut inner = self.inner.lock().unwrap();
        let recycled = std::mem::take(&mut inner.recycled);
        for (key, bufs) in recycled {
            inner.free.entry(key).or_default().extend(bufs);
        }
        if !inner.handed.is_empty() {
            inner.last_handed = std::mem::take(&mut inner.handed);
        }
        if let Some(p) = inner.planned.as_mut() {
            p.touched.iter_mut().for_each(|t| *t = false);
        }
        inner.plan_pos = 0;
        if inner.trace.requests.is_empty() {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        if std::mem::take(&mut inner.trim_next) {
            dropped.extend(inner.drop_free());
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
        // A few requests (a tuning run's operands) are not worth a plan.
        if !steady || signature.len() < MIN_PLANNED || inner.planned.as_ref().is_some_and(|p| p.signature == signature) {
            return dropped;
        }
        // The same step twice: plan it, with the releases of kept buffers seen this time.
        let mut requests = inner.last_trace.requests.clone();
        for (r, l) in requests.iter_mut().zip(&last.requests) {
            if r.freed.is_none() {
                r.released_next = l.released_next;
            }
        }
        let packing = pack(&requests, &inner.last_trace.apart, self.rules.align, self.rules.capacity);
        log::debug!("memory plan: {} bytes for a step that holds at most {} at once", packing.bytes(), crate::plan::peak(&requests));
        dropped.extend(inner.adopt(signature, packing));
        dropped
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let inner = self.inner.lock().unwrap();
        PoolStats { planned_bytes: inner.planned.as_ref().map_or(0, |p| p.packing.bytes()), ..inner.stats }
    }

    /// Drops every free buffer (after an out-of-memory, before a retry):
    /// returns the bytes released. wgpu keeps a dropped buffer alive while
    /// submitted or recorded commands use it, so this is always safe.
    pub(crate) fn trim(&self) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        let mut freed: u64 = inner.free.drain().chain(inner.recycled.drain()).map(|((_, class), bufs)| class * bufs.len() as u64).sum();
        // A plan's slabs go too (each with its last tensor); the next steady step plans anew.
        freed += inner.planned.take().map_or(0, |p| p.slabs.iter().flatten().map(|b| b.size()).sum());
        inner.stats.allocated_bytes = inner.stats.allocated_bytes.saturating_sub(freed);
        inner.handed.clear();
        inner.last_handed.clear();
        freed
    }

    /// Notes the tensors one kernel (or copy) binds together, each with
    /// whether it writes it, so a plan keeps each written one apart from each
    /// read one (see [`pack`]; wgpu lets a buffer be written through two
    /// bindings of one kernel, not written and read).
    pub(crate) fn note_together(&self, binds: &[(&wgpu::Buffer, u64, bool)]) {
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        let index = |b: &wgpu::Buffer, off: u64| {
            let key = (b.clone(), off);
            inner.trace.holder.get(&key).or_else(|| inner.last_trace.holder.get(&key)).copied()
        };
        let found: Vec<(usize, bool)> = binds.iter().filter_map(|&(b, off, w)| index(b, off).map(|i| (i, w))).collect();
        for (k, &(a, wa)) in found.iter().enumerate() {
            for &(b, wb) in &found[k + 1..] {
                if wa != wb && a != b {
                    inner.trace.apart.push((a, b));
                }
            }
        }
    }

    /// Starts a new peak-live measurement from the bytes alive now.
    pub(crate) fn reset_peak_live(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.stats.peak_live_bytes = inner.stats.live_bytes;
    }
}

impl Inner {
    /// The index of the next request in the plan in force, if this request
    /// is the one the plan expects there and its bytes may be had now.
    fn planned_request(&mut self, kind: BufferKind, class: u64, usage: Use) -> Option<usize> {
        let p = self.planned.as_ref().filter(|_| kind == BufferKind::Storage)?;
        let n = self.plan_pos;
        if p.signature.get(n) != Some(&(class, usage == Use::QueueWrite)) {
            return None;
        }
        // The expected request: it uses up its place in the plan even when its
        // bytes cannot be had (then it gets a whole buffer).
        if p.can_take(n, usage) {
            Some(n)
        } else {
            self.plan_pos = n + 1;
            None
        }
    }

    /// Notes a buffer handed out: live bytes, the replay list, the trace.
    #[allow(clippy::too_many_arguments)]
    fn handed_out(&mut self, kind: BufferKind, class: u64, bytes: u64, usage: Use, buf: &wgpu::Buffer, offset: u64, size: u64) {
        self.live(kind, bytes as i64);
        if offset == 0 && size == buf.size() {
            self.handed.push((buf.clone(), size));
        }
        if kind == BufferKind::Storage {
            let t = &mut self.trace;
            let at = t.tick();
            t.holder.insert((buf.clone(), offset), t.requests.len());
            t.requests.push(Request { class, queue_write: usage == Use::QueueWrite, at, freed: None, released_next: None });
        }
    }

    /// Drops the free whole storage buffers (returned, for the caller to
    /// forget too).
    fn drop_free(&mut self) -> Vec<wgpu::Buffer> {
        let mut dropped = Vec::new();
        for ((kind, size), set) in self.free.iter_mut() {
            if *kind == BufferKind::Storage {
                self.stats.allocated_bytes = self.stats.allocated_bytes.saturating_sub(*size * set.len() as u64);
                dropped.extend(std::mem::take(set));
            }
        }
        self.free.retain(|_, set| !set.is_empty());
        dropped
    }

    /// Puts a new plan in force, dropping the free whole buffers now and
    /// those released during its first step at the submit after it; a plan
    /// it replaces gives up its slabs (each goes with its last tensor).
    /// Returns the buffers dropped now.
    fn adopt(&mut self, signature: Vec<(u64, bool)>, packing: Packing) -> Vec<wgpu::Buffer> {
        let mut dropped = self.drop_free();
        if let Some(old) = self.planned.take() {
            let slabs: Vec<wgpu::Buffer> = old.slabs.into_iter().flatten().collect();
            self.stats.allocated_bytes = self.stats.allocated_bytes.saturating_sub(slabs.iter().map(|b| b.size()).sum::<u64>());
            dropped.extend(slabs);
        }
        let n = packing.slab.len();
        log::debug!("memory plan: {n} requests in {} slabs of {:?} bytes", packing.slabs.len(), packing.slabs);
        self.planned = Some(Planned {
            signature,
            conflicts: packing.conflicts(),
            slabs: vec![None; packing.slabs.len()],
            held: vec![false; n],
            touched: vec![false; n],
            at: HashMap::new(),
            packing,
        });
        self.last_handed.clear();
        self.trim_next = true;
        dropped
    }

    /// A free buffer of at least `exact` bytes and at most twice the
    /// request's class, and its size: the one the same request got last time
    /// if it can be had, else the smallest (memory the pool already holds
    /// serves rather than a new buffer). Within a size, those released in
    /// this recording come first (for recorded writes only).
    fn find(&mut self, kind: BufferKind, exact: u64, class: u64, usage: Use) -> Option<(wgpu::Buffer, u64)> {
        let fits = |c: u64| c >= exact && c <= 2 * class;
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
