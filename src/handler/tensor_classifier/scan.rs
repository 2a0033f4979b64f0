//! The request's usual form read in one pass, without serde: `{"landmarks": [...], "topk": k}`
//! (either key optional, in any order), frames of numbers or of points, numbers read by
//! sonic-rs' own number parser (`sonic-number`) straight into the padded input buffer.
//!
//! Visiting each number through serde costs 12–20 % of the decode; this reader skips
//! that. It accepts only that form: any other key, an escaped key, a `topk` that is not a
//! positive integer, a value of another type or invalid JSON gives `None`, and the caller
//! decodes the body with the serde visitors, which read everything else and word the errors.
//! Both read numbers with the same parser, so both give the same tensor bit for bit.

use sonic_number::{parse_number, ParserNumber};

use super::Row;

/// The tensor (`frames × features`, zero-padded) and `topk` if given; `None` when the body is
/// not of the usual form or not valid.
pub(super) fn scan(
    body: &[u8],
    frames: usize,
    features: usize,
) -> Option<(Option<Vec<f32>>, Option<usize>)> {
    let mut s = Scanner { body, at: 0 };
    let (mut tensor, mut topk) = (None, None);
    s.list(b'{', b'}', |s| {
        let key = s.key()?;
        s.expect(b':')?;
        match key {
            b"landmarks" => tensor = Some(s.landmarks(frames, features)?),
            b"topk" => {
                s.whitespace();
                match s.number()? {
                    ParserNumber::Unsigned(k) if k > 0 => topk = Some(usize::try_from(k).ok()?),
                    _ => return None,
                }
            }
            _ => return None,
        }
        Some(())
    })?;
    s.whitespace();
    (s.at == body.len()).then_some((tensor, topk))
}

/// The per-number steps are forced inline: called once a number, 30,000 times a request.
struct Scanner<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    #[inline(always)]
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.body.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.body.get(self.at).copied()
    }

    #[inline(always)]
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// `open`, items separated by commas (none is fine), `close`: an object or an array.
    #[inline(always)]
    fn list(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.expect(open)?;
        if self.peek()? == close {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b if b == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An object key without escapes or control characters.
    fn key(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        let len = self.body[start..].iter().position(|&b| b == b'"')?;
        let key = &self.body[start..start + len];
        if key.iter().any(|&b| b == b'\\' || b < 0x20) {
            return None;
        }
        self.at = start + len + 1;
        Some(key)
    }

    /// A JSON number at the current byte (whitespace already skipped).
    #[inline(always)]
    fn number(&mut self) -> Option<ParserNumber> {
        let negative = *self.body.get(self.at)? == b'-';
        self.at += usize::from(negative);
        parse_number(self.body, &mut self.at, negative).ok()
    }

    #[inline(always)]
    fn value(&mut self) -> Option<f64> {
        Some(match self.number()? {
            ParserNumber::Float(v) => v,
            ParserNumber::Unsigned(v) => v as f64,
            ParserNumber::Signed(v) => v as f64,
        })
    }

    /// `[frame, ...]` (at least one) into the padded buffer; frames past `frames` are read
    /// and dropped.
    fn landmarks(&mut self, frames: usize, features: usize) -> Option<Vec<f32>> {
        let mut out = vec![0f32; frames * features];
        let mut index = 0;
        self.list(b'[', b']', |s| {
            let slots = if index < frames {
                &mut out[index * features..(index + 1) * features]
            } else {
                &mut []
            };
            let count = s.frame(slots)?;
            if index < frames && count != features {
                return None;
            }
            index += 1;
            Some(())
        })?;
        (index > 0).then_some(out)
    }

    /// One frame, numbers or points (lists of numbers), flattened into `slots`; returns how
    /// many values it had.
    fn frame(&mut self, slots: &mut [f32]) -> Option<usize> {
        let mut row = Row { slots, count: 0 };
        self.list(b'[', b']', |s| {
            if s.peek()? == b'[' {
                s.list(b'[', b']', |s| {
                    s.whitespace();
                    row.push(s.value()?);
                    Some(())
                })
            } else {
                row.push(s.value()?);
                Some(())
            }
        })?;
        Some(row.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forms clients send are read here, not handed to serde; the rest is left to it
    /// (the readers' agreement on both is tested in `the_json_readers_decode_the_same`).
    #[test]
    fn reads_the_usual_form_and_leaves_the_rest() {
        for body in [
            r#"{"landmarks": [[1, 2.5], [-3e1, 4]]}"#,
            r#"{"landmarks":[[[1,2.5]],[[-3e1],[4]]],"topk":3}"#,
            " {\"topk\": 3,\n\"landmarks\": [[1, 2.5], [-30, [4]], [5, 6]]}\r\n",
        ] {
            let (tensor, _) = scan(body.as_bytes(), 2, 2).unwrap_or_else(|| panic!("{body}"));
            assert_eq!(tensor.unwrap(), [1.0, 2.5, -30.0, 4.0], "{body}");
        }
        assert_eq!(
            scan(br#"{"landmarks": [[1, 2]], "topk": 7}"#, 3, 2),
            Some((Some(vec![1.0, 2.0, 0.0, 0.0, 0.0, 0.0]), Some(7)))
        );
        assert_eq!(scan(br#"{"topk": 1}"#, 1, 1), Some((None, Some(1))));
        for body in [
            r#"{"landmarks": [[1, 2]], "meta": 1}"#,
            r#"{"\u006candmarks": [[1, 2]]}"#,
            r#"{"landmarks": [[1, 2]], "topk": 0}"#,
            r#"{"landmarks": [[1, 2], [3]]}"#,
            r#"{"landmarks": []}"#,
            r#"{"landmarks": [[1, 2]]} 1"#,
            r#"{"landmarks": [[01, 2]]}"#,
        ] {
            assert_eq!(scan(body.as_bytes(), 2, 2), None, "{body}");
        }
    }
}
