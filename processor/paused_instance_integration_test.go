package processor_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// TestPausedInstanceWritesWithOldCriteria: an instance whose process is
// paused (SIGSTOP, docker pause, a VM pause) for more than the revision
// gate's 3 s, with a batch between its definitions snapshot and its write,
// is taken for gone by the gate, and a criteria change's backfill runs
// without it. Resumed, it must evaluate the batch with the new criteria,
// not write what the old ones decide (which no later write would correct
// until the user's next event).
func TestPausedInstanceWritesWithOldCriteria(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": 500.0}))
	if _, err := r.users.Write(ctx, []membership.UserWrite{{OrgID: r.org, UserID: "u0", Version: 1, Profile: p}}); err != nil {
		t.Fatal(err)
	}
	seg := r.segment(t, "pts", atLeast(1000)) // u0 (500) is rightly not a member
	hook := &loadHook{Users: r.users, before: func() {
		// The instance is paused here: it took its definitions snapshot
		// for the batch and beats no more. Meanwhile another instance
		// serves a criteria change and its backfill, once the gate has
		// waited its 3 s for the silent instance.
		time.Sleep(3100 * time.Millisecond)
		r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: "<", Value: 1000.0, HasValue: true}}})
		reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
		cs, rev := r.compiled(t, reg, seg)
		jobs := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg})
		if err := jobs.Backfill(ctx, r.org, cs, rev); err != nil {
			t.Fatal(err)
		}
		r.waitReady(t, seg, 5*time.Second)
	}}
	r.startWith(t, func(c *processor.Config) { c.Users = hook })
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+r.org+`","userId":"u0","version":2,"changes":{"points":1500}}`)
	st := r.waitVersion(t, "u0", 2)
	for _, s := range st.Segments {
		if s == seg {
			t.Errorf("u0 (points 1500) is in segment %s, whose criteria are now points < 1000: the resumed instance wrote with the old criteria", seg)
		}
	}
	r.verifyClean(t)
}

// TestPausedTimerRoundWritesWithOldCriteria: the same for a round of
// timers. Paused after it read the definitions, its instance silent for
// more than 3 s, the round is not waited for by the criteria change's
// backfill; resumed, it must not enter a user whom the new criteria keep
// out.
func TestPausedTimerRoundWritesWithOldCriteria(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	now := time.Now()
	seg, _ := r.dueTimers(t, 1, now.Add(-time.Second)) // u0's "inactive for 30 days" flip is due
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	old := processor.NewRegistry(r.defs, time.Second, log)
	if err := old.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	hook := &readHook{Users: r.users, before: func() {
		// Paused here, with the round's definitions in hand, for longer
		// than the gate waits for a silent instance.
		time.Sleep(3100 * time.Millisecond)
		r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{
			{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true},
			{Field: "points", Operator: ">=", Value: 100.0, HasValue: true},
		}})
		reg := processor.NewRegistry(r.defs, time.Second, log)
		cs, rev := r.compiled(t, reg, seg)
		if err := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg}).Backfill(ctx, r.org, cs, rev); err != nil {
			t.Fatal(err)
		}
		r.waitReady(t, seg, 5*time.Second)
	}}
	timers := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: old, users: hook, timerInterval: time.Minute})
	timers.FireTimers(ctx)
	if in, err := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Result(); err != nil || in {
		t.Errorf("u0 (no points) in segment %s after the timer round: %v (%v); its criteria now need points >= 100", seg, in, err)
	}
	r.verifyClean(t)
}
