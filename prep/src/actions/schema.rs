//! A JSON Schema validator for the subset of draft 2020-12 that `prep/schema/*.schema.json` uses.
//!
//! Written here rather than pulled in as a crate because the subset is small and the messages
//! matter: each error names the JSON pointer of the offending value and what was expected.
//! Loading a schema that uses any other keyword is an error, so the schema file cannot silently
//! say more than this code checks.

use std::fmt;

use serde_json::Value;

/// Keywords this validator understands (annotations included).
const KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "$comment",
    "title",
    "description",
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "items",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "allOf",
    "if",
    "then",
    "else",
];

/// Keywords whose value is a schema, a map of schemas or a list of schemas.
const SUBSCHEMA: &[&str] = &["additionalProperties", "propertyNames", "items", "if", "then", "else"];
const SUBSCHEMA_MAPS: &[&str] = &["properties", "$defs"];
const SUBSCHEMA_LISTS: &[&str] = &["allOf"];

/// One violation: where (JSON pointer, `""` = the whole document) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.pointer.is_empty() { "/" } else { &self.pointer };
        write!(f, "{at}: {}", self.message)
    }
}

#[derive(Debug, Clone)]
pub struct Schema {
    root: Value,
}

impl Schema {
    /// Checks that the schema only uses supported keywords and that every `$ref` resolves.
    pub fn new(root: Value) -> Result<Self, String> {
        let schema = Schema { root };
        schema.check_supported(&schema.root, "#")?;
        Ok(schema)
    }

    fn check_supported(&self, node: &Value, at: &str) -> Result<(), String> {
        let map = match node {
            Value::Bool(_) => return Ok(()),
            Value::Object(map) => map,
            other => return Err(format!("{at}: a schema must be an object or a boolean, got {other}")),
        };
        for (key, value) in map {
            if !KEYWORDS.contains(&key.as_str()) {
                return Err(format!("{at}: unsupported JSON Schema keyword {key:?}"));
            }
            let here = format!("{at}/{key}");
            if SUBSCHEMA.contains(&key.as_str()) {
                self.check_supported(value, &here)?;
            } else if SUBSCHEMA_MAPS.contains(&key.as_str()) {
                let entries = value.as_object().ok_or_else(|| format!("{here}: expected an object"))?;
                for (name, sub) in entries {
                    self.check_supported(sub, &format!("{here}/{name}"))?;
                }
            } else if SUBSCHEMA_LISTS.contains(&key.as_str()) {
                let list = value.as_array().ok_or_else(|| format!("{here}: expected an array"))?;
                for (i, sub) in list.iter().enumerate() {
                    self.check_supported(sub, &format!("{here}/{i}"))?;
                }
            } else if key == "$ref" {
                let reference = value.as_str().ok_or_else(|| format!("{here}: expected a string"))?;
                self.resolve(reference).map_err(|e| format!("{here}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Local references only: `#/$defs/name` (JSON pointer into this document).
    fn resolve(&self, reference: &str) -> Result<&Value, String> {
        let pointer = reference
            .strip_prefix('#')
            .ok_or_else(|| format!("only local references (#/...) are supported, got {reference:?}"))?;
        self.root
            .pointer(pointer)
            .ok_or_else(|| format!("reference {reference:?} does not resolve"))
    }

    /// Every violation in `instance`; empty when it is valid.
    pub fn validate(&self, instance: &Value) -> Vec<SchemaError> {
        let mut errors = Vec::new();
        self.check(&self.root, instance, &mut String::new(), &mut errors);
        errors
    }

    pub fn is_valid(&self, instance: &Value) -> bool {
        self.validate(instance).is_empty()
    }

    fn check(&self, schema: &Value, value: &Value, pointer: &mut String, errors: &mut Vec<SchemaError>) {
        let map = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => return push(errors, pointer, "no value is allowed here".into()),
            Value::Object(map) => map,
            _ => unreachable!("checked in Schema::new"),
        };
        if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
            let target = self.resolve(reference).expect("checked in Schema::new");
            self.check(target, value, pointer, errors);
        }
        if let Some(expected) = map.get("type") {
            let allowed: Vec<&str> = match expected {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !allowed.iter().any(|t| has_type(value, t)) {
                // A value of the wrong type makes every other keyword's message noise.
                return push(
                    errors,
                    pointer,
                    format!("expected {}, got {}", allowed.join(" or "), describe(value)),
                );
            }
        }
        if let Some(constant) = map.get("const") {
            if !json_equal(value, constant) {
                push(errors, pointer, format!("expected {constant}, got {}", describe(value)));
            }
        }
        if let Some(Value::Array(options)) = map.get("enum") {
            if !options.iter().any(|o| json_equal(value, o)) {
                let names: Vec<String> = options.iter().map(|o| o.to_string()).collect();
                push(
                    errors,
                    pointer,
                    format!("{} is not one of {}", describe(value), names.join(", ")),
                );
            }
        }
        if let Some(x) = value.as_f64() {
            check_bounds(map, x, pointer, errors);
        }
        match value {
            Value::Object(object) => self.check_object(map, object, pointer, errors),
            Value::Array(items) => self.check_array(map, items, pointer, errors),
            _ => {}
        }
        if let Some(Value::Array(all)) = map.get("allOf") {
            for sub in all {
                self.check(sub, value, pointer, errors);
            }
        }
        if let Some(condition) = map.get("if") {
            let mut scratch = Vec::new();
            self.check(condition, value, pointer, &mut scratch);
            let branch = if scratch.is_empty() {
                map.get("then")
            } else {
                map.get("else")
            };
            if let Some(branch) = branch {
                self.check(branch, value, pointer, errors);
            }
        }
    }

    fn check_object(
        &self,
        map: &serde_json::Map<String, Value>,
        object: &serde_json::Map<String, Value>,
        pointer: &mut String,
        errors: &mut Vec<SchemaError>,
    ) {
        if let Some(Value::Array(required)) = map.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    push(errors, pointer, format!("missing required property {name:?}"));
                }
            }
        }
        let count = object.len() as u64;
        if let Some(min) = map.get("minProperties").and_then(Value::as_u64) {
            if count < min {
                push(
                    errors,
                    pointer,
                    format!("expected at least {min} properties, got {count}"),
                );
            }
        }
        if let Some(max) = map.get("maxProperties").and_then(Value::as_u64) {
            if count > max {
                push(
                    errors,
                    pointer,
                    format!("expected at most {max} properties, got {count}"),
                );
            }
        }
        let properties = map.get("properties").and_then(Value::as_object);
        for (name, child) in object {
            let len = pointer.len();
            pointer.push('/');
            pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
            if let Some(names) = map.get("propertyNames") {
                let mut scratch = Vec::new();
                self.check(names, &Value::String(name.clone()), pointer, &mut scratch);
                for e in scratch {
                    push(
                        errors,
                        pointer,
                        format!("property name {name:?} not allowed: {}", e.message),
                    );
                }
            }
            match properties.and_then(|p| p.get(name)) {
                Some(sub) => self.check(sub, child, pointer, errors),
                None => match map.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        let known: Vec<&str> = properties
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        push(
                            errors,
                            pointer,
                            format!("property {name:?} is not allowed (allowed: {})", known.join(", ")),
                        );
                    }
                    Some(sub) => self.check(sub, child, pointer, errors),
                    None => {}
                },
            }
            pointer.truncate(len);
        }
    }

    fn check_array(
        &self,
        map: &serde_json::Map<String, Value>,
        items: &[Value],
        pointer: &mut String,
        errors: &mut Vec<SchemaError>,
    ) {
        let n = items.len() as u64;
        let min = map.get("minItems").and_then(Value::as_u64);
        let max = map.get("maxItems").and_then(Value::as_u64);
        match (min, max) {
            (Some(lo), Some(hi)) if lo == hi && n != lo => {
                push(errors, pointer, format!("expected {lo} items, got {n}"))
            }
            _ => {
                if let Some(lo) = min.filter(|&lo| n < lo) {
                    push(errors, pointer, format!("expected at least {lo} items, got {n}"));
                }
                if let Some(hi) = max.filter(|&hi| n > hi) {
                    push(errors, pointer, format!("expected at most {hi} items, got {n}"));
                }
            }
        }
        if let Some(sub) = map.get("items") {
            for (i, item) in items.iter().enumerate() {
                let len = pointer.len();
                pointer.push_str(&format!("/{i}"));
                self.check(sub, item, pointer, errors);
                pointer.truncate(len);
            }
        }
    }
}

