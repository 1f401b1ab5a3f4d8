#!/usr/bin/env bash
# Cicada against Debian's mosquitto on this machine, same scenarios, interleaved runs, a fresh broker per run.
# Prints one line per run and the medians. Usage: benches/compare.sh [RUNS] [SECONDS]
# Needs: cargo build --release, mosquitto installed (bash .ci/install).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-4}
BIN=./target/release/cicada
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
ulimit -n 65536 || true
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_broker() { # $1 = cicada|mosquitto; sets PORT and PID
    PORT=$(free_port)
    if [ "$1" = cicada ]; then
        "$BIN" serve --port "$PORT" --http-port "$(free_port)" --data-dir "$WORK/data" >/dev/null 2>&1 &
    else
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser root\n' "$PORT" > "$WORK/m.conf"
        "$MOSQ" -c "$WORK/m.conf" >/dev/null 2>&1 &
    fi
    PID=$!
    for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && return 0; sleep 0.02; done
    echo "broker $1 did not start" >&2; exit 1
}

stop_broker() { kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true; }

rss_kb() { awk '/^'"$2"':/ {print $2}' /proc/"$1"/status; }

RESULTS="$WORK/results.tsv"
scenario() { # name qos pubs subs [rate]
    local name=$1 qos=$2 pubs=$3 subs=$4 rate=${5:-0}
    for run in $(seq "$RUNS"); do
        for broker in cicada mosquitto; do
            start_broker "$broker"
            local json
            json=$("$BIN" bench pubsub -p "$PORT" --publishers "$pubs" --subscribers "$subs" -q "$qos" --size 64 \
                --duration "$SECS" --rate "$rate" --drain 5 --json 2>/dev/null | tail -1)
            local hwm; hwm=$(rss_kb "$PID" VmHWM)
            stop_broker
            python3 - "$name" "$broker" "$json" "$hwm" >> "$RESULTS" <<'PY'
import json, sys
name, broker, j, hwm = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
print("\t".join(map(str, [name, broker, j["msgs_per_sec"], j["p50_ms"], j["p99_ms"], j["lost"], hwm // 1024])))
PY
            tail -1 "$RESULTS"
        done
    done
}

scenario "qos0 10->1"             0 10 1
scenario "qos1 10->1"             1 10 1
scenario "qos0 1->100"            0 1 100
scenario "qos1 1->100"            1 1 100
scenario "qos0 10->1 @2k/s/pub"   0 10 1 2000
scenario "qos1 10->1 @2k/s/pub"   1 10 1 2000

idle() { # broker
    start_broker "$1"
    "$BIN" bench conn -p "$PORT" -c 10000 --rate 5000 --hold 30 --json > "$WORK/conn.json" 2>/dev/null &
    local bench=$!
    for _ in $(seq 600); do
        [ "$(ls /proc/"$PID"/fd | wc -l)" -ge 10000 ] && break
        sleep 0.05
    done
    sleep 1
    local rss; rss=$(rss_kb "$PID" VmRSS)
    kill "$bench" 2>/dev/null; wait "$bench" 2>/dev/null || true
    stop_broker
    printf 'idle10k\t%s\t-\t-\t-\t-\t%s\n' "$1" "$((rss / 1024))" >> "$RESULTS"
    tail -1 "$RESULTS"
}
for run in $(seq "$RUNS"); do idle cicada; idle mosquitto; done

echo
echo "medians over $RUNS runs: scenario, broker, msgs/s, p50 ms, p99 ms, lost, peak RSS MiB"
python3 - "$RESULTS" <<'PY'
import sys, statistics, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    rows.setdefault((f[0], f[1]), []).append(f[2:])
def med(vals):
    vals = [float(v) for v in vals if v != "-"]
    return f"{statistics.median(vals):.1f}" if vals else "-"
for (name, broker), runs in rows.items():
    cols = list(zip(*runs))
    print(f"{name:24} {broker:10} " + "  ".join(f"{med(c):>10}" for c in cols))
PY
