package processor

import (
	"testing"
	"time"
)

// TestEstimatePeriodIsTheInterval replays the refresh loop of Run: a tick
// every estimateTick(interval), each taking the organisation's lease of
// estimateLease(interval) when it is free. The refreshes must come one
// interval apart (within a tenth of a tick), as the README says.
func TestEstimatePeriodIsTheInterval(t *testing.T) {
	for _, interval := range []time.Duration{time.Second, 30 * time.Second, time.Minute, 61 * time.Second, 90 * time.Second, 150 * time.Second, time.Hour, 7 * 24 * time.Hour} {
		tick, lease := estimateTick(interval), estimateLease(interval)
		if tick > time.Minute || tick <= 0 {
			t.Errorf("SEGMENTD_ESTIMATE_INTERVAL=%v: tick %v, want (0, 1m]", interval, tick)
			continue
		}
		var refreshes []time.Duration
		free := time.Duration(0)
		for now := time.Duration(0); now < 10*interval; now += tick {
			if now >= free {
				refreshes = append(refreshes, now)
				free = now + lease
			}
		}
		for i := 1; i < len(refreshes); i++ {
			if gap := refreshes[i] - refreshes[i-1]; gap > interval+tick/10 {
				t.Errorf("SEGMENTD_ESTIMATE_INTERVAL=%v: refreshes %v apart", interval, gap)
				break
			}
		}
	}
}
