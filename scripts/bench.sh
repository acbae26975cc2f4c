#!/usr/bin/env bash
# Runs every benchmark of BENCHMARKS.md and prints its figures. Needs the
# servers of scripts/test-servers.sh (make bench starts them): Kafka, and a
# standalone Redis, which the memory figures read INFO memory from.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${SEGMENTD_TEST_KAFKA_BROKERS:?run through scripts/test-servers.sh run -- $0, or make bench}"
: "${SEGMENTD_TEST_REDIS_ADDR:?run through scripts/test-servers.sh run -- $0, or make bench}"
redis_host="${SEGMENTD_TEST_REDIS_ADDR%:*}"
redis_port="${SEGMENTD_TEST_REDIS_ADDR##*:}"

section() { printf '\n== %s\n' "$*"; }

section "criteria: one compiled 5-criterion segment against segmentd, cel-go and expr"
(cd bench/criteria && go test -run '^$' -bench . -benchmem -count 5)

section "field index against evaluating every segment (1,000 segments, one patch)"
go test -run '^$' -bench 'BenchmarkAffectedSegments' -benchmem -count 5 ./processor/

section "stored profile: binary encoding against JSON, decode and encode; the 5-criterion rule on a decoded profile"
go test -run '^$' -bench 'BenchmarkProfile|BenchmarkMatch5' -benchmem -count 5 ./segment/

section "profile events: decoding a patch and a whole profile, and the load generator's encoding"
go test -run '^$' -bench 'BenchmarkDecodeProfileEvent|BenchmarkEncodeProfileEvent' -benchmem -count 3 ./events/

section "patches: a usual one of 3 paths, and patches of 1,000 to 40,000 paths"
go test -run '^$' -bench 'BenchmarkApplyChanges$|BenchmarkApplyChangesManyPaths' -benchmem -count 2 ./segment/

section "deep profiles, deep patch paths, long in-lists against arrays, deep criterion fields"
go test -run '^$' -bench 'BenchmarkChangedPathsDeep|BenchmarkApplyChangesDeepPath|BenchmarkMatchInArray|BenchmarkNewIndexDeepField' -benchmem ./segment/

section "request bodies of millions of tiny elements, refused"
go test -run '^$' -bench BenchmarkLongBodies -benchtime 2x ./api/

section "a definition change reaching an instance: reload everything against the changed organisation only"
go test -run '^$' -bench 'BenchmarkDefinitionChange' -benchmem -count 3 ./processor/

section "the processor's cache of users' states: memory per user"
go test -run '^$' -bench 'BenchmarkStateCacheMemory$' -benchtime 1x ./processor/

section "baseline: redis-benchmark SADD, pipelined 16 deep, 1 and 50 clients"
rb() { redis-benchmark -h "$redis_host" -p "$redis_port" -t sadd -q "$@" | tr '\r' '\n' | grep 'requests per second'; }
printf 'pipelined 16 deep, 1 client:   '; rb -n 1000000 -P 16 -c 1
printf 'pipelined 16 deep, 50 clients: '; rb -n 1000000 -P 16 -c 50
printf 'no pipelining, 1 client:       '; rb -n 200000 -c 1

section "end to end: 100,000 users, 1,000 segments, bare consumer beside it"
go test -run '^$' -bench 'BenchmarkEndToEnd$' -benchtime 1x -timeout 30m ./processor/

section "latency from occurredAt to the event's outcome in Redis at ${SEGMENTD_BENCH_RATE:-23100} events/s"
go test -run '^$' -bench 'BenchmarkLatencyAtHalfRate$' -benchtime 1x -timeout 30m ./processor/

section "backfill and audience over ${SEGMENTD_BENCH_PROFILES:-1000000} stored profiles; memory per profile and membership"
go test -run '^$' -bench 'BenchmarkBackfillMillion$' -benchtime 1x -timeout 60m ./processor/

section "the same backfill and audience on the 3-master Redis Cluster"
SEGMENTD_BENCH_REDIS=cluster go test -run '^$' -bench 'BenchmarkBackfillMillion$' -benchtime 1x -timeout 60m ./processor/

section "backfill of a segment that one user in twenty enters (points >= 5500), standalone and cluster"
SEGMENTD_BENCH_MIN_POINTS=5500 go test -run '^$' -bench 'BenchmarkBackfillMillion$' -benchtime 1x -timeout 60m ./processor/
SEGMENTD_BENCH_MIN_POINTS=5500 SEGMENTD_BENCH_REDIS=cluster go test -run '^$' -bench 'BenchmarkBackfillMillion$' -benchtime 1x -timeout 60m ./processor/

section "relative-date flips: 10,000 users into one segment at one instant, among 100 relative-date segments and alone"
go test -run '^$' -bench 'BenchmarkTimerFlips$' -benchtime 1x -timeout 30m ./processor/

section "small organisations (10,000 profiles) beside a large one: first audience search by keyspace scan, then after the indexes are completed, backfill"
go test -run '^$' -bench 'BenchmarkSmallOrganisation$' -benchtime 1x -timeout 30m ./processor/
