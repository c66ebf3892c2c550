//! JSON files of many records, read record by record (issue 10, class 4).
//!
//! ScanQA's files are one JSON array of questions and SQA3D's an object holding one; a single bad
//! record — a lone `\ud800` escape that Python's `json` module reads but a Rust `String` cannot hold,
//! a missing comma, a truncated tail — must cost that record, not the file. [`array_records`] finds
//! each element's bytes with a structural scan (strings, escapes and nesting; no value is decoded),
//! then parses every element on its own with serde_json. Only what the scan cannot get past ends the
//! reading, as one reject for the rest of the file; the records before it are kept.

use serde_json::Value;

/// One element of the array: its position and its value, or why it is not valid JSON.
#[derive(Debug)]
pub struct JsonRecord {
    /// 0-based position in the array.
    pub index: usize,
    /// Byte offset of the element in the file.
    pub offset: usize,
    pub value: Result<Value, String>,
    /// For an element that does not parse: the same element with lone surrogate escapes replaced
    /// by U+FFFD, when that parses (to name the record by its id in the reject).
    pub salvaged: Option<Value>,
}

/// What [`array_records`] read.
#[derive(Debug, Default)]
pub struct ArrayRecords {
    pub records: Vec<JsonRecord>,
    /// Where the structure broke (after the records above): record index, byte offset, reason.
    pub broken: Option<(usize, usize, String)>,
}

