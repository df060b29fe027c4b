//! What the check knows about the world: the calls, methods and macros that
//! break replay outside a step, the types that hold process-global state,
//! and the collections whose iteration order differs between processes.
//!
//! Shared by the check of a durable fn's body (`check.rs`) and the crate
//! index that follows its helpers (`index/`).

/// What a flagged use does, why that breaks replay, and what to write
/// instead. Messages read `{verb}{why}; {instead}`, with the chain to a
/// helper's effect between the verb and the why.
#[derive(Debug)]
pub struct Effect {
    pub verb: &'static str,
    pub why: &'static str,
    pub instead: &'static str,
}

pub static CLOCK: Effect = Effect {
    verb: "reads the clock",
    why: ", which returns a different value on every replay, so the run may take another path",
    instead: "use `ctx.now().await`, which is journaled and returns the same time on replay",
};
pub static RANDOM: Effect = Effect {
    verb: "draws a random value",
    why: ", which differs on every replay, so the run may take another path",
    instead: "use `ctx.random().await` or `ctx.uuid().await`, which are journaled",
};
pub static FS: Effect = Effect {
    verb: "touches the file system",
    why: " again on every replay",
    instead: "move it into `step!(\"name\", { .. })` so it runs once and its result is journaled",
};
pub static NET: Effect = Effect {
    verb: "opens a network connection",
    why: " again on every replay",
    instead: "move it into `step!(\"name\", { .. })` so it runs once and its result is journaled",
};
pub static DNS: Effect = Effect {
    verb: "resolves a host name over the network",
    why: " again on every replay, and may get another answer",
    instead: "move it into `step!(\"name\", { .. })` so it runs once and its result is journaled",
};
pub static PROCESS: Effect = Effect {
    verb: "reads or changes the process environment",
    why: ", which can differ between replays (another process, another deploy)",
    instead: "move it into `step!(\"name\", { .. })` so its result is journaled, or pass the value in the event",
};
pub static SPAWN: Effect = Effect {
    verb: "starts a thread or task",
    why: " again on every replay, and the journal cannot see its work",
    instead: "do the work in a `step!` (several steps in a loop each get their own ID)",
};
pub static SLEEP: Effect = Effect {
    verb: "waits in process memory only",
    why: ", so the wait is lost on a crash or deploy",
    instead: "use `sleep!(\"name\", duration)`, a durable timer that survives restarts",
};
pub static STDIO: Effect = Effect {
    verb: "uses the process's standard input or output",
    why: ", so it prints or reads again on every replay",
    instead: "use `ctx.log(..)`, which prints once, or move it into a step",
};
pub static GLOBAL: Effect = Effect {
    verb: "uses process-global state",
    why: ", which replay does not restore: a replayed run changes or reads it again, and another process holds another value",
    instead: "keep the value in the run: compute it in a `step!` and return it, or pass it in the event",
};

/// How a pattern of [`EFFECTS`] matches a path.
#[derive(Clone, Copy, PartialEq)]
enum Match {
    /// The path ends with the pattern's segments (`*` matches any one).
    Tail,
    /// A one-segment pattern that matches only a one-segment path: the
    /// name alone is distinctive (`random()`), `x::random` is not.
    Bare,
}

use Match::{Bare, Tail};

/// Path patterns of well-known effects.
const EFFECTS: &[(&[&str], Match, &Effect)] = &[
    (&["Instant", "now"], Tail, &CLOCK),
    (&["SystemTime", "now"], Tail, &CLOCK),
    (&["Instant", "elapsed"], Tail, &CLOCK),
    (&["SystemTime", "elapsed"], Tail, &CLOCK),
    (&["Utc", "now"], Tail, &CLOCK),
    (&["Local", "now"], Tail, &CLOCK),
    (&["OffsetDateTime", "now_utc"], Tail, &CLOCK),
    (&["OffsetDateTime", "now_local"], Tail, &CLOCK),
    (&["Timestamp", "now"], Tail, &CLOCK),
    (&["Zoned", "now"], Tail, &CLOCK),
    (&["rand", "random"], Tail, &RANDOM),
    (&["rand", "random_range"], Tail, &RANDOM),
    (&["rand", "random_bool"], Tail, &RANDOM),
    (&["rand", "random_iter"], Tail, &RANDOM),
    (&["rand", "rng"], Tail, &RANDOM),
    (&["thread_rng"], Tail, &RANDOM),
    (&["random"], Bare, &RANDOM),
    (&["Uuid", "new_v4"], Tail, &RANDOM),
    (&["Uuid", "now_v7"], Tail, &RANDOM),
    (&["OsRng"], Tail, &RANDOM),
    (&["*", "from_entropy"], Tail, &RANDOM),
    (&["*", "from_os_rng"], Tail, &RANDOM),
    (&["getrandom", "*"], Tail, &RANDOM),
    (&["fastrand", "*"], Tail, &RANDOM),
    (&["fs", "*"], Tail, &FS),
    (&["File", "open"], Tail, &FS),
    (&["File", "create"], Tail, &FS),
    (&["File", "options"], Tail, &FS),
    (&["OpenOptions", "new"], Tail, &FS),
    (&["TcpStream", "connect"], Tail, &NET),
    (&["TcpListener", "bind"], Tail, &NET),
    (&["UdpSocket", "bind"], Tail, &NET),
    (&["UnixStream", "connect"], Tail, &NET),
    (&["lookup_host"], Tail, &DNS),
    (&["Command", "new"], Tail, &PROCESS),
    (&["env", "var"], Tail, &PROCESS),
    (&["env", "var_os"], Tail, &PROCESS),
    (&["env", "vars"], Tail, &PROCESS),
    (&["env", "set_var"], Tail, &PROCESS),
    (&["env", "remove_var"], Tail, &PROCESS),
    (&["env", "args"], Tail, &PROCESS),
    (&["env", "current_dir"], Tail, &PROCESS),
    (&["process", "id"], Tail, &PROCESS),
    (&["thread", "spawn"], Tail, &SPAWN),
    (&["tokio", "spawn"], Tail, &SPAWN),
    (&["task", "spawn"], Tail, &SPAWN),
    (&["task", "spawn_local"], Tail, &SPAWN),
    (&["spawn_blocking"], Tail, &SPAWN),
    (&["spawn"], Bare, &SPAWN),
    (&["thread", "sleep"], Tail, &SLEEP),
    (&["time", "sleep"], Tail, &SLEEP),
    (&["time", "sleep_until"], Tail, &SLEEP),
    (&["io", "stdout"], Tail, &STDIO),
    (&["io", "stderr"], Tail, &STDIO),
    (&["io", "stdin"], Tail, &STDIO),
    (&["stdout"], Bare, &STDIO),
    (&["stderr"], Bare, &STDIO),
    (&["stdin"], Bare, &STDIO),
];

