#!/usr/bin/env bash
# `make demo`: a coordinator on SQLite in a throw-away data dir, a member, a submitted job.
# Until the scheduler lands (issue "Place and run jobs"), the job stays PENDING: nothing runs it yet.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=$(mktemp -d -t coop-demo-XXXX)
PORT=${COOP_DEMO_PORT:-8471}
export COOP_DATA_DIR=$DATA COOP_PORT=$PORT COOP_CONFIG_DIR=$DATA/cli
export COOP_URL=http://127.0.0.1:$PORT

step() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }

step "Creating the first admin (coop admin bootstrap)"
ADMIN_TOKEN=$($BIN/coop admin bootstrap --json | $BIN/python -c 'import json,sys; print(json.load(sys.stdin)["token"])')
echo "admin token created (shown once; stored hashed)"

step "Starting the coordinator on $COOP_URL (data in $DATA)"
$BIN/coop server > "$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
  curl -fsS "$COOP_URL/v1/health" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { cat "$DATA/server.log"; exit 1; }
  sleep 0.1
done
curl -fsS "$COOP_URL/v1/health"; echo

step "Adding a member (coop admin member add lab-a)"
MEMBER_TOKEN=$(COOP_TOKEN=$ADMIN_TOKEN $BIN/coop admin member add lab-a --json \
  | $BIN/python -c 'import json,sys; print(json.load(sys.stdin)["token"])')
COOP_TOKEN=$ADMIN_TOKEN $BIN/coop admin member list

step "Logging in as lab-a and submitting examples/hello/job.yaml"
$BIN/coop login --url "$COOP_URL" --token "$MEMBER_TOKEN"
$BIN/coop submit --dry-run examples/hello/job.yaml
$BIN/coop submit examples/hello/job.yaml

step "Status (PENDING: the scheduler that places jobs on nodes is the next milestone)"
$BIN/coop status
$BIN/coop status 1
$BIN/coop balance

step "Shutting down"
