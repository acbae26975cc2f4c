package processor_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// failingWrites is a user store whose writes fail while fail is set (Redis
// unreachable).
type failingWrites struct {
	processor.UserStore
	fail atomic.Bool
}

func (f *failingWrites) Write(ctx context.Context, ws []membership.UserWrite) ([]bool, error) {
	if f.fail.Load() {
		return nil, errors.New("dial tcp: connection refused")
	}
	return f.UserStore.Write(ctx, ws)
}

func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// TestLagDuringOutage: while Redis fails and events pile up
// unprocessed, segmentd_consumer_lag_events must show the backlog.
func TestLagDuringOutage(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	reg := prometheus.NewRegistry()
	fw := &failingWrites{}
	r.startWith(t, func(c *processor.Config) {
		c.Metrics = mustMetrics(t, reg)
		fw.UserStore = c.Users
		c.Users = fw
	})
	r.produce(t, `{"eventId":"e0","type":"profile.created","orgId":"`+r.org+`","userId":"u0","version":1,"profile":{"points":1}}`)
	r.waitCommitted(t, 1)
	fw.fail.Store(true)
	var evs []events.ProfileEvent
	for i := range 6000 {
		evs = append(evs, events.ProfileEvent{EventID: fmt.Sprintf("e%d", i+1), Type: events.ProfileCreated, OrgID: r.org,
			UserID: fmt.Sprintf("u%d", i+1), Version: 1, HasVersion: true, Profile: map[string]any{"points": i}})
	}
	r.produceEvents(t, evs)
	// The partitions' ends are asked every 5 s: within a few of those,
	// the backlog shows.
	if !testenv.Eventually(20*time.Second, func() bool { return gauge(t, reg, "segmentd_consumer_lag_events") >= 1000 }) {
		t.Fatalf("segmentd_consumer_lag_events is %v 20 s into an outage with 6000 events unprocessed", gauge(t, reg, "segmentd_consumer_lag_events"))
	}
	fw.fail.Store(false)
	r.waitCommitted(t, 6001)
	if !testenv.Eventually(15*time.Second, func() bool { return gauge(t, reg, "segmentd_consumer_lag_events") == 0 }) {
		t.Fatalf("segmentd_consumer_lag_events is %v once everything is processed", gauge(t, reg, "segmentd_consumer_lag_events"))
	}
}
