#!/usr/bin/env bash
# Starts and stops the real servers that segmentd's integration tests use,
# all on 127.0.0.1 and without docker:
#
#   - a standalone Redis               127.0.0.1:${REDIS_PORT:-16379}
#   - a 3-master Redis Cluster         127.0.0.1:${REDIS_CLUSTER_PORTS:-17001,17002,17003}
#   - a second standalone Redis and    127.0.0.1:${REDIS2_PORT:-16380}
#     3-master Redis Cluster           127.0.0.1:${REDIS2_CLUSTER_PORTS:-17004,17005,17006}
#     (the processor package's tests run segmentd's jobs, which act on every
#     organisation they find in Redis: on Redis of their own, they run beside
#     the other packages' tests; see scripts/test-packages.sh)
#   - a single-node Apache Kafka 4.x   127.0.0.1:${KAFKA_PORT:-19092} (KRaft, broker+controller;
#                                      controller listener on ${KAFKA_CONTROLLER_PORT:-19093})
#
# Usage:
#   scripts/test-servers.sh start          start all servers (no-op if they already run)
#   scripts/test-servers.sh stop           stop them and delete their data
#   scripts/test-servers.sh status         say whether they run
#   scripts/test-servers.sh env            print the `export` lines the tests read
#   scripts/test-servers.sh run -- CMD...  start, run CMD with the env set, stop (always);
#                                          exits with CMD's exit code
#
# `run` uses servers that are already running (from `start`) and then leaves them
# running; it starts nothing at all when SEGMENTD_TEST_KAFKA_BROKERS and
# SEGMENTD_TEST_REDIS_ADDR are set (servers of your own).
#
# Needs: redis-server + redis-cli (installed with apt-get when missing and run as
# root), java >= 17 and mvn (the Kafka jars come from Maven once, into
# .cache/kafka/libs). State and logs live in .cache/test-servers/, data in a temp dir.
#
# Environment (all optional): REDIS_PORT, REDIS_CLUSTER_PORTS (comma or space
# separated, at least 3; each node also listens on port+10000, its cluster bus),
# REDIS2_PORT, REDIS2_CLUSTER_PORTS (the same for the second Redis),
# KAFKA_PORT, KAFKA_CONTROLLER_PORT, KAFKA_HEAP_OPTS (default "-Xmx512m -Xms256m"),
# KAFKA_JVM_OPTS (default "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"),
# KAFKA_START_TIMEOUT and REDIS_START_TIMEOUT (seconds, default 120 and 60).
# Two work trees on one machine need different ports to run at the same time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache"
STATE="$CACHE/test-servers"
LOGS="$STATE/logs"
KAFKA_POM="$ROOT/scripts/kafka/pom.xml"
KAFKA_LIBS="$CACHE/kafka/libs"

REDIS_PORT="${REDIS_PORT:-16379}"
REDIS_CLUSTER_PORTS="${REDIS_CLUSTER_PORTS:-17001,17002,17003}"
REDIS2_PORT="${REDIS2_PORT:-16380}"
REDIS2_CLUSTER_PORTS="${REDIS2_CLUSTER_PORTS:-17004,17005,17006}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
# C1 only and the serial GC: less CPU at startup and fewer threads on a small machine.
KAFKA_JVM_OPTS="${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
REDIS_START_TIMEOUT="${REDIS_START_TIMEOUT:-60}"
STOP_TIMEOUT=30

HOST=127.0.0.1

log() { printf 'test-servers: %s\n' "$*" >&2; }
die() { printf 'test-servers: error: %s\n' "$*" >&2; exit 1; }

read -r -a CLUSTER_PORTS <<<"${REDIS_CLUSTER_PORTS//,/ }"
read -r -a CLUSTER2_PORTS <<<"${REDIS2_CLUSTER_PORTS//,/ }"

