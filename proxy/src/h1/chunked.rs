//! Following a chunked body (RFC 9112 §7.1) as it goes through unchanged:
//! the fast path forwards the bytes as they came and only needs to know,
//! exactly, where the body ends, and that it is well formed. Where the
//! proxy and the next hop could disagree on that end, requests get
//! smuggled; so this is strict where the RFC allows leniency: lines end in
//! CRLF (no bare LF or CR), sizes are hexadecimal without sign or leading
//! space, and every line and the trailer section are bounded.

use divert_core::percent::hex;

/// Longest chunk-size line, extensions included.
pub const MAX_LINE: usize = 4096;
/// Largest trailer section.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk size is not hexadecimal, or too large")]
    Size,
    #[error("a chunk line does not end in CRLF, or holds a control character")]
    Line,
    #[error("a chunk-size line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the trailer section is larger than {MAX_TRAILERS} bytes")]
    TrailersTooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a chunk-size line (no digit yet).
    SizeStart,
    /// Within the size's digits.
    Size,
    /// After the size: optional whitespace, then `;` extensions or CR.
    AfterSize,
    /// Within chunk extensions, up to CR.
    Extension,
    /// CR of a size line seen; LF must follow.
    SizeLf,
    /// Within a chunk's data.
    Data,
    /// Data done; CR must follow.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Within a trailer line, up to CR.
    Trailer,
    TrailerLf,
    /// CR of the final empty line seen; LF must follow.
    EndLf,
    Done,
}

/// Where a chunked body is, between two pieces of it.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    /// The chunk size being read, then the data left in the chunk.
    size: u64,
    digits: u8,
    line: usize,
    trailers: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Self {
        Chunked {
            state: State::SizeStart,
            size: 0,
            digits: 0,
            line: 0,
            trailers: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Follows the body through `buf`: how many of its bytes belong to the
    /// body (all of them, unless the body ends inside `buf`). Once the body
    /// has ended, [`Chunked::is_done`] and every later call returns 0.
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let left = buf.len() - i;
                    let take = usize::try_from(self.size).map_or(left, |s| s.min(left));
                    i += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::SizeStart | State::Size => {
                    self.line_byte()?;
                    if let Some(d) = hex(b) {
                        if self.digits == 16 {
                            return Err(ChunkError::Size);
                        }
                        self.digits += 1;
                        self.size = self.size << 4 | u64::from(d);
                        self.state = State::Size;
                    } else if self.state == State::SizeStart {
                        return Err(ChunkError::Size);
                    } else {
                        self.after_size(b)?;
                    }
                }
                State::AfterSize => {
                    self.line_byte()?;
                    self.after_size(b)?;
                }
                State::Extension => {
                    self.line_byte()?;
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\t' => {}
                        _ if b < 0x20 || b == 0x7f => return Err(ChunkError::Line),
                        _ => {}
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Line);
                    }
                    self.line = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::Line);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Line);
                    }
                    self.state = State::SizeStart;
                }
                State::TrailerStart => {
                    self.trailer_byte()?;
                    self.state = match b {
                        b'\r' => State::EndLf,
                        _ if b < 0x20 || b == 0x7f => return Err(ChunkError::Line),
                        _ => State::Trailer,
                    };
                }
                State::Trailer => {
                    self.trailer_byte()?;
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\t' => {}
                        _ if b < 0x20 || b == 0x7f => return Err(ChunkError::Line),
                        _ => {}
                    }
                }
                State::TrailerLf => {
                    self.trailer_byte()?;
                    if b != b'\n' {
                        return Err(ChunkError::Line);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Line);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }

    /// The byte after a size's digits: whitespace (BWS), `;`, or CR.
    fn after_size(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match b {
            b' ' | b'\t' => State::AfterSize,
            b';' => State::Extension,
            b'\r' => State::SizeLf,
            _ => return Err(ChunkError::Size),
        };
        Ok(())
    }

    fn line_byte(&mut self) -> Result<(), ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(())
    }

    fn trailer_byte(&mut self) -> Result<(), ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes of `raw` that belong to the body, if it is whole and valid.
    fn end_of(raw: &[u8]) -> Result<Option<usize>, ChunkError> {
        let mut c = Chunked::new();
        let n = c.scan(raw)?;
        Ok(c.is_done().then_some(n))
    }

    #[test]
    fn a_body_ends_after_its_last_chunk_and_trailers() {
        let body = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\n\r\nGET / HTTP/1.1";
        assert_eq!(end_of(body), Ok(Some(body.len() - 14)));
        let trailers = b"1\r\na\r\n0\r\nx-sum: 1\r\ny: 2\r\n\r\n";
        assert_eq!(end_of(trailers), Ok(Some(trailers.len())));
        let ext = b"A \t;ext\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(end_of(ext), Ok(Some(ext.len())));
        assert_eq!(end_of(b"5\r\nhel"), Ok(None));
    }

    #[test]
    fn what_parsers_could_read_two_ways_is_refused() {
        for (bad, why) in [
            (&b"\r\n"[..], ChunkError::Size),
            (b"-5\r\n", ChunkError::Size),
            (b" 5\r\n", ChunkError::Size),
            (b"0x5\r\n", ChunkError::Size),
            (b"5\nhello\r\n", ChunkError::Size),
            (b"5\r\rhello", ChunkError::Line),
            (b"5\r\nhelloX\r\n", ChunkError::Line),
            (b"5\r\nhello\r\r", ChunkError::Line),
            (b"5;a\nb\r\n", ChunkError::Line),
            (b"0\r\nx: 1\n\r\n", ChunkError::Line),
            (b"0\r\n\r\r", ChunkError::Line),
            (b"10000000000000000\r\n", ChunkError::Size),
        ] {
            assert_eq!(end_of(bad), Err(why), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_LINE));
        assert_eq!(end_of(long.as_bytes()), Err(ChunkError::LineTooLong));
        let trailers = format!("0\r\n{}", "x: yyyyyyy\r\n".repeat(MAX_TRAILERS / 12 + 1));
        assert_eq!(
            end_of(trailers.as_bytes()),
            Err(ChunkError::TrailersTooLarge)
        );
        // The largest size there is still counts.
        assert_eq!(end_of(b"ffffffffffffffff\r\nab"), Ok(None));
    }

    proptest! {
        /// However the bytes arrive, the body ends at the same place.
        #[test]
        fn pieces_end_where_the_whole_does(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..6),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let mut raw = Vec::new();
            for c in &chunks {
                raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                raw.extend_from_slice(c);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(b"0\r\n\r\nNEXT");
            let whole = raw.len() - 4;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % raw.len()).collect();
            cuts.sort_unstable();
            let mut c = Chunked::new();
            let mut at = 0;
            let mut taken = 0;
            for cut in cuts.into_iter().chain([raw.len()]) {
                if cut < at { continue; }
                taken += c.scan(&raw[at..cut]).unwrap();
                at = cut;
            }
            prop_assert!(c.is_done());
            prop_assert_eq!(taken, whole);
        }
    }
}
