//! Finds where one JSON value ends in a byte stream, incrementally.
//!
//! SPDK's server re-parses its receive buffer after every read and takes the
//! first complete value; this does the same job without rescanning (so a
//! client writing one byte at a time costs O(n), not O(n²)) and enforces
//! SPDK's limits (nesting depth, number of values) while scanning, before
//! anything is allocated for the value. It checks structure only; the framed
//! bytes are then validated in full by serde_json.

use crate::{MAX_DEPTH, MAX_VALUES};

/// The outcome of scanning what has been buffered so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// No complete value yet; `start` is where the pending one began, if any
    /// (everything before it is inter-value whitespace and may be dropped).
    NeedMore { start: Option<usize> },
    /// `buf[start..end]` is one complete value.
    Value { start: usize, end: usize },
    /// The bytes cannot be the start of valid JSON (or exceed SPDK's limits).
    Invalid(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    None,
    String { escape: bool },
    Number,
    Literal { word: &'static [u8], matched: usize },
}

#[derive(Debug)]
pub(crate) struct Framer {
    pos: usize,
    start: Option<usize>,
    stack: Vec<u8>,
    token: Token,
    values: usize,
}

impl Framer {
    pub(crate) fn new() -> Self {
        Framer {
            pos: 0,
            start: None,
            stack: Vec::with_capacity(MAX_DEPTH),
            token: Token::None,
            values: 0,
        }
    }

    /// Starts looking for the next value at `pos`.
    pub(crate) fn reset_at(&mut self, pos: usize) {
        *self = Framer {
            pos,
            stack: std::mem::take(&mut self.stack),
            ..Framer::new()
        };
        self.stack.clear();
    }

    /// The caller removed `n` bytes from the front of its buffer.
    pub(crate) fn shift(&mut self, n: usize) {
        self.pos -= n;
        if let Some(s) = self.start.as_mut() {
            *s -= n;
        }
    }

    /// Scans `buf` from where the last call stopped. `buf` must only grow at
    /// the end between calls (apart from [`Framer::shift`]).
    pub(crate) fn next(&mut self, buf: &[u8]) -> Step {
        while self.pos < buf.len() {
            let b = buf[self.pos];
            match self.byte(b) {
                Ok(Some(end)) => {
                    let start = self.start.unwrap_or(self.pos);
                    return Step::Value { start, end };
                }
                Ok(None) => {}
                Err(why) => return Step::Invalid(why),
            }
        }
        Step::NeedMore { start: self.start }
    }

    /// Consumes `b` at `self.pos` (or, when it only ends a number, leaves it
    /// to be scanned again) and returns the end of a completed value.
    fn byte(&mut self, b: u8) -> Result<Option<usize>, &'static str> {
        match self.token {
            Token::String { escape } => {
                self.pos += 1;
                self.token = match (escape, b) {
                    (true, _) => Token::String { escape: false },
                    (false, b'\\') => Token::String { escape: true },
                    (false, b'"') => return Ok(self.token_done()),
                    (false, _) => Token::String { escape: false },
                };
                return Ok(None);
            }
            Token::Number => {
                if matches!(b, b'0'..=b'9' | b'+' | b'-' | b'.' | b'e' | b'E') {
                    self.pos += 1;
                    return Ok(None);
                }
                // The delimiter is not part of the number; rescan it.
                if let Some(end) = self.token_done() {
                    return Ok(Some(end));
                }
            }
            Token::Literal { word, matched } => {
                if word.get(matched) != Some(&b) {
                    return Err("invalid literal");
                }
                self.pos += 1;
                self.token = Token::Literal {
                    word,
                    matched: matched + 1,
                };
                if matched + 1 == word.len() {
                    return Ok(self.token_done());
                }
                return Ok(None);
            }
            Token::None => {}
        }

        match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                self.pos += 1;
                return Ok(None);
            }
            b'"' => self.begin(Token::String { escape: false }, 1)?,
            b'-' | b'0'..=b'9' => self.begin(Token::Number, 1)?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'{' | b'[' => {
                // SPDK counts a container as two values (begin and end).
                self.begin(Token::None, 2)?;
                if self.stack.len() >= MAX_DEPTH {
                    return Err("nesting too deep");
                }
                self.stack.push(if b == b'{' { b'}' } else { b']' });
            }
            b'}' | b']' => {
                if self.stack.pop() != Some(b) {
                    return Err("unbalanced bracket");
                }
                if self.stack.is_empty() {
                    self.pos += 1;
                    return Ok(Some(self.pos));
                }
            }
            b',' | b':' if !self.stack.is_empty() => {}
            _ => return Err("unexpected character"),
        }
        self.pos += 1;
        Ok(None)
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), &'static str> {
        // The first letter is consumed by the caller's `pos += 1`.
        self.begin(Token::Literal { word, matched: 1 }, 1)
    }

    fn begin(&mut self, token: Token, values: usize) -> Result<(), &'static str> {
        if self.start.is_none() {
            self.start = Some(self.pos);
        }
        self.values += values;
        if self.values > MAX_VALUES {
            return Err("too many JSON values");
        }
        self.token = token;
        Ok(())
    }

    /// A scalar just ended; at top level that ends the value.
    fn token_done(&mut self) -> Option<usize> {
        self.token = Token::None;
        self.stack.is_empty().then_some(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Result<String, &'static str>> {
        let mut f = Framer::new();
        let mut out = Vec::new();
        loop {
            match f.next(input) {
                Step::Value { start, end } => {
                    out.push(Ok(String::from_utf8_lossy(&input[start..end]).into_owned()));
                    f.reset_at(end);
                }
                Step::NeedMore { .. } => return out,
                Step::Invalid(why) => {
                    out.push(Err(why));
                    return out;
                }
            }
        }
    }

    #[test]
    fn splits_values() {
        let got = frames(br#"{"a":"}\""}[1,{"b":[]}] "x" 12 true nul"#);
        let want = [r#"{"a":"}\""}"#, r#"[1,{"b":[]}]"#, r#""x""#, "12", "true"];
        assert_eq!(got, want.map(|s| Ok(s.to_owned())));
    }

    #[test]
    fn number_needs_delimiter() {
        assert!(frames(b"12").is_empty());
        assert_eq!(
            frames(b"12,"),
            vec![Ok("12".into()), Err("unexpected character")]
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(frames(b"]"), vec![Err("unbalanced bracket")]);
        assert_eq!(frames(b"{]"), vec![Err("unbalanced bracket")]);
        assert_eq!(frames(b"tru "), vec![Err("invalid literal")]);
        assert_eq!(frames(b"x"), vec![Err("unexpected character")]);
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(frames(deep.as_bytes()), vec![Err("nesting too deep")]);
        assert!(frames("[".repeat(MAX_DEPTH).as_bytes()).is_empty());
    }

    #[test]
    fn value_limit_counts_like_spdk() {
        // [] is 2 values, each element 1: 8190 elements reach SPDK's 8192.
        let ok = format!("[{}]", vec!["1"; MAX_VALUES - 2].join(","));
        assert_eq!(frames(ok.as_bytes()).len(), 1);
        assert!(frames(ok.as_bytes())[0].is_ok());
        let over = format!("[{}]", vec!["1"; MAX_VALUES - 1].join(","));
        assert_eq!(frames(over.as_bytes()), vec![Err("too many JSON values")]);
    }
}
