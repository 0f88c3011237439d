//! Grouping routed datagrams into UDP GSO sends (sans-IO).
//!
//! The egress path reads frames from a TAP one at a time, but most of them come in runs: a TCP
//! flow's pure ACKs, a UDP flow's datagrams, all for one VTEP, leaving through one send socket
//! (chosen by flow hash), all of one size. The kernel takes such a run in a single `UDP_SEGMENT`
//! send (every segment `stride` bytes but the last, which may be shorter) and moves it through
//! the underlay stack as one buffer, so a burst of 64 small frames costs one system call and one
//! trip through routing, veth and bridge instead of 64.
//!
//! [`GsoBatcher`] collects datagrams per key (the worker uses destination + send socket) and hands
//! each finished run to a send function. A key's datagrams leave in the order they were pushed;
//! runs of different keys may leave in any order (they are different flows or destinations).
//! Nothing waits across bursts: the caller flushes when its TAP queue is drained.

/// Most datagrams in one run: the kernel's `UDP_MAX_SEGMENTS` on older kernels.
pub const MAX_RUN_SEGMENTS: usize = 64;
/// Most bytes in one run: the largest UDP payload of one IPv4 datagram.
pub const MAX_RUN_BYTES: usize = 65_507;

/// One run handed to the send function: `count` datagrams back to back in `bytes`, each
/// `stride` bytes long but the last, which may be shorter. `count == 1` is a plain datagram.
#[derive(Debug)]
pub struct GsoRun<'a, K> {
    /// Where the run goes (what it was pushed with).
    pub key: &'a K,
    /// The datagrams, back to back.
    pub bytes: &'a [u8],
    /// Size of every datagram but the last.
    pub stride: usize,
    /// Number of datagrams.
    pub count: usize,
}

#[derive(Debug)]
struct Run<K> {
    key: Option<K>,
    buf: Vec<u8>,
    stride: usize,
    count: usize,
    /// The last datagram was shorter than `stride`: nothing may follow it in this run.
    closed: bool,
}

impl<K> Run<K> {
    fn take(&mut self) -> Option<(K, usize, usize)> {
        let key = self.key.take()?;
        Some((key, self.stride, self.count))
    }
}

/// Collects datagrams into per-key runs for UDP GSO sends; buffers are allocated once.
#[derive(Debug)]
pub struct GsoBatcher<K> {
    runs: Vec<Run<K>>,
    max_segments: usize,
    max_bytes: usize,
}

impl<K: PartialEq> GsoBatcher<K> {
    /// A batcher with `keys` open runs at most (at least 1), each up to [`MAX_RUN_SEGMENTS`]
    /// datagrams and [`MAX_RUN_BYTES`] bytes.
    pub fn new(keys: usize) -> Self {
        Self::with_limits(keys, MAX_RUN_SEGMENTS, MAX_RUN_BYTES)
    }

