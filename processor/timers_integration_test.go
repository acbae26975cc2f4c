package processor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
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
	seg := seedFlips(t, r, r.org, users, segments-1, time.Now().Add(-time.Second))
	reg := r.registry(t)
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

// seedFlips stores users profiles of org whose "updatedAt < now-30d" flips
// at flip, with their timers due then, and the segment of that rule among
// others relative-date segments (each for a tier these users are not in:
// they change nothing for them), and returns the segment's id.
func seedFlips(tb testing.TB, r *rig, org string, users, others int, flip time.Time) string {
	tb.Helper()
	ctx := context.Background()
	ws := make([]membership.UserWrite, 0, users)
	due := make([]membership.Due, 0, users)
	for i := range users {
		u := fmt.Sprintf("u%d", i)
		p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"tier": "gold", "updatedAt": flip.Add(-30 * 24 * time.Hour).UTC().Format(time.RFC3339Nano)}))
		ws = append(ws, membership.UserWrite{OrgID: org, UserID: u, Version: 1, Profile: p})
		due = append(due, membership.Due{OrgID: org, UserID: u, At: flip})
	}
	if _, err := r.users.Write(ctx, ws); err != nil {
		tb.Fatal(err)
	}
	create := func(name string, c ...segment.Criterion) string {
		d, err := r.defs.Create(ctx, segment.Definition{OrgID: org, Name: name, Type: segment.TypeDynamic, Status: segment.StatusReady,
			Criteria: segment.Criteria{Include: c}})
		if err != nil {
			tb.Fatal(err)
		}
		return d.ID
	}
	for i := range others {
		create(fmt.Sprint("tier", i),
			segment.Criterion{Field: "tier", Operator: "equals", Value: fmt.Sprint("t", i), HasValue: true},
			segment.Criterion{Field: "updatedAt", Operator: "<", Value: fmt.Sprintf("now-%dd", 31+i), HasValue: true})
	}
	seg := create("inactive", segment.Criterion{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true})
	if err := membership.NewSchedules(r.rdb).Schedule(ctx, due); err != nil {
		tb.Fatal(err)
	}
	return seg
}

// activeEveryTwoMinutes runs cycles of a user active every two minutes, in
// an "active in the last minute" segment: each cycle a profile event enters
// u1, and a timer round 90 s later takes it out. With committed, each
// round comes once the event's batch is committed and the round can read
// so. It returns the rig and the segment.
func activeEveryTwoMinutes(t *testing.T, cycles int, committed bool) (*rig, string) {
	t.Helper()
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	seg := r.segment(t, "active", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: ">", Value: "now-1m", HasValue: true}}})
	var clock atomic.Int64
	clock.Store(time.Now().Truncate(time.Millisecond).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	r.startWith(t, func(c *processor.Config) { c.Now = now })
	reg := r.registry(t)
	timers := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: now, timerInterval: time.Minute})
	for v := 1; v <= cycles; v++ {
		r.produce(t, fmt.Sprintf(`{"eventId":"e%d","type":"profile.updated","orgId":"%s","userId":"u1","version":%d,"profile":{"updatedAt":"%s"}}`,
			v, r.org, v, now().UTC().Format(time.RFC3339Nano)))
		st := r.waitVersion(t, "u1", int64(v))
		if len(st.Segments) != 1 {
			t.Fatalf("cycle %d: segments %v, want %s", v, st.Segments, seg)
		}
		// The batch stores the user's timer after its write.
		r.waitTimer(t, "u1", now().Add(time.Minute))
		if committed {
			r.waitCommitted(t, int64(v))
			time.Sleep(processor.CommittedRefresh)
		}
		clock.Add(int64(90 * time.Second))
		timers.FireTimers(ctx)
		if in := r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, "u1"), seg).Val(); in {
			t.Fatalf("cycle %d: still active 90 s after the last event", v)
		}
		clock.Add(int64(30 * time.Second))
	}
	return r, seg
}

// TestTimerEntriesDoNotPileUp: a user active every two minutes enters an
// "active in the last minute" segment with each profile event and leaves
// it by timer a minute later. Each exit is a timer's outbox entry; once its
// round has finished and the user's next profile events came, it is
// published and needed by no retry. The user's stored state must not grow
// with every flip of the day (each profile write reads and writes it
// whole).
func TestTimerEntriesDoNotPileUp(t *testing.T) {
	const cycles = 30
	r, _ := activeEveryTwoMinutes(t, cycles, false)
	ctx := context.Background()
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

// TestCommittedStreamChangesNotRepeated: a user active every two minutes
// enters an "active in the last minute" segment with each profile event
// and leaves it by timer a minute later. Each round flips from the stream's
// entry, whose event is committed by then: it does not publish that entry
// again; and the stream's next entry flips from the round's exit, which the
// round marked published: it does not publish that one again either. The
// topic holds each change once.
func TestCommittedStreamChangesNotRepeated(t *testing.T) {
	const cycles = 4
	r, _ := activeEveryTwoMinutes(t, cycles, true)
	readTopic(t, r.brokers, r.membershipT, 2*cycles, time.Minute)
	count := map[string]int{}
	var order []string
	repeated := 0
	for _, m := range readAll(t, r.brokers, r.membershipT) {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, c.Direction()+" "+c.Cause.EventID)
		if count[c.EventID]++; count[c.EventID] > 1 {
			repeated++
		}
	}
	if len(count) != 2*cycles || repeated > 0 {
		t.Errorf("the topic holds %d changes, %d repeats, want %d changes and no repeat: %v", len(count), repeated, 2*cycles, order)
	}
}

// failAfterPublish is a timer round's publisher and users whose reads of
// users fail once the round has published: Redis failing between a round's
// publication and the end of its claims, which then stay, to be retried
// after their lease.
type failAfterPublish struct {
	processor.ChangePublisher
	processor.JobUsers
	published atomic.Bool
}

func (f *failAfterPublish) Publish(ctx context.Context, cs []events.Change) error {
	err := f.ChangePublisher.Publish(ctx, cs)
	if err == nil {
		f.published.Store(true)
	}
	return err
}

func (f *failAfterPublish) ViewUsers(ctx context.Context, org string, users []string, v membership.ViewFields) ([]membership.SegmentView, error) {
	if f.published.Load() {
		return nil, errors.New("read users: connection reset by peer")
	}
	return f.JobUsers.ViewUsers(ctx, org, users, v)
}

