//! Where a chunked body ends (RFC 9112 7.1), found without decoding it.

/// Finds where a chunked body ends in the bytes that pass through (RFC 9112 7.1): sizes,
/// extensions, data and trailers are only counted, never copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Before a chunk size's first digit.
    #[default]
    Size,
    /// Within a chunk size: its value so far.
    SizeDigits(u64),
    /// After the size: whitespace or an extension, up to the line end.
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

/// A chunked body that does not parse.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct BadChunk;

impl Chunked {
    /// Consumes `bytes`; `Some(n)` when the body ends after the first `n` of them.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Self::Size => match char::from(b).to_digit(16) {
                    Some(d) => Self::SizeDigits(u64::from(d)),
                    None => return Err(BadChunk),
                },
                Self::SizeDigits(n) => match (char::from(b).to_digit(16), b) {
                    (Some(_), _) if n > u64::MAX >> 4 => return Err(BadChunk),
                    (Some(d), _) => Self::SizeDigits(n << 4 | u64::from(d)),
                    (None, b';' | b' ' | b'\t') => Self::Extension(n),
                    (None, b'\r') => Self::SizeLf(n),
                    (None, _) => return Err(BadChunk),
                },
                Self::Extension(n) => match b {
                    b'\r' => Self::SizeLf(n),
                    b'\n' => return Err(BadChunk),
                    _ => Self::Extension(n),
                },
                Self::SizeLf(n) => match (b, n) {
                    (b'\n', 0) => Self::TrailerStart,
                    (b'\n', n) => Self::Data(n),
                    _ => return Err(BadChunk),
                },
                Self::Data(n) => {
                    let avail = u64::try_from(bytes.len() - i).unwrap_or(u64::MAX);
                    let take = n.min(avail);
                    // Skip the data in one step; `i` advances by `take` below, less the
                    // one every iteration adds.
                    i += usize::try_from(take).unwrap_or(usize::MAX) - 1;
                    if take == n {
                        Self::DataCr
                    } else {
                        Self::Data(n - take)
                    }
                }
                Self::DataCr if b == b'\r' => Self::DataLf,
                Self::DataLf if b == b'\n' => Self::Size,
                Self::DataCr | Self::DataLf => return Err(BadChunk),
                Self::TrailerStart => match b {
                    b'\r' => Self::EndLf,
                    _ => Self::TrailerLine,
                },
                Self::TrailerLine => match b {
                    b'\n' => Self::TrailerStart,
                    _ => Self::TrailerLine,
                },
                Self::EndLf if b == b'\n' => Self::Done,
                Self::EndLf => return Err(BadChunk),
                Self::Done => return Ok(Some(i)),
            };
            i += 1;
            if *self == Self::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_do() {
        let body =
            b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole, and fed in every split.
        assert_eq!(Chunked::default().feed(body), Ok(Some(end)));
        for split in 1..end {
            let mut c = Chunked::default();
            assert_eq!(c.feed(&body[..split]), Ok(None), "split at {split}");
            assert_eq!(
                c.feed(&body[split..]),
                Ok(Some(end - split)),
                "split at {split}"
            );
        }
        // One byte at a time.
        let mut c = Chunked::default();
        for (i, b) in body[..end].iter().enumerate() {
            let r = c.feed(std::slice::from_ref(b));
            assert_eq!(r, Ok((i == end - 1).then_some(1)), "byte {i}");
        }
        assert_eq!(Chunked::default().feed(b"0\r\n\r\n"), Ok(Some(5)));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXY",
            b"\r\n",
            b"5\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(BadChunk), "{bad:?}");
        }
    }
}
