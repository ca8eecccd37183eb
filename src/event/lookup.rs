//! Field look-ups by (dotted) path in an event's raw `data`, for configured meters.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::truncate;

/// The members of a JSON object in order, duplicates kept (a map would keep one silently).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(kv) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push(kv);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Looks up a (dotted) field in a JSON object (its raw text), returning its raw JSON text.
/// `None` when a segment is missing or not inside an object, or when a key on the path is
/// repeated (see [`try_lookup`] to tell these apart).
pub fn lookup<'a>(data: &'a str, path: &[String]) -> Option<&'a RawValue> {
    try_lookup(data, path).ok().flatten()
}

/// Like [`lookup`], but a key repeated on the path (`{"n":1,"n":2}`: which one counts?) is an
/// error naming it.
pub fn try_lookup<'a>(data: &'a str, path: &[String]) -> Result<Option<&'a RawValue>, String> {
    let mut text = data;
    let mut found = None;
    for seg in path {
        let Ok(Members(members)) = serde_json::from_str::<Members<'a>>(text) else {
            return Ok(None);
        };
        let mut hits = members.iter().filter(|(k, _)| k == seg);
        let Some((_, v)) = hits.next() else {
            return Ok(None);
        };
        if hits.next().is_some() {
            return Err(format!("key `{}` appears more than once", truncate(seg)));
        }
        text = v.get();
        found = Some(*v);
    }
    Ok(found)
}
