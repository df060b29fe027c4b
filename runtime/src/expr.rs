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

/// The longest expression accepted.
pub const MAX_EXPR_BYTES: usize = 8192;
/// The deepest expression accepted: evaluation recurses once per level
/// on the caller's stack (a chain of 64 `+` overflowed a 2 MiB thread in
/// a debug build); `&&` and `||` chains are balanced, so long ones stay
/// shallow.
pub const MAX_EXPR_DEPTH: usize = 32;

/// How deep an expression tree is, counting up to `limit + 1`.
fn depth(e: &cel::IdedExpr, limit: usize) -> usize {
    use cel::common::ast::{EntryExpr, Expr as E};
    if limit == 0 {
        return 1;
    }
    let deepest = |xs: &mut dyn Iterator<Item = &cel::IdedExpr>| {
        xs.map(|x| depth(x, limit - 1)).max().unwrap_or(0)
    };
    let below = match &e.expr {
        E::Call(c) => deepest(&mut c.target.as_deref().into_iter().chain(&c.args)),
        E::Comprehension(c) => deepest(
            &mut [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ]
            .into_iter(),
        ),
        E::List(l) => deepest(&mut l.elements.iter()),
        E::Map(m) => deepest(&mut m.entries.iter().flat_map(|en| match &en.expr {
            EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })),
        E::Struct(st) => deepest(&mut st.entries.iter().flat_map(|en| match &en.expr {
            EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
            EntryExpr::StructField(f) => vec![&f.value],
        })),
        E::Select(sel) => depth(&sel.operand, limit - 1),
        E::Ident(_) | E::Literal(_) | E::Unspecified => 0,
    };
    1 + below
}

impl Expr {
    /// Compile a CEL expression. Expressions come from apps' syncs and
    /// answers too, so a hostile one must fail clearly, not take the
    /// process down: the parser runs on a thread with a large stack (it
    /// recurses once per nesting level, ~200 levels at most), and a source
    /// longer than [`MAX_EXPR_BYTES`] or a tree deeper than
    /// [`MAX_EXPR_DEPTH`] is refused.
    pub fn compile(source: &str) -> Result<Expr, String> {
        let shown: String = source.chars().take(120).collect();
        if source.len() > MAX_EXPR_BYTES {
            return Err(format!(
                "durafn: the CEL expression `{shown}…` is {} bytes, over the limit of {MAX_EXPR_BYTES}",
                source.len()
            ));
        }
        let owned = source.to_string();
        let compiled = std::thread::Builder::new()
            .name("durafn-cel".into())
            .stack_size(64 << 20)
            .spawn(move || -> Result<cel::Program, String> {
                let program = cel::Program::compile(&owned).map_err(|e| e.to_string())?;
                let d = depth(program.expression(), MAX_EXPR_DEPTH);
                if d > MAX_EXPR_DEPTH {
                    return Err(format!(
                        "it nests deeper than {MAX_EXPR_DEPTH} levels (each operator of a chain counts one level: write `x in [a, b, ..]` for many alternatives)"
                    ));
                }
                Ok(program)
            })
            .map_err(|e| format!("durafn: cannot start the expression compiler: {e}"))?
            .join()
            .unwrap_or_else(|_| Err("the CEL parser failed on it".into()));
        let program = compiled
            .map_err(|e| format!("durafn: `{shown}` is not a valid CEL expression: {e}"))?;
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
    fn hostile_expressions_are_refused_clearly_not_by_a_crash() {
        // Each of these overflowed the stack of the thread that parsed or
        // evaluated it, and took the process down: now the deep
        // parentheses parse (on the compiler's own stack), the rest are
        // refused.
        let deep_parens = format!("{}1{}", "(".repeat(40), ")".repeat(40));
        let long_sum = vec!["1"; 64].join(" + ");
        let deep_list = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        for src in [long_sum.as_str(), &deep_list, &"x".repeat(9000)] {
            let err = Expr::compile(src).expect_err("refused");
            assert!(err.starts_with("durafn: "), "{err}");
        }
        assert!(Expr::compile(&vec!["1"; 64].join(" + "))
            .unwrap_err()
            .contains("deeper than 32"));
        // What real filters look like still compiles and runs.
        let ten_parens = format!("{}event.data.n{} > 1", "(".repeat(10), ")".repeat(10));
        let alternatives = vec!["event.data.n == 1"; 20].join(" || ");
        let many = format!(
            "event.data.n in [{}]",
            (0..500)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let event = json!({"data": {"n": 1}});
        for src in [ten_parens.as_str(), &deep_parens, &alternatives, &many] {
            let x = Expr::compile(src).unwrap_or_else(|e| panic!("{e}"));
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn({
                    let event = event.clone();
                    move || assert!(x.accepts(&event) || x.eval(&event).is_some())
                })
                .unwrap()
                .join()
                .unwrap();
        }
    }

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