// TestRetriedTimerClaimAfterItsPublicationKeepsTheExit: a timer round takes
// u1 out of "active in the last minute" and publishes the exit, then fails
// before it ends its claim (Redis failing), which is retried after its
// lease under the same flip, so with the same cause. Meanwhile a profile
// event brings u1 back in, with a flip due just after that lease. The retry
// takes u1 out again: that exit must reach a consumer that follows the
// topic and drops repeated eventIds, which ends, as Redis does, with u1 out
// of the segment. An exit under the first attempt's cause has the first
// exit's eventId, and is dropped as a repeat.
func TestRetriedTimerClaimAfterItsPublicationKeepsTheExit(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	seg := r.segment(t, "active", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: ">", Value: "now-1m", HasValue: true}}})
	var clock atomic.Int64
	c0 := time.Now().Truncate(time.Second)
	clock.Store(c0.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	r.startWith(t, func(c *processor.Config) { c.Now = now })
	reg := r.registry(t)
	event := func(v int, updatedAt time.Time) string {
		return fmt.Sprintf(`{"eventId":"e%d","type":"profile.updated","orgId":"%s","userId":"u1","version":%d,"profile":{"updatedAt":"%s"}}`,
			v, r.org, v, updatedAt.UTC().Format(time.RFC3339Nano))
	}
	r.produce(t, event(1, c0))
	r.waitVersion(t, "u1", 1)
	r.waitTimer(t, "u1", c0.Add(time.Minute))
	r.waitCommitted(t, 1)

	// The round at c0+90s takes u1 out, publishes, and fails before Done:
	// its claim's lease ends at c0+120s.
	clock.Store(c0.Add(90 * time.Second).UnixNano())
	failing := &failAfterPublish{ChangePublisher: r.publisher(t), JobUsers: r.users}
	r.newJobs(t, jobsOf{pub: failing, users: failing, registry: reg, now: now, timerInterval: time.Minute}).FireTimers(ctx)
	if !failing.published.Load() || r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, "u1"), seg).Val() {
		t.Fatal("the first round did not take u1 out and publish")
	}
	if n := r.rdb.HLen(ctx, membership.ClaimsKey(r.org)).Val(); n != 1 {
		t.Fatalf("%d claims left unfinished, want the failed round's", n)
	}

	// u1 active again at c0+100s, by an event that says so since c0+61s:
	// it flips out at c0+121s, after the claim's lease.
	clock.Store(c0.Add(100 * time.Second).UnixNano())
	r.produce(t, event(2, c0.Add(61*time.Second)))
	r.waitVersion(t, "u1", 2)
	r.waitCommitted(t, 2)
	if !r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, "u1"), seg).Val() {
		t.Fatal("the profile event did not bring u1 back in")
	}

	// The rounds after the lease: the retry of the claim, then the next.
	timers := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: now, timerInterval: time.Minute})
	for _, at := range []time.Duration{122 * time.Second, 123 * time.Second} {
		clock.Store(c0.Add(at).UnixNano())
		timers.FireTimers(ctx)
	}
	if r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, "u1"), seg).Val() {
		t.Fatal("u1 still active after its flip")
	}

	if got := r.followed(t, seg, "u1"); len(got) == 0 || got[len(got)-1] != "exited" {
		t.Errorf("a consumer following the topic ends with u1 in the segment, Redis with u1 out: %v", r.followedCauses(t, seg, "u1"))
	}
}

// cancelAfterPublish publishes, then cancels the round's context: the
// instance got SIGTERM just as the round had published (segmentd's log
// then says "fire timers ... finish N timers: context canceled").
type cancelAfterPublish struct {
	processor.ChangePublisher
	cancel context.CancelFunc
}

func (p cancelAfterPublish) Publish(ctx context.Context, cs []events.Change) error {
	err := p.ChangePublisher.Publish(ctx, cs)
	p.cancel()
	return err
}

// TestOrderlyStopFinishesTheTimerRound: an orderly stop (SIGTERM) that
// comes while a timer round publishes must not leave its claims to fire
// again after their lease, publishing the same changes a second time
// with nothing crashed.
func TestOrderlyStopFinishesTheTimerRound(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	_, _ = r.dueTimers(t, 1, flip)
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, time.Second, log)
	if err := reg.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	now := time.Now()
	r.newJobs(t, jobsOf{pub: cancelAfterPublish{r.publisher(t), cancel}, registry: reg, now: func() time.Time { return now }, timerInterval: time.Minute}).FireTimers(ctx)
	// The instance restarted; the next round after the lease.
	later := now.Add(31 * time.Second)
	r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: func() time.Time { return later }, timerInterval: time.Minute}).FireTimers(briefly(t))

	// Both rounds published before FireTimers returned: a second copy
	// would be on the topic already.
	r.publishedOnce(t, "after an orderly shutdown (nothing crashed)")
}

// slowPublisher holds its first Publish until release is closed, as a
// timer round whose page of amends takes a while before it publishes.
type slowPublisher struct {
	processor.ChangePublisher
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (p *slowPublisher) Publish(ctx context.Context, cs []events.Change) error {
	p.once.Do(func() {
		close(p.started)
		<-p.release
	})
	return p.ChangePublisher.Publish(ctx, cs)
}

// TestTimerEntryAndProfileExitKeepTheirOrder: a timer round enters u0 (its
// compare-and-set is written) and, before the round publishes, u0's profile
// event makes it leave again. The stream publishes its exit at once, after
// the round's entry, which it publishes first; the round's own copy of it
// comes last. A consumer that reads the topic in order and drops repeated
// eventIds must end where the segment's set is; also when the stream holds
// u0's state in its cache (its own last write kept the round's entry).
func TestTimerEntryAndProfileExitKeepTheirOrder(t *testing.T) {
	for name, cached := range map[string]bool{
		"the user read from Redis": false,
		// An event that changes no membership first: the stream writes u0
		// and caches its state, the round's entry in its outbox.
		"the user's state cached": true,
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
			seg, _ := r.dueTimers(t, 1, flip)
			r.start(t)

			log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
			reg := processor.NewRegistry(r.defs, time.Second, log)
			if err := reg.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			pub := &slowPublisher{ChangePublisher: r.publisher(t), started: make(chan struct{}), release: make(chan struct{})}
			done := make(chan struct{})
			go func() {
				defer close(done)
				fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				r.newJobs(t, jobsOf{pub: pub, registry: reg, timerInterval: time.Minute}).FireTimers(fctx)
			}()
			select {
			case <-pub.started: // the round's amend of u0 is written
			case <-time.After(20 * time.Second):
				t.Fatal("the timer round did not reach its publication")
			}
			version := 2
			if cached {
				r.produce(t, fmt.Sprintf(`{"eventId":"e1","type":"profile.updated","orgId":"%s","userId":"u0","version":2,"changes":{"name":"x"}}`, r.org))
				r.waitVersion(t, "u0", 2)
				version = 3
			}
			r.produce(t, fmt.Sprintf(`{"eventId":"e2","type":"profile.updated","orgId":"%s","userId":"u0","version":%d,"changes":{"updatedAt":%q}}`,
				r.org, version, time.Now().UTC().Format(time.RFC3339)))
			r.waitVersion(t, "u0", int64(version))
			readTopic(t, r.brokers, r.membershipT, 1, time.Minute) // the stream's exit is out
			close(pub.release)
			<-done

			got := r.followed(t, seg, "u0")
			member := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val()
			if !slices.Equal(got, []string{"entered", "exited"}) || member {
				t.Errorf("the topic gives u0 %v (each eventId once), and u0 member = %v: want entered then exited, and not a member", got, member)
			}
		})
	}
}

