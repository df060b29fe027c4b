# A function written with the official Inngest Python SDK, served by its
# Flask handler; `durafn dev` syncs and runs it (INNGEST_DEV points the SDK
# at it). Covered: a step.run loop and step.sleep (sent as sleep-until a date).
import datetime
import logging
import os

import flask
import inngest
import inngest.flask

client = inngest.Inngest(app_id="py-app", is_production=False, logger=logging.getLogger("py-app"))


@client.create_function(fn_id="loop", trigger=inngest.TriggerEvent(event="py/loop"))
def loop(ctx: inngest.ContextSync) -> int:
    total = 0
    for i in range(3):

        def page(i: int = i) -> int:
            print(f"py: page {i}", flush=True)
            return i + 1

        total += ctx.step.run("page", page)
    ctx.step.sleep("nap", datetime.timedelta(seconds=1))
    return total


app = flask.Flask(__name__)
inngest.flask.serve(app, client, [loop])
port = int(os.environ.get("PORT", "3000"))
print(f"py: serving http://127.0.0.1:{port}/api/inngest", flush=True)
app.run(host="127.0.0.1", port=port)
