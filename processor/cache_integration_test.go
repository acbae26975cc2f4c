package processor_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// TestCachedUserChangedElsewhere has a processor cache a user's state, then
// changes the user behind its back, as another instance holding the
// partition for a while would (a write that moves the revision) and as the
// API does for a static segment (a write that does not). The processor's
// next writes must start from what Redis holds, not from what it cached.
func TestCachedUserChangedElsewhere(t *testing.T) {
	testenv.OnEachRedis(t, testCachedUserChangedElsewhere)
}

func testCachedUserChangedElsewhere(t *testing.T, rdb redis.UniversalClient) {
	r := newRig(t, rdb)
	rich := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	reg := prometheus.NewRegistry()
	r.startWith(t, func(c *processor.Config) { c.Metrics = mustMetrics(t, reg) })
	o, ctx := r.org, context.Background()
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"tier":"silver","points":500}}`)
	r.waitVersion(t, "u1", 1)
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"xp":1}}`)
	st := r.waitVersion(t, "u1", 2)
	if hits := cacheLookups(t, reg, "hit"); hits < 1 {
		t.Fatalf("cache hits = %v after a user's second event, want at least 1", hits)
	}

	// Another instance applies version 3 (points 2000: the user enters).
	other := segment.NewProfile(map[string]any{"tier": "silver", "points": 2000.0, "xp": 1.0})
	applied, err := r.users.Write(ctx, []membership.UserWrite{{OrgID: o, UserID: "u1", ExpectRev: st.Rev, Version: 3,
		Profile: segment.AppendProfile(nil, other), Add: []string{rich}}})
	if err != nil || !applied[0] {
		t.Fatalf("the other instance's write: %v %v", applied, err)
	}
	r.produce(t, `{"eventId":"e4","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":4,"changes":{"xp":2}}`)
	st = r.waitVersion(t, "u1", 4)
	p, ok, err := r.users.Profile(ctx, o, "u1")
	if err != nil || !ok || p.Get("points") != 2000.0 || p.Get("xp") != 2.0 {
		t.Fatalf("profile after the patch = %v %v %v, want the other instance's points 2000 and xp 2", p.Map(), ok, err)
	}
	if !slices.Contains(st.Segments, rich) {
		t.Fatalf("segments after the patch = %q, want %s", st.Segments, rich)
	}

	// Then the API adds the user to a static segment.
	static := "static1"
	if err := membership.NewSets(rdb).Apply(ctx, []events.Change{{OrgID: o, SegmentID: static, UserID: "u1", Entered: true, At: time.Now(),
		Cause: membership.StaticCause(static, 1, []string{"u1"}, nil)}}); err != nil {
		t.Fatal(err)
	}

	r.produce(t, `{"eventId":"e5","type":"profile.deleted","orgId":"`+o+`","userId":"u1","version":5}`)
	r.waitVersion(t, "u1", 5)
	// The deletion's exits are projected after the user's write.
	if !testenv.Eventually(10*time.Second, func() bool { return members(t, rdb, membership.SegmentMembersKey(o, static)) == "" }) {
		t.Fatalf("the deleted user is still in the static segment the processor had not seen")
	}
}

// cacheLookups is the processor's count of cache lookups with result.
func cacheLookups(t testing.TB, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "segmentd_user_cache_lookups_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestEventLatencyObservedOnce checks that the processing time of every
// applied event is observed once, when its outcome is in Redis: at the
// write for an event that changes no membership (while the projection of
// the batches is held up), after the projection for one that does, and not
// at all for a duplicate.
func TestEventLatencyObservedOnce(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	reg := prometheus.NewRegistry()
	held := &heldProjections{Users: r.users, release: make(chan struct{})}
	r.startWith(t, func(c *processor.Config) { c.Metrics, c.Users = mustMetrics(t, reg), held })
	o := r.org
	const name = "segmentd_event_processing_seconds"
	waitCount := func(want uint64) {
		t.Helper()
		if !testenv.Eventually(30*time.Second, func() bool { return snapshotHistogram(t, reg, name).GetSampleCount() >= want }) {
			t.Fatalf("%d events observed within 30 s, want %d", snapshotHistogram(t, reg, name).GetSampleCount(), want)
		}
	}
	r.produce(t,
		`{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"points":2000}}`,
		`{"eventId":"e2","type":"profile.created","orgId":"`+o+`","userId":"u2","version":1,"profile":{"points":10}}`,
		`{"eventId":"e2","type":"profile.created","orgId":"`+o+`","userId":"u2","version":1,"profile":{"points":10}}`,
	)
	waitCount(1)
	if n := snapshotHistogram(t, reg, name).GetSampleCount(); n != 1 {
		t.Fatalf("%d events observed before any projection, want 1 (the one that changed no membership)", n)
	}
	close(held.release)
	waitCount(2)
	// A last event, after which every earlier one has been counted.
	r.produce(t, `{"eventId":"e3","type":"profile.created","orgId":"`+o+`","userId":"u3","version":1,"profile":{"points":10}}`)
	waitCount(3)
	r.waitVersion(t, "u3", 1)
	// An observation too many (the duplicate, or an event observed at the
	// write and again after the projection) would follow within
	// milliseconds; a second leaves room for a slow machine.
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if n := snapshotHistogram(t, reg, name).GetSampleCount(); n != 3 {
			t.Fatalf("%d events observed, want 3 (two that changed no membership, one that did, none for the duplicate)", n)
		}
	}
}

// heldProjections is a user store whose projections wait for release.
type heldProjections struct {
	*membership.Users
	release chan struct{}
}

func (h *heldProjections) Project(ctx context.Context, ps []membership.Projection) (membership.Deletions, error) {
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return h.Users.Project(ctx, ps)
}

// TestRedeliveryNotJudgedByStaleCache: the processor caches a user whose
// outbox holds e1; another instance writes the user since (e1's batch is
// finished there, so its entry goes, and the user leaves the segment). A
// copy of e1 delivered again must be judged by what Redis holds (a late
// version: nothing), not replayed from the cached outbox, which would
// publish e1's entry once more, after the exit, and put the user back in
// the segment's set.
func TestRedeliveryNotJudgedByStaleCache(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	rich := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	r.start(t)
	o, ctx := r.org, context.Background()
	e1 := `{"eventId":"e1","type":"profile.created","orgId":"` + o + `","userId":"u1","version":1,"profile":{"points":2000}}`
	r.produce(t, e1)
	st := r.waitVersion(t, "u1", 1)
	r.waitCommitted(t, 1)
	// Another instance applies version 2 (points 500: the user leaves).
	other := segment.NewProfile(map[string]any{"points": 500.0})
	applied, err := r.users.Write(ctx, []membership.UserWrite{{OrgID: o, UserID: "u1", ExpectRev: st.Rev, Version: 2,
		Profile: segment.AppendProfile(nil, other), Remove: []string{rich}}})
	if err != nil || !applied[0] {
		t.Fatalf("the other instance's write: %v %v", applied, err)
	}
	if _, err := r.users.Project(ctx, []membership.Projection{{Change: events.Change{OrgID: o, SegmentID: rich, UserID: "u1"}, Rev: st.Rev + 1}}); err != nil {
		t.Fatal(err)
	}
	r.produce(t, e1) // delivered again
	r.waitCommitted(t, 2)
	if n := len(readAll(t, r.brokers, r.membershipT)); n != 1 {
		t.Errorf("%d change events published, want e1's entry once", n)
	}
	if g := members(t, r.rdb, membership.SegmentMembersKey(o, rich)); g != "" {
		t.Errorf("members of the segment %q, want none: the user left it", g)
	}
}
