//! MLLP framing: `0x0B payload 0x1C 0x0D`, as a bounded, pure state machine.
//!
//! The caller [`push`](FrameDecoder::push)es bytes as they arrive and drains
//! [`next_event`](FrameDecoder::next_event) until it returns `None`. Events:
//!
//! * [`FrameEvent::Frame`]: one complete payload (without the markers).
//! * [`FrameEvent::Garbage`]: bytes outside any frame, one event per contiguous
//!   run, reported when the next START arrives (or on demand with
//!   [`take_garbage`](FrameDecoder::take_garbage), e.g. at connection close);
//!   also a partial frame abandoned because a new START arrived (its length
//!   counts its START byte).
//! * [`FrameEvent::Oversize`]: a frame whose payload exceeded `max_frame`; only
//!   the first `min(max_frame, 8192)` bytes are kept as `head` (enough to read
//!   MSH-10 and NAK it), the rest is counted and discarded until the end marker.
//!
//! Leniency (documented deviations from a strict reader):
//! * a frame ends at `0x1C` and is emitted at once; a following `0x0D` is
//!   swallowed, even when it arrives in a later push. A `0x1C` followed by any
//!   other byte also ends the frame and that byte is processed normally (a
//!   sender that omits the CR still gets its message through, and is not left
//!   waiting for an ACK).
//!
//! **Invariant: memory is bounded** — the partial frame buffer never holds more
//! than `max_frame` bytes, plus the bytes pushed and not yet drained.
//!
//! **Invariant: the frames produced do not depend on how the stream is split
//! into pushes** (checked by a proptest).

/// Start-of-block byte.
pub const START: u8 = 0x0B;
/// End-of-block byte.
pub const END: u8 = 0x1C;
/// Carriage return that follows END.
pub const CR: u8 = 0x0D;

/// Largest `head` kept for an oversize frame.
pub const OVERSIZE_HEAD: usize = 8192;

/// Wraps `payload` in MLLP markers.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START);
    out.extend_from_slice(payload);
    out.push(END);
    out.push(CR);
    out
}

/// What the decoder found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete frame's payload.
    Frame(Vec<u8>),
    /// A frame over the size limit: its first bytes and its total payload length.
    Oversize {
        /// First `min(max_frame, 8192)` payload bytes.
        head: Vec<u8>,
        /// Total payload length.
        len: usize,
    },
    /// Bytes that were not part of any frame.
    Garbage {
        /// Number of bytes discarded.
        len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames; `swallow_cr` right after an END.
    Outside { swallow_cr: bool },
    /// Inside a frame.
    Inside,
}

/// Bounded MLLP frame decoder (see the module docs).
///
/// Scanning works on slices (one `position` search per event, bulk copies),
/// so throughput is close to `memcpy` for large frames.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame: usize,
    state: State,
    /// Payload of the current frame (at most `max_frame` bytes).
    buf: Vec<u8>,
    /// Payload length of the current frame, including discarded bytes.
    frame_len: usize,
    /// Bytes of the current garbage run.
    garbage: usize,
    /// Input pushed; `pending[cursor..]` is not processed yet.
    pending: Vec<u8>,
    cursor: usize,
}

impl FrameDecoder {
    /// A decoder accepting payloads of up to `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            max_frame,
            state: State::Outside { swallow_cr: false },
            buf: Vec::new(),
            frame_len: 0,
            garbage: 0,
            pending: Vec::new(),
            cursor: 0,
        }
    }

    /// Appends received bytes; call [`next_event`](Self::next_event) until `None`.
    pub fn push(&mut self, data: &[u8]) {
        if self.cursor >= self.pending.len() {
            self.pending.clear();
            self.cursor = 0;
        } else if self.cursor > self.pending.len() / 2 {
            self.pending.drain(..self.cursor);
            self.cursor = 0;
        }
        self.pending.extend_from_slice(data);
    }

    /// `true` when a partial frame is buffered.
    pub fn in_frame(&self) -> bool {
        self.state == State::Inside
    }

    /// Bytes held: the partial frame plus pushed, unprocessed input.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() + self.pending.len().saturating_sub(self.cursor)
    }

    /// Reports the current garbage run now (if any), e.g. when the connection
    /// closes. Returns `None` when there is none.
    pub fn take_garbage(&mut self) -> Option<FrameEvent> {
        if self.garbage == 0 {
            return None;
        }
        let len = std::mem::take(&mut self.garbage);
        Some(FrameEvent::Garbage { len })
    }

    /// Processes pending input up to the next event; `None` when all pushed
    /// input has been consumed without completing one.
    pub fn next_event(&mut self) -> Option<FrameEvent> {
        loop {
            let rest = self.pending.get(self.cursor..).unwrap_or(&[]);
            let Some(&first) = rest.first() else {
                self.pending.clear();
                self.cursor = 0;
                return None;
            };
            match self.state {
                State::Outside { swallow_cr } => {
                    self.state = State::Outside { swallow_cr: false };
                    if swallow_cr && first == CR {
                        self.cursor += 1;
                        continue;
                    }
                    match rest.iter().position(|&b| b == START) {
                        Some(i) => {
                            self.garbage = self.garbage.saturating_add(i);
                            self.cursor += i + 1;
                            self.begin_frame();
                            if let Some(ev) = self.take_garbage() {
                                return Some(ev);
                            }
                        }
                        None => {
                            self.garbage = self.garbage.saturating_add(rest.len());
                            self.cursor += rest.len();
                        }
                    }
                }
                State::Inside => match rest.iter().position(|&b| b == START || b == END) {
                    Some(i) => {
                        let marker = rest.get(i).copied();
                        let chunk = rest.get(..i).unwrap_or(&[]);
                        absorb(&mut self.buf, &mut self.frame_len, self.max_frame, chunk);
                        self.cursor += i + 1;
                        if marker == Some(END) {
                            self.state = State::Outside { swallow_cr: true };
                            return Some(self.finish_frame());
                        }
                        let len = self.frame_len.saturating_add(1);
                        self.begin_frame();
                        return Some(FrameEvent::Garbage { len });
                    }
                    None => {
                        absorb(&mut self.buf, &mut self.frame_len, self.max_frame, rest);
                        self.cursor += rest.len();
                    }
                },
            }
        }
    }

    fn begin_frame(&mut self) {
        self.state = State::Inside;
        self.buf.clear();
        self.frame_len = 0;
    }

    fn finish_frame(&mut self) -> FrameEvent {
        let payload = std::mem::take(&mut self.buf);
        let len = std::mem::take(&mut self.frame_len);
        if len > self.max_frame {
            let mut head = payload;
            head.truncate(self.max_frame.min(OVERSIZE_HEAD));
            FrameEvent::Oversize { head, len }
        } else {
            FrameEvent::Frame(payload)
        }
    }
}

