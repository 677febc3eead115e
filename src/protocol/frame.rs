//! WebSocket frame bytes (RFC 6455 §5): the server frames the gateway writes, the
//! one place frame headers are decoded, and [`FrameTracker`], which follows client
//! frame boundaries. Server frames are never masked (RFC 6455 §5.1), so one
//! encoded frame is byte-for-byte the same for every subscriber: the fan-out path
//! encodes an event once and copies these bytes into each socket's queue.

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

fn header(opcode: OpCode, len: usize, out: &mut Vec<u8>) {
    let h = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    // Writing into a Vec cannot fail.
    let _ = h.format(len as u64, out);
}

/// Append one unmasked text frame carrying `payload` to `out`.
pub fn text_frame_into(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 10);
    header(OpCode::Data(Data::Text), payload.len(), out);
    out.extend_from_slice(payload);
}

/// One unmasked text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    text_frame_into(payload, &mut out);
    out
}

/// Append a close frame with `code` and a short reason to `out`.
pub fn close_frame_into(code: u16, reason: &str, out: &mut Vec<u8>) {
    // A close reason is limited to 123 bytes (125 minus the code).
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    header(OpCode::Control(Control::Close), 2 + reason.len(), out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// The header length and the payload length of the frame at the start of `buf`,
/// once its header is complete (masked or not).
pub fn frame_len(buf: &[u8]) -> Option<(usize, u64)> {
    let b1 = *buf.get(1)?;
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    match b1 & 0x7f {
        126 => {
            let b = buf.get(2..4)?;
            Some((4 + mask, u64::from(u16::from_be_bytes([b[0], b[1]]))))
        }
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((10 + mask, u64::from_be_bytes(b)))
        }
        n => Some((2 + mask, u64::from(n))),
    }
}

/// The payload of one complete frame (tests and tools read event frames' JSON).
pub fn payload(frame: &[u8]) -> &[u8] {
    frame_len(frame)
        .and_then(|(h, _)| frame.get(h..))
        .unwrap_or(&[])
}

/// In a buffer of whole server frames starting at `start`, the end of the frame
/// that holds byte `sent - 1`: where a partial write of `sent` bytes left off
/// mid-frame, the bytes in `sent..end` finish that frame and must still be written.
/// Returns `sent` when the write ended on a frame boundary, and `buf.len()` if the
/// headers do not parse (never expected: then nothing is dropped).
pub fn cut_frame_end(buf: &[u8], start: usize, sent: usize) -> usize {
    let mut at = start;
    while at < sent {
        let Some((hl, len)) = buf.get(at..).and_then(frame_len) else {
            return buf.len();
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        at = at.saturating_add(hl).saturating_add(len);
    }
    at.min(buf.len()).max(sent)
}

/// Follows WebSocket frame boundaries in the bytes given to the codec (headers
/// parsed with tungstenite's own `FrameHeader::parse`), to know when the codec
/// holds no partial frame and no unfinished fragmented message.
#[derive(Default)]
pub struct FrameTracker {
    hdr: [u8; 14],
    hdr_len: usize,
    payload_left: u64,
    fragmented: bool,
    lost: bool,
}

impl FrameTracker {
    /// Follow `input`; returns how many frames it completed (the heartbeat counts
    /// complete frames, not bytes: SPEC §2).
    pub fn feed(&mut self, mut input: &[u8]) -> usize {
        let mut completed = 0;
        while !input.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = (self.payload_left.min(input.len() as u64)) as usize;
                self.payload_left -= n as u64;
                input = &input[n..];
                if self.payload_left == 0 {
                    completed += 1;
                }
                continue;
            }
            let take = (self.hdr.len() - self.hdr_len).min(input.len());
            self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&input[..take]);
            let mut cur = std::io::Cursor::new(&self.hdr[..self.hdr_len + take]);
            match FrameHeader::parse(&mut cur) {
                Ok(Some((h, len))) => {
                    let used = cur.position() as usize - self.hdr_len;
                    input = &input[used..];
                    self.hdr_len = 0;
                    self.payload_left = len;
                    if matches!(h.opcode, OpCode::Data(_)) {
                        self.fragmented = !h.is_final;
                    }
                    if len == 0 {
                        completed += 1;
                    }
                }
                Ok(None) => {
                    self.hdr_len += take;
                    input = &input[take..];
                    if self.hdr_len >= self.hdr.len() {
                        self.lost = true;
                    }
                }
                Err(_) => self.lost = true,
            }
        }
        completed
    }

    /// Nothing partial is buffered: every byte fed belongs to a complete frame
    /// and no fragmented message is open.
    pub fn at_boundary(&self) -> bool {
        !self.lost && self.hdr_len == 0 && self.payload_left == 0 && !self.fragmented
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_frame_end_finds_the_rest_of_the_frame_a_write_cut() {
        let mut b = text_frame(b"hello"); // 7 bytes
        text_frame_into(&[b'a'; 200], &mut b); // 4 + 200 bytes, ends at 211
        close_frame_into(1000, "", &mut b); // 4 bytes, ends at 215
        assert_eq!(cut_frame_end(&b, 0, 0), 0);
        assert_eq!(cut_frame_end(&b, 0, 3), 7);
        assert_eq!(cut_frame_end(&b, 0, 7), 7); // on a boundary: nothing cut
        assert_eq!(cut_frame_end(&b, 0, 8), 211);
        assert_eq!(cut_frame_end(&b, 0, 210), 211);
        assert_eq!(cut_frame_end(&b, 0, 212), 215);
        // the buffer already starts mid-frame: boundaries begin at `start`
        assert_eq!(cut_frame_end(&b[3..], 4, 2), 4);
        assert_eq!(cut_frame_end(&b[3..], 4, 5), 208);
        // a truncated header keeps everything
        assert_eq!(cut_frame_end(&b[..8], 0, 8), 8);
    }

    proptest::proptest! {
        /// Against a model that remembers where each frame ends: for any run of
        /// frames (small, 16-bit and 64-bit lengths) and any write length, the bytes
        /// to keep are exactly the rest of the frame the write stopped in.
        #[test]
        fn cut_frame_end_matches_the_frame_boundaries(
            sizes in proptest::collection::vec(
                proptest::prop_oneof![0usize..126, 126usize..2000, 65_536usize..65_600],
                1..8,
            ),
            cut in 0.0f64..1.0,
        ) {
            let mut buf = Vec::new();
            let mut ends = Vec::new();
            for n in &sizes {
                text_frame_into(&vec![b'q'; *n], &mut buf);
                ends.push(buf.len());
            }
            let sent = ((buf.len() as f64) * cut) as usize;
            let want = if sent == 0 { 0 } else {
                *ends.iter().find(|e| **e >= sent).unwrap_or(&buf.len())
            };
            proptest::prop_assert_eq!(cut_frame_end(&buf, 0, sent), want);
            // After that partial write, `out` starts mid-frame: the next write's
            // boundaries begin where the cut frame ends.
            let rest = &buf[sent..];
            let start = want - sent;
            let sent2 = ((rest.len() as f64) * (1.0 - cut)) as usize;
            let want2 = if sent2 <= start {
                start.max(sent2)
            } else {
                ends.iter()
                    .filter(|e| **e > sent)
                    .map(|e| e - sent)
                    .find(|e| *e >= sent2)
                    .unwrap_or(rest.len())
            };
            proptest::prop_assert_eq!(cut_frame_end(rest, start, sent2), want2);
        }
    }

    #[test]
    fn small_medium_large_headers() {
        assert_eq!(&text_frame(b"hi")[..2], &[0x81, 2]);
        let m = text_frame(&[b'a'; 200]);
        assert_eq!(&m[..4], &[0x81, 126, 0, 200]);
        let l = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(l[1], 127);
        assert_eq!(l.len(), 70_000 + 10);
    }

    #[test]
    fn close_has_code() {
        let mut v = Vec::new();
        close_frame_into(4010, "slow consumer", &mut v);
        assert_eq!(v[0], 0x88);
        assert_eq!(&v[2..4], &4010u16.to_be_bytes());
    }

    mod tracker {
        use super::super::FrameTracker;
        use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
        use tungstenite::protocol::frame::Frame;

        fn client_frame(payload: &[u8], opcode: OpCode, fin: bool) -> Vec<u8> {
            let mut f = match opcode {
                OpCode::Control(Control::Ping) => Frame::ping(payload.to_vec()),
                _ => Frame::message(payload.to_vec(), opcode, fin),
            };
            f.header_mut().mask = Some([1, 2, 3, 4]);
            let mut out = Vec::new();
            f.format(&mut out).unwrap();
            out
        }

        #[test]
        fn boundaries_across_every_split() {
            let mut stream = client_frame(&[b'x'; 300], OpCode::Data(Data::Text), true);
            stream.extend(client_frame(b"ping", OpCode::Control(Control::Ping), true));
            stream.extend(client_frame(
                &[b'y'; 70_000],
                OpCode::Data(Data::Text),
                true,
            ));
            for split in 0..=stream.len().min(400) {
                let mut t = FrameTracker::default();
                t.feed(&stream[..split]);
                t.feed(&stream[split..]);
                assert!(t.at_boundary(), "split at {split}");
            }
            let mut t = FrameTracker::default();
            t.feed(&stream[..stream.len() - 1]);
            assert!(!t.at_boundary());
        }

        #[test]
        fn counts_only_complete_frames() {
            let a = client_frame(&[b'x'; 300], OpCode::Data(Data::Text), true);
            let p = client_frame(b"", OpCode::Control(Control::Ping), true);
            let mut t = FrameTracker::default();
            for b in &a[..a.len() - 1] {
                assert_eq!(t.feed(&[*b]), 0, "a trickled frame is not complete");
            }
            assert_eq!(t.feed(&a[a.len() - 1..]), 1);
            let mut two = p.clone();
            two.extend_from_slice(&a);
            assert_eq!(t.feed(&two), 2, "an empty ping and a text frame");
        }

        #[test]
        fn a_fragmented_message_is_not_a_boundary_until_its_last_frame() {
            let mut t = FrameTracker::default();
            t.feed(&client_frame(b"part1", OpCode::Data(Data::Text), false));
            assert!(!t.at_boundary());
            t.feed(&client_frame(b"p", OpCode::Control(Control::Ping), true));
            assert!(
                !t.at_boundary(),
                "a control frame in between does not end it"
            );
            t.feed(&client_frame(b"part2", OpCode::Data(Data::Continue), true));
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn frame_len_reads_every_header_form() {
        assert_eq!(frame_len(&text_frame(b"hi")), Some((2, 2)));
        assert_eq!(frame_len(&text_frame(&[b'a'; 200])), Some((4, 200)));
        assert_eq!(
            frame_len(&text_frame(&vec![b'a'; 70_000])),
            Some((10, 70_000))
        );
        assert_eq!(frame_len(&[0x81, 0x85]), Some((6, 5)), "masked");
        assert_eq!(frame_len(&[0x81]), None);
        assert_eq!(frame_len(&[0x81, 126, 0]), None);
        assert_eq!(payload(&text_frame(b"{}")), b"{}");
    }
}