// TestTimerPublishesAnUnpublishedChangeFirst: the stream takes u0 out of
// the segment and has not published the exit yet when a timer round enters
// u0 again on top of that write. The round publishes the stream's exit
// before its entry, so that the stream's own, late copy of the exit is a
// repeat: a consumer that reads the topic in order and drops repeated
// eventIds ends where the segment's set is. Also when the segment is found
// deleted as the round projects: the entry is then not published, and the
// exit is.
func TestTimerPublishesAnUnpublishedChangeFirst(t *testing.T) {
	for name, tt := range map[string]struct {
		deleted bool
		want    []string
	}{
		"segment in place":                 {false, []string{"entered", "exited", "entered"}},
		"segment deleted before the round": {true, []string{"entered", "exited"}},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
			seg, fire := r.dueTimers(t, 1, flip)
			pub := r.publisher(t)
			now := time.Now()
			// The stream's two writes: u0 entered (published), then left (not yet).
			st, err := r.users.Load(ctx, []membership.UserRef{{OrgID: r.org, UserID: "u0"}})
			if err != nil {
				t.Fatal(err)
			}
			rev := st[0].Rev
			streamChange := func(id string, version int64, entered bool, at time.Time) (membership.OutboxEntry, events.Change) {
				e := membership.OutboxEntry{EventID: id, Version: version, Rev: rev + 1, AtMillis: at.UnixMilli(),
					Changes: []membership.OutboxChange{{SegmentID: seg, Entered: entered}}}
				c := events.Change{OrgID: r.org, SegmentID: seg, UserID: "u0", Entered: entered, At: time.UnixMilli(at.UnixMilli()).UTC(),
					Cause: events.Cause{Type: events.CauseProfile, EventID: id, Version: version}}
				return e, c
			}
			for _, step := range []struct {
				id      string
				entered bool
				publish bool
			}{{"e-in", true, true}, {"e-out", false, false}} {
				e, c := streamChange(step.id, rev+1, step.entered, now)
				w := membership.UserWrite{OrgID: r.org, UserID: "u0", ExpectRev: rev, Version: rev + 1, Profile: []byte(st[0].Profile),
					Outbox: []membership.OutboxEntry{e}}
				if step.entered {
					w.Add = []string{seg}
				} else {
					w.Remove = []string{seg}
				}
				if applied, err := r.users.Write(ctx, []membership.UserWrite{w}); err != nil || !applied[0] {
					t.Fatalf("stream write %s: %v %v", step.id, applied, err)
				}
				if _, err := r.users.Project(ctx, []membership.Projection{{Change: c, Rev: rev + 1}}); err != nil {
					t.Fatal(err)
				}
				if step.publish {
					if err := pub.Publish(ctx, []events.Change{c}); err != nil {
						t.Fatal(err)
					}
				}
				rev++
			}
			if tt.deleted {
				// A deletion's first step: no projection puts members back.
				if err := r.rdb.Set(ctx, membership.SegmentDeletedKey(r.org, seg), "1", time.Hour).Err(); err != nil {
					t.Fatal(err)
				}
			}
			fire(pub, now) // the profile says inactive: u0 enters again
			_, late := streamChange("e-out", rev, false, now)
			if err := pub.Publish(ctx, []events.Change{late}); err != nil { // the stream's exit, at last
				t.Fatal(err)
			}
			got := r.followed(t, seg, "u0")
			member := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val()
			if !slices.Equal(got, tt.want) || member != (tt.want[len(tt.want)-1] == "entered") {
				t.Errorf("the topic gives u0 %v (each eventId once), and u0 member = %v: want %v, and the last one's membership", got, member, tt.want)
			}
		})
	}
}

// holdAfterPublish publishes, then holds the round (before its claims are
// finished) until release is closed.
type holdAfterPublish struct {
	processor.ChangePublisher
	once               sync.Once
	published, release chan struct{}
}

func (p *holdAfterPublish) Publish(ctx context.Context, cs []events.Change) error {
	err := p.ChangePublisher.Publish(ctx, cs)
	p.once.Do(func() { close(p.published); <-p.release })
	return err
}

// TestBackfillLeavesALiveTimerRound: a timer round has published u0's flip
// and not yet finished its claim when the segment's criteria change (to
// other relative ones). The new generation's backfill leaves the live
// claim's changes to its round, rather than publish them a second time
// with nothing failed.
func TestBackfillLeavesALiveTimerRound(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	seg, fire := r.dueTimers(t, 1, flip)
	pub := &holdAfterPublish{ChangePublisher: r.publisher(t), published: make(chan struct{}), release: make(chan struct{})}
	done := make(chan struct{})
	go func() { defer close(done); fire(pub, time.Now()) }()
	<-pub.published
	d := r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-29d", HasValue: true}}})
	if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
		t.Fatal(err)
	}
	close(pub.release)
	<-done
	// Everything is published by now: a second copy would be there.
	if ids := r.publishedOnce(t, "with nothing failed"); len(ids) != 1 {
		t.Errorf("%d changes published, want the round's one", len(ids))
	}
}

// followed reads what the membership topic holds as a consumer does (in
// order, each eventId once), and returns user's changes of seg ("entered"
// or "exited").
func (r *rig) followed(t *testing.T, seg, user string) []string {
	t.Helper()
	var got []string
	for _, c := range r.followedChanges(t, seg, user) {
		got = append(got, c.Direction())
	}
	return got
}

// followedCauses is followed with each change's cause eventId ("entered e1").
func (r *rig) followedCauses(t *testing.T, seg, user string) []string {
	t.Helper()
	var got []string
	for _, c := range r.followedChanges(t, seg, user) {
		got = append(got, c.Direction()+" "+c.Cause.EventID)
	}
	return got
}

// followedChanges returns user's changes of seg as a consumer following the
// membership topic sees them: in order, each eventId once.
func (r *rig) followedChanges(t *testing.T, seg, user string) []events.DecodedChange {
	t.Helper()
	var got []events.DecodedChange
	seen := map[string]bool{}
	for _, m := range readAll(t, r.brokers, r.membershipT) {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if c.UserID == user && c.SegmentID == seg && !seen[c.EventID] {
			seen[c.EventID] = true
			got = append(got, c)
		}
	}
	return got
}

// TestTimerRetryAfterNewerProfileChange: a timer round enters u0 (its
// compare-and-set is written) and dies before publishing, as an instance
// killed then. More than racedWindow later, and before the claim's lease
// ends, u0's profile event makes it leave: the stream publishes the
// round's entry (the decision its exit flips from, see precedingChanges),
// then its exit. The retried claim must not publish the round's entry
// after that exit: a consumer that reads the topic in order and drops
// repeated eventIds must see entered then exited, and end where the
// segment's set is. Also when the segment's criteria stop
// being time-relative before the claim is retried (the organisation keeps
// another time-relative segment, so rounds still claim u0, and the entry
// is an orphan's).
func TestTimerRetryAfterNewerProfileChange(t *testing.T) {
	for name, orphan := range map[string]bool{"the segment time-relative": false, "the segment no longer time-relative": true} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			t0 := time.Now().Add(-15 * time.Second).Truncate(time.Millisecond)
			seg, fire := r.dueTimers(t, 1, t0.Add(-time.Minute))
			fire(unreachablePublisher{}, t0) // written, not published: the crash
			if !r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val() {
				t.Fatal("the first round did not enter u0")
			}
			r.start(t)
			r.produce(t, fmt.Sprintf(`{"eventId":"e2","type":"profile.updated","orgId":"%s","userId":"u0","version":2,"changes":{"updatedAt":%q}}`,
				r.org, time.Now().UTC().Format(time.RFC3339)))
			r.waitVersion(t, "u0", 2)
			readTopic(t, r.brokers, r.membershipT, 1, time.Minute) // the stream's exit is out
			retry := t0.Add(31 * time.Second)                      // after the claim's lease
			if !orphan {
				fire(r.publisher(t), retry)
			} else {
				// (Its backfill, which finds the round's entry superseded
				// and leaves it out, has finished.)
				r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{{Field: "name", Operator: "equals", Value: "nobody", HasValue: true}}})
				if _, err := r.defs.Update(ctx, r.org, seg, func(d *segment.Definition) error { d.Status = segment.StatusReady; return nil }); err != nil {
					t.Fatal(err)
				}
				r.segment(t, "ancient", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-3650d", HasValue: true}}})
				reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
				if err := reg.Reload(ctx); err != nil {
					t.Fatal(err)
				}
				r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: func() time.Time { return retry }, timerInterval: time.Minute}).FireTimers(briefly(t))
			}
			got := r.followed(t, seg, "u0")
			member := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val()
			if !slices.Equal(got, []string{"entered", "exited"}) || member {
				t.Errorf("the topic gives u0 %v (each eventId once), and u0 member = %v: want entered (the round's, published by the stream before its exit) then exited, not a member", got, member)
			}
		})
	}
}

