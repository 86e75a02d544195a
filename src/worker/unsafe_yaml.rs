//! Caller data for Ansible, marked unsafe: every string is written with
//! YAML's `!unsafe` tag, so Ansible never templates it. A value such as
//! `{{ lookup('pipe', 'id') }}` reaches the playbook as that literal text.

use serde_json::{Number, Value};

/// `value` as flow-style YAML with every string tagged `!unsafe`.
pub fn to_unsafe_yaml(value: &Value) -> String {
    let mut out = String::new();
    write(&mut out, value);
    out
}

fn write(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number(n)),
        Value::String(s) => {
            out.push_str("!unsafe ");
            quoted(out, s);
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                // An explicit key (`? "key": value`): YAML parsers drop an
                // implicit key longer than 1024 characters.
                out.push_str("? ");
                quoted(out, key);
                out.push_str(": ");
                write(out, item);
            }
            out.push('}');
        }
    }
}

/// `text` as a YAML double-quoted scalar in printable ASCII: every other
/// character is escaped (`\xXX`, `\uXXXX`, `\UXXXXXXXX`), so the parser
/// reads back exactly `text`. Characters YAML cannot carry raw (DEL, U+FEFF,
/// C1 controls) and line breaks it would fold (U+0085, U+2028) never appear.
fn quoted(out: &mut String, text: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08X}", c as u32);
            }
        }
    }
    out.push('"');
}

/// Integers as they are; other numbers in a form YAML 1.1 (PyYAML) reads as a
/// float, which needs a '.' and a signed exponent.
fn number(n: &Number) -> String {
    if n.is_i64() || n.is_u64() {
        return n.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.to_owned()
    } else {
        format!("{mantissa}.0")
    };
    let exponent: i32 = exponent.parse().unwrap_or(0);
    format!("{mantissa}e{exponent:+}")
}

#[cfg(test)]
mod tests {
    use super::to_unsafe_yaml;
    use serde_json::json;

    #[test]
    fn strings_are_tagged_and_escaped() {
        let value = json!({"who": "{{ lookup('pipe', 'id') }}", "n": 3, "f": 2.5, "big": 1e300,
            "list": [true, null, "a\"b\n"], "nested": {"k": "v"}});
        assert_eq!(
            to_unsafe_yaml(&value),
            r#"{? "big": 1.0e+300, ? "f": 2.5e+0, ? "list": [true, null, !unsafe "a\"b\n"], ? "n": 3, ? "nested": {? "k": !unsafe "v"}, ? "who": !unsafe "{{ lookup('pipe', 'id') }}"}"#
        );
    }

    #[test]
    fn characters_yaml_cannot_carry_are_escaped() {
        let value = json!({"k\u{7f}": "\u{7f}\u{feff}\u{85}\u{2028}\u{0}\r\u{e9}\u{1F600}\\"});
        assert_eq!(
            to_unsafe_yaml(&value),
            r#"{? "k\x7F": !unsafe "\x7F\uFEFF\x85\u2028\x00\x0D\xE9\U0001F600\\"}"#
        );
    }
}
