#!/usr/bin/env bash
# Runs every package's tests with -race, as `make test` does, against the
# servers that SEGMENTD_TEST_* name (scripts/test-servers.sh env).
#
# The processor package's tests run segmentd's jobs, which act on every
# organisation they find in Redis (backfills, timers, deletions), and take
# the longest. With a second Redis (SEGMENTD_TEST_REDIS2_ADDR and
# SEGMENTD_TEST_REDIS2_CLUSTER_ADDRS, which test-servers.sh starts) they run
# against it, beside the other packages, which run one after another against
# the first; Kafka is shared (every test has topics of its own). Without it,
# every package runs one after another, the processor's among them.
# Extra arguments go to both `go test` commands (-run, -v).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO="${GO:-go}"
flags=(-race -count=1 -timeout 14m "$@")

if [[ -z "${SEGMENTD_TEST_REDIS2_ADDR:-}" || -z "${SEGMENTD_TEST_REDIS2_CLUSTER_ADDRS:-}" ]]; then
  exec "$GO" test "${flags[@]}" -p 1 ./...
fi

out="$(mktemp "${TMPDIR:-/tmp}/segmentd-processor-tests.XXXXXX")"
trap 'rm -f "$out"' EXIT
# Its output comes after the others', whole, rather than interleaved.
SEGMENTD_TEST_REDIS_ADDR="$SEGMENTD_TEST_REDIS2_ADDR" \
  SEGMENTD_TEST_REDIS_CLUSTER_ADDRS="$SEGMENTD_TEST_REDIS2_CLUSTER_ADDRS" \
  "$GO" test "${flags[@]}" ./processor/ >"$out" 2>&1 &
processor=$!

others=()
while IFS= read -r pkg; do others+=("$pkg"); done < <("$GO" list ./... | grep -v '/processor$')
rc=0
"$GO" test "${flags[@]}" -p 1 "${others[@]}" || rc=$?

prc=0
wait "$processor" || prc=$?
cat "$out"
((rc != 0)) && exit "$rc"
exit "$prc"