    /// Like [`GsoBatcher::new`] with explicit limits per run (each at least 1).
    pub fn with_limits(keys: usize, max_segments: usize, max_bytes: usize) -> Self {
        let runs = (0..keys.max(1))
            .map(|_| Run {
                key: None,
                buf: Vec::with_capacity(max_bytes.max(1)),
                stride: 0,
                count: 0,
                closed: false,
            })
            .collect();
        GsoBatcher {
            runs,
            max_segments: max_segments.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// No datagram is waiting.
    pub fn is_empty(&self) -> bool {
        self.runs.iter().all(|r| r.key.is_none())
    }

    /// Adds one datagram for `key`. Runs that cannot take it are handed to `send` first, so a
    /// key's datagrams keep their order. A datagram larger than a run is sent on its own.
    pub fn push(&mut self, key: K, datagram: &[u8], send: &mut impl FnMut(GsoRun<'_, K>)) {
        let len = datagram.len();
        let slot = self.runs.iter().position(|r| r.key.as_ref() == Some(&key));
        if len > self.max_bytes {
            if let Some(i) = slot {
                self.flush_run(i, send);
            }
            send(GsoRun {
                key: &key,
                bytes: datagram,
                stride: len,
                count: 1,
            });
            return;
        }
        let index = match slot {
            Some(i) => {
                let run = &self.runs[i];
                let fits = !run.closed
                    && len <= run.stride
                    && run.count < self.max_segments
                    && run.buf.len() + len <= self.max_bytes;
                if fits {
                    self.append(i, datagram);
                    return;
                }
                self.flush_run(i, send);
                i
            }
            None => match self.runs.iter().position(|r| r.key.is_none()) {
                Some(i) => i,
                None => {
                    // Every run is busy with another key: send them all, reuse the first.
                    self.flush(send);
                    0
                }
            },
        };
        let run = &mut self.runs[index];
        run.key = Some(key);
        run.stride = len;
        run.count = 0;
        run.closed = false;
        run.buf.clear();
        self.append(index, datagram);
    }

    fn append(&mut self, index: usize, datagram: &[u8]) {
        let run = &mut self.runs[index];
        run.buf.extend_from_slice(datagram);
        run.count += 1;
        // A zero stride cannot describe a GSO run: an empty datagram always goes alone.
        run.closed = run.stride == 0 || datagram.len() < run.stride;
    }

    fn flush_run(&mut self, index: usize, send: &mut impl FnMut(GsoRun<'_, K>)) {
        let run = &mut self.runs[index];
        if let Some((key, stride, count)) = run.take() {
            send(GsoRun {
                key: &key,
                bytes: &run.buf,
                stride,
                count,
            });
            run.buf.clear();
        }
    }

    /// Hands every waiting run to `send`.
    pub fn flush(&mut self, send: &mut impl FnMut(GsoRun<'_, K>)) {
        for i in 0..self.runs.len() {
            self.flush_run(i, send);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `send` saw: (key, stride, count, bytes).
    type Sent = Vec<(u8, usize, usize, Vec<u8>)>;

    fn recorder(sent: &mut Sent) -> impl FnMut(GsoRun<'_, u8>) + '_ {
        |run| sent.push((*run.key, run.stride, run.count, run.bytes.to_vec()))
    }

    fn datagram(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    /// Splits each run back into its datagrams, as the kernel's GSO does.
    fn datagrams(sent: &Sent) -> Vec<(u8, Vec<u8>)> {
        sent.iter()
            .flat_map(|(key, stride, _, bytes)| {
                bytes.chunks(*stride).map(move |d| (*key, d.to_vec()))
            })
            .collect()
    }

    #[test]
    fn equal_datagrams_of_one_key_leave_in_one_run() {
        let mut b = GsoBatcher::new(4);
        let mut sent = Sent::new();
        for i in 0..10 {
            b.push(1, &datagram(i, 70), &mut recorder(&mut sent));
        }
        assert!(sent.is_empty(), "nothing leaves before the flush");
        b.flush(&mut recorder(&mut sent));
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].1, sent[0].2, sent[0].3.len()), (70, 10, 700));
        assert!(b.is_empty());
    }

    #[test]
    fn a_shorter_datagram_ends_its_run_and_a_longer_one_starts_a_new_run() {
        let mut b = GsoBatcher::new(4);
        let mut sent = Sent::new();
        for len in [100, 100, 60, 100, 120, 120] {
            b.push(7, &datagram(len as u8, len), &mut recorder(&mut sent));
        }
        b.flush(&mut recorder(&mut sent));
        let shapes: Vec<(usize, usize)> = sent.iter().map(|s| (s.1, s.2)).collect();
        // 100,100,60 | 100 | 120,120
        assert_eq!(shapes, vec![(100, 3), (100, 1), (120, 2)]);
        let lens: Vec<usize> = datagrams(&sent).iter().map(|d| d.1.len()).collect();
        assert_eq!(lens, vec![100, 100, 60, 100, 120, 120]);
    }

    #[test]
    fn each_key_keeps_its_order_when_keys_interleave() {
        let mut b = GsoBatcher::new(2);
        let mut sent = Sent::new();
        // Three keys through two runs: forces evictions.
        let mut pushed: Vec<(u8, Vec<u8>)> = Vec::new();
        for i in 0..200u32 {
            let key = (i % 3) as u8;
            let len = 50 + (i as usize * 7) % 40;
            let d = datagram(i as u8, len);
            pushed.push((key, d.clone()));
            b.push(key, &d, &mut recorder(&mut sent));
        }
        b.flush(&mut recorder(&mut sent));
        let out = datagrams(&sent);
        for key in 0..3u8 {
            let want: Vec<&Vec<u8>> = pushed.iter().filter(|p| p.0 == key).map(|p| &p.1).collect();
            let got: Vec<&Vec<u8>> = out.iter().filter(|p| p.0 == key).map(|p| &p.1).collect();
            assert_eq!(got, want, "key {key}");
        }
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits() {
        let mut b = GsoBatcher::with_limits(1, 4, 1000);
        let mut sent = Sent::new();
        for _ in 0..9 {
            b.push(0, &datagram(0, 100), &mut recorder(&mut sent));
        }
        for _ in 0..3 {
            b.push(0, &datagram(1, 400), &mut recorder(&mut sent));
        }
        b.flush(&mut recorder(&mut sent));
        let shapes: Vec<(usize, usize)> = sent.iter().map(|s| (s.1, s.2)).collect();
        assert_eq!(
            shapes,
            vec![(100, 4), (100, 4), (100, 1), (400, 2), (400, 1)]
        );
        assert!(sent.iter().all(|s| s.3.len() <= 1000 && s.2 <= 4));
    }

    #[test]
    fn an_oversized_datagram_goes_alone_after_its_keys_run() {
        let mut b = GsoBatcher::with_limits(2, 64, 1000);
        let mut sent = Sent::new();
        b.push(3, &datagram(1, 10), &mut recorder(&mut sent));
        b.push(3, &datagram(2, 2000), &mut recorder(&mut sent));
        b.flush(&mut recorder(&mut sent));
        let shapes: Vec<(usize, usize, usize)> =
            sent.iter().map(|s| (s.1, s.2, s.3.len())).collect();
        assert_eq!(shapes, vec![(10, 1, 10), (2000, 1, 2000)]);
    }

    #[test]
    fn empty_datagrams_are_kept() {
        let mut b = GsoBatcher::new(1);
        let mut sent = Sent::new();
        b.push(0, &[], &mut recorder(&mut sent));
        b.push(0, &[], &mut recorder(&mut sent));
        b.flush(&mut recorder(&mut sent));
        // A zero stride cannot be a GSO run: each empty datagram is its own run.
        assert_eq!(sent.iter().map(|s| s.2).sum::<usize>(), 2);
        assert!(sent.iter().all(|s| s.2 == 1));
    }
}