// TestUnpublishedTimerChangeIsNotLost: a timer round enters u0 and cannot
// publish (Kafka down); more than racedWindow later another write decides
// the segment again, and the claim's retry, which finds its entry
// superseded, leaves it out. The later writer must have published the
// round's entry before its own change: a consumer that reads the topic in
// order and drops repeated eventIds sees both, in their order. The later
// writer is a backfill of new criteria; or a backfill that cannot publish
// either, retried after the round's retry (which then publishes the
// round's entry first, as its first attempt would have); or a profile
// batch whose instance died before publishing, replayed after the retry.
func TestUnpublishedTimerChangeIsNotLost(t *testing.T) {
	const backfill, failedBackfill, replay = "a backfill", "a backfill that cannot publish either", "a replayed profile batch"
	for _, name := range []string{backfill, failedBackfill, replay} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			t0 := time.Now().Add(-15 * time.Second).Truncate(time.Millisecond)
			seg, fire := r.dueTimers(t, 1, t0.Add(-time.Minute))
			fire(unreachablePublisher{}, t0) // written, not published
			if !r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val() {
				t.Fatal("the first round did not enter u0")
			}
			var d segment.Definition // the backfills' new criteria, which u0 does not meet
			if name != replay {
				d = r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-3650d", HasValue: true}}})
			}
			switch name {
			case backfill:
				if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
					t.Fatal(err)
				}
			case failedBackfill:
				if err := r.newJobs(t, jobsOf{pub: unreachablePublisher{}}).Backfill(briefly(t), r.org, compiled(t, d), 0); err == nil {
					t.Fatal("a backfill with an unreachable membership topic succeeded")
				}
				if r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val() {
					t.Fatal("the backfill's exit was not projected")
				}
			case replay:
				stop := r.startWith(t, unpublished(1))
				r.produce(t, fmt.Sprintf(`{"eventId":"e2","type":"profile.updated","orgId":"%s","userId":"u0","version":2,"changes":{"updatedAt":%q}}`,
					r.org, time.Now().UTC().Format(time.RFC3339)))
				r.waitVersion(t, "u0", 2)
				if !testenv.Eventually(10*time.Second, func() bool {
					return !r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val()
				}) {
					t.Fatal("the exit was not projected")
				}
				stop()
			}
			fire(r.publisher(t), t0.Add(31*time.Second)) // the claim's retry, after its lease
			switch name {
			case failedBackfill:
				if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
					t.Fatal(err)
				}
			case replay:
				r.start(t)
				r.waitCommitted(t, 1)
			}
			got := r.followed(t, seg, "u0")
			member := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val()
			if !slices.Equal(got, []string{"entered", "exited"}) || member {
				t.Errorf("the topic gives u0 %v (each eventId once), and u0 member = %v: want entered then exited, not a member", got, member)
			}
		})
	}
}

// waitTimer polls until user's timer is stored at or after from.
func (r *rig) waitTimer(t *testing.T, user string, from time.Time) {
	t.Helper()
	var (
		at  float64
		err error
	)
	stored := func() bool {
		at, err = r.rdb.ZScore(context.Background(), membership.ScheduleKey(r.org), user).Result()
		return err == nil && int64(at) >= from.UnixMilli()
	}
	if !testenv.Eventually(30*time.Second, stored) {
		t.Fatalf("timer of %s not stored at %s or later within 30 s: %v, %v", user, from, at, err)
	}
}

// TestTimerAfterALongKafkaOutage: the stream takes u0 out of a
// relative-date segment and cannot publish the exit (Kafka failing) for
// longer than membership.ReplayWindow; a timer round of the same instance
// then enters u0 again. The round must publish the stream's exit first:
// the stream's publication, retried once Kafka is back, comes after the
// round's entry otherwise, and a consumer following the topic would end on
// the exit while u0 is a member.
func TestTimerAfterALongKafkaOutage(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	seg, fire := r.dueTimers(t, 1, flip)
	fire(r.publisher(t), time.Now()) // u0 enters, published
	key := membership.SegmentMembersKey(r.org, seg)
	if !r.rdb.SIsMember(ctx, key, "u0").Val() {
		t.Fatal("the first round did not enter u0")
	}
	// The stream's clock runs as long behind as the outage has lasted: its
	// write is that old when the round comes. At its clock u0's new
	// updatedAt is not 30 days old; at the round's it is.
	const outage = 150 * time.Second
	stop := r.startWith(t, func(c *processor.Config) {
		unpublished(1)(c)
		c.Now = func() time.Time { return time.Now().Add(-outage) }
	})
	updatedAt := time.Now().Add(-30*24*time.Hour - time.Second)
	r.produce(t, fmt.Sprintf(`{"eventId":"e2","type":"profile.updated","orgId":"%s","userId":"u0","version":2,"changes":{"updatedAt":%q}}`,
		r.org, updatedAt.UTC().Format(time.RFC3339Nano)))
	r.waitVersion(t, "u0", 2)
	if !testenv.Eventually(30*time.Second, func() bool { return !r.rdb.SIsMember(ctx, key, "u0").Val() }) {
		t.Fatal("the stream's exit was not projected within 30 s")
	}
	// The batch stores its timers beside its publication, after the
	// projection: the round below looks for the one of u0's next flip, due
	// by now (a claim of the first round may have left a later one).
	if !testenv.Eventually(30*time.Second, func() bool {
		at, err := r.rdb.ZScore(ctx, membership.ScheduleKey(r.org), "u0").Result()
		return err == nil && int64(at) <= time.Now().UnixMilli()
	}) {
		t.Fatal("u0's timer for its next flip, due by now, was not stored within 30 s")
	}
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, time.Second, log)
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	round, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: time.Now, timerInterval: time.Minute, processor: r.proc}).FireTimers(round)
	if !r.rdb.SIsMember(ctx, key, "u0").Val() {
		t.Fatal("the second round did not enter u0")
	}
	// Kafka back: the stream publishes its exit at last.
	stop()
	st, err := r.users.Load(ctx, []membership.UserRef{{OrgID: r.org, UserID: "u0"}})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(st[0].Outbox, func(e membership.OutboxEntry) bool { return e.EventID == "e2" })
	if i < 0 {
		t.Fatalf("the stream's entry is not in u0's outbox: %+v", st[0].Outbox)
	}
	if err := r.publisher(t).Publish(ctx, st[0].Outbox[i].Events(membership.UserRef{OrgID: r.org, UserID: "u0"})); err != nil {
		t.Fatal(err)
	}
	got := r.followed(t, seg, "u0")
	if want := []string{"entered", "exited", "entered"}; !slices.Equal(got, want) || !r.rdb.SIsMember(ctx, key, "u0").Val() {
		t.Errorf("the topic gives u0 %v (each eventId once): want %v, ending where the member set is (u0 in it)", got, want)
	}
}