/// The kind of JSON value starting at `b` ("an object", ...), for messages.
fn kind_at(b: u8) -> &'static str {
    match b {
        b'[' => "an array",
        b'{' => "an object",
        b'"' => "a string",
        b'0'..=b'9' | b'-' => "a number",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "something that is not JSON",
    }
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len() && matches!(self.bytes[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Skips a string starting at `pos` (on its `"`).
    fn string(&mut self) -> Result<(), String> {
        let start = self.pos;
        self.pos += 1;
        while let Some(&b) = self.bytes.get(self.pos) {
            match b {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => self.pos += 1,
            }
        }
        Err(format!("the file ends inside the string that starts at byte {start}"))
    }

    /// Skips one value starting at `pos`, structurally.
    fn value(&mut self) -> Result<(), String> {
        let start = self.pos;
        match self.peek() {
            None => Err(format!("the file ends where a value was expected (byte {start})")),
            Some(b'"') => self.string(),
            Some(b'[' | b'{') => {
                let mut stack = Vec::new();
                while let Some(b) = self.peek() {
                    match b {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'[' => stack.push(b']'),
                        b'{' => stack.push(b'}'),
                        b']' | b'}' => {
                            if stack.pop() != Some(b) {
                                return Err(format!("unbalanced `{}` at byte {}", b as char, self.pos));
                            }
                            if stack.is_empty() {
                                self.pos += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.pos += 1;
                }
                Err(format!("the file ends inside the value that starts at byte {start}"))
            }
            Some(_) => {
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.pos += 1;
                }
                if self.pos == start {
                    Err(format!("expected a value at byte {start}, found `{}`", self.bytes[start] as char))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Replaces `\uD800`–`\uDFFF` escapes that are not a valid surrogate pair by `\uFFFD`.
fn replace_lone_surrogates(bytes: &[u8]) -> Vec<u8> {
    let unit = |at: usize| -> Option<u16> {
        let hex = bytes.get(at..at + 6)?;
        if &hex[..2] != b"\\u" {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        match unit(i) {
            Some(high @ 0xD800..=0xDBFF) if matches!(unit(i + 6), Some(0xDC00..=0xDFFF)) => {
                let _ = high;
                out.extend_from_slice(&bytes[i..i + 12]);
                i += 12;
            }
            Some(0xD800..=0xDFFF) => {
                out.extend_from_slice(b"\\uFFFD");
                i += 6;
            }
            _ => {
                out.extend_from_slice(&bytes[i..(i + 2).min(bytes.len())]);
                i += 2;
            }
        }
    }
    out
}

/// The rejects of what could not be read as records: each element that is not valid JSON (named by
/// `name`, given its salvaged value when there is one) and the rest of a file whose structure
/// broke. Returns the parsed elements with their positions.
pub fn split_rejects(
    read: ArrayRecords,
    file: &str,
    name: impl Fn(Option<&Value>, usize) -> String,
    rejects: &mut Vec<crate::rejects::Reject>,
) -> Vec<(usize, Value)> {
    let mut values = Vec::with_capacity(read.records.len());
    for record in read.records {
        match record.value {
            Ok(value) => values.push((record.index, value)),
            Err(reason) => {
                // It parses once lone surrogates are replaced: say so, serde's words are terse.
                let reason = match record.salvaged {
                    Some(_) => format!(
                        "a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair), which UTF-8 text cannot hold; {reason}"
                    ),
                    None => reason,
                };
                rejects.push(crate::rejects::Reject::new(
                    file,
                    name(record.salvaged.as_ref(), record.index),
                    format!("{reason} (the record at byte {})", record.offset),
                ))
            }
        }
    }
    if let Some((index, offset, reason)) = read.broken {
        rejects.push(crate::rejects::Reject::new(
            file,
            format!("record {index} and after"),
            format!("{reason}; nothing from byte {offset} on is read ({index} records before it are)"),
        ));
    }
    values
}

/// Reads the records of the array at the top level (`key` = `None`) or under `key` of the
/// top-level object. `Err` is a whole-file problem (not JSON, not the expected layout), with the
/// reason; otherwise every element comes back on its own, parsed or with its error.
pub fn array_records(bytes: &[u8], key: Option<&str>) -> Result<ArrayRecords, String> {
    let mut s = Scanner { bytes, pos: 0 };
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        s.pos = 3;
    }
    s.skip_ws();
    let Some(first) = s.peek() else {
        return Err("the file is empty".into());
    };
    match key {
        None if first != b'[' => {
            return Err(format!("expected a JSON array of records, found {}", kind_at(first)));
        }
        None => {}
        Some(key) => {
            if first != b'{' {
                return Err(format!("expected a JSON object, found {}", kind_at(first)));
            }
            find_key(&mut s, key)?;
            s.skip_ws();
            match s.peek() {
                Some(b'[') => {}
                Some(b) => return Err(format!("`{key}` is {}, expected an array", kind_at(b))),
                None => return Err(format!("the file ends after `{key}`")),
            }
        }
    }
    let mut out = ArrayRecords::default();
    s.pos += 1; // `[`
    let mut index = 0;
    loop {
        s.skip_ws();
        if index == 0 && s.peek() == Some(b']') {
            s.pos += 1;
            break;
        }
        let start = s.pos;
        if let Err(e) = s.value() {
            out.broken = Some((index, start, e));
            return Ok(out);
        }
        let slice = &bytes[start..s.pos];
        let value = serde_json::from_slice::<Value>(slice).map_err(|e| format!("not valid JSON: {e}"));
        let salvaged = match &value {
            Ok(_) => None,
            Err(_) => serde_json::from_slice::<Value>(&replace_lone_surrogates(slice)).ok(),
        };
        out.records.push(JsonRecord {
            index,
            offset: start,
            value,
            salvaged,
        });
        index += 1;
        s.skip_ws();
        match s.peek() {
            Some(b',') => s.pos += 1,
            Some(b']') => {
                s.pos += 1;
                break;
            }
            Some(b) => {
                out.broken = Some((index, s.pos, format!("expected `,` or `]` after a record, found `{}` at byte {}", b as char, s.pos)));
                return Ok(out);
            }
            None => {
                out.broken = Some((index, s.pos, "the file ends inside the array (no closing `]`)".into()));
                return Ok(out);
            }
        }
    }
    if key.is_none() {
        s.skip_ws();
        if s.pos < bytes.len() {
            out.broken = Some((index, s.pos, format!("unexpected data after the array at byte {}", s.pos)));
        }
    }
    Ok(out)
}

/// Moves `s` to the value of `key` in the object starting at `s.pos`.
fn find_key(s: &mut Scanner<'_>, key: &str) -> Result<(), String> {
    s.pos += 1; // `{`
    loop {
        s.skip_ws();
        match s.peek() {
            Some(b'"') => {}
            Some(b'}') => return Err(format!("no `{key}` array at the top level")),
            _ => return Err(format!("not valid JSON: expected a key at byte {}", s.pos)),
        }
        let start = s.pos;
        s.string().map_err(|e| format!("not valid JSON: {e}"))?;
        let name: Option<String> = serde_json::from_slice(&s.bytes[start..s.pos]).ok();
        s.skip_ws();
        if s.peek() != Some(b':') {
            return Err(format!("not valid JSON: expected `:` at byte {}", s.pos));
        }
        s.pos += 1;
        s.skip_ws();
        if name.as_deref() == Some(key) {
            return Ok(());
        }
        s.value().map_err(|e| format!("not valid JSON before `{key}`: {e}"))?;
        s.skip_ws();
        match s.peek() {
            Some(b',') => s.pos += 1,
            Some(b'}') => return Err(format!("no `{key}` array at the top level")),
            _ => return Err(format!("not valid JSON: expected `,` or `}}` at byte {}", s.pos)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_values(r: &ArrayRecords) -> Vec<String> {
        r.records
            .iter()
            .map(|x| match &x.value {
                Ok(v) => v.to_string(),
                Err(_) => "ERR".into(),
            })
            .collect()
    }

    #[test]
    fn one_bad_record_costs_only_itself() {
        let bytes = br#"[{"q": "a"}, {"q": "\ud800 lone", "id": "x2"}, {"q": "pair \ud83d\ude00"}, {"q": [1, "]"]}]"#;
        let r = array_records(bytes, None).unwrap();
        assert_eq!(ok_values(&r), [r#"{"q":"a"}"#, "ERR", "{\"q\":\"pair 😀\"}", r#"{"q":[1,"]"]}"#]);
        let bad = &r.records[1];
        assert!(bad.value.as_ref().unwrap_err().starts_with("not valid JSON: "), "{:?}", bad.value);
        assert_eq!(bad.salvaged.as_ref().unwrap()["id"], "x2");
        assert_eq!(bad.offset, 13);
        assert!(r.broken.is_none());
    }

    #[test]
    fn a_cut_file_keeps_the_records_before_the_cut() {
        let r = array_records(br#"[{"a": 1}, {"a": 2}, {"a": "3"#, None).unwrap();
        assert_eq!(ok_values(&r), [r#"{"a":1}"#, r#"{"a":2}"#]);
        assert_eq!(r.broken, Some((2, 21, "the file ends inside the string that starts at byte 27".into())));
        let r = array_records(br#"[{"a": 1} {"a": 2}]"#, None).unwrap();
        assert_eq!(r.broken, Some((1, 10, "expected `,` or `]` after a record, found `{` at byte 10".into())));
        let r = array_records(b"[1, 2", None).unwrap();
        assert_eq!(ok_values(&r), ["1", "2"]);
        assert_eq!(r.broken.unwrap().2, "the file ends inside the array (no closing `]`)");
        let r = array_records(b"[1] x", None).unwrap();
        assert_eq!(r.broken.unwrap().2, "unexpected data after the array at byte 4");
        let r = array_records(b"[1, tru e]", None).unwrap();
        assert_eq!(ok_values(&r), ["1", "ERR"]);
    }

    #[test]
    fn whole_file_problems_and_wrapped_arrays() {
        assert_eq!(array_records(b"{}", None).unwrap_err(), "expected a JSON array of records, found an object");
        assert_eq!(array_records(b"  ", None).unwrap_err(), "the file is empty");
        assert_eq!(array_records(b"[]", None).unwrap().records.len(), 0);
        let wrapped = br#"{"info": {"d": "\ud800", "x": [1, {"y": "}"}]}, "questions": [{"id": 1}, {"id": 2}], "z": 1}"#;
        let r = array_records(wrapped, Some("questions")).unwrap();
        assert_eq!(ok_values(&r), [r#"{"id":1}"#, r#"{"id":2}"#]);
        assert!(r.broken.is_none());
        assert_eq!(array_records(b"[]", Some("questions")).unwrap_err(), "expected a JSON object, found an array");
        assert_eq!(array_records(br#"{"a": 1}"#, Some("questions")).unwrap_err(), "no `questions` array at the top level");
        assert_eq!(array_records(br#"{"questions": 3}"#, Some("questions")).unwrap_err(), "`questions` is a number, expected an array");
    }

    #[test]
    fn lone_surrogates_are_replaced_and_pairs_kept() {
        assert_eq!(replace_lone_surrogates(br#""\ud800x\udc00\ud83d\ude00\\ud800""#), br#""\uFFFDx\uFFFD\ud83d\ude00\\ud800""#.to_vec());
    }
}