/// The effect of a call or a use of `segs`, a path as written or as
/// resolved through `use` items.
pub fn of_path<S: AsRef<str>>(segs: &[S]) -> Option<&'static Effect> {
    EFFECTS.iter().find_map(|(pat, how, effect)| {
        let fits = match how {
            Bare => segs.len() == 1,
            Tail => segs.len() >= pat.len(),
        };
        if !fits {
            return None;
        }
        let tail = &segs[segs.len() - pat.len()..];
        let hit = tail
            .iter()
            .zip(pat.iter())
            .all(|(s, p)| *p == "*" || s.as_ref() == *p);
        hit.then_some(*effect)
    })
}

/// Methods whose call is an effect whatever their receiver's type (the
/// receiver is usually a value of std: `UNIX_EPOCH.elapsed()`).
pub fn of_method(name: &str) -> Option<&'static Effect> {
    match name {
        "elapsed" => Some(&CLOCK),
        "to_socket_addrs" => Some(&DNS),
        _ => None,
    }
}

/// Macros that write to the process's output.
pub const PRINT_MACROS: &[&str] = &["println", "print", "eprintln", "eprint", "dbg"];

/// Macros that `.await` the futures they are given.
pub const AWAIT_MACROS: &[&str] = &["join", "try_join", "select", "select_biased"];

/// What a `static` of a given type allows: nothing (a constant in all but
/// name), any change (atomics, locks, cells), or one `set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Statics {
    Constant,
    Mutable,
    SetOnce,
}

/// Type names with interior mutability.
const MUTABLE_TYPES: &[&str] = &[
    "Mutex",
    "RwLock",
    "Cell",
    "RefCell",
    "UnsafeCell",
    "ReentrantMutex",
    "ArcSwap",
    "DashMap",
    "DashSet",
];

/// The kind of state a `static` of type `ty` (its identifiers, outermost
/// first) holds.
pub fn statics<S: AsRef<str>>(ty: &[S]) -> Statics {
    let mutable = ty.iter().any(|t| {
        let t = t.as_ref();
        MUTABLE_TYPES.contains(&t) || (t.starts_with("Atomic") && t.len() > "Atomic".len())
    });
    if mutable {
        Statics::Mutable
    } else if ty
        .first()
        .is_some_and(|t| matches!(t.as_ref(), "OnceLock" | "OnceCell"))
    {
        Statics::SetOnce
    } else {
        Statics::Constant
    }
}

/// Collections whose iteration order is random per process (std's
/// `RandomState`, and the crates that seed like it). `BTreeMap`,
/// `IndexMap` and hashers with a fixed seed iterate the same everywhere.
pub const HASH_TYPES: &[&str] = &[
    "HashMap", "HashSet", "AHashMap", "AHashSet", "DashMap", "DashSet",
];

/// Iterator methods that keep the order of what they iterate.
pub const ORDER_KEEPING: &[&str] = &[
    "iter",
    "iter_mut",
    "into_iter",
    "keys",
    "values",
    "values_mut",
    "into_keys",
    "into_values",
    "drain",
    "enumerate",
    "filter",
    "filter_map",
    "map",
    "cloned",
    "copied",
    "take",
    "skip",
    "take_while",
    "skip_while",
    "peekable",
    "by_ref",
    "inspect",
    "flat_map",
    "flatten",
    "zip",
    "chain",
    "step_by",
    "collect",
    "clone",
    "to_owned",
    "to_vec",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_by_tail_and_bare_names_only_alone() {
        assert!(std::ptr::eq(
            of_path(&["std", "time", "Instant", "now"]).unwrap(),
            &CLOCK
        ));
        assert!(of_path(&["random"]).is_some());
        assert!(of_path(&["my", "random"]).is_none());
        assert!(of_path(&["rand", "rngs", "StdRng", "from_entropy"]).is_some());
        assert!(of_path(&["std", "fs", "read_to_string"]).is_some());
        assert!(of_path(&["std", "process", "id"]).is_some());
        assert!(of_path(&["Instant"]).is_none());
        assert!(of_path(&["fs"]).is_none());
    }

    #[test]
    fn statics_by_type() {
        assert_eq!(statics(&["AtomicUsize"]), Statics::Mutable);
        assert_eq!(
            statics(&["LazyLock", "Mutex", "Vec", "String"]),
            Statics::Mutable
        );
        assert_eq!(statics(&["OnceLock", "String"]), Statics::SetOnce);
        assert_eq!(
            statics(&["LazyLock", "HashMap", "String", "u32"]),
            Statics::Constant
        );
        assert_eq!(statics(&["Atomic"]), Statics::Constant);
        assert_eq!(statics(&["str"]), Statics::Constant);
    }
}
