#!/usr/bin/env bash
# The official Inngest Python SDK's own integration suite
# (tests/test_inngest/test_function: Flask and FastAPI) against `durafn dev`.
#
#   scripts/inngest-py-suite.sh <checkout of inngest/inngest-py> [durafn binary]
#
# It makes a virtualenv beside the checkout (`.durafn-venv`) with the SDK
# and its test helpers installed editable and the test dependencies at the
# versions the repository pins, then, for each framework, starts `durafn dev`
# on a fresh database and runs the suite against it (DEV_SERVER_ENABLED=0:
# the suite uses the running server). Prints passed/failed per framework;
# the logs stay in the checkout's `.durafn-logs`. Needs python3 with venv
# and access to PyPI. Not part of CI: the suite is not in this repository.
set -euo pipefail
repo=$(cd "${1:?usage: $0 <inngest-py checkout> [durafn binary]}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
durafn=${2:-$here/target/debug/durafn}
[ -x "$durafn" ] || (cd "$here" && cargo build -p durafn-cli)
port=${DEV_SERVER_PORT:-8288}
venv=$repo/.durafn-venv
logs=$repo/.durafn-logs
mkdir -p "$logs"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        -e "$repo/pkg/inngest" -e "$repo/pkg/test_core" \
        pytest==8.3.4 pytest-timeout==2.3.1 Flask==3.0.0 fastapi==0.110.0 \
        uvicorn==0.23.2 Django==5.0 tornado==6.4 structlog==25.2.0 \
        sentry-sdk==2.1.1 protobuf==5.29.4 psutil==6.0.0 websockets==15.0.0 \
        pynacl==1.5.0 httpx==0.26.0 pydantic==2.11.0
fi

status=0
for fw in flask fast_api; do
    db=$(mktemp -d)
    "$durafn" dev --port "$port" --db "$db/dev.db" > "$logs/durafn-$fw.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do
        curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
        sleep 0.1
    done
    (cd "$repo" && DEV_SERVER_ENABLED=0 DEV_SERVER_PORT=$port \
        "$venv/bin/python" -m pytest "tests/test_inngest/test_function/test_$fw.py" \
        -p no:cacheprovider --timeout 60 -q -rf > "$logs/$fw.log" 2>&1) || status=1
    kill "$server"; wait "$server" 2> /dev/null || true
    rm -rf "$db"
    echo "$fw: $(tail -n 1 "$logs/$fw.log")"
    grep '^FAILED' "$logs/$fw.log" | sed 's/^/  /' || true
done
exit $status