// TestCriteriaChangeDoesNotHoldOtherSegmentsFlips: two relative-date
// segments X and Y, users whose flips into both are due. While a timer
// round runs, X's criteria are changed (a PUT). The round stops at X's
// pass ("changed while a timer round was deciding"), which is as
// documented for X; but Y, whose criteria did not change, must still see
// its users enter within seconds of the flip, at the next rounds, not after
// the 30 s lease of the aborted claims.
func TestCriteriaChangeDoesNotHoldOtherSegmentsFlips(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	now := time.Now()
	x, _ := r.dueTimers(t, 5, now.Add(-time.Second)) // "updatedAt < now-30d", due for u0..u4
	time.Sleep(5 * time.Millisecond)                 // Y's id sorts after X's
	y := r.segment(t, "inactive-too", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-29d", HasValue: true}}})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := processor.NewRegistry(r.defs, time.Second, log)
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	hook := &readHook{Users: r.users, before: func() {
		// A PUT of X's criteria lands while the round decides.
		r.newCriteria(t, x, segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-25d", HasValue: true}}})
	}}
	jobs := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, users: hook, timerInterval: time.Minute})
	// The rounds of the next few seconds (one a second in segmentd).
	for range 5 {
		jobs.FireTimers(ctx)
		time.Sleep(time.Second)
	}
	n, err := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, y)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Errorf("segment Y (criteria unchanged) has %d of the 5 users whose flip passed %s ago; a change of segment X's criteria held them back", n, time.Since(now).Round(time.Second))
	}
}

// TestTimerChangeOfBuildingSegmentPublished: a timer round (for another
// segment's flip) enters u0 in Y, a segment being built, and cannot publish
// the change; whether the claim is retried before or after Y's backfill
// (which finds u0 already entered), the change is published, under one id
// the retry finds again.
func TestTimerChangeOfBuildingSegmentPublished(t *testing.T) {
	for _, retryFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("retryWhileBuilding=%v", retryFirst), func(t *testing.T) { timerChangeOfBuildingSegment(t, retryFirst) })
	}
}

func timerChangeOfBuildingSegment(t *testing.T, retryFirst bool) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	flip := time.Now().Add(-time.Second)
	r.dueTimers(t, 1, flip)
	time.Sleep(5 * time.Millisecond)
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "inactive-too", Type: segment.TypeDynamic, Status: segment.StatusBuilding,
		Criteria: segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-29d", HasValue: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	y := d.ID
	reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	fire := func(pub processor.ChangePublisher, now time.Time) { r.fireRounds(t, reg, pub, now) }
	fire(failFor{r.publisher(t), y}, t0) // Y's change written, not published
	if !r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, y), "u0").Val() {
		t.Fatal("the round did not enter u0 in Y")
	}
	if retryFirst {
		fire(r.publisher(t), t0.Add(31*time.Second)) // the claim's retry, after its lease, Y still building
	}
	if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
		t.Fatal(err)
	}
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if st := reg.Current().Org(r.org).Segments[y].Def.Status; st != segment.StatusReady {
		t.Fatalf("Y %s", st)
	}
	if !retryFirst {
		fire(r.publisher(t), t0.Add(31*time.Second)) // the claim's retry, after its lease
	}
	got := r.followedChanges(t, y, "u0")
	member := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, y), "u0").Val()
	if len(got) == 0 {
		t.Errorf("u0 is a member of Y = %v, but no change of u0 in Y was ever published", member)
	}
	for _, c := range got {
		t.Logf("%s %s", c.Direction(), c.Cause.EventID)
	}
}

// failFor fails every publication that holds a change of seg.
type failFor struct {
	processor.ChangePublisher
	seg string
}

func (p failFor) Publish(ctx context.Context, cs []events.Change) error {
	for _, c := range cs {
		if c.SegmentID == p.seg {
			return errors.New("unreachable")
		}
	}
	return p.ChangePublisher.Publish(ctx, cs)
}

// TestTimerExitDuringBuildAfterRename: Y's backfill entered u0; u0's flip
// out of Y passes, and a name-only change moves Y's updatedAt past the flip
// while Y still builds (its backfill on other pages). The timer round for
// that flip takes u0 out of Y, with the flip's time cause.
func TestTimerExitDuringBuildAfterRename(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	flip := time.Now().Add(3 * time.Second)
	p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"updatedAt": flip.Add(-30 * 24 * time.Hour).UTC().Format(time.RFC3339Nano)}))
	if _, err := r.users.Write(ctx, []membership.UserWrite{{OrgID: r.org, UserID: "u0", Version: 1, Profile: p}}); err != nil {
		t.Fatal(err)
	}
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "active", Type: segment.TypeDynamic, Status: segment.StatusBuilding,
		Criteria: segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: ">", Value: "now-30d", HasValue: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	y := d.ID
	if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
		t.Fatal(err)
	}
	if !r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, y), "u0").Val() {
		t.Fatal("backfill did not enter u0")
	}
	time.Sleep(time.Until(flip) + 500*time.Millisecond)
	// The state of a build that has done u0's page and goes on with others
	// (status building, same generation), then a name-only PUT.
	if _, err := r.defs.Update(ctx, r.org, y, func(d *segment.Definition) error {
		d.Status, d.Name, d.UpdatedAt = segment.StatusBuilding, "renamed", time.Now().UTC()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, timerInterval: time.Minute}).FireTimers(ctx)
	}
	member := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, y), "u0").Val()
	got := r.followedChanges(t, y, "u0")
	for _, c := range got {
		t.Logf("%s %s", c.Direction(), c.Cause.EventID)
	}
	if member {
		t.Errorf("u0 (updatedAt older than 30 d since %s) is still a member of Y after 3 timer rounds", flip.Format(time.StampMilli))
	}
}

