package testenv_test

import (
	"testing"
	"time"

	"github.com/segmentd/segmentd/internal/testenv"
)

func TestEventually(t *testing.T) {
	t.Run("true at once", func(t *testing.T) {
		calls := 0
		start := time.Now()
		if !testenv.Eventually(time.Minute, func() bool { calls++; return true }) {
			t.Fatal("Eventually = false for a condition that holds")
		}
		if calls != 1 || time.Since(start) > 10*time.Second {
			t.Errorf("%d checks in %v, want 1 and no wait", calls, time.Since(start))
		}
	})
	t.Run("true after some checks", func(t *testing.T) {
		calls := 0
		if !testenv.Eventually(time.Minute, func() bool { calls++; return calls == 3 }) {
			t.Fatal("Eventually = false for a condition that holds at the third check")
		}
		if calls != 3 {
			t.Errorf("%d checks, want 3", calls)
		}
	})
	t.Run("false after the timeout", func(t *testing.T) {
		const timeout = 100 * time.Millisecond
		calls := 0
		var last time.Time
		start := time.Now()
		if testenv.EventuallyEvery(timeout, 30*time.Millisecond, func() bool { calls++; last = time.Now(); return false }) {
			t.Fatal("EventuallyEvery = true for a condition that never holds")
		}
		// The last check comes after the timeout, not only the last sleep.
		if calls < 2 || last.Sub(start) < timeout {
			t.Errorf("%d checks, the last %v after the start; want checks until past the timeout %v", calls, last.Sub(start), timeout)
		}
	})
}