fn check_bounds(map: &serde_json::Map<String, Value>, x: f64, pointer: &str, errors: &mut Vec<SchemaError>) {
    let bound = |key: &str| map.get(key).and_then(Value::as_f64);
    if let Some(lo) = bound("minimum").filter(|&lo| x < lo) {
        push(errors, pointer, format!("{x} is below the minimum {lo}"));
    }
    if let Some(hi) = bound("maximum").filter(|&hi| x > hi) {
        push(errors, pointer, format!("{x} is above the maximum {hi}"));
    }
    if let Some(lo) = bound("exclusiveMinimum").filter(|&lo| x <= lo) {
        push(errors, pointer, format!("{x} must be greater than {lo}"));
    }
    if let Some(hi) = bound("exclusiveMaximum").filter(|&hi| x >= hi) {
        push(errors, pointer, format!("{x} must be less than {hi}"));
    }
}

fn push(errors: &mut Vec<SchemaError>, pointer: &str, message: String) {
    errors.push(SchemaError {
        pointer: pointer.to_string(),
        message,
    });
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        // JSON Schema: an integer is a number with no fractional part, 1.0 included.
        "integer" => value.as_f64().is_some_and(|x| x.fract() == 0.0),
        _ => false,
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`), as JSON Schema requires.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// A short description of a value for messages: its type and, when small, the value.
fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let text = value.to_string();
    if text.len() <= 40 {
        format!("{kind} {text}")
    } else {
        format!("{kind} {}…", text.chars().take(37).collect::<String>())
    }
}
