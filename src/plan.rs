//! A step's memory plan: from one submission's trace of buffer requests and
//! releases, which requests can share one buffer, and how large each buffer
//! must be. Training steps repeat the same requests in the same order, so
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
//! Requests are placed largest first, each in the smallest buffer planned so
//! far that is large enough and free for all its span; else in a new buffer
//! of its size (first-fit decreasing, as XLA's and TVM's buffer assignment).

/// One buffer request of a submission, as the pool saw it. Times are the
/// order of takes and releases within the submission (1, 2, 3, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// Bytes (a size class).
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

/// Which buffer serves each request, and each buffer's size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// For request i, the index of its buffer in `sizes`.
    pub buffer: Vec<usize>,
    /// Bytes of each planned buffer.
    pub sizes: Vec<u64>,
}

impl Plan {
    /// Bytes of all planned buffers.
    pub fn bytes(&self) -> u64 {
        self.sizes.iter().sum()
    }
}

fn overlaps((a0, a1): (u64, u64), (b0, b1): (u64, u64)) -> bool {
    a0 <= a1 && b0 <= b1 && a0 <= b1 && b0 <= a1
}

/// Plans buffers for `requests`: the smaller of two greedy plans, both
/// placing each request in the planned buffer free for its whole span that
/// grows least (a buffer may grow to its largest request), else a new one:
/// requests taken largest first (first-fit decreasing), or in the order
/// they came (a linear scan, which packs a step's short-lived temporaries).
pub(crate) fn plan(requests: &[Request]) -> Plan {
    let mut by_size: Vec<usize> = (0..requests.len()).collect();
    by_size.sort_by_key(|&i| (std::cmp::Reverse(requests[i].class), requests[i].at));
    let mut by_time: Vec<usize> = (0..requests.len()).collect();
    by_time.sort_by_key(|&i| (requests[i].spans()[0].0, requests[i].at));
    let (a, b) = (place(requests, &by_size), place(requests, &by_time));
    if b.bytes() < a.bytes() {
        b
    } else {
        a
    }
}

fn place(requests: &[Request], order: &[usize]) -> Plan {
    let mut sizes: Vec<u64> = Vec::new();
    let mut busy: Vec<Vec<(u64, u64)>> = Vec::new();
    let mut buffer = vec![0; requests.len()];
    for &i in order {
        let (spans, class) = (requests[i].spans(), requests[i].class);
        let free = |b: usize| busy[b].iter().all(|&u| spans.iter().all(|&s| !overlaps(s, u)));
        // Least growth, then the smallest buffer (least waste), then the first.
        let fit = (0..sizes.len()).filter(|&b| free(b)).min_by_key(|&b| (class.saturating_sub(sizes[b]), sizes[b].max(class), b));
        let b = match fit.filter(|&b| sizes[b] >= class || sizes[b] * 2 >= class) {
            Some(b) => b,
            None => {
                sizes.push(0);
                busy.push(Vec::new());
                sizes.len() - 1
            }
        };
        sizes[b] = sizes[b].max(class);
        busy[b].extend(spans.into_iter().filter(|&(s, e)| s <= e));
        buffer[i] = b;
    }
    Plan { buffer, sizes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(class: u64, at: u64, freed: Option<u64>) -> Request {
        Request { class, queue_write: false, at, freed, released_next: None }
    }

    /// Checks the plan's promise: requests sharing a buffer never hold it at
    /// once, and every buffer is as large as each request it serves.
    fn check(reqs: &[Request], p: &Plan) {
        for i in 0..reqs.len() {
            assert!(p.sizes[p.buffer[i]] >= reqs[i].class);
            for j in 0..i {
                if p.buffer[i] == p.buffer[j] {
                    let clash = reqs[i].spans().iter().any(|&a| reqs[j].spans().iter().any(|&b| overlaps(a, b)));
                    assert!(!clash, "requests {i} and {j} share buffer {} while both hold it", p.buffer[i]);
                }
            }
        }
    }

    #[test]
    fn a_chain_of_layers_needs_two_buffers() {
        // x1 = f(x0), x2 = f(x1), …: each input is released after the next output is taken.
        let reqs: Vec<Request> = (0..6).map(|i| req(1000, 2 * i + 1, Some(2 * i + 4))).collect();
        let p = plan(&reqs);
        check(&reqs, &p);
        assert_eq!(p.sizes.len(), 2, "{p:?}");
        assert_eq!(p.bytes(), 2000);
    }

    #[test]
    fn smaller_requests_share_larger_buffers_and_uploads_share_nothing_earlier() {
        let mut reqs = vec![req(4096, 1, Some(3)), req(1024, 4, Some(5)), req(1024, 6, None)];
        // An upload after the 4096 request was released: it may not share its buffer.
        reqs.push(Request { class: 2048, queue_write: true, at: 7, freed: Some(8), released_next: None });
        let p = plan(&reqs);
        check(&reqs, &p);
        assert_eq!(p.buffer[0], p.buffer[1], "{p:?}");
        assert_ne!(p.buffer[3], p.buffer[0], "an upload shares a buffer used earlier in the submission: {p:?}");
        // Held past the end with no known release: it occupies its buffer throughout.
        assert!(p.buffer.iter().filter(|&&b| b == p.buffer[2]).count() == 1, "{p:?}");
    }

    #[test]
    fn a_gradient_released_early_next_step_frees_its_buffer_for_that_step() {
        // A gradient taken at 5 and held to the end; the next step releases it at 1.
        let grad = Request { class: 512, queue_write: false, at: 5, freed: None, released_next: Some(1) };
        let act = req(512, 2, Some(4));
        let p = plan(&[grad, act]);
        check(&[grad, act], &p);
        assert_eq!(p.sizes.len(), 1, "{p:?}");
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
            let p = plan(&reqs);
            check(&reqs, &p);
            assert!(p.bytes() <= reqs.iter().map(|r| r.class).sum::<u64>());
        }
    }
}
