//! A step's memory plan: from one submission's trace of buffer requests and
//! releases, where in a few large buffers each request lives, so that
//! requests alive at the same time never share a byte. Training steps repeat the same requests in the same order, so
//! the pool plans the step once it has seen it twice and serves every later
//! step from the plan (see `pool.rs`); this file is only the arithmetic.
//!
//! A request occupies its buffer from the moment it is taken to the moment
//! it is released. One that a queue write fills is taken as occupying it
//! from the start of the submission: a queue write lands before every
//! command of the submission, so its buffer may not serve anything recorded
//! earlier. One still held when the submission ends (a gradient kept for the
//! optimiser, the loss) occupies it to the end, and in the next submission
//! until it is released there (for ever, when that is not known).
//!
//! Requests are placed largest first, each at the lowest offset of a large
//! buffer (a slab) where nothing whose lifetime meets its own lies, so the
//! step needs about as much memory as it ever holds at once.

/// One buffer request of a submission, as the pool saw it. Times are the
/// order of takes and releases within the submission (1, 2, 3, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Bytes.
    pub class: u64,
    /// Filled by a queue write (an upload).
    pub queue_write: bool,
    /// When it was taken.
    pub at: u64,
    /// When it was released, if within the submission.
    pub freed: Option<u64>,
    /// For one held past the end: when the next submission released it.
    pub released_next: Option<u64>,
}

impl Request {
    /// The closed intervals of time during which the request holds its buffer.
    fn spans(&self) -> [(u64, u64); 2] {
        const NONE: (u64, u64) = (1, 0);
        let start = if self.queue_write { 0 } else { self.at };
        match (self.freed, self.released_next) {
            (Some(f), _) => [(start, f), NONE],
            (None, Some(n)) => [(start, u64::MAX), (0, n)],
            (None, None) => [(0, u64::MAX), NONE],
        }
    }
}

/// Where each request lives: a slab (one large buffer) and an offset in
/// it. Requests whose lifetimes overlap never share bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Packing {
    /// For request i, its slab.
    pub slab: Vec<usize>,
    /// For request i, its first byte in its slab (a multiple of the alignment).
    pub offset: Vec<u64>,
    /// For request i, its bytes in the slab (its class, rounded up to the alignment).
    pub size: Vec<u64>,
    /// Bytes of each slab.
    pub slabs: Vec<u64>,
}

impl Packing {
    /// Bytes of all slabs.
    pub fn bytes(&self) -> u64 {
        self.slabs.iter().sum()
    }

    /// For each request, the requests whose bytes overlap its own (itself
    /// included): none of them may be held when it is handed out.
    pub fn conflicts(&self) -> Vec<Vec<usize>> {
        let n = self.slab.len();
        let mut by_slab: Vec<Vec<usize>> = vec![Vec::new(); self.slabs.len()];
        for i in 0..n {
            by_slab[self.slab[i]].push(i);
        }
        (0..n)
            .map(|i| {
                let (a0, a1) = (self.offset[i], self.offset[i] + self.size[i]);
                by_slab[self.slab[i]].iter().copied().filter(|&j| self.offset[j] < a1 && a0 < self.offset[j] + self.size[j]).collect()
            })
            .collect()
    }
}

/// The most bytes the requests hold at one time: no packing needs less.
pub(crate) fn peak(requests: &[Request]) -> u64 {
    let mut times: Vec<u64> = requests.iter().flat_map(|r| r.spans()).filter(|&(s, e)| s <= e).map(|(s, _)| s).collect();
    times.sort_unstable();
    times.dedup();
    times.iter().map(|&t| requests.iter().filter(|r| r.spans().iter().any(|&(s, e)| s <= t && t <= e)).map(|r| r.class).sum()).max().unwrap_or(0)
}

fn overlaps((a0, a1): (u64, u64), (b0, b1): (u64, u64)) -> bool {
    a0 <= a1 && b0 <= b1 && a0 <= b1 && b0 <= a1
}

fn meet(a: &Request, b: &Request) -> bool {
    a.spans().iter().any(|&x| b.spans().iter().any(|&y| overlaps(x, y)))
}

