//! Finding where a field is: given a document's text and a field path
//! (`spec.http[0].route[1].weight`), the line and column of its value. Used
//! to point validation errors (found on typed values, which carry no
//! positions) at the offending field.
//!
//! It deserialises the document with a seed that walks the path and fails
//! on arrival; the YAML parser stamps that error with the position of the
//! value it was reading.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::split;
use crate::ConfigError;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `a.b[2].c` as steps; `None` if malformed.
fn parse_path(path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            steps.push(Step::Key(key.to_string()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let (n, after) = r.split_once(']')?;
            steps.push(Step::Index(n.parse().ok()?));
            rest = after;
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(steps)
}

const FOUND: &str = "\u{0}halyard-found";

struct Seek<'a>(&'a [Step]);

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0.first() {
            None => d.deserialize_any(Found),
            Some(Step::Key(_)) => d.deserialize_map(self),
            Some(Step::Index(_)) => d.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some(Step::Key(want)) = self.0.first() else {
            return Ok(());
        };
        while let Some(key) = map.next_key::<KeyString>()? {
            if key.0.as_deref() == Some(want.as_str()) {
                return map.next_value_seed(Seek(&self.0[1..]));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some(Step::Index(want)) = self.0.first() else {
            return Ok(());
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Seek(&self.0[1..]))?;
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
}

/// Fails on whatever value it is given, so the error carries its position.
struct Found;

impl<'de> Visitor<'de> for Found {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
}

/// A map key as a string when it is one (other keys are skipped).
struct KeyString(Option<String>);

impl<'de> de::Deserialize<'de> for KeyString {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyString, E> {
                Ok(KeyString(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyString, E> {
                Ok(KeyString(Some(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyString, E> {
                Ok(KeyString(Some(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyString, E> {
                Ok(KeyString(Some(v.to_string())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyString, E> {
                Ok(KeyString(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The 1-based (line, column) within `doc` of the value at `path`, or of
/// the deepest ancestor that exists.
pub fn locate_in_document(doc: &str, path: &str) -> Option<(usize, usize)> {
    let steps = parse_path(path)?;
    for len in (1..=steps.len()).rev() {
        let result = Seek(&steps[..len]).deserialize(serde_yaml_ng::Deserializer::from_str(doc));
        if let Err(e) = result
            && e.to_string().contains(FOUND)
            && let Some(loc) = e.location()
        {
            return Some((loc.line(), loc.column()));
        }
    }
    None
}

/// The 1-based file (line, column) of `path` in the document of `text`
/// whose first content line is `doc_line` (a [`crate::Source`] line).
pub fn locate(text: &str, doc_line: usize, path: &str) -> Option<(usize, usize)> {
    let doc = split::split_documents(text)
        .into_iter()
        .find(|d| d.start_line + split::leading_blank_lines(d.text) == doc_line)?;
    let (line, col) = locate_in_document(doc.text, path)?;
    Some((doc.start_line + line - 1, col))
}

/// Moves errors that point at their document's first line (validation
/// errors) to the line and column of their field, reading each file once.
pub fn refine_positions(errors: &mut [ConfigError]) {
    let mut files: BTreeMap<PathBuf, Option<String>> = BTreeMap::new();
    for e in errors.iter_mut() {
        let Some(field) = e.field.clone() else {
            continue;
        };
        if e.column != 1 {
            continue;
        }
        let text = files
            .entry(e.file.clone())
            .or_insert_with(|| read_text(&e.file));
        if let Some(text) = text
            && let Some((line, col)) = locate(text, e.line, &field)
        {
            e.line = line;
            e.column = col;
        }
    }
}

fn read_text(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > super::MAX_FILE_BYTES as u64 {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "apiVersion: v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [a, b]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: 10\n    - destination:\n        host: b\n        port: {number: 70000}\n";

    #[test]
    fn finds_fields() {
        assert_eq!(locate_in_document(DOC, "spec.hosts[1]"), Some((5, 14)));
        assert_eq!(
            locate_in_document(DOC, "spec.http[0].route[0].weight"),
            Some((9, 15))
        );
        assert_eq!(
            locate_in_document(DOC, "spec.http[0].route[1].destination.port.number"),
            Some((12, 24))
        );
        // Missing leaf: the deepest ancestor.
        assert_eq!(
            locate_in_document(DOC, "spec.http[0].timeout"),
            locate_in_document(DOC, "spec.http[0]")
        );
        assert_eq!(locate_in_document(DOC, "nope"), None);
        assert_eq!(parse_path("a[x]"), None);
    }

    #[test]
    fn finds_in_later_documents() {
        let text = format!("# c\nkind: A\n---\n\n{DOC}");
        assert_eq!(locate(&text, 5, "spec.hosts[0]"), Some((9, 11)));
    }
}
