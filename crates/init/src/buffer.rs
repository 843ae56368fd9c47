//! The bounded buffer of a process's output that waits to be sent to the host.

use std::collections::VecDeque;

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output, or everything a terminal shows.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Largest chunk the buffer keeps; one chunk goes out as one frame.
pub const CHUNK: usize = 64 * 1024;

/// How much output an exec keeps while no connection takes it.
pub const CAPACITY: usize = 1 << 20;

/// Output bytes in arrival order, at most `capacity` of them: pushing past
/// the bound drops the oldest bytes, so the newest are kept.
#[derive(Debug)]
pub struct OutputBuffer {
    chunks: VecDeque<(Stream, Vec<u8>)>,
    len: usize,
    capacity: usize,
}

impl OutputBuffer {
    /// An empty buffer holding at most `capacity` bytes.
    pub fn new(capacity: usize) -> OutputBuffer {
        OutputBuffer { chunks: VecDeque::new(), len: 0, capacity }
    }

    /// How many bytes can be pushed before old ones get dropped.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len)
    }

    /// Appends `data` from `stream`, merging it into the last chunk when that
    /// came from the same stream and has room, then drops the oldest bytes
    /// beyond the capacity.
    pub fn push(&mut self, stream: Stream, data: &[u8]) {
        let mut data = &data[data.len().saturating_sub(self.capacity)..];
        self.len += data.len();
        while !data.is_empty() {
            match self.chunks.back_mut() {
                Some((s, chunk)) if *s == stream && chunk.len() < CHUNK => {
                    let take = data.len().min(CHUNK - chunk.len());
                    chunk.extend_from_slice(&data[..take]);
                    data = &data[take..];
                }
                _ => {
                    let take = data.len().min(CHUNK);
                    self.chunks.push_back((stream, data[..take].to_vec()));
                    data = &data[take..];
                }
            }
        }
        let excess = self.len.saturating_sub(self.capacity);
        self.drop_front(excess);
    }

    /// The oldest chunk, if any.
    pub fn front(&self) -> Option<(Stream, &[u8])> {
        self.chunks.front().map(|(stream, chunk)| (*stream, chunk.as_slice()))
    }

    /// Removes the first `n` bytes of the oldest chunk (after they were sent).
    pub fn consume(&mut self, n: usize) {
        if let Some((_, front)) = self.chunks.front() {
            self.drop_front(n.min(front.len()));
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    fn drop_front(&mut self, mut n: usize) {
        while n > 0 {
            let Some((_, front)) = self.chunks.front_mut() else { break };
            if front.len() <= n {
                n -= front.len();
                self.len -= front.len();
                self.chunks.pop_front();
            } else {
                front.drain(..n);
                self.len -= n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(buf: &mut OutputBuffer) -> Vec<(Stream, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some((stream, chunk)) = buf.front() {
            let chunk = chunk.to_vec();
            buf.consume(chunk.len());
            out.push((stream, chunk));
        }
        out
    }

    #[test]
    fn same_stream_merges_and_streams_stay_apart() {
        let mut buf = OutputBuffer::new(CAPACITY);
        buf.push(Stream::Stdout, b"a");
        buf.push(Stream::Stdout, b"b");
        buf.push(Stream::Stderr, b"c");
        buf.push(Stream::Stdout, b"d");
        assert_eq!(buf.room(), CAPACITY - 4);
        assert_eq!(
            drain(&mut buf),
            vec![(Stream::Stdout, b"ab".to_vec()), (Stream::Stderr, b"c".to_vec()), (Stream::Stdout, b"d".to_vec()),]
        );
        assert_eq!(buf.room(), CAPACITY);
    }

    #[test]
    fn chunks_never_exceed_the_chunk_size() {
        let mut buf = OutputBuffer::new(CAPACITY);
        buf.push(Stream::Stdout, &vec![1; CHUNK - 10]);
        buf.push(Stream::Stdout, &vec![2; CHUNK + 30]);
        let sizes: Vec<usize> = drain(&mut buf).iter().map(|(_, c)| c.len()).collect();
        assert_eq!(sizes, vec![CHUNK, CHUNK, 20]);
    }

    #[test]
    fn overflow_keeps_the_newest_bytes() {
        let mut buf = OutputBuffer::new(10);
        buf.push(Stream::Stdout, b"0123");
        buf.push(Stream::Stderr, b"4567");
        buf.push(Stream::Stdout, b"89ab");
        assert_eq!(buf.room(), 0);
        assert_eq!(
            drain(&mut buf),
            vec![
                (Stream::Stdout, b"23".to_vec()),
                (Stream::Stderr, b"4567".to_vec()),
                (Stream::Stdout, b"89ab".to_vec()),
            ]
        );
        // One push bigger than the whole buffer keeps only its tail.
        buf.push(Stream::Stdout, b"abcdefghijklmnop");
        assert_eq!(drain(&mut buf), vec![(Stream::Stdout, b"ghijklmnop".to_vec())]);
    }

    #[test]
    fn bytes_appended_while_a_chunk_is_being_sent_survive_its_consumption() {
        let mut buf = OutputBuffer::new(CAPACITY);
        buf.push(Stream::Stdout, b"first");
        let sent = buf.front().map(|(_, c)| c.len()).unwrap();
        buf.push(Stream::Stdout, b"second");
        buf.consume(sent);
        assert_eq!(buf.front(), Some((Stream::Stdout, &b"second"[..])));
        buf.clear();
        assert!(buf.front().is_none());
        assert_eq!(buf.room(), CAPACITY);
    }
}
