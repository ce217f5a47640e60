//! Incremental Server-Sent Events framing.
//!
//! [`EventSplitter`] takes the bytes of a response body as they arrive and
//! hands back whole events — each exactly as the upstream sent it, blank-line
//! terminator included — so the gateway forwards events one by one without
//! re-encoding them and without ever holding more than one partial event.

/// Events larger than this are refused: no legitimate provider event comes
/// near it, and a hostile upstream must not make the gateway buffer forever.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTooLarge;

#[derive(Debug, Default)]
pub struct EventSplitter {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a terminator.
    scanned: usize,
}

impl EventSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes from the upstream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), EventTooLarge> {
        if self.buf.len() + bytes.len() > MAX_EVENT_BYTES && self.find_end().is_none() {
            return Err(EventTooLarge);
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete event, if one has fully arrived.
    pub fn next_event(&mut self) -> Option<Vec<u8>> {
        let end = self.find_end()?;
        let rest = self.buf.split_off(end);
        let event = std::mem::replace(&mut self.buf, rest);
        self.scanned = 0;
        Some(event)
    }

    /// Whatever is left when the upstream ends: an unterminated last event.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.scanned = 0;
        let rest = std::mem::take(&mut self.buf);
        (!rest.iter().all(u8::is_ascii_whitespace)).then_some(rest)
    }

    /// Bytes held back, waiting for the rest of an event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// End (exclusive) of the first event: the position after a blank line.
    /// A line ends in `\n`, `\r\n` or `\r`.
    fn find_end(&mut self) -> Option<usize> {
        let buf = &self.buf;
        // Resume a little before where the last search stopped, so that a
        // terminator split across pushes is still found.
        let mut i = self.scanned.saturating_sub(3);
        while let Some(off) = memchr::memchr2(b'\n', b'\r', &buf[i..]) {
            let pos = i + off;
            // The end of this line break.
            let after = if buf[pos] == b'\r' {
                match buf.get(pos + 1) {
                    Some(b'\n') => pos + 2,
                    Some(_) => pos + 1,
                    // A lone '\r' at the end may be the start of "\r\n".
                    None => break,
                }
            } else {
                pos + 1
            };
            // A blank line: another line break right after this one.
            match buf.get(after) {
                Some(b'\n') => return Some(after + 1),
                Some(b'\r') => match buf.get(after + 1) {
                    Some(b'\n') => return Some(after + 2),
                    Some(_) => return Some(after + 1),
                    None => break,
                },
                Some(_) => i = after,
                None => break,
            }
        }
        self.scanned = buf.len();
        None
    }
}

/// The fields of one event that the gateway reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, if any.
    pub name: Option<&'a str>,
    /// The `data:` lines, joined with `\n` as the spec says.
    pub data: Vec<u8>,
}

impl<'a> Event<'a> {
    pub fn parse(raw: &'a [u8]) -> Self {
        let mut event = Event::default();
        let mut first_data = true;
        for line in raw.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (field, value) = match memchr::memchr(b':', line) {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if !first_data {
                        event.data.push(b'\n');
                    }
                    event.data.extend_from_slice(value);
                    first_data = false;
                }
                b"event" => event.name = std::str::from_utf8(value).ok(),
                _ => {}
            }
        }
        event
    }

    /// `data: [DONE]`, OpenAI's end-of-stream marker.
    pub fn is_done(&self) -> bool {
        self.data == b"[DONE]"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut s = EventSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c).unwrap();
            while let Some(e) = s.next_event() {
                out.push(e);
            }
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn splits_on_every_line_ending_style() {
        let stream = b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n\n";
        let events = split_all(&[stream]);
        assert_eq!(
            events,
            vec![
                b"data: a\n\n".to_vec(),
                b"data: b\r\n\r\n".to_vec(),
                b"data: c\r\r".to_vec(),
                b"data: d\n\n".to_vec()
            ]
        );
    }

    #[test]
    fn any_split_point_gives_the_same_events() {
        let stream: &[u8] = b"event: message_start\r\ndata: {\"x\":1}\r\n\r\ndata: [DONE]\n\n: comment\n\ndata: t\r\n\r\n";
        let whole = split_all(&[stream]);
        assert_eq!(whole.len(), 4);
        for a in 0..stream.len() {
            for b in a..stream.len() {
                let parts = split_all(&[&stream[..a], &stream[a..b], &stream[b..]]);
                assert_eq!(parts, whole, "split at {a},{b}");
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(split_all(&bytes), whole);
    }

    #[test]
    fn unterminated_tail_is_returned_by_finish() {
        let mut s = EventSplitter::new();
        s.push(b"data: 1\n\ndata: 2").unwrap();
        assert_eq!(s.next_event().unwrap(), b"data: 1\n\n");
        assert!(s.next_event().is_none());
        assert_eq!(s.pending(), 7);
        assert_eq!(s.finish().unwrap(), b"data: 2");
        assert!(s.finish().is_none());
    }

    #[test]
    fn refuses_unbounded_events() {
        let mut s = EventSplitter::new();
        let big = vec![b'x'; 1024 * 1024];
        for _ in 0..4 {
            s.push(&big).unwrap();
        }
        assert_eq!(s.push(b"more"), Err(EventTooLarge));
    }

    #[test]
    fn parses_fields() {
        let e = Event::parse(b"event: error\r\ndata: {\"a\":\ndata:1}\n: comment\nid: 7\n\n");
        assert_eq!(e.name, Some("error"));
        assert_eq!(e.data, b"{\"a\":\n1}");
        assert!(Event::parse(b"data: [DONE]\n\n").is_done());
        assert!(!Event::parse(b"data: [DONE] \n\n").is_done());
    }
}
