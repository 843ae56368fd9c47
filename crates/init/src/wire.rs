//! Frames over an async stream.

use std::io;
use std::os::fd::AsRawFd;

use hiber_proto::{decode, Frame, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;

/// How much to read at once.
const READ_SIZE: usize = 64 * 1024;

/// Reads frames as they arrive.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `inner`.
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader { inner, buf: Vec::new() }
    }

    /// The stream read from.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next frame; `Ok(None)` when the stream ends cleanly between
    /// frames. Cancel-safe: bytes read are kept for the next call.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some((frame, used)) = decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            self.buf.reserve(READ_SIZE);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(FrameError::Truncated),
                };
            }
        }
    }
}

impl FrameReader<OwnedReadHalf> {
    /// The next frame that is already here, without waiting: one decoded
    /// from what was read before, or from bytes the socket holds now.
    /// `Ok(None)` when no whole frame is there (or the stream ended).
    pub fn next_ready(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some((frame, used)) = decode(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 4096];
            let stream: &UnixStream = self.inner.as_ref();
            // A direct non-blocking read: the event loop's readiness may not
            // know yet about bytes the peer just sent.
            // SAFETY: recv writes at most `chunk.len()` bytes into `chunk`, a
            // live local; the fd is the stream's, open while we borrow it.
            let n =
                unsafe { libc::recv(stream.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len(), libc::MSG_DONTWAIT) };
            match n {
                0 => return Ok(None),
                n if n > 0 => self.buf.extend_from_slice(&chunk[..n as usize]),
                _ => {
                    let e = io::Error::last_os_error();
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(None),
                        io::ErrorKind::Interrupted => continue,
                        _ => Err(e.into()),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hiber_proto::encode;

    #[tokio::test]
    async fn frames_split_anywhere_are_reassembled() {
        let mut wire = Vec::new();
        encode(&Frame::Stdin(b"hello".to_vec()), &mut wire);
        encode(&Frame::StdinEof, &mut wire);
        let (mut tx, rx) = tokio::io::duplex(3);
        let writer = async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&wire).await.unwrap();
        };
        let reader = async move {
            let mut reader = FrameReader::new(rx);
            let mut frames = Vec::new();
            while let Some(frame) = reader.next().await.unwrap() {
                frames.push(frame);
            }
            frames
        };
        let ((), frames) = tokio::join!(writer, reader);
        assert_eq!(frames, vec![Frame::Stdin(b"hello".to_vec()), Frame::StdinEof]);
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error() {
        let mut reader = FrameReader::new(&[9u8, 0, 0, 0, 1, b'a'][..]);
        assert!(matches!(reader.next().await, Err(FrameError::Truncated)));
        let mut garbage = FrameReader::new(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        assert!(matches!(garbage.next().await, Err(FrameError::TooLarge(_))));
    }
}