// TestTimersLag: segmentd_timers_lag_seconds shows how long ago the
// oldest flip not fired yet came due, and 0 once a later call has fired
// every one. The flips wait either for rounds (2,500 users flip at one
// instant, and one call's rounds take a single claim of 2,000: the interval
// is already over), or for the claims of an instance that took them and
// died: their lease holds them for 30 s, and they count from their flip,
// not from the lease.
func TestTimersLag(t *testing.T) {
	for name, tt := range map[string]struct {
		users       int
		deadClaim   bool          // another instance claims every timer at t0 and dies
		interval    time.Duration // the jobs' TimerInterval
		first, next time.Duration // the two calls' instants, after t0
		want        float64       // the lag after the first call, seconds
	}{
		"left due by the rounds":           {users: 2500, interval: time.Nanosecond, first: 10 * time.Second, next: 10 * time.Second, want: 10},
		"held by a dead instance's claims": {users: 100, deadClaim: true, interval: time.Minute, first: 20 * time.Second, next: 31 * time.Second, want: 20},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
			seg, _ := r.dueTimers(t, tt.users, t0)
			if tt.deadClaim {
				if c, err := membership.NewSchedules(r.rdb).Claim(ctx, r.org, "", t0, 30*time.Second, 2*tt.users); err != nil || len(c) != tt.users {
					t.Fatalf("claimed %d timers, %v", len(c), err)
				}
			}
			reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
			if err := reg.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			metrics := prometheus.NewRegistry()
			now := t0.Add(tt.first)
			jobs := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, metrics: metrics, now: func() time.Time { return now }, timerInterval: tt.interval})

			jobs.FireTimers(ctx)
			if got := gauge(t, metrics, "segmentd_timers_lag_seconds"); got != tt.want {
				t.Errorf("flips due at t0 not all fired %v later: lag = %v s, want %v", tt.first, got, tt.want)
			}
			now = t0.Add(tt.next)
			jobs.FireTimers(ctx)
			if got := gauge(t, metrics, "segmentd_timers_lag_seconds"); got != 0 {
				t.Errorf("after every timer fired, lag = %v s, want 0", got)
			}
			if n := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, seg)).Val(); n != int64(tt.users) {
				t.Errorf("%d members, want all %d users flipped in", n, tt.users)
			}
		})
	}
}

// recordingPublisher publishes through pub and keeps each call's changes.
type recordingPublisher struct {
	pub   processor.ChangePublisher
	mu    sync.Mutex
	calls [][]events.Change
}

func (p *recordingPublisher) Publish(ctx context.Context, cs []events.Change) error {
	if err := p.pub.Publish(ctx, cs); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, slices.Clone(cs))
	return nil
}

// failSecondAmend fails the second Amend call that writes anything.
type failSecondAmend struct {
	processor.JobUsers
	calls atomic.Int32
}

func (f *failSecondAmend) Amend(ctx context.Context, as []membership.Amend) ([]membership.AmendOutcome, error) {
	if len(as) > 0 && f.calls.Add(1) == 2 {
		return nil, errors.New("redis: connection reset")
	}
	return f.JobUsers.Amend(ctx, as)
}

// TestTimerRoundSettlesItsPassesTogether: three users flip into two
// relative-date segments at one instant. The round's two passes publish
// in one call (a call each cost a Kafka produce and two Redis round trips
// per segment, which under a sustained stream made flips seconds late);
// and when the second pass fails, or the round runs out of time in it (a
// slow Redis), what the first wrote is still projected and published by
// the round, as when each pass settled its own writes, not left to the
// claims' retry after their 30 s lease.
func TestTimerRoundSettlesItsPassesTogether(t *testing.T) {
	for name, tc := range map[string]struct {
		wrap func(processor.JobUsers) processor.JobUsers
	}{
		"both passes write":     {},
		"the second pass fails": {wrap: func(u processor.JobUsers) processor.JobUsers { return &failSecondAmend{JobUsers: u} }},
		// The round's default limit: the share kept for settling (2 s)
		// holds a produce on a machine busy with other tests.
		"the round runs out of time in its second pass": {wrap: func(u processor.JobUsers) processor.JobUsers { return &slowSecondAmend{JobUsers: u} }},
		// The passes' deadline is counted back from the round's end, not
		// on from their start: the claim and the read before the passes,
		// as slow as the passes on a slow Redis, would otherwise eat the
		// share kept for settling. A round of 8 s keeps 2 s; the read
		// before the passes takes 3 s.
		"the reads before the passes are slow, and the round runs out of time in its second pass": {
			wrap: func(u processor.JobUsers) processor.JobUsers {
				return &slowReadThenSlowSecondAmend{slowSecondAmend: slowSecondAmend{JobUsers: u}, delay: 3 * time.Second}
			},
		},
	} {
		wrap := tc.wrap
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
			const users = 3
			seg, _ := r.dueTimers(t, users, flip)
			other := r.segment(t, "inactive for 29 days", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-29d", HasValue: true}}})
			reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
			if err := reg.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			pub := &recordingPublisher{pub: r.publisher(t)}
			var ju processor.JobUsers = r.users
			if wrap != nil {
				ju = wrap(r.users)
			}
			j := r.newJobs(t, jobsOf{pub: pub, registry: reg, users: ju, timerInterval: time.Minute})
			j.FireTimers(ctx)
			bySeg := map[string][]string{}
			for _, call := range pub.calls {
				for _, c := range call {
					if c.Entered {
						bySeg[c.SegmentID] = append(bySeg[c.SegmentID], c.UserID)
					}
				}
			}
			if wrap == nil {
				if len(pub.calls) != 1 || len(bySeg[seg]) != users || len(bySeg[other]) != users {
					t.Fatalf("the round published %d times, entering %v: want once, every user into both segments", len(pub.calls), bySeg)
				}
				return
			}
			// Whichever pass came first wrote its segment; the second wrote
			// nothing.
			first := seg
			if len(bySeg[other]) > 0 {
				first = other
			}
			members := testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, first))
			if len(pub.calls) != 1 || len(bySeg[first]) != users || len(bySeg) != 1 || len(members) != users {
				t.Fatalf("the round published %d times, entering %v, and %s holds %v: want the first pass's %d entries projected and published once", len(pub.calls), bySeg, first, members, users)
			}
		})
	}
}

// meetingPublisher holds each organisation's first publication until the
// other organisation's has begun, or wait has passed (then missed is set).
type meetingPublisher struct {
	pub     processor.ChangePublisher
	orgs    [2]string
	arrived [2]chan struct{}
	once    [2]sync.Once
	wait    time.Duration
	missed  atomic.Bool
}

func (p *meetingPublisher) Publish(ctx context.Context, cs []events.Change) error {
	if len(cs) > 0 {
		if i := slices.Index(p.orgs[:], cs[0].OrgID); i >= 0 {
			p.once[i].Do(func() { close(p.arrived[i]) })
			select {
			case <-p.arrived[1-i]:
			case <-time.After(p.wait):
				p.missed.Store(true)
			}
		}
	}
	return p.pub.Publish(ctx, cs)
}

// TestTimerRoundsOfOrganisationsSideBySide: two organisations each with a
// flip due. One organisation's round must not wait for the other's to end
// (their rounds wait on Redis and Kafka most of their time, and one after
// the other they added up to seconds of lateness for every organisation
// under a sustained stream): each one's publication is held until the
// other's has begun, which rounds one after the other never see.
func TestTimerRoundsOfOrganisationsSideBySide(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a, b := newRig(t, rdb), newRig(t, rdb)
	ctx := context.Background()
	flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	segA, _ := a.dueTimers(t, 1, flip)
	segB, _ := b.dueTimers(t, 1, flip)
	reg := processor.NewRegistry(a.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	pub := &meetingPublisher{pub: a.publisher(t), orgs: [2]string{a.org, b.org}, arrived: [2]chan struct{}{make(chan struct{}), make(chan struct{})}, wait: 10 * time.Second}
	a.newJobs(t, jobsOf{pub: pub, registry: reg, timerInterval: time.Minute}).FireTimers(ctx)
	if pub.missed.Load() {
		t.Error("one organisation's round waited for the other's to end")
	}
	for _, r := range []struct {
		rig *rig
		seg string
	}{{a, segA}, {b, segB}} {
		if !r.rig.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.rig.org, r.seg), "u0").Val() {
			t.Errorf("u0 of %s did not enter", r.rig.org)
		}
	}
}

