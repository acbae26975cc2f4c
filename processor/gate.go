package processor

import (
	"context"
	"fmt"
	"time"
)

// LiveRevisions reports the definitions revision each live instance still
// has effects of in flight (see Processor.AppliedRevision).
type LiveRevisions interface {
	// LiveRevisions returns, by instance id, the definitions revision of each
	// instance that beat within maxAge of now.
	LiveRevisions(ctx context.Context, now time.Time, maxAge time.Duration) (map[string]int64, error)
}

// RevisionGate waits until a definitions change is in force everywhere.
type RevisionGate struct {
	live LiveRevisions
	now  func() time.Time
}

// NewRevisionGate returns a gate over the instances' heartbeats; now is the
// clock (nil is time.Now).
func NewRevisionGate(live LiveRevisions, now func() time.Time) *RevisionGate {
	if now == nil {
		now = time.Now
	}
	return &RevisionGate{live: live, now: now}
}

// gateTimeout bounds Wait: an instance that neither advances nor stops
// beating for this long is stuck, and the caller should fail and retry.
const gateTimeout = 30 * time.Second

// Wait returns once every live instance has no batch left that was
// evaluated with definitions older than rev, so that nothing decided with
// them is written or published after Wait returns. It fails after 30 s.
func (g *RevisionGate) Wait(ctx context.Context, rev int64) error {
	deadline := g.now().Add(gateTimeout)
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		live, err := g.live.LiveRevisions(ctx, g.now(), 3*time.Second)
		if err != nil {
			return err
		}
		behind := 0
		for _, r := range live {
			if r < rev {
				behind++
			}
		}
		if behind == 0 {
			return nil
		}
		if g.now().After(deadline) {
			return fmt.Errorf("%d instances still have work of definitions older than revision %d", behind, rev)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
