//! Masking secret extra vars out of everything a run leaves behind: stored
//! stdout and events show `********` where a secret value was printed.

use serde_json::{Map, Value};

const MASK: &str = "********";
/// Shorter values are not masked: masking "a" would mask every "a".
const MIN_SECRET_LEN: usize = 3;

#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    /// Masks every string (and number) value of `secrets`, longest first.
    pub fn new(secrets: &Map<String, Value>) -> Masker {
        let mut found = Vec::new();
        collect(&Value::Object(secrets.clone()), &mut found);
        found.retain(|s| s.len() >= MIN_SECRET_LEN);
        found.sort_by_key(|s| std::cmp::Reverse(s.len()));
        found.dedup();
        Masker { secrets: found }
    }

    /// Masks these values too (a run's credentials).
    pub fn with(mut self, values: Vec<String>) -> Masker {
        self.secrets
            .extend(values.into_iter().filter(|s| s.len() >= MIN_SECRET_LEN));
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.secrets.dedup();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }

    pub fn value(&self, value: &mut Value) {
        match value {
            Value::String(s) => *s = self.text(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.value(v)),
            Value::Object(map) => self.map(map),
            _ => {}
        }
    }

    pub fn map(&self, map: &mut Map<String, Value>) {
        map.values_mut().for_each(|v| self.value(v));
    }
}

fn collect(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::Masker;
    use serde_json::json;

    #[test]
    fn masks_every_secret_value() {
        let secrets =
            json!({"password": "hunter22", "token": {"inner": "abc123"}, "pin": 98765, "x": "ab"});
        let masker = Masker::new(secrets.as_object().unwrap());
        assert_eq!(
            masker.text("pw=hunter22 tok=abc123 pin=98765 x=ab"),
            "pw=******** tok=******** pin=******** x=ab"
        );
        let mut data = json!({"res": {"msg": "hunter22!"}, "list": ["abc123"]});
        masker.value(&mut data);
        assert_eq!(
            data,
            json!({"res": {"msg": "********!"}, "list": ["********"]})
        );
    }
}