// slowSecondAmend makes the second Amend call that writes anything wait
// until its context ends, as a Redis too slow for the round's time does.
type slowSecondAmend struct {
	processor.JobUsers
	calls atomic.Int32
}

func (f *slowSecondAmend) Amend(ctx context.Context, as []membership.Amend) ([]membership.AmendOutcome, error) {
	if len(as) > 0 && f.calls.Add(1) == 2 {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return f.JobUsers.Amend(ctx, as)
}

// slowReadThenSlowSecondAmend reads the claimed users' segment sets only
// after delay, as a slow Redis does for the read a round makes before its
// passes, and makes the second Amend call that writes anything wait until
// its context ends.
type slowReadThenSlowSecondAmend struct {
	slowSecondAmend
	delay time.Duration
}

func (f *slowReadThenSlowSecondAmend) UserSegmentSets(ctx context.Context, org string, users []string) ([][]string, error) {
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return f.JobUsers.UserSegmentSets(ctx, org, users)
}

// TestRetriedTimerEntryOfChangedSegmentIsPublished: a timer round enters
// u0 and cannot publish (Kafka down). When its claim is retried, u1's flip
// into the segment is due as well, and the segment's criteria change
// (a PUT, to criteria u0 still meets) after the retry read the definitions
// and before its pass writes: the pass stops ("changed while a timer round
// was deciding"). The first round's entry of u0, which the pass found in
// u0's outbox, is a write made before, and must still be published: the
// retry ends u0's claim, after which no round and not the new criteria's
// backfill (it looks for the entries of unfinished claims only) looks for
// it, and a consumer following the topic would never see u0 enter a
// segment whose set holds it.
func TestRetriedTimerEntryOfChangedSegmentIsPublished(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	seg, t0 := r.unpublishedRoundThenAnotherFlip(t)
	reg := r.registry(t)
	// The PUT lands once the retry has read the definitions (reg is not
	// reloaded before the pass asks for the freshest ones).
	d := r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-29d", HasValue: true}}})
	retry := t0.Add(31 * time.Second) // after the first claim's lease
	r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: func() time.Time { return retry }, timerInterval: time.Minute}).FireTimers(ctx)
	if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
		t.Fatal(err)
	}
	got := r.followed(t, seg, "u0")
	member := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val()
	if !slices.Equal(got, []string{"entered"}) || !member {
		t.Errorf("the topic gives u0 %v (each eventId once), and u0 member = %v: want entered (the first round's), a member", got, member)
	}
	if got := r.followed(t, seg, "u1"); !slices.Equal(got, []string{"entered"}) {
		t.Errorf("the topic gives u1 %v, want entered (the backfill's)", got)
	}
}

// slowSupersededRead answers the read of which decisions the segments' sets
// hold only after delay, as a slow Redis does; it gives up when its
// context ends first.
type slowSupersededRead struct {
	processor.JobUsers
	delay time.Duration
}

func (f *slowSupersededRead) ProjectedRevisions(ctx context.Context, cs []events.Change) ([]int64, error) {
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return f.JobUsers.ProjectedRevisions(ctx, cs)
}

// TestTimerRetryKeepsWhatItWroteWhenItsPassesRunOutOfTime: a retried
// claim's pass writes u1's flip, then reads which decisions the segment's
// set holds (to leave out the earlier attempt's superseded changes), and
// that read ends after the passes' share of the round. The write is made:
// it must still be projected and published by the round's settlement, not
// wait for the claims' next retry after their 30 s lease.
func TestTimerRetryKeepsWhatItWroteWhenItsPassesRunOutOfTime(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	seg, t0 := r.unpublishedRoundThenAnotherFlip(t)
	reg := r.registry(t)
	const limit = 6 * time.Second // the passes have 4.5 s of it
	slow := &slowSupersededRead{JobUsers: r.users, delay: limit*3/4 + 200*time.Millisecond}
	retry := t0.Add(31 * time.Second) // after the first claim's lease
	j := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, users: slow, now: func() time.Time { return retry }, timerInterval: time.Minute})
	j.SetRoundLimit(limit)
	j.FireTimers(ctx)
	for _, u := range []string{"u0", "u1"} {
		if !r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), u).Val() {
			t.Errorf("%s is not in the segment's set after the retry round", u)
		}
		if got := r.followed(t, seg, u); !slices.Equal(got, []string{"entered"}) {
			t.Errorf("the topic gives %s %v, want entered", u, got)
		}
	}
}

// unpublishedRoundThenAnotherFlip: u0's flip into a relative-date segment
// is written by a round that cannot publish (Kafka down; its claim stays,
// for a retry after its lease), and u1's flip, not due at that round, is
// due after it. It returns the segment and the round's instant.
func (r *rig) unpublishedRoundThenAnotherFlip(t *testing.T) (seg string, t0 time.Time) {
	t.Helper()
	ctx := context.Background()
	t0 = time.Now().Add(-15 * time.Second).Truncate(time.Millisecond)
	flip := t0.Add(-time.Minute)
	seg, fire := r.dueTimers(t, 2, flip)
	if err := r.rdb.ZAdd(ctx, membership.ScheduleKey(r.org), redis.Z{Score: float64(t0.Add(time.Hour).UnixMilli()), Member: "u1"}).Err(); err != nil {
		t.Fatal(err)
	}
	fire(unreachablePublisher{}, t0)
	if !r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val() {
		t.Fatal("the first round did not enter u0")
	}
	if err := r.rdb.ZAdd(ctx, membership.ScheduleKey(r.org), redis.Z{Score: float64(flip.UnixMilli()), Member: "u1"}).Err(); err != nil {
		t.Fatal(err)
	}
	return seg, t0
}

