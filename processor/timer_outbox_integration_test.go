package processor_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// TestTimerEntriesDoNotPileUp: a user active every two minutes, in an
// "active in the last minute" segment, enters it with each profile event and
// leaves it by timer a minute later. Each exit is a timer's outbox entry;
// once its round has finished and the user's next profile events came, it
// is published and needed by no retry. The user's stored state must not
// grow with every flip of the day (each profile write reads and writes it
// whole).
func TestTimerEntriesDoNotPileUp(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	seg := r.segment(t, "active", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: ">", Value: "now-1m", HasValue: true}}})
	var clock atomic.Int64
	clock.Store(time.Now().Truncate(time.Millisecond).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	r.startWith(t, func(c *processor.Config) { c.Now = now })
	reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	timers := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: now, timerInterval: time.Minute})
	const cycles = 30
	for v := 1; v <= cycles; v++ {
		r.produce(t, fmt.Sprintf(`{"eventId":"e%d","type":"profile.updated","orgId":"%s","userId":"u1","version":%d,"profile":{"updatedAt":"%s"}}`,
			v, r.org, v, now().UTC().Format(time.RFC3339Nano)))
		st := r.waitVersion(t, "u1", int64(v))
		if len(st.Segments) != 1 {
			t.Fatalf("cycle %d: segments %v, want %s", v, st.Segments, seg)
		}
		clock.Add(int64(90 * time.Second))
		timers.FireTimers(ctx)
		if in := r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, "u1"), seg).Val(); in {
			t.Fatalf("cycle %d: still active 90 s after the last event", v)
		}
		clock.Add(int64(30 * time.Second))
	}
	states, err := r.users.Load(ctx, []membership.UserRef{{OrgID: r.org, UserID: "u1"}})
	if err != nil {
		t.Fatal(err)
	}
	timed := 0
	for _, e := range states[0].Outbox {
		if e.CauseType == events.CauseTime {
			timed++
		}
	}
	size := r.rdb.MemoryUsage(ctx, membership.ProfileKey(r.org, "u1")).Val()
	t.Logf("after %d flips: %d timer entries in the outbox, %d outbox entries, profile key %d bytes", cycles, timed, len(states[0].Outbox), size)
	if timed > 10 {
		t.Errorf("%d timer entries kept after %d finished flips and as many profile events, want at most 10", timed, cycles)
	}
}
