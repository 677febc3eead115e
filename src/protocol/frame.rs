//! Server-to-client WebSocket frames. Server frames are never masked (RFC 6455 §5.1),
//! so one encoded frame is byte-for-byte the same for every subscriber: the fan-out
//! path encodes an event once and copies these bytes into each socket's queue.

use tungstenite::protocol::frame::coding::{Data, OpCode};
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
    header(
        OpCode::Control(tungstenite::protocol::frame::coding::Control::Close),
        2 + reason.len(),
        out,
    );
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