// TestTimerFlipFiredAgainByAReplayKeepsTheExit: a timer round at the flip
// c0+50s of "older" also decides u1's exit of "active" (its flip at c0+60s
// passed before the round), publishes it and ends its claim. The batch of
// u1's first event, published but never committed (its instance died), is
// then replayed together with a new event that brings u1 back into
// "active" until c0+125s: the replay looks for the user's next flip from
// its first attempt's instant, which is c0+50s again. The round of that
// timer after c0+125s must not take u1 out under the same causes as the
// first round: the exit would carry the first exit's eventId, which a
// consumer drops, and it would follow the topic with u1 still active.
func TestTimerFlipFiredAgainByAReplayKeepsTheExit(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	older := r.segment(t, "older", segment.Criteria{Include: []segment.Criterion{{Field: "createdAt", Operator: "<", Value: "now-1m", HasValue: true}}})
	active := r.segment(t, "active", segment.Criteria{Include: []segment.Criterion{{Field: "lastSeen", Operator: ">", Value: "now-1m", HasValue: true}}})
	var clock atomic.Int64
	c0 := time.Now().Truncate(time.Second)
	clock.Store(c0.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	reg := r.registry(t)
	event := func(v int, lastSeen time.Time) string {
		return fmt.Sprintf(`{"eventId":"e%d","type":"profile.updated","orgId":"%s","userId":"u1","version":%d,"profile":{"createdAt":"%s","lastSeen":"%s"}}`,
			v, r.org, v, c0.Add(-10*time.Second).UTC().Format(time.RFC3339Nano), lastSeen.UTC().Format(time.RFC3339Nano))
	}
	in := func(seg string) bool { return r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, "u1"), seg).Val() }

	// The first instance publishes u1's first event and stores its timer,
	// and never commits it.
	fc := &failingCommits{}
	fc.fail.Store(true)
	stop := r.startWith(t, func(c *processor.Config) {
		c.Now = now
		fc.Fetcher = c.Fetcher
		c.Fetcher = fc
		c.ShutdownTimeout = time.Second
	})
	r.produce(t, event(1, c0))
	r.waitVersion(t, "u1", 1)
	r.waitTimer(t, "u1", c0.Add(50*time.Second))
	stop()
	if in(older) || !in(active) {
		t.Fatal("the first event did not leave u1 active and not older")
	}

	// The round at c0+70s: u1 enters "older" and leaves "active".
	timers := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: now, timerInterval: time.Minute})
	clock.Store(c0.Add(70 * time.Second).UnixNano())
	timers.FireTimers(ctx)
	if !in(older) || in(active) {
		t.Fatal("the round at c0+70s did not flip u1")
	}

	// Another instance replays the first event's batch with a new event:
	// u1 seen at c0+65s, active until c0+125s.
	clock.Store(c0.Add(80 * time.Second).UnixNano())
	r.produce(t, event(2, c0.Add(65*time.Second)))
	r.startWith(t, func(c *processor.Config) { c.Now = now })
	r.waitVersion(t, "u1", 2)
	r.waitCommitted(t, 2)
	if !in(active) {
		t.Fatal("the second event did not bring u1 back into active")
	}

	for _, at := range []time.Duration{130 * time.Second, 131 * time.Second, 132 * time.Second} {
		clock.Store(c0.Add(at).UnixNano())
		timers.FireTimers(ctx)
	}
	if in(active) {
		t.Fatal("u1 still active after its flip")
	}

	if got := r.followed(t, active, "u1"); len(got) == 0 || got[len(got)-1] != "exited" {
		t.Errorf("a consumer following the topic ends with u1 active, Redis with u1 not: %v", r.followedCauses(t, active, "u1"))
	}
}

// TestTimersOfASilentInstanceAreTakenOver: an instance claims a due timer,
// writes its user's entry, cannot publish it and dies: its beat stops
// changing. Another instance, whose rounds saw that beat unchanged for the
// silence (zero here, so two rounds in a row), takes the claim over well
// within its 30 s lease and publishes the entry under the same flip, so
// with the same eventId; while the claimer still beats, even with its
// clock standing still, its claim is left to it until the lease ends; and
// a silence seen across a gap in the other instance's own reads of the
// beats (its Redis failing or slow, which holds every beat back) does not
// count.
func TestTimersOfASilentInstanceAreTakenOver(t *testing.T) {
	for name, tt := range map[string]struct{ beating, readGap bool }{
		"silent": {}, "still beating": {beating: true}, "silent across a gap in the reads": {readGap: true},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			t0 := time.Now().Truncate(time.Millisecond)
			flip := t0.Add(-time.Minute)
			seg, _ := r.dueTimers(t, 1, flip)
			reg := r.registry(t)
			coord := membership.NewCoordinator(r.rdb)
			claimer := testenv.UniqueName(t, "claimer")
			t.Cleanup(func() { _ = coord.Leave(context.Background(), claimer) })
			beat := func() {
				if err := coord.Beat(ctx, claimer, reg.Current().Revision, t0); err != nil {
					t.Fatal(err)
				}
			}
			beat()
			r.fireRoundsAs(t, claimer, reg, unreachablePublisher{}, t0) // written, not published
			if !r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Val() {
				t.Fatal("the claimer's round did not enter u0")
			}
			later := t0.Add(5 * time.Second)
			m := prometheus.NewRegistry()
			j := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, metrics: m, now: func() time.Time { return later }, timerInterval: time.Minute})
			j.SetSilence(0)
			if tt.readGap {
				j.SetBeatReadGap(0) // every read comes after a gap
			}
			j.FireTimers(ctx) // reads the claimer's beat for the first time: not silent yet
			if got := r.followed(t, seg, "u0"); len(got) != 0 {
				t.Fatalf("the topic gives u0 %v before the claimer was seen silent, want nothing", got)
			}
			if tt.beating {
				beat()
			}
			j.FireTimers(ctx)
			got := r.followedCauses(t, seg, "u0")
			takeOver := !tt.beating && !tt.readGap
			var want []string
			if takeOver {
				want = []string{"entered " + fmt.Sprintf("time:%s:%d", seg, flip.UnixMilli())}
			}
			if !slices.Equal(got, want) {
				t.Errorf("the topic gives u0 %v, want %v", got, want)
			}
			if n := counterSum(t, m, "segmentd_timer_claims_taken_over_total"); (n == 1) != takeOver || n > 1 {
				t.Errorf("claims taken over = %v, want %v", n, map[bool]int{true: 1}[takeOver])
			}
		})
	}
}

// TestOrderlyStopKeepsItsTimerClaims: an instance told to stop (SIGTERM)
// finishes the timer round under way, up to 8 s, so that its claims do not
// fire again. It must go on beating until that round ends: another
// instance that sees its beat stand still for 3 s meanwhile takes over the
// claims of the round still running, and publishes its changes a second
// time with nothing crashed.
func TestOrderlyStopKeepsItsTimerClaims(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	_, _ = r.dueTimers(t, 1, flip)
	reg := r.registry(t)
	held := &slowPublisher{ChangePublisher: r.publisher(t), started: make(chan struct{}), release: make(chan struct{})}
	stopping := r.newJobs(t, jobsOf{pub: held, registry: reg})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ran := make(chan struct{})
	go func() { defer close(ran); _ = stopping.Run(ctx) }()
	select {
	case <-held.started: // the round wrote u0's entry and publishes it
	case <-time.After(30 * time.Second):
		t.Fatal("the round did not publish")
	}
	stop()
	// Another instance's rounds go on meanwhile, as each second.
	m := prometheus.NewRegistry()
	other := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, metrics: m, timerInterval: time.Minute})
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		other.FireTimers(context.Background())
	}
	close(held.release) // the stopping instance's round publishes, within its 8 s
	<-ran
	if ids := r.publishedOnce(t, "after an orderly stop (nothing crashed)"); len(ids) != 1 {
		t.Errorf("%d changes published, want the round's one", len(ids))
	}
	if n := counterSum(t, m, "segmentd_timer_claims_taken_over_total"); n != 0 {
		t.Errorf("%v claims of the instance finishing its round taken over", n)
	}
}

// publishedOnce returns publishedIDs, failing the test for each change
// published more than once (when says in what circumstances).
func (r *rig) publishedOnce(t *testing.T, when string) map[string]int {
	t.Helper()
	ids := r.publishedIDs(t)
	for id, n := range ids {
		if n > 1 {
			t.Errorf("change %s published %d times %s", id, n, when)
		}
	}
	return ids
}

// publishedIDs counts the records of each change eventId on the membership
// topic.
func (r *rig) publishedIDs(t *testing.T) map[string]int {
	t.Helper()
	ids := map[string]int{}
	for _, m := range readAll(t, r.brokers, r.membershipT) {
		var c struct{ EventID string }
		if err := json.Unmarshal(m.Value, &c); err != nil {
			t.Fatal(err)
		}
		ids[c.EventID]++
	}
	return ids
}
