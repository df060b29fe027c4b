//! Expressions on events: CEL (`async.data.amount > 100 && event.data.user
//! == async.data.user`), as Inngest uses for `waitForEvent`'s `if`,
//! trigger filters and `cancel_on`. `event` is the run's triggering event,
//! `async` the incoming one. A `match = "data.invoice_id"` shorthand is
//! `event.data.invoice_id == async.data.invoice_id`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;

/// A compiled expression. Compiling is where a bad expression is refused.
#[derive(Clone)]
pub struct Expr {
    source: String,
    program: Arc<cel::Program>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl Expr {
    /// Compile a CEL expression.
    pub fn compile(source: &str) -> Result<Expr, String> {
        let program = cel::Program::compile(source)
            .map_err(|e| format!("durafn: `{source}` is not a valid CEL expression: {e}"))?;
        Ok(Expr {
            source: source.to_string(),
            program: Arc::new(program),
        })
    }

    /// Compile once per process: the compiled program of each source is
    /// kept (up to a bound), so evaluating the same expression for every
    /// event does not parse it again.
    pub fn cached(source: &str) -> Result<Expr, String> {
        static CACHE: OnceLock<Mutex<HashMap<String, Expr>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Mutex::default);
        if let Some(x) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(source) {
            return Ok(x.clone());
        }
        let x = Expr::compile(source)?;
        let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 10_000 {
            map.clear();
        }
        map.insert(source.to_string(), x.clone());
        Ok(x)
    }

    /// The expression for `match = "data.field"`.
    pub fn for_match(field: &str) -> Result<Expr, String> {
        let field = field.trim();
        if field.is_empty()
            || !field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(format!(
                "durafn: `{field}` is not a field path like `data.invoice_id`"
            ));
        }
        Expr::compile(&format!("event.{field} == async.{field}"))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate a trigger filter: `event` is the incoming event.
    pub fn accepts(&self, event: &Value) -> bool {
        let mut ctx = cel::Context::default();
        let Ok(e) = cel::to_value(event) else {
            return false;
        };
        ctx.add_variable_from_value("event", e);
        matches!(self.program.execute(&ctx), Ok(cel::Value::Bool(true)))
    }

    /// Evaluate a key expression (flow control) on `event`: its value as
    /// JSON, or `None` when it cannot be evaluated (a missing field).
    pub fn eval(&self, event: &Value) -> Option<Value> {
        // A plain field path (`event.data.customer_id`, most keys) is read
        // from the JSON directly: the same value CEL gives, without
        // converting the whole event.
        if let Some(path) = self.source.trim().strip_prefix("event.") {
            if path.split('.').all(|p| {
                p.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            }) {
                return path
                    .split('.')
                    .try_fold(event, |v, p| v.as_object()?.get(p))
                    .cloned();
            }
        }
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("event", cel::to_value(event).ok()?);
        self.program.execute(&ctx).ok()?.json().ok()
    }

    /// Evaluate with `event` (the run's trigger) and `async` (the incoming
    /// event). An error (a missing field) counts as no match.
    pub fn matches(&self, event: &Value, incoming: &Value) -> bool {
        let mut ctx = cel::Context::default();
        let (Ok(e), Ok(a)) = (cel::to_value(event), cel::to_value(incoming)) else {
            return false;
        };
        ctx.add_variable_from_value("event", e);
        ctx.add_variable_from_value("async", a);
        matches!(self.program.execute(&ctx), Ok(cel::Value::Bool(true)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_field_path_key_reads_what_cel_reads() {
        let e = json!({"name": "a", "data": {"user": "u1", "n": 7, "f": 1.5, "o": {"k": [1, 2]}, "nul": null}});
        for src in [
            "event.data.user",
            "event.data.n",
            "event.data.f",
            "event.data.o",
            "event.data.o.k",
            "event.name",
            "event.data.nul",
            "event.data.missing",
            "event.data.user.deeper",
        ] {
            let fast = Expr::compile(src).unwrap().eval(&e);
            // The same expression, written so that it takes CEL's path.
            let slow = Expr::compile(&format!("({src})")).unwrap().eval(&e);
            assert_eq!(fast, slow, "{src}");
        }
    }

    #[test]
    fn cel_on_events() {
        let e = json!({"name": "a", "data": {"user": "u1", "invoice_id": 7}});
        let yes = json!({"name": "b", "data": {"user": "u1", "amount": 150, "invoice_id": 7}});
        let no = json!({"name": "b", "data": {"user": "u2", "amount": 150, "invoice_id": 8}});
        let x =
            Expr::compile("async.data.amount > 100 && event.data.user == async.data.user").unwrap();
        assert!(x.matches(&e, &yes));
        assert!(!x.matches(&e, &no));
        let m = Expr::for_match("data.invoice_id").unwrap();
        assert!(m.matches(&e, &yes));
        assert!(!m.matches(&e, &no));
        assert!(!Expr::compile("async.data.missing == 1")
            .unwrap()
            .matches(&e, &yes));
        let err = Expr::compile("async.data.amount >").unwrap_err();
        assert!(err.contains("not a valid CEL expression"), "{err}");
        assert!(Expr::for_match("data.x == 1").is_err());
    }
}