/// Packs `requests` into slabs of at most `capacity` bytes at offsets that
/// are multiples of `align`: largest first, each at the lowest offset of the
/// first slab where no request whose lifetime meets its own is placed (the
/// greedy-by-size offset assignment of XLA and TVM). A request larger than
/// `capacity` gets a slab of its own. The pairs in `apart` go in different
/// slabs: wgpu tracks usage per buffer, so a kernel may not write one part
/// of a buffer while it reads or writes another part of it.
///
/// Greedy variants run and the smallest packing wins: requests taken
/// largest first, or largest in bytes × lifetime first; each goes to the
/// slab it makes grow least, a tie with a new slab going either to stacking
/// on an old one or to the new one. A plan is made once per step shape, so
/// the few extra passes cost nothing that repeats.
pub(crate) fn pack(requests: &[Request], apart: &[(usize, usize)], align: u64, capacity: u64) -> Packing {
    let life = |r: &Request| r.spans().iter().filter(|&&(s, e)| s <= e).map(|&(s, e)| e.min(1 << 32) - s + 1).sum::<u64>();
    let mut by_size: Vec<usize> = (0..requests.len()).collect();
    by_size.sort_by_key(|&i| (std::cmp::Reverse(requests[i].class), requests[i].at));
    let mut by_area = by_size.clone();
    by_area.sort_by_key(|&i| (std::cmp::Reverse(requests[i].class as u128 * life(&requests[i]) as u128), requests[i].at));
    [&by_size, &by_area]
        .into_iter()
        .flat_map(|order| [true, false].map(|stack| pack_with(requests, order, apart, align, capacity, stack)))
        .min_by_key(Packing::bytes)
        .expect("four packings")
}

