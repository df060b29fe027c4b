//! The run context. Every step site resolves against the journal through
//! [`Ctx`]: a memoized site returns at once; the first site that is not
//! memoized decides the run's next [`Transition`].
//!
//! How a run stops without closures: when the context must stop the run (one
//! new step done in re-entry mode, a sleep, a failed attempt waiting for its
//! backoff), it records the transition and returns a future that never
//! completes. The driver sees the recorded transition and drops the
//! function's future. A retry is a later call that reaches the same site.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Retry, StepError};
use crate::function::StepSite;
use crate::journal::{Journal, Outcome};
use crate::step_id::StepId;
use crate::transition::{at, FailedAttempt, Policy, Transition, DEFAULT_INVOKE_TIMEOUT};

mod clock;
mod replay;
mod types;

pub use clock::{Clock, FastClock, Faults, SystemClock};
pub use types::{Abandon, Attempts, EventSender, Mode, Plan, StepMeta, StepOpts, StepSink};

use replay::{failed_for_good, hash_of, Begin, Group};

pub(crate) struct CtxInit {
    pub run_id: String,
    pub fn_id: &'static str,
    pub mode: Mode,
    pub retries: u32,
    pub attempts: Attempts,
    pub journal: Journal,
    pub clock: Arc<dyn Clock>,
    pub sink: Option<Arc<dyn StepSink>>,
    pub faults: Option<Arc<Faults>>,
    pub plan: Plan,
    pub sites: &'static [StepSite],
    pub sender: Option<Arc<dyn EventSender>>,
    /// How much the run may journal.
    pub bounds: crate::journal::Bounds,
}

/// The context of one run, handed to the durable fn as its `Ctx` argument.
/// Cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    inner: Arc<Inner>,
}

struct Inner {
    run_id: String,
    fn_id: &'static str,
    mode: Mode,
    retries: u32,
    clock: Arc<dyn Clock>,
    sink: Option<Arc<dyn StepSink>>,
    faults: Option<Arc<Faults>>,
    plan: Plan,
    sites: &'static [StepSite],
    sender: Option<Arc<dyn EventSender>>,
    bounds: crate::journal::Bounds,
    state: Mutex<State>,
}

#[derive(Default)]
pub(crate) struct State {
    pub journal: Journal,
    /// Journaled sites reached so far in this call.
    pub reached: usize,
    /// Outcomes journaled before this call.
    loaded: usize,
    /// The size of the run's journal, with the outcomes of this call.
    journaled: usize,
    /// Hashes of the step IDs reached in this call (duplicate detection
    /// without keeping the IDs of a long run in memory).
    seen: HashSet<u64>,
    /// Hashes of the journal keys replayed in this call.
    hit: HashSet<u64>,
    /// The parallel group whose branches are running now.
    group: Option<Group>,
    pub transition: Option<Transition>,
    pub abandoned: Option<Abandon>,
    attempts: Attempts,
    /// Steps whose body ran in this call, with the attempt (kept only
    /// without a sink, so that a long run's memory stays flat).
    pub executed: Vec<(StepId, u32)>,
    pub current: Option<(StepId, u32)>,
    /// Step bodies executing now (parallel branches).
    in_flight: usize,
    /// Awaits the context accounts for outside step bodies: a commit of an
    /// outcome, and `unchecked!` code the developer vouched for.
    vouched: usize,
    /// The last step site reached (for the `AwaitOutsideStep` error).
    pub last: Option<StepId>,
    counters: [u32; 3],
}

const NOW: usize = 0;
const RANDOM: usize = 1;
const UUID: usize = 2;

