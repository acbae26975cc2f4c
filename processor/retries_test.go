package processor

import (
	"testing"
	"time"
)

// TestBackfillRetriesWaitLonger checks that a backfill failing again and
// again waits longer each time, up to a bound, and not at all once it
// succeeded.
func TestBackfillRetriesWaitLonger(t *testing.T) {
	r := backfillRetries{}
	now := time.Unix(1000, 0)
	if r.waiting("a", now) {
		t.Fatal("a backfill that never failed waits")
	}
	var last time.Duration
	for i := range 12 {
		wait := r.failed("a", now)
		if !r.waiting("a", now) || r.waiting("a", now.Add(wait)) {
			t.Fatalf("failure %d: waiting wrong around its wait of %s", i, wait)
		}
		// Jitter is up to ±50%: compare with the bound, not the last wait.
		if wait <= 0 || wait > 15*time.Second {
			t.Fatalf("failure %d: wait %s", i, wait)
		}
		last = wait
	}
	if last < 5*time.Second {
		t.Errorf("after 12 failures the wait is %s, want near the 10 s bound", last)
	}
	if r.waiting("b", now) {
		t.Error("another backfill waits for a's failures")
	}
}