fn pack_with(requests: &[Request], order: &[usize], apart: &[(usize, usize)], align: u64, capacity: u64, stack: bool) -> Packing {
    let n = requests.len();
    let mut partners: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in apart.iter().filter(|&&(a, b)| a < n && b < n && a != b) {
        partners[a].push(b);
        partners[b].push(a);
    }
    let mut placed_in: Vec<Option<usize>> = vec![None; n];
    let mut p = Packing { slab: vec![0; n], offset: vec![0; n], size: requests.iter().map(|r| r.class.next_multiple_of(align)).collect(), slabs: Vec::new() };
    let mut placed: Vec<Vec<usize>> = Vec::new();
    for &i in order {
        let size = p.size[i];
        // The slab (without a partner of this request) where it adds least
        // height, at its lowest free offset there; the first such on ties.
        let mut spot: Option<(u64, usize, u64)> = None;
        for (s, members) in placed.iter().enumerate() {
            if partners[i].iter().any(|&j| placed_in[j] == Some(s)) {
                continue;
            }
            let mut taken: Vec<(u64, u64)> = members.iter().filter(|&&j| meet(&requests[i], &requests[j])).map(|&j| (p.offset[j], p.offset[j] + p.size[j])).collect();
            taken.sort_unstable();
            let mut at = 0;
            for (a, b) in taken {
                if a >= at + size {
                    break;
                }
                at = at.max(b);
            }
            let growth = (at + size).saturating_sub(p.slabs[s]);
            if at + size <= capacity && spot.is_none_or(|(g, ..)| growth < g) {
                spot = Some((growth, s, at));
            }
        }
        let spot = spot.filter(|&(g, ..)| g < size || (stack && g == size)).map(|(_, s, at)| (s, at));
        let (s, at) = spot.unwrap_or_else(|| {
            placed.push(Vec::new());
            p.slabs.push(0);
            (placed.len() - 1, 0)
        });
        placed[s].push(i);
        placed_in[i] = Some(s);
        p.slab[i] = s;
        p.offset[i] = at;
        p.slabs[s] = p.slabs[s].max(at + size);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(class: u64, at: u64, freed: Option<u64>) -> Request {
        Request { class, queue_write: false, at, freed, released_next: None }
    }

    /// Checks the packing's promise: requests whose lifetimes meet never
    /// share a byte, offsets are aligned and slabs hold what they are given.
    fn check(reqs: &[Request], p: &Packing, align: u64) {
        for i in 0..reqs.len() {
            assert_eq!(p.offset[i] % align, 0);
            assert!(p.size[i] >= reqs[i].class && p.offset[i] + p.size[i] <= p.slabs[p.slab[i]]);
            for j in 0..i {
                let share = p.slab[i] == p.slab[j] && p.offset[i] < p.offset[j] + p.size[j] && p.offset[j] < p.offset[i] + p.size[i];
                assert!(!(share && meet(&reqs[i], &reqs[j])), "requests {i} and {j} share bytes while both hold them: {p:?}");
                assert_eq!(share, p.conflicts()[i].contains(&j));
            }
        }
    }

    #[test]
    fn a_chain_of_layers_needs_two_tensors_of_memory() {
        // x1 = f(x0), x2 = f(x1), …: each input is released after the next output is taken.
        let reqs: Vec<Request> = (0..6).map(|i| req(1024, 2 * i + 1, Some(2 * i + 4))).collect();
        let p = pack(&reqs, &[], 256, 1 << 20);
        check(&reqs, &p, 256);
        assert_eq!(p.bytes(), 2048, "{p:?}");
    }

    #[test]
    fn small_tensors_fill_the_gaps_of_large_ones_and_uploads_share_nothing_earlier() {
        // A 4096 request, then two 2048s that live after it: they fit where it was.
        let mut reqs = vec![req(4096, 1, Some(3)), req(2048, 4, Some(7)), req(2048, 5, Some(6))];
        // An upload after all three were taken: it may not share their bytes.
        reqs.push(Request { class: 1024, queue_write: true, at: 8, freed: Some(9), released_next: None });
        let p = pack(&reqs, &[], 256, 1 << 20);
        check(&reqs, &p, 256);
        assert_eq!(p.slabs[0], 4096 + 1024, "{p:?}");
    }

    #[test]
    fn a_gradient_released_early_next_step_frees_its_bytes_for_that_step() {
        let grad = Request { class: 512, queue_write: false, at: 5, freed: None, released_next: Some(1) };
        let held = Request { class: 512, queue_write: false, at: 6, freed: None, released_next: None };
        let act = req(512, 2, Some(4));
        let reqs = [grad, held, act];
        let p = pack(&reqs, &[], 256, 1 << 20);
        check(&reqs, &p, 256);
        assert_eq!(p.bytes(), 1024, "{p:?}");
    }

    #[test]
    fn a_kernel_s_input_and_output_go_in_different_slabs() {
        // y = f(x): x and y live at once anyway; z = g(y) after x is gone could
        // take x's bytes, but z is written while y is read: not in y's slab.
        let reqs = [req(1024, 1, Some(4)), req(1024, 2, Some(6)), req(1024, 5, Some(7))];
        let p = pack(&reqs, &[(0, 1), (1, 2)], 256, 1 << 20);
        check(&reqs, &p, 256);
        assert!(p.slab[0] != p.slab[1] && p.slab[1] != p.slab[2], "{p:?}");
        assert_eq!(p.bytes(), 2048, "x and z share bytes: {p:?}");
    }

    #[test]
    fn slabs_respect_their_capacity() {
        let reqs: Vec<Request> = (0..5).map(|i| req(3000, i + 1, None)).collect();
        let p = pack(&reqs, &[], 1024, 8192);
        check(&reqs, &p, 1024);
        assert!(p.slabs.iter().all(|&s| s <= 8192) && p.slabs.len() == 3, "{p:?}");
    }

    #[test]
    fn random_traces_keep_the_promise() {
        let mut seed = 12345u64;
        let mut next = |m: u64| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for _ in 0..50 {
            let mut t = 0;
            let mut reqs = Vec::new();
            for _ in 0..40 {
                t += 1;
                let class = 256 * (1 + next(16));
                let life = next(20);
                let freed = (life < 18).then_some(t + 1 + life);
                reqs.push(Request { class, queue_write: next(8) == 0, at: t, freed, released_next: if freed.is_none() && next(2) == 0 { Some(next(10)) } else { None } });
            }
            let apart: Vec<(usize, usize)> = (0..20).map(|_| (next(40) as usize, next(40) as usize)).collect();
            let p = pack(&reqs, &apart, 256, 16 << 10);
            check(&reqs, &p, 256);
            for &(a, b) in apart.iter().filter(|(a, b)| a != b) {
                assert_ne!(p.slab[a], p.slab[b], "{a} and {b} must be in different slabs");
            }
        }
    }
}
