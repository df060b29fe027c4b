# Functions written with the official Inngest Python SDK, served by its
# Flask handler; `durafn dev` syncs and runs them (INNGEST_DEV points the SDK
# at it). Covered: a step.run loop and step.sleep (sent as sleep-until a
# date), step.wait_for_event resumed by a matching event, step.invoke, and
# parallel steps (ctx.group.parallel, in race mode too, and beside an
# invoke), and a RetryAfterError (sent as a Retry-After timestamp).
import datetime
import logging
import os
import sys
import threading
import time

import flask
import inngest
import inngest.flask

_out = threading.Lock()


def say(line: str) -> None:
    # One write per line, under a lock: Flask serves requests on several
    # threads, and `print` writes the text and the newline separately.
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


client = inngest.Inngest(app_id="py-app", is_production=False, logger=logging.getLogger("py-app"))


@client.create_function(fn_id="loop", trigger=inngest.TriggerEvent(event="py/loop"))
def loop(ctx: inngest.ContextSync) -> int:
    total = 0
    for i in range(3):

        def page(i: int = i) -> int:
            say(f"py: page {i}")
            return i + 1

        total += ctx.step.run("page", page)
    ctx.step.sleep("nap", datetime.timedelta(seconds=1))
    return total


@client.create_function(fn_id="approval", trigger=inngest.TriggerEvent(event="py/approval.requested"))
def approval(ctx: inngest.ContextSync) -> str:
    granted = ctx.step.wait_for_event(
        "wait-approval",
        event="py/approval.granted",
        if_exp="event.data.request_id == async.data.request_id",
        timeout=datetime.timedelta(seconds=30),
    )
    if granted is None:
        return "timed out"
    return f"approved by {granted.data['by']}"


@client.create_function(fn_id="child", trigger=inngest.TriggerEvent(event="py/child"))
def child(ctx: inngest.ContextSync) -> int:
    n = ctx.event.data["n"]
    return ctx.step.run("square", lambda: n * n)


@client.create_function(fn_id="parent", trigger=inngest.TriggerEvent(event="py/parent"))
def parent(ctx: inngest.ContextSync) -> int:
    squared = ctx.step.invoke("call-child", function=child, data={"n": 7})
    return squared + 1


@client.create_function(fn_id="fanout", trigger=inngest.TriggerEvent(event="py/fanout"))
def fanout(ctx: inngest.ContextSync) -> int:
    def part(i: int) -> int:
        say(f"py: part {i}")
        return i * 10

    parts = ctx.group.parallel(
        (
            lambda: ctx.step.run("part-1", lambda: part(1)),
            lambda: ctx.step.run("part-2", lambda: part(2)),
            lambda: ctx.step.run("part-3", lambda: part(3)),
        )
    )
    return ctx.step.run("sum", lambda: sum(parts))


@client.create_function(fn_id="patient", trigger=inngest.TriggerEvent(event="py/patient"), retries=1)
def patient(ctx: inngest.ContextSync) -> str:
    say(f"py: patient attempt {ctx.attempt} at {time.time():.3f}")
    if ctx.attempt == 0:
        raise inngest.RetryAfterError("the API asks for 4 s", 4000)
    return "done"


@client.create_function(fn_id="race", trigger=inngest.TriggerEvent(event="py/race"))
def race(ctx: inngest.ContextSync) -> None:
    # Race mode: each branch goes on as soon as its own step ended, so the
    # fast branch's second step runs while the slow one's first still does.
    def fast() -> None:
        ctx.step.run("a.1", lambda: say("py: race a.1"))
        ctx.step.run("a.2", lambda: say("py: race a.2"))

    def slow() -> None:
        def b1() -> None:
            time.sleep(1.5)
            say("py: race b.1")

        ctx.step.run("b.1", b1)
        ctx.step.run("b.2", lambda: say("py: race b.2"))

    ctx.group.parallel((fast, slow), parallel_mode=inngest.ParallelMode.RACE)


@client.create_function(fn_id="gather", trigger=inngest.TriggerEvent(event="py/gather"))
def gather(ctx: inngest.ContextSync) -> int:
    # An invoke beside planned steps: the executor runs the steps, then
    # waits for the child, then asks once what comes next.
    say("py: gather called")
    child_out, one, two = ctx.group.parallel(
        (
            lambda: ctx.step.invoke("gather-child", function=child, data={"n": 3}),
            lambda: ctx.step.run("one", lambda: 1),
            lambda: ctx.step.run("two", lambda: 2),
        )
    )
    return ctx.step.run("after", lambda: child_out + one + two)


def report_failure(ctx: inngest.ContextSync) -> str:
    error = ctx.event.data["error"]
    say(f"py: on_failure saw {error['name']}: {error['message']}")
    return "reported"


@client.create_function(
    fn_id="doomed",
    trigger=inngest.TriggerEvent(event="py/doomed"),
    retries=0,
    on_failure=report_failure,
)
def doomed(ctx: inngest.ContextSync) -> None:
    raise ValueError("out of stock")


@client.create_function(
    fn_id="cancellable",
    trigger=inngest.TriggerEvent(event="py/cancellable"),
    cancel=[inngest.Cancel(event="py/stop", if_exp="event.data.id == async.data.id")],
)
def cancellable(ctx: inngest.ContextSync) -> str:
    ctx.step.sleep("long-nap", datetime.timedelta(seconds=60))
    return "woke up"


@client.create_function(
    fn_id="only-one",
    trigger=inngest.TriggerEvent(event="py/only-one"),
    singleton=inngest.Singleton(key="event.data.account", mode="skip"),
)
def only_one(ctx: inngest.ContextSync) -> str:
    ctx.step.sleep("hold", datetime.timedelta(seconds=2))
    return f"ran for {ctx.event.data['n']}"


@client.create_function(
    fn_id="settled",
    trigger=inngest.TriggerEvent(event="py/settled"),
    debounce=inngest.Debounce(period=datetime.timedelta(seconds=1)),
)
def settled(ctx: inngest.ContextSync) -> int:
    return ctx.event.data["n"]


app = flask.Flask(__name__)
inngest.flask.serve(
    app,
    client,
    [loop, approval, child, parent, fanout, patient, doomed, cancellable, only_one, settled, race, gather],
)
port = int(os.environ.get("PORT", "3000"))
say(f"py: serving http://127.0.0.1:{port}/api/inngest")
app.run(host="127.0.0.1", port=port)