check_ports() {
  local p
  for p in "$REDIS_PORT" "${CLUSTER_PORTS[@]}" "$REDIS2_PORT" "${CLUSTER2_PORTS[@]}" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if ! [[ "$p" =~ ^[1-9][0-9]{0,4}$ ]] || ((p > 65535)); then
      die "bad port '$p' (check REDIS_PORT, REDIS_CLUSTER_PORTS, REDIS2_PORT, REDIS2_CLUSTER_PORTS, KAFKA_PORT, KAFKA_CONTROLLER_PORT)"
    fi
  done
  ((${#CLUSTER_PORTS[@]} >= 3)) || die "REDIS_CLUSTER_PORTS needs at least 3 ports, got '$REDIS_CLUSTER_PORTS'"
  ((${#CLUSTER2_PORTS[@]} >= 3)) || die "REDIS2_CLUSTER_PORTS needs at least 3 ports, got '$REDIS2_CLUSTER_PORTS'"
  for p in "${CLUSTER_PORTS[@]}" "${CLUSTER2_PORTS[@]}"; do
    ((p + 10000 <= 65535)) || die "Redis Cluster port $p too high: its cluster bus port $((p + 10000)) is not a port"
  done
  local dups
  dups="$(all_ports | sort | uniq -d)"
  [[ -z "$dups" ]] || die "port(s) used twice: ${dups//$'\n'/ } (check REDIS_PORT, REDIS_CLUSTER_PORTS, REDIS2_PORT, REDIS2_CLUSTER_PORTS, KAFKA_PORT, KAFKA_CONTROLLER_PORT; a cluster port also takes port+10000)"
}

# all_ports lists every TCP port the servers listen on, Redis Cluster bus ports
# (port + 10000) included.
all_ports() {
  local p
  printf '%s\n' "$REDIS_PORT" "$REDIS2_PORT" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
  for p in "${CLUSTER_PORTS[@]}" "${CLUSTER2_PORTS[@]}"; do printf '%s\n%s\n' "$p" "$((p + 10000))"; done
}

# cluster_addrs [PORT...]: the cluster nodes' addresses, comma separated
# (the first cluster's when no port is given).
cluster_addrs() {
  local p out=""
  (($#)) || set -- "${CLUSTER_PORTS[@]}"
  for p in "$@"; do out+="${out:+,}$HOST:$p"; done
  printf '%s' "$out"
}

env_lines() {
  printf 'export SEGMENTD_TEST_KAFKA_BROKERS=%s\n' "$HOST:$KAFKA_PORT"
  printf 'export SEGMENTD_TEST_REDIS_ADDR=%s\n' "$HOST:$REDIS_PORT"
  printf 'export SEGMENTD_TEST_REDIS_CLUSTER_ADDRS=%s\n' "$(cluster_addrs)"
  printf 'export SEGMENTD_TEST_REDIS2_ADDR=%s\n' "$HOST:$REDIS2_PORT"
  printf 'export SEGMENTD_TEST_REDIS2_CLUSTER_ADDRS=%s\n' "$(cluster_addrs "${CLUSTER2_PORTS[@]}")"
  printf 'export SEGMENTD_TEST_REQUIRE_SERVERS=1\n'
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# ours PIDFILE: true when PIDFILE (kafka.pid or redis-PORT.pid in the state
# dir) names a live process whose command line is that of the server, so that
# a recycled pid is never taken for one of ours.
ours() {
  local pid cmd port
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  { cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline")"; } 2>/dev/null || return 1
  case "${1##*/}" in
    kafka.pid) [[ "$cmd" == *kafka.Kafka* && "$cmd" == *"$KAFKA_LIBS/"* ]] ;;
    redis-*.pid)
      port="${1##*/redis-}"
      port="${port%.pid}"
      # "redis-server 127.0.0.1:PORT" once running, "--port PORT" before.
      [[ "$cmd" == *redis-server* && ("$cmd" == *":$port "* || "$cmd" == *":$port" || "$cmd" == *"--port $port "*) ]]
      ;;
    *) return 1 ;;
  esac
}

# alive PID: true while PID exists and is not a zombie.
alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ "${stat##*) }" != Z* ]]
}

# running: true when a start completed and all the servers it started still
# run (whatever ports they were given).
running() {
  local f n=0
  [[ -f "$STATE/env" ]] && ours "$STATE/kafka.pid" || return 1
  for f in "$STATE"/redis-*.pid; do
    ours "$f" || return 1
    n=$((n + 1))
  done
  ((n >= 8))
}

# ---------------------------------------------------------------- prerequisites

ensure_redis() {
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
      log "redis-server not found: installing it with apt-get"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >&2
      apt-get install -y -qq --no-install-recommends redis-server >&2
    fi
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
      die "redis-server/redis-cli not found: install them (Debian: apt-get install -y redis-server) or run this script as root"
    fi
  fi
}

ensure_java() {
  command -v java >/dev/null || die "java not found: Kafka needs Java 17 or newer (Debian: apt-get install -y openjdk-17-jre-headless)"
  local v
  v="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
  if [[ -n "$v" ]] && ((v < 17)); then die "java $v found, Kafka 4 needs Java 17 or newer"; fi
}

# ensure_kafka_libs puts the Kafka broker jars into .cache/kafka/libs, once: a
# stamp file holding the pom's checksum says the directory is complete.
ensure_kafka_libs() {
  local sum
  sum="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
  if [[ -f "$KAFKA_LIBS/.complete" && "$(<"$KAFKA_LIBS/.complete")" == "$sum" ]]; then return; fi
  command -v mvn >/dev/null || die "mvn not found: it fetches the Kafka jars (Debian: apt-get install -y maven)"
  log "fetching Kafka jars with Maven into ${KAFKA_LIBS#"$ROOT/"} (first run only)"
  rm -rf "$KAFKA_LIBS" "$KAFKA_LIBS.tmp"
  mkdir -p "$KAFKA_LIBS.tmp"
  if ! mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" >"$CACHE/kafka/mvn.log" 2>&1; then
    cat "$CACHE/kafka/mvn.log" >&2
    rm -rf "$KAFKA_LIBS.tmp"
    die "mvn could not fetch the Kafka jars (output above, also in ${CACHE#"$ROOT/"}/kafka/mvn.log)"
  fi
  ls "$KAFKA_LIBS.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "mvn ran but no kafka_2.13 jar in $KAFKA_LIBS.tmp"
  printf '%s\n' "$sum" >"$KAFKA_LIBS.tmp/.complete"
  mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
}

kafka_version() {
  local j
  for j in "$KAFKA_LIBS"/kafka_2.13-*.jar; do
    j="${j##*/kafka_2.13-}"
    printf '%s' "${j%.jar}"
    return
  done
}

# ---------------------------------------------------------------- redis

# start_redis PORT DIR [extra redis-server args...]
# With the setting the README recommends: stored profiles of up to 1 KB stay
# in Redis's compact hash encoding.
start_redis() {
  local port="$1" dir="$2"
  shift 2
  mkdir -p "$dir"
  # Not --daemonize: with setsid and & the pid is known at once, so that an
  # interrupted start can always stop what it started.
  setsid redis-server --bind "$HOST" --port "$port" --dir "$dir" \
    --daemonize no --logfile "$LOGS/redis-$port.log" \
    --save '' --appendonly no --hash-max-listpack-value 1024 "$@" </dev/null >/dev/null 2>&1 9>&- &
  printf '%s\n' "$!" >"$STATE/redis-$port.pid"
}

wait_redis() {
  local port="$1" deadline=$((SECONDS + REDIS_START_TIMEOUT))
  until [[ "$(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null)" == PONG ]]; do
    alive "$(<"$STATE/redis-$port.pid")" || {
      tail -n 20 "$LOGS/redis-$port.log" >&2 || true
      die "redis-server on port $port exited during startup (log: ${LOGS#"$ROOT/"}/redis-$port.log)"
    }
    ((SECONDS < deadline)) || {
      tail -n 20 "$LOGS/redis-$port.log" >&2 || true
      die "redis-server on port $port did not answer PING within ${REDIS_START_TIMEOUT}s"
    }
    sleep 0.1
  done
}

# start_redis_cluster PORT...: a Redis Cluster of these masters.
start_redis_cluster() {
  local p nodes=() deadline log="$LOGS/redis-cluster-$1-create.log"
  for p in "$@"; do
    start_redis "$p" "$TMP/redis-$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000
    nodes+=("$HOST:$p")
  done
  for p in "$@"; do wait_redis "$p"; done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$log" 2>&1 || {
    cat "$log" >&2
    die "redis-cli --cluster create failed"
  }
  deadline=$((SECONDS + REDIS_START_TIMEOUT))
  for p in "$@"; do
    until redis-cli -h "$HOST" -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; do
      ((SECONDS < deadline)) || {
        redis-cli -h "$HOST" -p "$p" cluster info >&2 || true
        die "redis cluster node $HOST:$p not in cluster_state:ok within ${REDIS_START_TIMEOUT}s"
      }
      sleep 0.2
    done
  done
}

# ---------------------------------------------------------------- kafka

# start_kafka formats a fresh KRaft log dir and launches the broker in the background.
start_kafka() {
  local dir="$TMP/kafka" cp="$KAFKA_LIBS/*" id
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
  # WARN and up for everything; INFO from KafkaRaftServer for its "Kafka Server started".
  cat >"$dir/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="$LOGS/kafka.log">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
EOF
  local jvm=(-Djava.awt.headless=true -Djava.net.preferIPv4Stack=true
    "-Dlog4j2.configurationFile=$dir/log4j2.xml" -cp "$cp")

  id="$(java -Xmx128m "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka-format.log" | tail -n1)"
  [[ "$id" =~ ^[A-Za-z0-9_-]{22}$ ]] || {
    cat "$LOGS/kafka-format.log" >&2
    die "kafka.tools.StorageTool random-uuid gave '$id'"
  }
  java -Xmx256m "${jvm[@]}" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" \
    >>"$LOGS/kafka-format.log" 2>&1 || {
    cat "$LOGS/kafka-format.log" >&2
    die "kafka.tools.StorageTool format failed"
  }

  # setsid: the broker gets its own session, so a Ctrl-C meant for `run`'s
  # command does not reach it; `stop` ends it.
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS and KAFKA_JVM_OPTS are lists of JVM flags
  setsid java $KAFKA_HEAP_OPTS $KAFKA_JVM_OPTS "${jvm[@]}" \
    kafka.Kafka "$dir/server.properties" </dev/null >"$LOGS/kafka.out" 2>&1 9>&- &
  printf '%s\n' "$!" >"$STATE/kafka.pid"
}

# build_kafkawait builds scripts/kafkawait (a kafka-go client that checks the
# broker's metadata and warms up its group coordinator) into .cache/bin.
# On failure it says so and returns 1: wait_kafka then relies on the broker log.
build_kafkawait() {
  if ! command -v go >/dev/null; then
    log "warning: go not found: cannot build scripts/kafkawait"
    return 1
  fi
  (cd "$ROOT" && go build -o "$CACHE/bin/kafkawait" ./scripts/kafkawait) >"$LOGS/kafkawait-build.log" 2>&1 9>&- || {
    cat "$LOGS/kafkawait-build.log" >&2
    log "warning: could not build scripts/kafkawait: waiting on the broker log only"
    return 1
  }
}

# wait_kafka waits until the broker logs that it started and then, when
# kafkawait could be built (KAFKAWAIT=1), until it serves metadata and its
# group coordinator answers.
wait_kafka() {
  local pid deadline
  pid="$(<"$STATE/kafka.pid")"
  deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  until port_open "$KAFKA_PORT" && grep -q 'Kafka Server started' "$LOGS/kafka.log" 2>/dev/null; do
    if ! alive "$pid"; then
      tail -n 30 "$LOGS/kafka.out" "$LOGS/kafka.log" >&2 || true
      die "Kafka exited during startup (logs: ${LOGS#"$ROOT/"}/kafka.out, kafka.log)"
    fi
    ((SECONDS < deadline)) || {
      tail -n 30 "$LOGS/kafka.out" "$LOGS/kafka.log" >&2 || true
      die "Kafka did not start within ${KAFKA_START_TIMEOUT}s (logs: ${LOGS#"$ROOT/"}/kafka.out, kafka.log)"
    }
    sleep 0.25
  done
  if ((KAFKAWAIT)); then
    local left=$((deadline - SECONDS))
    ((left > 10)) || left=10
    "$CACHE/bin/kafkawait" -brokers "$HOST:$KAFKA_PORT" -timeout "${left}s" 2>>"$LOGS/kafka.out" 9>&- || {
      tail -n 30 "$LOGS/kafka.out" "$LOGS/kafka.log" >&2 || true
      die "Kafka started but does not serve clients (logs: ${LOGS#"$ROOT/"}/kafka.out, kafka.log)"
    }
  fi
}

# ---------------------------------------------------------------- commands

do_start() {
  check_ports
  mkdir -p "$STATE"
  exec 9>"$STATE/lock"
  flock -w 600 9 || die "another test-servers.sh holds $STATE/lock"

  if running; then
    log "already running ($(sed -n 's/^export //p' "$STATE/env" | tr '\n' ' '))"
    return 0
  fi
  # Leftovers of a start that died half-way, or of servers that crashed.
  stop_all

  ensure_redis
  ensure_java
  ensure_kafka_libs

  local p
  for p in $(all_ports); do
    ! port_open "$p" || die "port $HOST:$p is already in use (by another test-servers.sh? Choose other ports with REDIS_PORT, REDIS_CLUSTER_PORTS, REDIS2_PORT, REDIS2_CLUSTER_PORTS (each cluster port also takes port+10000 for the cluster bus), KAFKA_PORT, KAFKA_CONTROLLER_PORT)"
  done

  local t0=$SECONDS
  rm -rf "$LOGS"
  mkdir -p "$LOGS"
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/segmentd-test-servers.XXXXXX")"
  printf '%s\n' "$TMP" >"$STATE/tmpdir"
  # Any failure from here on removes what was started, an interrupt too.
  trap 'rc=$?; if ((rc != 0)); then log "start failed, cleaning up"; stop_all; fi' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP

  start_kafka # the slowest: the broker boots while the rest starts
  KAFKAWAIT=1
  build_kafkawait || KAFKAWAIT=0
  start_redis "$REDIS_PORT" "$TMP/redis-$REDIS_PORT"
  start_redis "$REDIS2_PORT" "$TMP/redis-$REDIS2_PORT"
  start_redis_cluster "${CLUSTER_PORTS[@]}"
  start_redis_cluster "${CLUSTER2_PORTS[@]}"
  wait_redis "$REDIS_PORT"
  wait_redis "$REDIS2_PORT"
  wait_kafka

  env_lines >"$STATE/env"
  trap - EXIT INT TERM HUP
  log "started Kafka $(kafka_version) on $HOST:$KAFKA_PORT, Redis on $HOST:$REDIS_PORT, Redis Cluster on $(cluster_addrs), the second Redis on $HOST:$REDIS2_PORT and $(cluster_addrs "${CLUSTER2_PORTS[@]}") in $((SECONDS - t0))s"
}

# stop_all ends every process named in the state dir (TERM, then KILL after
# STOP_TIMEOUT seconds) and removes the temp dir. Safe to call when nothing runs.
stop_all() {
  local f pid pids=() deadline
  # Every pid file, also those of a start with other port settings.
  for f in "$STATE"/redis-*.pid "$STATE"/kafka.pid; do
    if ours "$f"; then
      pid="$(cat "$f" 2>/dev/null)" || continue
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done

  deadline=$((SECONDS + STOP_TIMEOUT))
  for pid in ${pids[@]+"${pids[@]}"}; do
    while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if alive "$pid"; then
      log "pid $pid did not stop on TERM within ${STOP_TIMEOUT}s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    while alive "$pid"; do sleep 0.1; done
    wait "$pid" 2>/dev/null || true # reaps it when it is a child of this shell
  done

  if [[ -f "$STATE/tmpdir" ]]; then
    local tmp
    tmp="$(cat "$STATE/tmpdir" 2>/dev/null)" || tmp=""
    case "$tmp" in
      */segmentd-test-servers.*) rm -rf -- "$tmp" ;;
    esac
  fi
  rm -f "$STATE"/redis-*.pid "$STATE/kafka.pid" "$STATE/tmpdir" "$STATE/env"
}

