// Functions written with the official Inngest SDK (v4), served by its Node
// handler. `durafn dev` syncs and runs them: INNGEST_DEV points the SDK at it.
import http from "node:http";
import { Inngest } from "inngest";
import { serve } from "inngest/node";

const inngest = new Inngest({ id: "js-app" });

const loop = inngest.createFunction(
  { id: "loop", triggers: [{ event: "js/loop" }], retries: 2 },
  async ({ step }) => {
    let total = 0;
    for (let i = 0; i < 4; i++) {
      total += await step.run("page", async () => {
        console.log(`js: page ${i}`);
        return i + 1;
      });
    }
    return total;
  },
);

const sleeper = inngest.createFunction(
  { id: "sleeper", triggers: [{ event: "js/sleep" }] },
  async ({ step }) => {
    const before = await step.run("before", () => Date.now());
    await step.sleep("nap", "1s");
    const after = await step.run("after", () => Date.now());
    return after - before;
  },
);

const parallel = inngest.createFunction(
  { id: "parallel", triggers: [{ event: "js/parallel" }] },
  async ({ step }) => {
    const [a, b, c] = await Promise.all([
      step.run("x", () => 1),
      step.run("y", () => 2),
      step.run("z", () => 3),
    ]);
    const sum = await step.run("sum", () => a + b + c);
    return sum;
  },
);

let flakyCalls = 0;
const retried = inngest.createFunction(
  { id: "retried", triggers: [{ event: "js/retry" }], retries: 3 },
  async ({ step }) => {
    const v = await step.run("flaky", () => {
      flakyCalls += 1;
      console.log(`js: flaky call ${flakyCalls}`);
      if (flakyCalls === 1) throw new Error("first attempt fails");
      return "recovered";
    });
    return v;
  },
);

const approval = inngest.createFunction(
  { id: "approval", triggers: [{ event: "js/approval.requested" }] },
  async ({ step }) => {
    const granted = await step.waitForEvent("wait-approval", {
      event: "js/approval.granted",
      timeout: "30s",
      match: "data.request_id",
    });
    return granted ? `approved by ${granted.data.by}` : "timed out";
  },
);

const child = inngest.createFunction(
  { id: "child", triggers: [{ event: "js/child" }] },
  async ({ event, step }) => step.run("square", () => event.data.n * event.data.n),
);

const parent = inngest.createFunction(
  { id: "parent", triggers: [{ event: "js/parent" }] },
  async ({ step }) => step.invoke("call-child", { function: child, data: { n: 7 }, timeout: "1m" }),
);

// At most two runs at once: durafn dev claims no third while two run.
let inFlight = 0;
const limited = inngest.createFunction(
  { id: "limited", triggers: [{ event: "js/limited" }], concurrency: { limit: 2 } },
  async ({ step }) => {
    await step.run("work", async () => {
      inFlight += 1;
      console.log(`js: limited in flight ${inFlight}`);
      await new Promise((r) => setTimeout(r, 150));
      inFlight -= 1;
    });
    return "done";
  },
);

// A burst of events runs once, with the burst's last event.
const debounced = inngest.createFunction(
  { id: "debounced", triggers: [{ event: "js/debounced" }], debounce: { period: "2s" } },
  async ({ event, step }) => step.run("last", () => event.data.n),
);

// Events gathered into runs of up to five: the run receives them all.
const batched = inngest.createFunction(
  { id: "batched", triggers: [{ event: "js/batched" }], batchEvents: { maxSize: 5, timeout: "2s" } },
  async ({ events, step }) => step.run("write-batch", () => events.map((e) => e.data.n)),
);

const port = Number(process.env.PORT || 3000);
http
  .createServer(serve({ client: inngest, functions: [loop, sleeper, parallel, retried, approval, child, parent, limited, debounced, batched] }))
  .listen(port, "127.0.0.1", () => console.log(`js: serving http://127.0.0.1:${port}/api/inngest`));