/// Adds payload bytes to the current frame, keeping at most `max` bytes (and
/// only the 8 KiB head once the frame is known to be oversize).
fn absorb(buf: &mut Vec<u8>, frame_len: &mut usize, max: usize, chunk: &[u8]) {
    let before = *frame_len;
    *frame_len = before.saturating_add(chunk.len());
    if before < max {
        let take = chunk.len().min(max - before);
        let need = buf.len().saturating_add(take);
        if need > buf.capacity() {
            let target = buf
                .capacity()
                .saturating_mul(2)
                .max(need)
                .min(max)
                .max(need);
            buf.reserve_exact(target - buf.len());
        }
        buf.extend_from_slice(chunk.get(..take).unwrap_or(&[]));
    }
    if *frame_len > max && buf.len() > OVERSIZE_HEAD {
        buf.truncate(OVERSIZE_HEAD);
        buf.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(d: &mut FrameDecoder) -> Vec<FrameEvent> {
        std::iter::from_fn(|| d.next_event()).collect()
    }

    #[test]
    fn frame_wraps_payload() {
        assert_eq!(frame(b"MSH|x"), b"\x0bMSH|x\x1c\x0d".to_vec());
    }

    #[test]
    fn decodes_consecutive_frames() {
        let mut d = FrameDecoder::new(1024);
        let mut s = frame(b"one");
        s.extend(frame(b"two"));
        d.push(&s);
        assert_eq!(
            drain(&mut d),
            vec![
                FrameEvent::Frame(b"one".to_vec()),
                FrameEvent::Frame(b"two".to_vec())
            ]
        );
        assert!(!d.in_frame());
        assert_eq!(d.buffered_len(), 0);
        assert_eq!(d.take_garbage(), None);
    }

    #[test]
    fn partial_frame_is_buffered() {
        let mut d = FrameDecoder::new(1024);
        d.push(b"\x0bMSH|");
        assert_eq!(d.next_event(), None);
        assert!(d.in_frame());
        assert_eq!(d.buffered_len(), 4);
        d.push(b"rest\x1c\x0d");
        assert_eq!(
            d.next_event(),
            Some(FrameEvent::Frame(b"MSH|rest".to_vec()))
        );
        assert!(!d.in_frame());
    }

    #[test]
    fn cr_after_end_may_arrive_later() {
        let mut d = FrameDecoder::new(1024);
        d.push(b"\x0babc\x1c");
        assert_eq!(d.next_event(), Some(FrameEvent::Frame(b"abc".to_vec())));
        d.push(b"\x0d");
        assert_eq!(d.next_event(), None);
        assert_eq!(d.take_garbage(), None);
    }

    #[test]
    fn end_without_cr_still_ends_frame() {
        let mut d = FrameDecoder::new(1024);
        d.push(b"\x0babc\x1c\x0bdef\x1cX\x0b");
        assert_eq!(
            drain(&mut d),
            vec![
                FrameEvent::Frame(b"abc".to_vec()),
                FrameEvent::Frame(b"def".to_vec()),
                FrameEvent::Garbage { len: 1 },
            ]
        );
        assert!(d.in_frame());
    }

    #[test]
    fn garbage_between_frames_is_one_event_per_run() {
        let mut d = FrameDecoder::new(1024);
        d.push(b"junk");
        assert_eq!(d.next_event(), None);
        d.push(b"more\x0bx\x1c\x0d\n");
        assert_eq!(
            drain(&mut d),
            vec![
                FrameEvent::Garbage { len: 8 },
                FrameEvent::Frame(b"x".to_vec())
            ]
        );
        assert_eq!(d.take_garbage(), Some(FrameEvent::Garbage { len: 1 }));
        assert_eq!(d.take_garbage(), None);
    }

    #[test]
    fn start_inside_frame_abandons_partial() {
        let mut d = FrameDecoder::new(1024);
        d.push(b"\x0bpartial\x0bwhole\x1c\x0d");
        assert_eq!(
            drain(&mut d),
            vec![
                FrameEvent::Garbage { len: 8 },
                FrameEvent::Frame(b"whole".to_vec())
            ]
        );
    }

    #[test]
    fn oversize_keeps_head_and_total_length() {
        let mut d = FrameDecoder::new(10);
        d.push(b"\x0b0123456789ABCDEF\x1c\x0d\x0bok\x1c\x0d");
        assert_eq!(
            drain(&mut d),
            vec![
                FrameEvent::Oversize {
                    head: b"0123456789".to_vec(),
                    len: 16
                },
                FrameEvent::Frame(b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn oversize_head_is_capped_at_8k() {
        let max = 20_000;
        let mut d = FrameDecoder::new(max);
        let payload = vec![b'a'; 30_000];
        d.push(&frame(&payload));
        match d.next_event() {
            Some(FrameEvent::Oversize { head, len }) => {
                assert_eq!(head.len(), OVERSIZE_HEAD);
                assert_eq!(len, 30_000);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn exact_max_frame_is_accepted() {
        let mut d = FrameDecoder::new(5);
        d.push(&frame(b"12345"));
        assert_eq!(d.next_event(), Some(FrameEvent::Frame(b"12345".to_vec())));
    }

    #[test]
    fn empty_frame() {
        let mut d = FrameDecoder::new(5);
        d.push(&frame(b""));
        assert_eq!(d.next_event(), Some(FrameEvent::Frame(Vec::new())));
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            any::<u8>().prop_filter("no markers", |b| *b != START && *b != END),
            0..300,
        )
    }

    proptest! {
        #[test]
        fn split_streams_yield_same_frames(
            frames in proptest::collection::vec(payload(), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let mut stream = Vec::new();
            for f in &frames {
                stream.extend(frame(f));
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut d = FrameDecoder::new(1024);
            let mut got = Vec::new();
            let mut prev = 0;
            for p in points.into_iter().chain(std::iter::once(stream.len())) {
                d.push(&stream[prev..p]);
                prev = p;
                got.extend(drain(&mut d));
            }
            let want: Vec<FrameEvent> = frames.into_iter().map(FrameEvent::Frame).collect();
            prop_assert_eq!(got, want);
            prop_assert!(!d.in_frame());
            prop_assert_eq!(d.take_garbage(), None);
        }

        #[test]
        fn split_streams_with_garbage_and_oversize(
            items in proptest::collection::vec((payload(), proptest::collection::vec(
                any::<u8>().prop_filter("plain", |b| ![START, END, CR].contains(b)), 0..5)), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            const MAX: usize = 100;
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (p, junk) in &items {
                stream.extend(junk);
                if !junk.is_empty() {
                    want.push(FrameEvent::Garbage { len: junk.len() });
                }
                stream.extend(frame(p));
                want.push(if p.len() > MAX {
                    FrameEvent::Oversize { head: p[..MAX].to_vec(), len: p.len() }
                } else {
                    FrameEvent::Frame(p.clone())
                });
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.sort_unstable();
            let mut d = FrameDecoder::new(MAX);
            let mut got = Vec::new();
            let mut prev = 0;
            for p in points.into_iter().chain(std::iter::once(stream.len())) {
                d.push(&stream[prev..p]);
                prev = p;
                got.extend(drain(&mut d));
                prop_assert!(d.buffered_len() <= MAX);
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn garbage_never_panics_and_stays_bounded(
            chunks in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![any::<u8>(), Just(START), Just(END), Just(CR)], 0..200),
                0..30),
            max in 0usize..64,
        ) {
            let mut d = FrameDecoder::new(max);
            let mut total_in = 0usize;
            let mut accounted = 0usize;
            for c in &chunks {
                total_in += c.len();
                d.push(c);
                while let Some(ev) = d.next_event() {
                    match ev {
                        FrameEvent::Frame(p) => {
                            prop_assert!(p.len() <= max);
                            accounted += p.len();
                        }
                        FrameEvent::Oversize { head, len } => {
                            prop_assert!(head.len() <= max.min(OVERSIZE_HEAD));
                            prop_assert!(len > max);
                            accounted += len;
                        }
                        FrameEvent::Garbage { len } => accounted += len,
                    }
                }
                prop_assert!(d.buffered_len() <= max);
            }
            prop_assert!(accounted <= total_in);
        }
    }
}