do_stop() {
  mkdir -p "$STATE"
  exec 9>"$STATE/lock"
  flock -w 600 9 || die "another test-servers.sh holds $STATE/lock"
  stop_all
}

do_env() {
  if running; then cat "$STATE/env"; else check_ports && env_lines; fi
}

do_status() {
  if running; then
    echo "running: $(sed -n 's/^export //p' "$STATE/env" | tr '\n' ' ')"
  else
    echo "not running"
    return 1
  fi
}

RUN_STARTED=0
run_cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if ((RUN_STARTED)); then
    log "stopping servers"
    (do_stop) || log "stop failed (rc $?)"
  fi
  exit "$rc"
}

do_run() {
  [[ "${1:-}" == -- ]] && shift
  (($# > 0)) || die "usage: $0 run -- COMMAND [ARGS...]"

  if [[ -n "${SEGMENTD_TEST_KAFKA_BROKERS:-}" && -n "${SEGMENTD_TEST_REDIS_ADDR:-}" ]]; then
    [[ -n "${SEGMENTD_TEST_REDIS_CLUSTER_ADDRS:-}" ]] ||
      log "warning: SEGMENTD_TEST_REDIS_CLUSTER_ADDRS is not set: Redis Cluster tests will fail"
    log "using the servers from the environment (Kafka $SEGMENTD_TEST_KAFKA_BROKERS, Redis $SEGMENTD_TEST_REDIS_ADDR)"
    SEGMENTD_TEST_REQUIRE_SERVERS=1 exec "$@"
  fi

  trap run_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  if running; then
    log "using the servers already running (they stay up; stop them with $0 stop)"
  else
    RUN_STARTED=1
    (do_start)
  fi
  eval "$(do_env)"

  local rc=0
  "$@" || rc=$?
  exit "$rc"
}

cmd="${1:-}"
(($#)) && shift
case "$cmd" in
  start) do_start ;;
  stop) do_stop ;;
  env) do_env ;;
  status) do_status ;;
  run) do_run "$@" ;;
  *)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
    ;;
esac