impl Ctx {
    pub(crate) fn new(init: CtxInit) -> Ctx {
        Ctx {
            inner: Arc::new(Inner {
                run_id: init.run_id,
                fn_id: init.fn_id,
                mode: init.mode,
                retries: init.retries,
                clock: init.clock,
                sink: init.sink,
                faults: init.faults,
                plan: init.plan,
                sites: init.sites,
                sender: init.sender,
                bounds: init.bounds,
                state: Mutex::new(State {
                    loaded: init.journal.len(),
                    journaled: init.journal.bytes(),
                    journal: init.journal,
                    attempts: init.attempts,
                    ..State::default()
                }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic in user code never happens while the lock is held, so a
        // poisoned lock still holds consistent state.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the run can stop: the sink refused an outcome, or a
    /// transition is recorded and no step body is still executing (parallel
    /// siblings finish and commit first).
    pub(crate) fn can_stop(&self) -> bool {
        let st = self.state();
        st.abandoned.is_some() || (st.transition.is_some() && st.in_flight == 0)
    }

    /// Whether the function's future is pending on something durafn does
    /// not know: no step body runs, no primitive waits, no commit is in
    /// progress and nothing is vouched for. Its await happened outside the
    /// journal (hidden where the macro could not see it).
    pub(crate) fn idle(&self) -> bool {
        let st = self.state();
        st.in_flight == 0 && st.vouched == 0 && st.transition.is_none() && st.abandoned.is_none()
    }

    /// Counts an await as accounted for while the guard lives.
    pub(super) fn vouch(&self) -> Vouched {
        self.state().vouched += 1;
        Vouched(self.clone())
    }

    /// Marks the code of an `unchecked!` as vouched for, awaits included.
    #[doc(hidden)]
    pub fn __vouch(&self) -> Vouched {
        self.vouch()
    }

    pub(crate) fn finish(&self) -> State {
        std::mem::take(&mut *self.state())
    }

    /// The run's ID.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    /// The function's ID.
    pub fn fn_id(&self) -> &'static str {
        self.inner.fn_id
    }

    /// Whether the body is still replaying journaled steps: code between
    /// steps runs again on every re-entry, and this tells it apart.
    pub fn is_replaying(&self) -> bool {
        let st = self.state();
        st.reached < st.loaded
    }

    /// A replay-aware log line: printed (and traced) once, when the run
    /// first gets here, not again on replay.
    pub fn log(&self, message: impl std::fmt::Display) {
        if !self.is_replaying() {
            tracing::info!(run_id = %self.inner.run_id, "{message}");
            println!("{message}");
        }
    }

    /// Inside a step body: the step's readable ID and attempt number.
    pub fn step_info(&self) -> Option<(StepId, u32)> {
        self.state().current.clone()
    }

    /// Inside a step body: a key that is the same on every attempt of this
    /// step in this run (run ID + step ID), for APIs that deduplicate.
    pub fn idempotency_key(&self) -> Option<String> {
        self.step_info()
            .map(|(id, _)| format!("{}:{}", self.inner.run_id, id))
    }

    /// The current time, memoized: replay sees the same value.
    pub async fn now(&self) -> SystemTime {
        let ms: i64 = self
            .internal(NOW, || Value::from(self.inner.clock.now_ms()))
            .await;
        UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
    }

    /// A random `f64` in `[0, 1)`, memoized.
    pub async fn random(&self) -> f64 {
        self.internal(RANDOM, || Value::from(rand::random::<f64>()))
            .await
    }

    /// A random UUID (v4), memoized.
    pub async fn uuid(&self) -> String {
        self.internal(UUID, || {
            let b: [u8; 16] = rand::random();
            Value::from(format_uuid_v4(b))
        })
        .await
    }

    async fn internal<T: DeserializeOwned>(&self, kind: usize, make: impl FnOnce() -> Value) -> T {
        let id = {
            let mut st = self.state();
            let n = st.counters[kind];
            st.counters[kind] += 1;
            let base = ["~now", "~random", "~uuid"][kind];
            StepId::new(base, &[n])
        };
        let begin = self.begin::<T>(&id, true, |o| match o {
            Outcome::Data { data } => T::deserialize(data).map_err(|e| e.to_string()),
            _ => Err("expected data".to_string()),
        });
        match begin {
            Begin::Memo(v) => v,
            Begin::Stop => std::future::pending().await,
            Begin::Run { attempt } => {
                let started = self.inner.clock.now_ms();
                let value = make();
                let out = T::deserialize(&value).expect("internal value round-trips");
                let outcome = Outcome::data(value);
                match self
                    .complete(id, outcome.size(), outcome, attempt, started)
                    .await
                {
                    true => out,
                    false => std::future::pending().await,
                }
            }
        }
    }
}

/// The step primitives the macro expands to: each resolves its site
/// against the journal through [`Ctx::begin`] and, when the site is new,
/// runs its body or records the transition that stops the run.
impl Ctx {
    /// A `step!`. The future is boxed: its type is then the same at every
    /// site, so the compiler proves it `Send` once, here, and not once per
    /// step in each durable fn (most of what the generated code would
    /// cost to check).
    #[doc(hidden)]
    pub fn __step<'a, T, F>(
        &'a self,
        site: &'static StepSite,
        indices: &'a [u32],
        opts: StepOpts,
        body: F,
    ) -> crate::function::BoxFuture<'a, Result<T, StepError>>
    where
        T: crate::__private::StepOutput,
        F: Future<Output = Result<T, Error>> + Send + 'a,
    {
        Box::pin(self.step(site, indices, opts, body))
    }

    async fn step<T, F>(
        &self,
        site: &'static StepSite,
        indices: &[u32],
        opts: StepOpts,
        body: F,
    ) -> Result<T, StepError>
    where
        T: crate::__private::StepOutput,
        F: Future<Output = Result<T, Error>>,
    {
        let id = StepId::new(site.id, indices);
        let begin = self.begin::<Result<T, StepError>>(&id, true, |o| match o {
            Outcome::Data { data } => T::deserialize(data).map(Ok).map_err(|e| e.to_string()),
            Outcome::Error { error } => Ok(Err(StepError {
                step: id.to_string(),
                error: error.clone(),
            })),
            Outcome::Null(()) => T::deserialize(&Value::Null)
                .map(Ok)
                .map_err(|e| e.to_string()),
        });
        let attempt = match begin {
            Begin::Memo(v) => return v,
            Begin::Stop => return std::future::pending().await,
            Begin::Run { attempt } => attempt,
        };
        let span = tracing::info_span!("step", run_id = %self.inner.run_id, step = %id, attempt);
        {
            let mut st = self.state();
            if self.inner.sink.is_none() {
                st.executed.push((id.clone(), attempt));
            }
            st.current = Some((id.clone(), attempt));
            st.in_flight += 1;
        }
        let guard = InFlight(self);
        let started = self.inner.clock.now_ms();
        let injected = self.inner.faults.as_ref().is_some_and(|f| f.take(&id));
        let result = if injected {
            Err(Error::msg(format!(
                "injected failure of step `{id}` (attempt {})",
                attempt + 1
            ))
            .with_name("InjectedFailure"))
        } else {
            tracing::Instrument::instrument(body, span.clone()).await
        };
        self.state().current = None;
        let outcome = match result {
            Ok(value) => match serde_json::to_value(&value) {
                // No await until `complete` counts the output in: parallel
                // branches cannot together go over the journal's bound.
                Ok(v) => {
                    let journaled = self.state().journaled;
                    match self.inner.bounds.admit(id.as_str(), &v, journaled) {
                        Ok(size) => Ok((value, v, size)),
                        Err(info) => Err(Error::from_info(info, Retry::Never)),
                    }
                }
                Err(e) => Err(Error::non_retriable(format!(
                    "durafn: the output of step `{id}` does not serialize: {e}"
                ))
                .with_name("OutputNotSerializable")),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok((value, json, size)) => {
                tracing::debug!(run_id = %self.inner.run_id, step = %id, attempt, "step ran");
                if self
                    .complete(id, size, Outcome::data(json), attempt, started)
                    .await
                {
                    Ok(value)
                } else {
                    drop(guard);
                    std::future::pending().await
                }
            }
            Err(error) => {
                let max = opts.retries.unwrap_or(self.inner.retries);
                let info = error.info().clone();
                tracing::warn!(run_id = %self.inner.run_id, step = ?id.as_str(), attempt, error = %info.to_string().escape_debug(), "step attempt failed");
                if !Policy::attempt_is_final(error.retry(), attempt, max) {
                    let failure = FailedAttempt {
                        id,
                        error: info,
                        attempt,
                        retry_after: match error.retry() {
                            Retry::After(d) => Some(d),
                            _ => None,
                        },
                    };
                    {
                        let mut st = self.state();
                        match &mut st.transition {
                            // A sibling branch failed in the same pass.
                            Some(Transition::StepErrored(failures)) => failures.push(failure),
                            Some(_) => {}
                            None => st.transition = Some(Transition::StepErrored(vec![failure])),
                        }
                    }
                    drop(guard);
                    return std::future::pending().await;
                }
                let step = id.to_string();
                let outcome = Outcome::error(info.clone());
                if self
                    .complete(id, outcome.size(), outcome, attempt, started)
                    .await
                {
                    Err(StepError { step, error: info })
                } else {
                    drop(guard);
                    std::future::pending().await
                }
            }
        }
    }

    #[doc(hidden)]
    pub async fn __wait_for_event<T: serde::de::DeserializeOwned>(
        &self,
        site: &'static StepSite,
        indices: &[u32],
        event: &'static str,
        expr: Option<&'static str>,
        timeout: Duration,
        lookback: Option<Duration>,
    ) -> Result<Option<crate::Event<T>>, StepError> {
        let id = StepId::new(site.id, indices);
        let step = id.to_string();
        let begin =
            self.begin::<Result<Option<crate::Event<T>>, StepError>>(&id, false, |o| match o {
                Outcome::Null(()) => Ok(Ok(None)),
                Outcome::Data { data } => {
                    <crate::Event<T> as serde::Deserialize>::deserialize(data)
                        .map(|e| Ok(Some(e)))
                        .map_err(|e| e.to_string())
                }
                Outcome::Error { error } => Ok(Err(StepError {
                    step: step.clone(),
                    error: error.clone(),
                })),
            });
        match begin {
            Begin::Memo(v) => v,
            Begin::Stop => std::future::pending().await,
            Begin::Run { .. } => {
                let now = self.inner.clock.now_ms();
                let t = Transition::WaitForEvent {
                    id,
                    event: event.to_string(),
                    expr: expr.map(str::to_string),
                    until_ms: at(now, timeout),
                    since_ms: lookback
                        .map(|d| now.saturating_sub(d.as_millis().min(i64::MAX as u128) as i64)),
                    // An event an earlier wait took is not taken again.
                    seen: match lookback {
                        Some(_) => self.state().journal.event_ids(),
                        None => Vec::new(),
                    },
                };
                self.state().transition = Some(t);
                std::future::pending().await
            }
        }
    }

    #[doc(hidden)]
    pub async fn __invoke<
        R: serde::de::DeserializeOwned,
        F: crate::DurableFn,
        D: serde::Serialize,
    >(
        &self,
        site: &'static StepSite,
        indices: &[u32],
        function: &F,
        data: D,
        timeout: Option<Duration>,
    ) -> Result<R, StepError> {
        let id = StepId::new(site.id, indices);
        let step = id.to_string();
        let begin = self.begin::<Result<R, StepError>>(&id, false, |o| match o {
            Outcome::Data { data } => R::deserialize(data).map(Ok).map_err(|e| e.to_string()),
            Outcome::Null(()) => R::deserialize(&Value::Null)
                .map(Ok)
                .map_err(|e| e.to_string()),
            Outcome::Error { error } => Ok(Err(StepError {
                step: step.clone(),
                error: error.clone(),
            })),
        });
        match begin {
            Begin::Memo(v) => v,
            Begin::Stop => std::future::pending().await,
            Begin::Run { .. } => {
                let data = match serde_json::to_value(data) {
                    Ok(v) => v,
                    Err(e) => {
                        let msg = format!(
                            "durafn: the data for invoking `{}` does not serialize: {e}",
                            function.id()
                        );
                        self.state().transition =
                            Some(failed_for_good("InvokeDataNotSerializable", msg));
                        return std::future::pending().await;
                    }
                };
                let timeout = timeout.unwrap_or(DEFAULT_INVOKE_TIMEOUT);
                let t = Transition::Invoke {
                    id,
                    function: function.id().to_string(),
                    data,
                    until_ms: at(self.inner.clock.now_ms(), timeout),
                };
                self.state().transition = Some(t);
                std::future::pending().await
            }
        }
    }

    #[doc(hidden)]
    pub async fn __send_event<E: serde::Serialize>(
        &self,
        site: &'static StepSite,
        indices: &[u32],
        events: E,
    ) -> Result<Vec<String>, StepError> {
        let sender = self.inner.sender.clone();
        let events = serde_json::to_value(&events);
        // An event without an ID gets one derived from the run, the step
        // and its position, so that sending again after a crash (before the
        // step was journaled) is deduplicated by the receiver.
        let prefix = format!("{}.{}", self.inner.run_id, StepId::new(site.id, indices));
        self.step(site, indices, StepOpts::default(), async move {
            let mut list = match events? {
                Value::Array(a) => a,
                one => vec![one],
            };
            for (i, e) in list.iter_mut().enumerate() {
                if let Value::Object(m) = e {
                    let has_id = m
                        .get("id")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty());
                    if !has_id {
                        m.insert("id".into(), Value::String(format!("send-{prefix}.{i}")));
                    }
                }
            }
            match sender {
                Some(s) => s.send(list).await,
                None => Err(Error::non_retriable("durafn: `send_event!` needs an engine or an executor to send to; this run has neither")),
            }
        })
        .await
    }

    #[doc(hidden)]
    pub async fn __parallel<T, I, F, Fut>(
        &self,
        site: &'static StepSite,
        indices: &[u32],
        items: Vec<I>,
        body: F,
    ) -> Result<Vec<T>, StepError>
    where
        T: crate::__private::StepOutput,
        F: Fn(I) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let ids: Vec<StepId> = (0..items.len())
            .map(|i| {
                let mut idx = indices.to_vec();
                idx.push(i as u32);
                StepId::new(site.id, &idx)
            })
            .collect();
        {
            let mut st = self.state();
            let keys: HashSet<u64> = ids
                .iter()
                .map(|id| hash_of(&st.journal.key_of(id)))
                .collect();
            let unreached = ids
                .iter()
                .filter(|id| {
                    let key = st.journal.key_of(id);
                    st.journal.contains(&key) && !st.hit.contains(&hash_of(&key))
                })
                .count();
            st.group = Some(Group { keys, unreached });
        }
        let branches: Vec<_> = items
            .into_iter()
            .zip(0u32..)
            .map(|(item, i)| {
                let fut = body(item);
                let ctx = self.clone();
                let mut idx = indices.to_vec();
                idx.push(i);
                async move { ctx.step(site, &idx, StepOpts::default(), fut).await }
            })
            .collect();
        let out = join_all(branches).await;
        self.state().group = None;
        out.into_iter().collect()
    }

    /// `patched!`: `true` for a run that reaches the site at the end of its
    /// journal (journaled, so it replays as `true`), `false` for a run with
    /// journaled history past this point that never recorded it: that
    /// history was written by code without the change, so the run keeps
    /// to the old path. Nothing is journaled for `false`: every replay of
    /// such a run reaches the site with the same history ahead of it.
    #[doc(hidden)]
    pub async fn __patched(
        &self,
        site: &'static StepSite,
        indices: &[u32],
    ) -> Result<bool, StepError> {
        let id = StepId::new(site.id, indices);
        {
            let st = self.state();
            let key = st.journal.key_of(&id);
            if st.transition.is_none() && st.journal.get(&key).is_none() && st.loaded > st.reached {
                return Ok(false);
            }
        }
        let begin = self.begin::<bool>(&id, false, |o| match o {
            Outcome::Data { data } => data
                .as_bool()
                .ok_or_else(|| format!("expected a boolean, found {data}")),
            _ => Err("expected a boolean".to_string()),
        });
        match begin {
            Begin::Memo(v) => Ok(v),
            Begin::Stop => std::future::pending().await,
            Begin::Run { attempt } => {
                let started = self.inner.clock.now_ms();
                match self
                    .complete(id, 4, Outcome::data(Value::Bool(true)), attempt, started)
                    .await
                {
                    true => Ok(true),
                    false => std::future::pending().await,
                }
            }
        }
    }

    #[doc(hidden)]
    pub async fn __sleep(
        &self,
        site: &'static StepSite,
        indices: &[u32],
        duration: Duration,
    ) -> Result<(), StepError> {
        let until = at(self.inner.clock.now_ms(), duration);
        self.sleep_inner(site, indices, until).await
    }

    #[doc(hidden)]
    pub async fn __sleep_until(
        &self,
        site: &'static StepSite,
        indices: &[u32],
        until: SystemTime,
    ) -> Result<(), StepError> {
        let until = until
            .duration_since(UNIX_EPOCH)
            .map(|d| at(0, d))
            .unwrap_or(0);
        self.sleep_inner(site, indices, until).await
    }

    async fn sleep_inner(
        &self,
        site: &'static StepSite,
        indices: &[u32],
        until_ms: i64,
    ) -> Result<(), StepError> {
        let id = StepId::new(site.id, indices);
        match self.begin::<()>(&id, false, |_| Ok(())) {
            Begin::Memo(()) => Ok(()),
            Begin::Stop => std::future::pending().await,
            Begin::Run { .. } => {
                self.state().transition = Some(Transition::Sleep { id, until_ms });
                std::future::pending().await
            }
        }
    }
}

/// An await the context accounts for, until dropped.
#[doc(hidden)]
#[must_use]
pub struct Vouched(Ctx);

impl Drop for Vouched {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.vouched = st.vouched.saturating_sub(1);
    }
}

/// Counts a step body as executing until its outcome is handled.
struct InFlight<'a>(&'a Ctx);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

fn format_uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("run_id", &self.inner.run_id)
            .field("fn_id", &self.inner.fn_id)
            .field("mode", &self.inner.mode)
            .finish()
    }
}

/// Poll every branch until all are done (parallel steps).
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every branch finished"))
        .collect()
}
