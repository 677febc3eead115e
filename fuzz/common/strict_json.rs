//! A strict RFC 8259 reference parser for the fuzz oracles, built on serde_json
//! (no recursion limit). It keeps the FIRST value of a duplicated object key (the
//! gateway's sonic-rs lookups return the first match), notes whether any object had
//! a duplicated key, and collects every string (keys and values) in the document.

#![allow(dead_code)]

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

#[derive(Debug, Default)]
pub struct Doc {
    pub value: Value,
    /// Some object somewhere had a key twice.
    pub has_dup: bool,
    /// Keys of the top-level object, in order, duplicates included.
    pub top_keys: Vec<String>,
    /// Every string in the document, keys included.
    pub strings: Vec<String>,
}

struct State {
    has_dup: bool,
    top_keys: Vec<String>,
    strings: Vec<String>,
    depth: usize,
}

struct Seed<'a>(&'a mut State);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        self.0.strings.push(v.to_owned());
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let st = self.0;
        st.depth += 1;
        let mut out = Vec::new();
        while let Some(v) = a.next_element_seed(Seed(st))? {
            out.push(v);
        }
        st.depth -= 1;
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
        let st = self.0;
        let top = st.depth == 0;
        st.depth += 1;
        let mut out = Map::new();
        while let Some(k) = a.next_key::<String>()? {
            st.strings.push(k.clone());
            if top {
                st.top_keys.push(k.clone());
            }
            let v = a.next_value_seed(Seed(st))?;
            if out.contains_key(&k) {
                st.has_dup = true;
            } else {
                out.insert(k, v);
            }
        }
        st.depth -= 1;
        Ok(Value::Object(out))
    }
}

/// Parse `bytes` as exactly one JSON value (surrounding whitespace allowed).
pub fn parse(bytes: &[u8]) -> Option<Doc> {
    let mut st = State {
        has_dup: false,
        top_keys: Vec::new(),
        strings: Vec::new(),
        depth: 0,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = Seed(&mut st).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(Doc {
        value,
        has_dup: st.has_dup,
        top_keys: st.top_keys,
        strings: st.strings,
    })
}

/// The verdict of the RFC 8259 grammar check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grammar {
    /// A string holds a `\uD800`-style escape that is not half of a surrogate pair:
    /// allowed by the grammar, not representable as a Rust `String`.
    pub lone_surrogate: bool,
    /// A number beyond f64's range (e.g. `1e400`): allowed by the grammar, refused
    /// by some parsers.
    pub huge_number: bool,
    /// The deepest nesting of arrays/objects (0 for a scalar).
    pub depth: usize,
}

/// Whether `bytes` is exactly one JSON text per RFC 8259 §2–§8: UTF-8, no BOM, any
/// number magnitude, lone surrogate escapes allowed (both reported).
pub fn grammar(bytes: &[u8]) -> Option<Grammar> {
    let (end, g) = grammar_prefix(bytes)?;
    let mut p = P::new(bytes);
    p.i = end;
    p.ws();
    (p.i == bytes.len()).then_some(g)
}

/// Like [`grammar`] for the leading JSON value only: returns where it ends (after
/// its trailing whitespace). The whole input must still be UTF-8.
pub fn grammar_prefix(bytes: &[u8]) -> Option<(usize, Grammar)> {
    std::str::from_utf8(bytes).ok()?;
    let mut p = P::new(bytes);
    p.ws();
    p.value()?;
    p.ws();
    Some((
        p.i,
        Grammar {
            lone_surrogate: p.lone,
            huge_number: p.huge,
            depth: p.max_depth,
        },
    ))
}

struct P<'a> {
    b: &'a [u8],
    i: usize,
    lone: bool,
    huge: bool,
    depth: usize,
    max_depth: usize,
}

impl<'a> P<'a> {
    fn new(b: &'a [u8]) -> Self {
        P {
            b,
            i: 0,
            lone: false,
            huge: false,
            depth: 0,
            max_depth: 0,
        }
    }
}

impl P<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.bump()? == c).then_some(())
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        self.b.get(self.i..self.i + s.len()).filter(|t| *t == s)?;
        self.i += s.len();
        Some(())
    }
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' | b'[' => {
                self.depth += 1;
                self.max_depth = self.max_depth.max(self.depth);
                let r = if self.peek() == Some(b'{') {
                    self.object()
                } else {
                    self.array()
                };
                self.depth -= 1;
                r
            }
            b'"' => self.string(),
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'n' => self.lit(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }
    fn digits(&mut self) -> Option<()> {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        (self.i > start).then_some(())
    }
    fn number(&mut self) -> Option<()> {
        let start = self.i;
        self.number_syntax()?;
        let text = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        self.huge |= text.parse::<f64>().is_ok_and(|f| f.is_infinite());
        Some(())
    }
    fn number_syntax(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits()?,
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits()?;
        }
        Some(())
    }
    fn hex4(&mut self) -> Option<u16> {
        let s = self.b.get(self.i..self.i + 4)?;
        let s = std::str::from_utf8(s).ok()?;
        if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u16::from_str_radix(s, 16).ok()
    }
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        // A high surrogate escape waiting for its low half.
        let mut pending_high = false;
        loop {
            let c = self.bump()?;
            let mut unit = None;
            match c {
                b'"' => {
                    self.lone |= pending_high;
                    return Some(());
                }
                b'\\' => match self.bump()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => unit = Some(self.hex4()?),
                    _ => return None,
                },
                0x00..=0x1f => return None,
                _ => {}
            }
            match unit {
                Some(0xD800..=0xDBFF) => {
                    self.lone |= pending_high;
                    pending_high = true;
                }
                Some(0xDC00..=0xDFFF) => {
                    self.lone |= !pending_high;
                    pending_high = false;
                }
                _ => {
                    self.lone |= pending_high;
                    pending_high = false;
                }
            }
        }
    }
    fn array(&mut self) -> Option<()> {
        self.eat(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            self.value()?;
            self.ws();
            match self.bump()? {
                b',' => {}
                b']' => return Some(()),
                _ => return None,
            }
        }
    }
    fn object(&mut self) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            self.string()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            self.value()?;
            self.ws();
            match self.bump()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }
}
