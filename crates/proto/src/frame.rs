//! Length-prefixed frames: `u32` little-endian payload length, one tag byte,
//! then the payload.

use std::io::{self, Read, Write};

use crate::message::TtySize;

/// Largest payload accepted; bigger frames are a protocol error.
pub const MAX_PAYLOAD: usize = 1 << 20;

const HEADER: usize = 5;

/// One unit on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// JSON: a [`crate::Request`] from the host or a [`crate::Reply`] from init.
    Control(Vec<u8>),
    /// Bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// The host's stdin ended.
    StdinEof,
    /// The host's terminal changed size.
    Resize(TtySize),
    /// Bytes the process wrote to stdout (or to its terminal).
    Stdout(Vec<u8>),
    /// Bytes the process wrote to stderr.
    Stderr(Vec<u8>),
}

/// Errors reading or decoding frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent a tag this version does not know.
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    /// The peer announced a payload above [`MAX_PAYLOAD`].
    #[error("frame of {0} bytes exceeds the {MAX_PAYLOAD} byte limit")]
    TooLarge(usize),
    /// A frame's payload does not fit its tag.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    /// The connection ended inside a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Frame {
    fn tag(&self) -> u8 {
        match self {
            Frame::Control(_) => 0,
            Frame::Stdin(_) => 1,
            Frame::StdinEof => 2,
            Frame::Resize(_) => 3,
            Frame::Stdout(_) => 4,
            Frame::Stderr(_) => 5,
        }
    }

    /// Builds a control frame holding `value` as JSON.
    pub fn control<T: serde::Serialize>(value: &T) -> Frame {
        Frame::Control(serde_json::to_vec(value).expect("control messages always serialize"))
    }

    /// Parses a control frame's JSON; `None` for other frames or bad JSON.
    pub fn parse_control<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        match self {
            Frame::Control(json) => serde_json::from_slice(json).ok(),
            _ => None,
        }
    }
}

/// Appends the encoding of `frame` to `out`.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let resize;
    let payload: &[u8] = match frame {
        Frame::Control(b) | Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) => b,
        Frame::StdinEof => &[],
        Frame::Resize(size) => {
            resize = [size.rows.to_le_bytes(), size.cols.to_le_bytes()].concat();
            &resize
        }
    };
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(frame.tag());
    out.extend_from_slice(payload);
}

/// Decodes the first frame in `buf`: `Ok(None)` when `buf` holds only part of
/// one, otherwise the frame and how many bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    let payload = &buf[HEADER..HEADER + len];
    let frame = match buf[4] {
        0 => Frame::Control(payload.to_vec()),
        1 => Frame::Stdin(payload.to_vec()),
        2 => Frame::StdinEof,
        3 => {
            let [r0, r1, c0, c1] = payload else { return Err(FrameError::Malformed("resize")) };
            Frame::Resize(TtySize { rows: u16::from_le_bytes([*r0, *r1]), cols: u16::from_le_bytes([*c0, *c1]) })
        }
        4 => Frame::Stdout(payload.to_vec()),
        5 => Frame::Stderr(payload.to_vec()),
        tag => return Err(FrameError::UnknownTag(tag)),
    };
    Ok(Some((frame, HEADER + len)))
}

/// Reads one frame from a blocking reader; `Ok(None)` on a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, FrameError> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; HEADER + len];
    buf[..HEADER].copy_from_slice(&header);
    r.read_exact(&mut buf[HEADER..]).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(decode(&buf)?.map(|(frame, _)| frame))
}

/// Writes one frame to a blocking writer.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    let mut buf = Vec::new();
    encode(frame, &mut buf);
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Frame> {
        vec![
            Frame::Control(br#"{"op":"ping"}"#.to_vec()),
            Frame::Stdin(b"abc".to_vec()),
            Frame::StdinEof,
            Frame::Resize(TtySize { rows: 50, cols: 132 }),
            Frame::Stdout(vec![0, 255, 10]),
            Frame::Stderr(Vec::new()),
        ]
    }

    #[test]
    fn every_kind_roundtrips_and_partial_input_waits() {
        let mut wire = Vec::new();
        for f in all_kinds() {
            encode(&f, &mut wire);
        }
        // Every strict prefix of the first frame is "not yet".
        let (first, used) = decode(&wire).unwrap().unwrap();
        for cut in 0..used {
            assert!(decode(&wire[..cut]).unwrap().is_none(), "prefix {cut}");
        }
        assert_eq!(first, all_kinds()[0]);
        let mut reader = &wire[..];
        for f in all_kinds() {
            assert_eq!(read_frame(&mut reader).unwrap(), Some(f));
        }
        assert!(read_frame(&mut reader).unwrap().is_none());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(decode(&[0, 0, 0, 0, 9]), Err(FrameError::UnknownTag(9))));
        assert!(matches!(decode(&[0, 0, 0, 0x40, 0]), Err(FrameError::TooLarge(_))));
        assert!(matches!(decode(&[1, 0, 0, 0, 3, 7]), Err(FrameError::Malformed("resize"))));
        let mut truncated: &[u8] = &[3, 0, 0, 0, 1, b'a'];
        assert!(matches!(read_frame(&mut truncated), Err(FrameError::Truncated)));
    }
}
