package processor_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// readCounter counts the users that the jobs' reads of users' views read.
type readCounter struct {
	processor.JobUsers
	read atomic.Int64
}

func (c *readCounter) ViewUsers(ctx context.Context, org string, users []string, f membership.ViewFields) ([]membership.SegmentView, error) {
	c.read.Add(int64(len(users)))
	return c.JobUsers.ViewUsers(ctx, org, users, f)
}

// TestTimerRoundReadsUsersOncePerNeed: an organisation with 30
// relative-date segments and 1,000 users (an import) who all flip into one
// of them at one instant. The round enters every user, and reads each a
// few times, not once per relative-date segment: 100 such segments and
// 10,000 users took a round past the 5 s within which a flip must land.
func TestTimerRoundReadsUsersOncePerNeed(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	const users, segments = 1000, 30
	flip := time.Now().Add(-time.Second)
	var ws []membership.UserWrite
	var due []membership.Due
	for i := range users {
		u := fmt.Sprintf("u%d", i)
		p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"tier": "gold", "updatedAt": flip.Add(-30 * 24 * time.Hour).UTC().Format(time.RFC3339Nano)}))
		ws = append(ws, membership.UserWrite{OrgID: r.org, UserID: u, Version: 1, Profile: p})
		due = append(due, membership.Due{OrgID: r.org, UserID: u, At: flip})
	}
	if _, err := r.users.Write(ctx, ws); err != nil {
		t.Fatal(err)
	}
	// The other segments are relative too, each for another tier: they
	// change nothing for these users.
	for i := 1; i < segments; i++ {
		r.segment(t, fmt.Sprint("tier", i), segment.Criteria{Include: []segment.Criterion{
			{Field: "tier", Operator: "equals", Value: fmt.Sprint("t", i), HasValue: true},
			{Field: "updatedAt", Operator: "<", Value: fmt.Sprintf("now-%dd", 30+i), HasValue: true}}})
	}
	seg := r.segment(t, "inactive", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true}}})
	if err := membership.NewSchedules(r.rdb).Schedule(ctx, due); err != nil {
		t.Fatal(err)
	}
	reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	counter := &readCounter{JobUsers: r.users}
	r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, users: counter}).FireTimers(ctx)
	if n := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, seg)).Val(); n != users {
		t.Fatalf("%d of %d users entered after a round of timers", n, users)
	}
	// One read to find what each user needs, the pass of the segment they
	// enter, the read that schedules their next flips.
	if n := counter.read.Load(); n > 3*users {
		t.Errorf("the round read %d users' views for %d users and %d relative-date segments; want at most %d", n, users, segments, 3*users)
	}
}

// TestTimerRoundSkipsUserWithDamagedSegmentSet: one claimed user whose own
// segment set was written by hand as another type must not hold up the
// round's other users (as before timerPasses, when the pass's read marked
// that user unreadable and went on): u0's flip enters it.
func TestTimerRoundSkipsUserWithDamagedSegmentSet(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	seg, fire := r.dueTimers(t, 2, flip)
	if err := r.rdb.Set(ctx, membership.UserSegmentsKey(r.org, "u1"), "written by hand", 0).Err(); err != nil {
		t.Fatal(err)
	}
	fire(r.publisher(t), time.Now())
	if got := testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, seg)); len(got) != 1 || got[0] != "u0" {
		t.Fatalf("members %v after the round, want u0: one user's damaged segment set held up the organisation's timers", got)
	}
}
