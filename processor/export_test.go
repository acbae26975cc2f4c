package processor

import (
	"context"
	"time"
)

// FireTimers fires the due timers of every organisation once, as Run does
// every TimerInterval.
func (j *Jobs) FireTimers(ctx context.Context) { j.fireTimers(ctx) }

// SetRoundLimit bounds each timer round at d instead of roundFinishLimit:
// a round whose publisher fails then ends sooner.
func (j *Jobs) SetRoundLimit(d time.Duration) { j.roundLimit = d }

// SetSilence makes the timer claims of another instance whose beat stays
// the same for d taken over, instead of after claimOwnerSilence.
func (j *Jobs) SetSilence(d time.Duration) { j.silence = d }

// SetBeatReadGap makes reads of the beats d apart restart the count of
// every silence, instead of beatReadGap.
func (j *Jobs) SetBeatReadGap(d time.Duration) { j.beatsGap = d }

// FinishDeletions finishes the deletions left undone once, as Run does
// every minute.
func (j *Jobs) FinishDeletions(ctx context.Context) { j.finishDeletions(ctx) }

// RefreshEstimates refreshes the estimated sizes once, as Run does every
// min(EstimateInterval, 1 minute).
func (j *Jobs) RefreshEstimates(ctx context.Context) { j.refreshEstimates(ctx) }

// ObserveLatency records one event's latency, as a batch does once the
// event's outcome is in Redis.
func (m *Metrics) ObserveLatency(occurred, fetched, now time.Time) {
	m.observeLatency(occurred, fetched, now)
}

// CommittedRefresh is how often the jobs read the committed offsets.
const CommittedRefresh = committedRefresh
