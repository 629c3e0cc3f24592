//! Turns one framed JSON value into requests, with SPDK's validation rules.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// One element of a request (or the whole of a non-batch one).
#[derive(Debug)]
pub(crate) enum Item<'a> {
    Call {
        method: String,
        params: Option<Value>,
        id: Option<&'a RawValue>,
    },
    /// Answered with -32600; `id` as SPDK would echo it.
    Invalid { id: Option<&'a RawValue> },
}

#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    Single(Item<'a>),
    Batch(Vec<Item<'a>>),
    /// Not JSON at all: -32700, then the connection closes.
    ParseError,
}

/// An object's members in order, duplicates kept (SPDK rejects those).
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses the framed bytes of one top-level value.
pub(crate) fn parse(bytes: &[u8]) -> Parsed<'_> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Parsed::ParseError;
    };
    match bytes.first() {
        Some(b'{') => match serde_json::from_str::<Members>(text) {
            Ok(m) => Parsed::Single(item(m)),
            Err(_) => Parsed::ParseError,
        },
        Some(b'[') => match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(elems) if elems.is_empty() => Parsed::Single(Item::Invalid { id: None }),
            Ok(elems) => Parsed::Batch(elems.into_iter().map(element).collect()),
            Err(_) => Parsed::ParseError,
        },
        _ => match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Parsed::Single(Item::Invalid { id: None }),
            Err(_) => Parsed::ParseError,
        },
    }
}

fn element(raw: &RawValue) -> Item<'_> {
    if !raw.get().starts_with('{') {
        return Item::Invalid { id: None };
    }
    match serde_json::from_str::<Members>(raw.get()) {
        Ok(m) => item(m),
        Err(_) => Item::Invalid { id: None },
    }
}

/// SPDK's `parse_single_request`, in its order: the id is only echoed once
/// version, method and the id itself have been accepted.
fn item(members: Members<'_>) -> Item<'_> {
    let invalid = Item::Invalid { id: None };
    let (mut version, mut method, mut params, mut id) = (None, None, None, None);
    for (name, value) in members.0 {
        let slot = match name.as_str() {
            "jsonrpc" => &mut version,
            "method" => &mut method,
            "params" => &mut params,
            "id" => &mut id,
            _ => return invalid,
        };
        if slot.replace(value).is_some() {
            return invalid;
        }
    }
    if let Some(v) = version
        && serde_json::from_str::<String>(v.get()).ok().as_deref() != Some("2.0")
    {
        return invalid;
    }
    let Some(Ok(method)) = method.map(|m| serde_json::from_str::<String>(m.get())) else {
        return invalid;
    };
    if let Some(id) = id
        && !matches!(
            id.get().as_bytes().first(),
            Some(b'"' | b'-' | b'0'..=b'9' | b'n')
        )
    {
        return invalid;
    }
    let params = match params.map(|p| (p.get().as_bytes().first(), p)) {
        None | Some((Some(b'n'), _)) => None,
        Some((Some(b'{' | b'['), p)) => match serde_json::from_str::<Value>(p.get()) {
            Ok(v) => Some(v),
            Err(_) => return Item::Invalid { id },
        },
        Some(_) => return Item::Invalid { id },
    };
    Item::Call { method, params, id }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> String {
        match parse(s.as_bytes()) {
            Parsed::Single(Item::Call { method, params, id }) => {
                format!("call {method} {params:?} {:?}", id.map(RawValue::get))
            }
            Parsed::Single(Item::Invalid { id }) => {
                format!("invalid {:?}", id.map(RawValue::get))
            }
            Parsed::Batch(v) => format!("batch {}", v.len()),
            Parsed::ParseError => "parse error".into(),
        }
    }

    #[test]
    fn rules() {
        assert_eq!(
            one(r#"{"method":"m","id":1.50}"#),
            r#"call m None Some("1.50")"#
        );
        assert_eq!(one(r#"{"method":"m","params":null}"#), "call m None None");
        assert_eq!(one(r#"{"method":"m","id":1,"x":2}"#), "invalid None");
        assert_eq!(one(r#"{"method":"m","method":"m"}"#), "invalid None");
        assert_eq!(one(r#"{"jsonrpc":"1.0","method":"m"}"#), "invalid None");
        assert_eq!(one(r#"{"id":1}"#), "invalid None");
        assert_eq!(one(r#"{"method":"m","id":[1]}"#), "invalid None");
        assert_eq!(
            one(r#"{"method":"m","id":7,"params":3}"#),
            r#"invalid Some("7")"#
        );
        assert_eq!(one(r#""x""#), "invalid None");
        assert_eq!(one("[]"), "invalid None");
        assert_eq!(one("[1,{}]"), "batch 2");
        assert_eq!(one(r#"{"a" 1}"#), "parse error");
        assert_eq!(one("[\"\u{1}\"]"), "parse error");
    }
}
