package processor_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// resentThenDown is a user store whose first write of user "c" lands but
// answers a conflict (go-redis resent the script after a lost reply: the
// resend finds the revision moved), and whose next load fails (Redis went
// away meanwhile).
type resentThenDown struct {
	processor.UserStore
	mu     sync.Mutex
	writes int
	loads  int
}

func (s *resentThenDown) Write(ctx context.Context, ws []membership.UserWrite) ([]bool, error) {
	applied, err := s.UserStore.Write(ctx, ws)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	if s.writes == 1 && err == nil {
		for i, w := range ws {
			if w.UserID == "c" {
				applied[i] = false
			}
		}
	}
	return applied, err
}

func (s *resentThenDown) Load(ctx context.Context, refs []membership.UserRef) ([]membership.UserState, error) {
	s.mu.Lock()
	s.loads++
	n := s.loads
	s.mu.Unlock()
	if n == 2 {
		return nil, errors.New("dial tcp: connection refused")
	}
	return s.UserStore.Load(ctx, refs)
}

// TestEventsCountedOnceThroughRetries: two events, one batch that
// meets a conflict and then a Redis failure and is retried whole:
// segmentd_profile_events_total must count two events.
func TestEventsCountedOnceThroughRetries(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	reg := prometheus.NewRegistry()
	r.startWith(t, func(c *processor.Config) {
		c.Metrics = mustMetrics(t, reg)
		c.UserCacheBytes = -1
		c.BatchWait = time.Second
		c.Users = &resentThenDown{UserStore: c.Users}
	})
	o := r.org
	r.produce(t,
		`{"eventId":"ea","type":"profile.created","orgId":"`+o+`","userId":"a","version":1,"profile":{"points":2000}}`,
		`{"eventId":"ec","type":"profile.created","orgId":"`+o+`","userId":"c","version":1,"profile":{"points":2000}}`)
	r.waitCommitted(t, 2)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total, byResult := 0.0, map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "segmentd_profile_events_total" {
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
				byResult[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	t.Logf("counted %v", byResult)
	if total != 2 {
		t.Errorf("segmentd_profile_events_total counts %v events for 2: %v", total, byResult)
	}
}
