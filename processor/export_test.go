package processor

import "context"

// FireTimers fires the due timers of every organisation once, as Run does
// every TimerInterval.
func (j *Jobs) FireTimers(ctx context.Context) { j.fireTimers(ctx) }
