package processor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

func testLogWriter() io.Writer {
	if testing.Verbose() {
		return os.Stderr
	}
	return io.Discard
}

// startAll runs a processor and the background jobs, like one segmentd,
// and returns the registry of definitions they share.
func (r *rig) startAll(t *testing.T) *processor.Registry {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, 100*time.Millisecond, log)
	ctx, cancel := context.WithCancel(context.Background())
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	reader := kafkaio.NewGroupReader(r.brokers, r.group, r.profile)
	writer := kafkaio.NewWriter(r.brokers)
	scheds := membership.NewSchedules(r.rdb)
	p := processor.New(processor.Config{
		Fetcher: reader, Producer: kafkaio.NewProducer(writer), Users: r.users, Rules: reg, Scheduler: scheds,
		MembershipTopic: r.membershipT, DLQTopic: r.dlq, BatchSize: 1000, BatchWait: 10 * time.Millisecond, Logger: log,
	})
	jobs, err := processor.NewJobs(processor.JobsConfig{
		InstanceID: testenv.UniqueName(t, "inst"), Definitions: r.defs, Users: r.users, Schedules: scheds,
		Sizes: membership.NewSets(r.rdb), Coordinator: membership.NewCoordinator(r.rdb),
		Publisher: kafkaio.NewPublisher(writer, r.membershipT), Registry: reg, Processor: p,
		EstimateInterval: time.Second, ProgressInterval: time.Millisecond, Registerer: prometheus.NewRegistry(), Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, f := range []func(context.Context) error{reg.Run, p.Run, jobs.Run} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				t.Errorf("run: %v", err)
			}
		}()
	}
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		reader.Close()
		writer.Close()
	})
	return reg
}

func (r *rig) produceEvents(t *testing.T, evs []events.ProfileEvent) {
	t.Helper()
	w := kafkaio.NewWriter(r.brokers)
	defer w.Close()
	for i := 0; i < len(evs); i += 5000 {
		var msgs []kafka.Message
		for _, ev := range evs[i:min(i+5000, len(evs))] {
			v, err := events.EncodeProfileEvent(ev)
			if err != nil {
				t.Fatal(err)
			}
			msgs = append(msgs, kafka.Message{Topic: r.profile, Key: []byte(ev.UserID), Value: v})
		}
		if err := w.WriteMessages(context.Background(), msgs...); err != nil {
			t.Fatal(err)
		}
	}
}

// waitProfiles waits until every user's stored profile has the wanted points.
func (r *rig) waitPoints(t *testing.T, want map[string]int, timeout time.Duration) {
	t.Helper()
	seen := 0
	upToDate := func() bool {
		seen = 0
		err := r.users.ScanProfiles(context.Background(), r.org, func(page []membership.StoredProfile) error {
			for _, sp := range page {
				p, _ := segment.DecodeProfile(sp.Profile)
				if f, ok := p.Get("points").(float64); ok && int(f) == want[sp.UserID] {
					seen++
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return seen == len(want)
	}
	// Each check scans every profile: a slower poll than Eventually's.
	if !testenv.EventuallyEvery(timeout, 250*time.Millisecond, upToDate) {
		t.Fatalf("%d of %d profiles up to date after %s", seen, len(want), timeout)
	}
}

func (r *rig) waitReady(t *testing.T, id string, timeout time.Duration) {
	t.Helper()
	var status segment.Status
	ready := func() bool {
		d, err := r.defs.Get(context.Background(), r.org, id)
		if err != nil {
			t.Fatal(err)
		}
		status = d.Status
		return status == segment.StatusReady
	}
	if !testenv.Eventually(timeout, ready) {
		t.Fatalf("segment %s still %s after %s", id, status, timeout)
	}
}

func (r *rig) verifyClean(t *testing.T) {
	t.Helper()
	diffs, _, err := processor.Verify(context.Background(), r.defs, r.users, membership.NewSets(r.rdb), time.Now(), r.org)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range diffs {
		if i == 10 {
			t.Errorf("… %d differences", len(diffs))
			break
		}
		t.Errorf("verify: %s", d)
	}
}

// TestBackfillWhileEventsArrive stores 50,000 profiles, creates a segment
// while a stream of patches keeps changing points, then changes its
// criteria the same way: each time the membership must equal a
// from-scratch evaluation. Audience counts must equal the evaluator's.
func TestBackfillWhileEventsArrive(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.startAll(t)
	const users = 50000
	points := map[string]int{}
	var seed []events.ProfileEvent
	for i := range users {
		u := fmt.Sprintf("u%d", i)
		points[u] = (i * 7919) % 2000
		seed = append(seed, events.ProfileEvent{EventID: "s" + u, Type: events.ProfileCreated, OrgID: r.org, UserID: u, Version: 1, HasVersion: true,
			Profile: map[string]any{"points": points[u], "tier": []string{"gold", "silver"}[i%2]}})
	}
	r.produceEvents(t, seed)
	r.waitPoints(t, points, 3*time.Minute)

	// Patches keep arriving while the segment is created and backfilled.
	patches := func(round int) []events.ProfileEvent {
		var out []events.ProfileEvent
		for i := 0; i < users; i += 3 {
			u := fmt.Sprintf("u%d", i)
			points[u] = (points[u] + 700*round) % 2000
			out = append(out, events.ProfileEvent{EventID: fmt.Sprintf("p%d-%s", round, u), Type: events.ProfileUpdated, OrgID: r.org, UserID: u,
				Version: int64(1 + round), HasVersion: true, Changes: map[string]any{"points": points[u]}})
		}
		return out
	}
	done := make(chan struct{})
	go func() { defer close(done); r.produceEvents(t, patches(1)) }()
	d, err := r.defs.Create(context.Background(), segment.Definition{OrgID: r.org, Name: "rich", Type: segment.TypeDynamic, Status: segment.StatusBuilding,
		Criteria: segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	// Watch the progress the segment shows while it builds.
	var seen []int64
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			cur, err := r.defs.Get(context.Background(), r.org, d.ID)
			if err != nil || cur.Status != segment.StatusBuilding {
				return
			}
			seen = append(seen, cur.BackfillScanned)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	<-done
	r.waitReady(t, d.ID, 3*time.Minute)
	<-watched
	if len(seen) == 0 || slices.Max(seen) <= 0 || slices.Max(seen) > users || !slices.IsSorted(seen) {
		t.Errorf("progress seen while building: %v; want rising values in (0, %d]", seen, users)
	}
	r.waitPoints(t, points, 3*time.Minute)
	r.verifyClean(t)
	want := len(membersAtLeast(points, 1000))
	if n, err := r.rdb.SCard(context.Background(), membership.SegmentMembersKey(r.org, d.ID)).Result(); err != nil || int(n) != want {
		t.Fatalf("size = %d (%v), want %d", n, err, want)
	}
	// The estimate catches up with the exact size within a few refreshes
	// (one per second here).
	var cur segment.Definition
	caughtUp := func() bool {
		var err error
		if cur, err = r.defs.Get(context.Background(), r.org, d.ID); err != nil {
			t.Fatal(err)
		}
		return cur.EstimatedSize == int64(want) && cur.BackfillScanned == 0
	}
	if !testenv.Eventually(10*time.Second, caughtUp) {
		t.Fatalf("estimatedSize = %d, backfillScanned = %d 10 s after ready; want %d and 0", cur.EstimatedSize, cur.BackfillScanned, want)
	}

	// Change the criteria of the live segment, again under a stream of patches.
	go func() { r.produceEvents(t, patches(2)) }()
	d, err = r.defs.Update(context.Background(), r.org, d.ID, func(d *segment.Definition) error {
		d.Criteria = segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: "<", Value: 500.0, HasValue: true}},
			Exclude: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "gold", HasValue: true}}}
		d.Generation++
		d.Status = segment.StatusBuilding
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // let the registry see "building"
	r.waitReady(t, d.ID, 3*time.Minute)
	r.waitPoints(t, points, 3*time.Minute)
	r.verifyClean(t)

	// The audience count equals the evaluator's, profile by profile.
	aud := processor.NewAudience(r.users, nil)
	crit := segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1500.0, HasValue: true}},
		Exclude: []segment.Criterion{{Field: "tier", Operator: "in", Value: []any{"silver"}, HasValue: true}}}
	res, err := aud.Search(context.Background(), r.org, crit, 5, "")
	if err != nil {
		t.Fatal(err)
	}
	count, page := res.Count, res.UserIDs
	var expect []string
	for i := range users {
		u := fmt.Sprintf("u%d", i)
		if points[u] >= 1500 && i%2 == 0 {
			expect = append(expect, u)
		}
	}
	sort.Strings(expect)
	if int(count) != len(expect) || strings.Join(page, ",") != strings.Join(expect[:5], ",") {
		t.Fatalf("audience = %d %v, want %d %v", count, page, len(expect), expect[:5])
	}
}

// TestRelativeDateFlipsWithoutEvents: users whose updatedAt turns 30 days
// old must enter "updatedAt < now-30d" within 5 s, with cause time, and no
// profile event.
func TestRelativeDateFlipsWithoutEvents(t *testing.T) {
	r := newRig(t, testenv.RedisClusterClient(t))
	r.startAll(t)
	// Created as the API does (building). Its backfill, over no users yet,
	// ends before the users come: their flips are the timers' alone.
	d, err := r.defs.Create(context.Background(), segment.Definition{OrgID: r.org, Name: "inactive", Type: segment.TypeDynamic, Status: segment.StatusBuilding,
		Criteria: segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	id := d.ID
	r.waitReady(t, id, 30*time.Second)
	base := time.Now().Add(-30 * 24 * time.Hour)
	due := map[string]time.Time{}
	var evs []events.ProfileEvent
	for i := range 6 {
		u := fmt.Sprintf("u%d", i)
		// Users 0-4 flip 3-7 s from now; u5 already qualifies.
		at := base.Add(time.Duration(3+i) * time.Second).Truncate(time.Second)
		if i == 5 {
			at = base.Add(-time.Hour)
		}
		due[u] = at.Add(30 * 24 * time.Hour)
		evs = append(evs, events.ProfileEvent{EventID: "c" + u, Type: events.ProfileCreated, OrgID: r.org, UserID: u, Version: 1, HasVersion: true,
			Profile: map[string]any{"updatedAt": at.UTC().Format(time.RFC3339)}})
	}
	r.produceEvents(t, evs)
	got := map[string]bool{}
	for _, m := range readOwn(t, r, 6) {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if c.SegmentID != id || !c.Entered {
			t.Errorf("unexpected change %+v", c)
			continue
		}
		got[c.UserID] = true
		if c.UserID == "u5" {
			if c.Cause.Type != events.CauseProfile && c.Cause.Type != events.CauseSegment {
				t.Errorf("u5 entered with cause %s, want profile or segment", c.Cause.Type)
			}
			continue
		}
		if c.Cause.Type != events.CauseTime {
			t.Errorf("%s entered with cause %s, want time", c.UserID, c.Cause.Type)
		}
		if late := c.At.Sub(due[c.UserID]); late < 0 || late > 5*time.Second {
			t.Errorf("%s entered %s after its criterion flipped, want within 5 s", c.UserID, late)
		}
	}
	if len(got) != 6 {
		t.Fatalf("entered: %v, want all 6", got)
	}
	r.verifyClean(t)
}

// unreachablePublisher is a membership topic whose broker does not answer.
type unreachablePublisher struct{}

// briefly is the context of a job whose change events cannot be
// published: the job retries publishing what it wrote until it ends.
func briefly(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func (unreachablePublisher) Publish(context.Context, []events.Change) error {
	return errors.New("kafka: broker not reachable")
}

// TestBackfillRetryPublishesWhatItWrote runs a backfill whose change events
// cannot be published: the users it amended are members already when it
// runs again. The second attempt must find their changes in the outboxes
// and publish them, so that every member has its entered event.
func TestBackfillRetryPublishesWhatItWrote(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	want := membersAtLeast(r.storePoints(t, 3000), 1000)
	cs := r.buildingSegment(t, atLeast(1000))
	d := cs.Def
	jobs := func(pub processor.ChangePublisher) *processor.Jobs { return r.newJobs(t, jobsOf{pub: pub}) }
	if err := jobs(unreachablePublisher{}).Backfill(briefly(t), r.org, cs, 0); err == nil {
		t.Fatal("backfill with an unreachable membership topic succeeded")
	}
	n, err := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, d.ID)).Result()
	if err != nil || n == 0 {
		t.Fatalf("first attempt amended %d users (%v); the test needs some", n, err)
	}
	if err := jobs(r.publisher(t)).Backfill(ctx, r.org, cs, 0); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, m := range readTopic(t, r.brokers, r.membershipT, len(want), time.Minute) {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if !c.Entered || c.SegmentID != d.ID || c.Cause.EventID != fmt.Sprintf("segment:%s:%d", d.ID, d.Generation) {
			t.Errorf("unexpected change event %+v", c)
		}
		got[c.UserID] = true
	}
	if len(got) != len(want) {
		t.Errorf("entered events for %d users, want %d (the first attempt amended %d)", len(got), len(want), n)
	}
	for u := range want {
		if !got[u] {
			t.Errorf("no entered event for %s", u)
			break
		}
	}
}

// TestJobsPublishThroughFailures: a backfill and a timer round whose
// publisher fails a few times publish what they wrote before they end, in
// place. Leaving it to a later attempt is not enough: a deletion of the
// segment, which waits only for work in progress, would let no later
// attempt come, and remove the members without the exits decided here.
func TestJobsPublishThroughFailures(t *testing.T) {
	t.Run("backfill", func(t *testing.T) {
		r := newRig(t, testenv.RedisClient(t))
		want := membersAtLeast(r.storePoints(t, 3000), 1000)
		cs := r.buildingSegment(t, atLeast(1000))
		pub := failingFirst(r.publisher(t), 3)
		if err := r.newJobs(t, jobsOf{pub: pub}).Backfill(context.Background(), r.org, cs, 0); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, m := range readOwn(t, r, len(want)) {
			c, err := events.DecodeChange(m.Value)
			if err != nil {
				t.Fatal(err)
			}
			got[c.UserID] = c.Entered
		}
		if !maps.Equal(got, want) {
			t.Errorf("entered events for %d users, want the %d members", len(got), len(want))
		}
	})
	t.Run("timers", func(t *testing.T) {
		r := newRig(t, testenv.RedisClient(t))
		t0 := time.Now().Truncate(time.Millisecond)
		const users = 40
		_, fire := r.dueTimers(t, users, t0.Add(-time.Minute))
		fire(failingFirst(r.publisher(t), 2), t0)
		got := map[string]bool{}
		for _, m := range readOwn(t, r, users) {
			c, err := events.DecodeChange(m.Value)
			if err != nil {
				t.Fatal(err)
			}
			got[c.UserID] = c.Entered
		}
		if len(got) != users {
			t.Errorf("entered events for %d users, want %d", len(got), users)
		}
	})
}

// resentAmends applies its first Amend call twice and answers with the
// second's outcomes, as when a reply is lost and the Redis client sends the
// scripts again.
type resentAmends struct {
	*membership.Users
	once sync.Once
}

func (r *resentAmends) Amend(ctx context.Context, as []membership.Amend) ([]membership.AmendOutcome, error) {
	resend := false
	r.once.Do(func() { resend = true })
	out, err := r.Users.Amend(ctx, as)
	if err != nil || !resend {
		return out, err
	}
	return r.Users.Amend(ctx, as)
}

// TestBackfillAmendResent: a backfill's compare-and-set scripts are applied,
// their replies lost, and the scripts sent again, which find the users
// changed since (by themselves). The users read again must have their
// changes projected and published all the same.
func TestBackfillAmendResent(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	want := membersAtLeast(r.storePoints(t, 500), 1000)
	cs := r.buildingSegment(t, atLeast(1000))
	jobs := r.newJobs(t, jobsOf{pub: r.publisher(t), users: &resentAmends{Users: r.users}})
	if err := jobs.Backfill(ctx, r.org, cs, 0); err != nil {
		t.Fatal(err)
	}
	members := testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, cs.Def.ID))
	if len(members) != len(want) {
		t.Errorf("%d members, want %d", len(members), len(want))
	}
	got := map[string]bool{}
	for _, m := range readTopic(t, r.brokers, r.membershipT, len(want), time.Minute) {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		got[c.UserID] = c.Entered
	}
	if len(got) != len(want) {
		t.Errorf("entered events for %d users, want %d", len(got), len(want))
	}
	r.verifyClean(t)
}

// TestTimerRetryPublishesWhatItWrote fires timers whose change events cannot
// be published: the users they amended are members already when the timers
// fire again after their lease. The retry must publish those changes with
// the eventIds of the first attempt, also for a timer a profile event moved
// in between.
func TestTimerRetryPublishesWhatItWrote(t *testing.T) {
	r := newRig(t, testenv.RedisClusterClient(t))
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Millisecond)
	flip := t0.Add(-time.Minute)
	const users = 40
	seg, fire := r.dueTimers(t, users, flip)
	scheds := membership.NewSchedules(r.rdb)
	fire(unreachablePublisher{}, t0)
	amended, err := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, seg)).Result()
	if err != nil || amended != users {
		t.Fatalf("the first attempt amended %d users (%v), want %d", amended, err, users)
	}
	// A profile event moves half of the timers to a flip before the lease
	// ends (its criterion is another segment's, say).
	moved := t0.Add(20 * time.Second)
	var earlier []membership.Due
	for i := 0; i < users; i += 2 {
		earlier = append(earlier, membership.Due{OrgID: r.org, UserID: fmt.Sprintf("u%d", i), At: moved})
	}
	if err := scheds.Schedule(ctx, earlier); err != nil {
		t.Fatal(err)
	}
	fire(r.publisher(t), t0.Add(31*time.Second))
	if got := r.timedEntries(t, users, seg, flip); len(got) != users {
		t.Fatalf("entered events for %d users, want %d", len(got), users)
	}
	if n, err := r.rdb.HLen(ctx, membership.ClaimsKey(r.org)).Result(); err != nil || n != 0 {
		t.Errorf("claim records left: %d, %v; want none", n, err)
	}
}

// TestBackfillPublishesFailedTimerRounds fires timers whose change events
// cannot be published, then changes the segment's criteria to ones without
// a relative date, which no timer round retries: the backfill of the new
// criteria must publish what the timers wrote, with their eventIds.
func TestBackfillPublishesFailedTimerRounds(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Millisecond)
	flip := t0.Add(-time.Minute)
	const users = 3
	seg, fire := r.dueTimers(t, users, flip)
	fire(unreachablePublisher{}, t0)
	if n, err := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, seg)).Result(); err != nil || n != users {
		t.Fatalf("the timers amended %d users (%v), want %d", n, err, users)
	}
	d := r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "exists"}}})
	if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
		t.Fatal(err)
	}
	if got := r.timedEntries(t, users, seg, flip); len(got) != users {
		t.Errorf("entered events for %d users, want %d", len(got), users)
	}
}

// timedEntries reads want of the rig's change events and returns the users
// whose change of seg they hold; each must be an entry caused by the timer
// of the flip at.
func (r *rig) timedEntries(t *testing.T, want int, seg string, at time.Time) map[string]bool {
	t.Helper()
	wantID := fmt.Sprintf("time:%s:%d", seg, at.UnixMilli())
	got := map[string]bool{}
	for _, m := range readOwn(t, r, want) {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if c.SegmentID != seg {
			continue
		}
		if !c.Entered || c.Cause.Type != events.CauseTime || c.Cause.EventID != wantID {
			t.Errorf("change %+v, want an entry with cause %s", c, wantID)
		}
		got[c.UserID] = true
	}
	return got
}

// TestTimerRetryPublishesForSegmentsNoLongerTimed fires timers of two
// relative-date segments whose change events for one cannot be published,
// then changes that segment's criteria to ones without a relative date: the
// timers' retry, which no longer evaluates that segment, must still publish
// what the first attempt wrote for it, with its eventIds. Deleted instead,
// the segment gets nothing back: its deletion answered its members.
func TestTimerRetryPublishesForSegmentsNoLongerTimed(t *testing.T) {
	for name, deleted := range map[string]bool{"criteria changed": false, "deleted": true} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			t0 := time.Now().Truncate(time.Millisecond)
			flip := t0.Add(-time.Minute)
			r.segment(t, "inactive 20 days", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-20d", HasValue: true}}})
			const users = 3
			seg, fire := r.dueTimers(t, users, flip)
			fire(refusingSegment{seg: seg, pub: r.publisher(t)}, t0)
			if n, err := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, seg)).Result(); err != nil || n != users {
				t.Fatalf("the timers amended %d users (%v), want %d", n, err, users)
			}
			if deleted {
				if err := r.defs.Delete(ctx, r.org, seg); err != nil {
					t.Fatal(err)
				}
				if err := r.rdb.Del(ctx, membership.SegmentMembersKey(r.org, seg)).Err(); err != nil {
					t.Fatal(err)
				}
			} else {
				r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "exists"}}})
			}
			reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
			if err := reg.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: func() time.Time { return t0.Add(31 * time.Second) }, timerInterval: time.Minute}).FireTimers(briefly(t))
			want, wantUsers := 2*users, users
			if deleted {
				want, wantUsers = users, 0
			}
			if got := r.timedEntries(t, want, seg, flip); len(got) != wantUsers {
				t.Errorf("entered events of the segment for %d users, want %d", len(got), wantUsers)
			}
			if n, err := r.rdb.Exists(ctx, membership.SegmentMembersKey(r.org, seg)).Result(); err != nil || (deleted && n != 0) {
				t.Errorf("the deleted segment's set: %d, %v; want it gone", n, err)
			}
			if n, err := r.rdb.HLen(ctx, membership.ClaimsKey(r.org)).Result(); err != nil || n != 0 {
				t.Errorf("claim records left: %d, %v; want none", n, err)
			}
		})
	}
}

// refusingSegment fails to publish changes of one segment.
type refusingSegment struct {
	seg string
	pub processor.ChangePublisher
}

func (p refusingSegment) Publish(ctx context.Context, cs []events.Change) error {
	if slices.ContainsFunc(cs, func(c events.Change) bool { return c.SegmentID == p.seg }) {
		return errors.New("kafka: partition not available")
	}
	return p.pub.Publish(ctx, cs)
}

// TestTimerRoundGoesOnPastAChangingUser fires the timers of users one of
// whom is written again before every compare-and-set (its revision moves,
// so its amend never lands): the others' claims must finish, and only that
// user's stay, to be retried after the lease.
func TestTimerRoundGoesOnPastAChangingUser(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Millisecond)
	const users = 20
	seg, _ := r.dueTimers(t, users, t0.Add(-time.Minute))
	reg := r.registry(t)
	busy := changingUser{Users: r.users, rdb: r.rdb, key: membership.ProfileKey(r.org, "u0")}
	r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, users: busy, now: func() time.Time { return t0 }, timerInterval: time.Minute}).FireTimers(briefly(t))
	if n, err := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, seg)).Result(); err != nil || n != users-1 {
		t.Errorf("members: %d, %v; want %d", n, err, users-1)
	}
	claims, err := r.rdb.HKeys(ctx, membership.ClaimsKey(r.org)).Result()
	if err != nil || !slices.Equal(claims, []string{"u0"}) {
		t.Errorf("claims left: %v, %v; want u0's alone", claims, err)
	}
}

// changingUser writes a user (moves its revision) before every Amend.
type changingUser struct {
	*membership.Users
	rdb redis.UniversalClient
	key string
}

func (c changingUser) Amend(ctx context.Context, as []membership.Amend) ([]membership.AmendOutcome, error) {
	if err := c.rdb.HIncrBy(ctx, c.key, "r", 1).Err(); err != nil {
		return nil, err
	}
	return c.Users.Amend(ctx, as)
}

// readOwn reads the membership topic until it holds want change events of
// the rig's organisation, and returns those: jobs fire the timers of every
// organisation in Redis, other tests' too, into the rig's topic.
func readOwn(t *testing.T, r *rig, want int) []kafka.Message {
	t.Helper()
	for n := want; ; n += want {
		msgs := readTopic(t, r.brokers, r.membershipT, n, time.Minute)
		var own []kafka.Message
		for _, m := range msgs {
			if c, err := events.DecodeChange(m.Value); err == nil && c.OrgID == r.org {
				own = append(own, m)
			}
		}
		if len(own) >= want || len(msgs) < n {
			return own
		}
	}
}

// heldPublisher publishes through pub once released; it reports its first
// call on called.
type heldPublisher struct {
	pub     processor.ChangePublisher
	release chan struct{}
	once    sync.Once
	called  chan struct{}
}

func (h *heldPublisher) Publish(ctx context.Context, cs []events.Change) error {
	h.once.Do(func() { close(h.called) })
	select {
	case <-h.release:
	case <-ctx.Done(): // a test that failed while holding it ends
		return ctx.Err()
	}
	return h.pub.Publish(ctx, cs)
}

// TestBackfillStopsWhenSuperseded changes a segment's criteria while its
// backfill is held up, on the same instance: the backfill of the old
// criteria must not run beside the new one nor write after it, and the
// membership must end as the new criteria give.
func TestBackfillStopsWhenSuperseded(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	const users = 20000
	r.storePoints(t, users)
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "rich", Type: segment.TypeDynamic, Criteria: atLeast(1000), Status: segment.StatusBuilding})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, time.Second, log)
	compiled := func() (*processor.CompiledSegment, int64) { return r.compiled(t, reg, d.ID) }
	instance := testenv.UniqueName(t, "inst")
	jobs := func(pub processor.ChangePublisher) *processor.Jobs {
		return r.newJobs(t, jobsOf{instance: instance, pub: pub, registry: reg})
	}
	held := &heldPublisher{pub: r.publisher(t), release: make(chan struct{}), called: make(chan struct{})}
	old, oldRev := compiled()
	oldDone := make(chan error, 1)
	go func() { oldDone <- jobs(held).Backfill(ctx, r.org, old, oldRev) }()
	<-held.called

	r.newCriteria(t, d.ID, atLeast(1500))
	cur, curRev := compiled()
	ready := func() bool {
		got, err := r.defs.Get(ctx, r.org, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.Status == segment.StatusReady
	}
	// The new generation's backfill, retried as the jobs do, gets its turn
	// only when the old one has stopped; the old one is held up for 3 s.
	newDone := make(chan error, 1)
	go func() {
		j := jobs(r.publisher(t))
		for deadline := time.Now().Add(time.Minute); !ready(); time.Sleep(100 * time.Millisecond) {
			if err := j.Backfill(ctx, r.org, cur, curRev); err != nil || time.Now().After(deadline) {
				newDone <- fmt.Errorf("backfill of the new criteria: %v", err)
				return
			}
		}
		newDone <- nil
	}()
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		if ready() {
			t.Fatal("the new criteria were built while the old ones' backfill still ran")
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(held.release)
	if err := <-oldDone; err == nil {
		t.Error("the backfill of the old criteria ran to its end after they changed")
	}
	if err := <-newDone; err != nil {
		t.Fatal(err)
	}
	r.verifyClean(t)
	n, err := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, d.ID)).Result()
	if err != nil || n != users/4 {
		t.Errorf("%d members (%v), want %d", n, err, users/4)
	}
}

// switchingPublisher publishes its first n calls through pub and fails
// every later one, or, with failFirst, the other way round.
type switchingPublisher struct {
	pub       processor.ChangePublisher
	failFirst bool
	mu        sync.Mutex
	n         int
}

// failingFirst fails its first n calls and publishes every later one.
func failingFirst(pub processor.ChangePublisher, n int) *switchingPublisher {
	return &switchingPublisher{pub: pub, failFirst: true, n: n}
}

// failingAfter publishes its first n calls and fails every later one.
func failingAfter(pub processor.ChangePublisher, n int) *switchingPublisher {
	return &switchingPublisher{pub: pub, n: n}
}

func (f *switchingPublisher) Publish(ctx context.Context, cs []events.Change) error {
	f.mu.Lock()
	fail := (f.n > 0) == f.failFirst
	f.n--
	f.mu.Unlock()
	if fail {
		return errors.New("kafka: broker not reachable")
	}
	return f.pub.Publish(ctx, cs)
}

// TestSupersededBackfillKeepsOlderGenerations: generation 1's backfill
// leaves changes unpublished in users its successor's backfill never
// reaches (generation 2 is stopped after a few pages by new criteria), so
// generation 3's backfill must still look for generation 1's changes.
func TestSupersededBackfillKeepsOlderGenerations(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	points := r.storePoints(t, 20000)
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "rich", Type: segment.TypeDynamic, Criteria: atLeast(1000), Status: segment.StatusBuilding})
	if err != nil {
		t.Fatal(err)
	}
	reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
	compiled := func() (*processor.CompiledSegment, int64) { return r.compiled(t, reg, d.ID) }
	jobs := func(pub processor.ChangePublisher) *processor.Jobs {
		return r.newJobs(t, jobsOf{pub: pub, registry: reg})
	}
	// Generation 1 publishes its first pages, then no more.
	g1, rev := compiled()
	if err := jobs(failingAfter(r.publisher(t), 8)).Backfill(briefly(t), r.org, g1, rev); err == nil {
		t.Fatal("generation 1's backfill succeeded with a failing membership topic")
	}
	r.newCriteria(t, d.ID, atLeast(1500))
	g2, rev := compiled()
	held := &heldPublisher{pub: r.publisher(t), release: make(chan struct{}), called: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- jobs(held).Backfill(ctx, r.org, g2, rev) }()
	<-held.called
	r.newCriteria(t, d.ID, atLeast(1200))
	g3, rev := compiled()
	close(held.release)
	if err := <-done; err == nil {
		t.Fatal("generation 2's backfill ran to its end after the criteria changed")
	}
	if err := jobs(r.publisher(t)).Backfill(ctx, r.org, g3, rev); err != nil {
		t.Fatal(err)
	}
	r.wantReplayAtLeast(t, points, 1200)
}

// failingProjections are users whose projections fail: a backfill writes
// its changes and stops before they reach the member set, as a crash would.
type failingProjections struct{ *membership.Users }

func (failingProjections) Project(context.Context, []membership.Projection) (membership.Deletions, error) {
	return nil, errors.New("projection refused")
}

// beginHook runs hook once, after the first BeginBackfill of an attempt
// that is not its generation's first.
type beginHook struct {
	processor.JobDefinitions
	hook func()
}

func (h *beginHook) BeginBackfill(ctx context.Context, org, id string, generation int64) (bool, []int64, error) {
	first, unfinished, err := h.JobDefinitions.BeginBackfill(ctx, org, id, generation)
	if !first && h.hook != nil {
		h.hook()
		h.hook = nil
	}
	return first, unfinished, err
}

// TestSupersededRetryKeepsItsGeneration: a generation's first attempt
// writes changes it cannot publish (or project); its retry is superseded
// by a criteria change before it reaches them. The retry must leave its
// generation recorded, so that the next generation's backfill looks for
// those changes: their events are published and the member set is right.
func TestSupersededRetryKeepsItsGeneration(t *testing.T) {
	for name, firstOf := range map[string]func(t *testing.T, r *rig) jobsOf{
		"unpublished": func(*testing.T, *rig) jobsOf { return jobsOf{pub: unreachablePublisher{}} },
		"unprojected": func(t *testing.T, r *rig) jobsOf {
			return jobsOf{pub: r.publisher(t), users: failingProjections{r.users}}
		},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			points := r.storePoints(t, 3000)
			d := r.buildingSegment(t, atLeast(1000)).Def
			reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
			compiled := func() (*processor.CompiledSegment, int64) { return r.compiled(t, reg, d.ID) }
			g1, rev := compiled()
			first := firstOf(t, r)
			first.registry = reg
			if err := r.newJobs(t, first).Backfill(briefly(t), r.org, g1, rev); err == nil {
				t.Fatal("the first attempt succeeded")
			}
			retry := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg,
				defs: &beginHook{JobDefinitions: r.defs, hook: func() {
					r.newCriteria(t, d.ID, atLeast(900))
					if err := reg.Reload(ctx); err != nil {
						t.Error(err)
					}
				}}})
			if err := retry.Backfill(ctx, r.org, g1, rev); err == nil {
				t.Fatal("the superseded retry ran to its end")
			}
			g2, rev := compiled()
			if err := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg}).Backfill(ctx, r.org, g2, rev); err != nil {
				t.Fatal(err)
			}
			r.wantReplayAtLeast(t, points, 900)
			r.verifyClean(t)
		})
	}
}

// TestDeleteWhileBackfilling deletes a segment, as the API does, while its
// backfill is held up: the deletion's revision gate must wait for the
// backfill to stop, so that nothing of the segment is left afterwards.
func TestDeleteWhileBackfilling(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ids := slices.Collect(maps.Keys(r.storePoints(t, 20000)))
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, 100*time.Millisecond, log)
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	coord := membership.NewCoordinator(r.rdb)
	held := &heldPublisher{pub: r.publisher(t), release: make(chan struct{}), called: make(chan struct{})}
	jobs := r.newJobs(t, jobsOf{pub: held, registry: reg})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, run := range []func(context.Context) error{reg.Run, jobs.Run} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = run(ctx) }()
	}
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "rich", Type: segment.TypeDynamic, Status: segment.StatusBuilding,
		Criteria: atLeast(1000)})
	if err != nil {
		t.Fatal(err)
	}
	<-held.called

	if _, err := r.defs.MarkDeleting(ctx, r.org, d.ID); err != nil {
		t.Fatal(err)
	}
	rev, err := r.defs.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan error, 1)
	go func() { gate <- processor.NewRevisionGate(coord, nil).Wait(ctx, rev) }()
	select {
	case err := <-gate:
		t.Fatalf("the deletion's revision gate opened (%v) while the backfill was held up", err)
	case <-time.After(2 * time.Second):
	}
	close(held.release)
	if err := <-gate; err != nil {
		t.Fatal(err)
	}
	sets := membership.NewSets(r.rdb)
	if _, err := sets.DeleteSegment(ctx, r.org, d.ID, time.Now(), held.Publish); err != nil {
		t.Fatal(err)
	}
	if err := r.defs.Delete(ctx, r.org, d.ID); err != nil {
		t.Fatal(err)
	}
	// Anything the backfill still wrote would show now.
	time.Sleep(time.Second)
	if n, err := r.rdb.Exists(ctx, membership.SegmentMembersKey(r.org, d.ID)).Result(); err != nil || n != 0 {
		t.Errorf("the deleted segment's member set exists (%d, %v)", n, err)
	}
	segs, err := r.users.UserSegmentSets(ctx, r.org, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range segs {
		if slices.Contains(s, d.ID) {
			t.Fatalf("user %s still has the deleted segment", ids[i])
		}
	}
}

// TestBackfillRetrySchedulesPassedFlip: a backfill lets a user into an
// "active in the last 30 days" segment and cannot publish; its retry comes
// after the user's flip out, finds the entry and publishes it. The retry
// must still schedule that flip (past, it fires at the next round), or the
// user, who sends no event, would stay a member for good.
func TestBackfillRetrySchedulesPassedFlip(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Millisecond)
	flip := t0.Add(10 * time.Second)
	p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"updatedAt": flip.Add(-30 * 24 * time.Hour).UTC().Format(time.RFC3339Nano)}))
	if _, err := r.users.Write(ctx, []membership.UserWrite{{OrgID: r.org, UserID: "u1", Version: 1, Profile: p}}); err != nil {
		t.Fatal(err)
	}
	cs := r.buildingSegment(t, segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: ">", Value: "now-30d", HasValue: true}}})
	at := func(tm time.Time) func() time.Time { return func() time.Time { return tm } }
	if err := r.newJobs(t, jobsOf{pub: unreachablePublisher{}, now: at(t0)}).Backfill(briefly(t), r.org, cs, 0); err == nil {
		t.Fatal("backfill with an unreachable membership topic succeeded")
	}
	later := t0.Add(time.Minute)
	if err := r.newJobs(t, jobsOf{pub: r.publisher(t), now: at(later)}).Backfill(ctx, r.org, cs, 0); err != nil {
		t.Fatal(err)
	}
	reg := r.registry(t)
	r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: at(later), timerInterval: time.Minute}).FireTimers(ctx)
	if in, err := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, cs.Def.ID), "u1").Result(); err != nil || in {
		t.Errorf("u1 is a member (%v) a minute after its flip out", err)
	}
}

// TestTimerRetrySchedulesPassedFlip: a timer lets a user into an
// "inactive for 30 to 60 days" segment and cannot publish; its retry comes
// after the user's flip out at 60 days, finds the entry and publishes it.
// The retry must still keep that flip (past, it fires at the next round),
// or the user, who sends no event, would stay a member for good.
func TestTimerRetrySchedulesPassedFlip(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Millisecond)
	updated := t0.Add(-30 * 24 * time.Hour)
	p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"updatedAt": updated.UTC().Format(time.RFC3339Nano)}))
	if _, err := r.users.Write(ctx, []membership.UserWrite{{OrgID: r.org, UserID: "u1", Version: 1, Profile: p}}); err != nil {
		t.Fatal(err)
	}
	seg := r.segment(t, "lapsing", segment.Criteria{Include: []segment.Criterion{
		{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true},
		{Field: "updatedAt", Operator: ">=", Value: "now-60d", HasValue: true},
	}})
	if err := membership.NewSchedules(r.rdb).Schedule(ctx, []membership.Due{{OrgID: r.org, UserID: "u1", At: t0}}); err != nil {
		t.Fatal(err)
	}
	reg := r.registry(t)
	fire := func(pub processor.ChangePublisher, now time.Time) { r.fireRounds(t, reg, pub, now) }
	fire(unreachablePublisher{}, t0.Add(time.Second))
	if in := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u1").Val(); !in {
		t.Fatal("the first attempt did not let u1 in; the test needs it")
	}
	later := updated.Add(60*24*time.Hour + time.Minute)
	fire(r.publisher(t), later) // the retry, after the lease and after the flip out
	fire(r.publisher(t), later) // the round the flip it kept is due in
	if in := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u1").Val(); in {
		t.Error("u1 is a member a minute after its flip out at 60 days")
	}
}

// dueTimers stores n users who became inactive for 30 days at flip, with
// their timers due then, and an "inactive" segment (ready) that they are
// not members of yet; fire runs one timer round of a new instance at now.
func (r *rig) dueTimers(t *testing.T, n int, flip time.Time) (seg string, fire func(pub processor.ChangePublisher, now time.Time)) {
	t.Helper()
	ctx := context.Background()
	var ws []membership.UserWrite
	var due []membership.Due
	for i := range n {
		u := fmt.Sprintf("u%d", i)
		p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"updatedAt": flip.Add(-30 * 24 * time.Hour).UTC().Format(time.RFC3339Nano)}))
		ws = append(ws, membership.UserWrite{OrgID: r.org, UserID: u, Version: 1, Profile: p})
		due = append(due, membership.Due{OrgID: r.org, UserID: u, At: flip})
	}
	if _, err := r.users.Write(ctx, ws); err != nil {
		t.Fatal(err)
	}
	seg = r.segment(t, "inactive", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true}}})
	scheds := membership.NewSchedules(r.rdb)
	if err := scheds.Schedule(ctx, due); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, time.Second, log)
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	return seg, func(pub processor.ChangePublisher, now time.Time) {
		// Rounds go on until no timer is left due, however slow the machine
		// (the default stops them after a second, for the next tick).
		r.fireRounds(t, reg, pub, now)
	}
}

// fireRounds fires the due timers at now with reg's definitions, through
// pub. A publisher that fails makes a round retry until its context ends:
// it ends 2 s after the first failure, and the round, which goes on after
// its instance is told to stop, 4 s after it began, when pub is one that
// fails (8 s otherwise).
func (r *rig) fireRounds(t *testing.T, reg *processor.Registry, pub processor.ChangePublisher, now time.Time) {
	t.Helper()
	r.fireRoundsAs(t, "", reg, pub, now)
}

// fireRoundsAs is fireRounds by the instance named instance (empty: one of
// its own).
func (r *rig) fireRoundsAs(t *testing.T, instance string, reg *processor.Registry, pub processor.ChangePublisher, now time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cut := &cutOnFailure{ChangePublisher: pub, cancel: cancel}
	j := r.newJobs(t, jobsOf{instance: instance, pub: cut, registry: reg, now: func() time.Time { return now }, timerInterval: time.Minute})
	switch pub.(type) {
	case unreachablePublisher, failFor, refusingSegment:
		j.SetRoundLimit(4 * time.Second)
	}
	j.FireTimers(ctx)
}

// cutOnFailure calls cancel 2 s after its publisher first fails.
type cutOnFailure struct {
	processor.ChangePublisher
	cancel func()
	once   sync.Once
}

func (c *cutOnFailure) Publish(ctx context.Context, cs []events.Change) error {
	err := c.ChangePublisher.Publish(ctx, cs)
	if err != nil {
		c.once.Do(func() { time.AfterFunc(2*time.Second, c.cancel) })
	}
	return err
}

// readHook runs before its first ViewUsers call reads, once.
type readHook struct {
	*membership.Users
	once   sync.Once
	before func()
}

func (h *readHook) ViewUsers(ctx context.Context, org string, users []string, f membership.ViewFields) ([]membership.SegmentView, error) {
	h.once.Do(h.before)
	return h.Users.ViewUsers(ctx, org, users, f)
}

// TestBackfillAfterTimerFired: a user's flip comes while the backfill of
// new criteria runs, and a timer enters the user before the backfill reads
// it. The backfill must not take the user out again by applying the rule
// at the instant it began, and the segment must end with the user in.
func TestBackfillAfterTimerFired(t *testing.T) {
	r := newRig(t, testenv.RedisClusterClient(t))
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Millisecond)
	flip := t0.Add(2 * time.Second)
	var clock atomic.Int64
	clock.Store(t0.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	seg, _ := r.dueTimers(t, 1, flip)
	r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true}}})
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, time.Second, log)
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	cs := reg.Current().Org(r.org).Segments[seg]
	if cs == nil || cs.Def.Generation != 2 {
		t.Fatalf("segment %s not in the definitions as generation 2: %+v", seg, cs)
	}
	pub := r.publisher(t)
	timers := r.newJobs(t, jobsOf{pub: pub, registry: reg, now: now, timerInterval: time.Minute})
	member := func() bool {
		in, err := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Result()
		if err != nil {
			t.Fatal(err)
		}
		return in
	}
	hook := &readHook{Users: r.users, before: func() {
		clock.Store(flip.Add(time.Second).UnixNano())
		timers.FireTimers(ctx)
		if !member() {
			t.Error("the timer did not enter the user")
		}
	}}
	backfill := r.newJobs(t, jobsOf{pub: pub, registry: reg, now: now, users: hook})
	if err := backfill.Backfill(ctx, r.org, cs, 0); err != nil {
		t.Fatal(err)
	}
	if !member() {
		t.Error("the backfill took out a user whom the rule holds in since the flip")
	}
	clock.Store(flip.Add(10 * time.Second).UnixNano())
	timers.FireTimers(ctx)
	if !member() {
		t.Fatal("the user is out of the segment after the timers fired again")
	}
	if in, err := r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, "u0"), seg).Result(); err != nil || !in {
		t.Errorf("user's own set holds the segment: %v (%v), want true", in, err)
	}
}

// loadHook runs before its first Load call reads, once.
type loadHook struct {
	*membership.Users
	once   sync.Once
	before func()
}

func (h *loadHook) Load(ctx context.Context, refs []membership.UserRef) ([]membership.UserState, error) {
	h.once.Do(h.before)
	return h.Users.Load(ctx, refs)
}

// TestEventAfterTimerFired: a user's flip comes while a batch of the
// stream is under way, and a timer enters the user before the batch reads
// it. The batch, whose event leaves the date as it was, must leave the
// user in: the rule applies at an instant after the read.
func TestEventAfterTimerFired(t *testing.T) {
	r := newRig(t, testenv.RedisClusterClient(t))
	ctx := context.Background()
	t0 := time.Now().Truncate(time.Millisecond)
	flip := t0.Add(2 * time.Second)
	var clock atomic.Int64
	clock.Store(t0.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": 1.0, "updatedAt": flip.Add(-30 * 24 * time.Hour).UTC().Format(time.RFC3339Nano)}))
	if _, err := r.users.Write(ctx, []membership.UserWrite{{OrgID: r.org, UserID: "u0", Version: 1, Profile: p}}); err != nil {
		t.Fatal(err)
	}
	seg := r.segment(t, "inactive", segment.Criteria{Include: []segment.Criterion{
		{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true},
		{Field: "points", Operator: ">=", Value: 0.0, HasValue: true},
	}})
	if err := membership.NewSchedules(r.rdb).Schedule(ctx, []membership.Due{{OrgID: r.org, UserID: "u0", At: flip}}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, time.Second, log)
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	timers := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, now: now, timerInterval: time.Minute})
	hook := &loadHook{Users: r.users, before: func() {
		clock.Store(flip.Add(time.Second).UnixNano())
		timers.FireTimers(ctx)
	}}
	r.startWith(t, func(c *processor.Config) { c.Users, c.Now = hook, now })
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+r.org+`","userId":"u0","version":2,"changes":{"points":2}}`)
	st := r.waitVersion(t, "u0", 2)
	if !slices.Contains(st.Segments, seg) {
		t.Errorf("user's segments after the event: %v, want %s (entered by the timer, and the rule still holds)", st.Segments, seg)
	}
}

// TestManyTimersAtOneInstant: more users than one claim takes flip at the
// same instant; one round of timers must fire them all.
func TestManyTimersAtOneInstant(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	now := time.Now()
	const users = 5000
	seg, fire := r.dueTimers(t, users, now.Add(-time.Second))
	fire(r.publisher(t), now)
	if n, err := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, seg)).Result(); err != nil || n != users {
		t.Fatalf("%d members after one round of timers (%v), want %d", n, err, users)
	}
	if n, err := r.rdb.ZCard(ctx, membership.ScheduleKey(r.org)).Result(); err != nil || n != 0 {
		t.Errorf("%d timers left (%v), want none: no further flip", n, err)
	}
}

// TestNewCriteriaAfterUnfinishedBackfill runs a backfill whose change events
// cannot be published, then changes the criteria: the new generation's
// backfill, whose first attempt cannot publish either, must on its retry
// publish what both wrote, so that replaying the membership topic gives
// exactly the segment's members.
func TestNewCriteriaAfterUnfinishedBackfill(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	points := r.storePoints(t, 3000)
	cs := r.buildingSegment(t, atLeast(1000))
	d := cs.Def
	jobs := func(pub processor.ChangePublisher) *processor.Jobs { return r.newJobs(t, jobsOf{pub: pub}) }
	if err := jobs(unreachablePublisher{}).Backfill(briefly(t), r.org, cs, 0); err == nil {
		t.Fatal("backfill with an unreachable membership topic succeeded")
	}
	amended := testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, d.ID))
	if len(amended) == 0 {
		t.Fatal("the first backfill amended no one; the test needs some")
	}
	d = r.newCriteria(t, d.ID, atLeast(1500))
	if err := jobs(unreachablePublisher{}).Backfill(briefly(t), r.org, compiled(t, d), 0); err == nil {
		t.Fatal("the new generation's backfill with an unreachable membership topic succeeded")
	}
	if err := jobs(r.publisher(t)).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
		t.Fatal(err)
	}
	// Every member under the new criteria has an entry; each user the
	// first backfill let in and the new criteria leave out, an entry and an
	// exit.
	want := map[string]bool{}
	wantEvents := 0
	for u, p := range points {
		if p >= 1500 {
			want[u] = true
			wantEvents++
		}
	}
	for _, u := range amended {
		if points[u] < 1500 {
			wantEvents += 2
		}
	}
	msgs := readOwn(t, r, wantEvents)
	if len(msgs) < wantEvents {
		t.Fatalf("%d change events published, want %d", len(msgs), wantEvents)
	}
	checkReplay(t, msgs, points, want)
	r.verifyClean(t)
}

// checkReplay fails the test unless replaying msgs, the change events of
// the users of points, leaves exactly the users of want in the segment. It
// replays as the contract tells consumers to: an event repeated (the same
// eventId, which a retried job may publish again later) counts once.
func checkReplay(t *testing.T, msgs []kafka.Message, points map[string]int, want map[string]bool) {
	t.Helper()
	replayed := map[string]bool{}
	seen := map[string]bool{}
	for _, m := range msgs {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if id := c.EventID; !seen[id] {
			seen[id] = true
			replayed[c.UserID] = c.Entered
		}
	}
	for u := range points {
		if replayed[u] != want[u] {
			t.Errorf("replaying the membership topic puts %s in: %v, want %v", u, replayed[u], want[u])
		}
	}
}

// TestCriteriaChangedTwiceWhileBackfillsFail changes the criteria twice
// while no backfill can publish: the last generation's backfill must
// publish what all three wrote.
func TestCriteriaChangedTwiceWhileBackfillsFail(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	points := r.storePoints(t, 3000)
	cs := r.buildingSegment(t, atLeast(1000))
	d := cs.Def
	jobs := func(pub processor.ChangePublisher) *processor.Jobs { return r.newJobs(t, jobsOf{pub: pub}) }
	for _, min := range []float64{1500, 1200} {
		if err := jobs(unreachablePublisher{}).Backfill(briefly(t), r.org, compiled(t, d), 0); err == nil {
			t.Fatalf("backfill of generation %d with an unreachable membership topic succeeded", d.Generation)
		}
		d = r.newCriteria(t, d.ID, atLeast(min))
	}
	if err := jobs(unreachablePublisher{}).Backfill(briefly(t), r.org, compiled(t, d), 0); err == nil {
		t.Fatal("the last generation's backfill with an unreachable membership topic succeeded")
	}
	if err := jobs(r.publisher(t)).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
		t.Fatal(err)
	}
	r.wantReplayAtLeast(t, points, 1200)
}

// wantReplayAtLeast checks that replaying the whole membership topic gives
// exactly the users of points with at least min points, and that verify
// finds Redis so too.
func (r *rig) wantReplayAtLeast(t *testing.T, points map[string]int, min int) {
	t.Helper()
	want := map[string]bool{}
	for u, p := range points {
		want[u] = p >= min
	}
	checkReplay(t, readOwn(t, r, topicLength(t, r.brokers, r.membershipT)), points, want)
	r.verifyClean(t)
}

// topicLength returns how many records topic holds (its partitions' end
// offsets: nothing is deleted from the tests' topics).
func topicLength(t *testing.T, brokers []string, topic string) int {
	t.Helper()
	n := 0
	for _, p := range topicPartitions(t, brokers, topic) {
		leader, err := kafka.DialLeader(context.Background(), "tcp", brokers[0], topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		last, err := leader.ReadLastOffset()
		leader.Close()
		if err != nil {
			t.Fatal(err)
		}
		n += int(last)
	}
	return n
}

// storePoints writes n users straight into Redis, user i ("u<i>") with
// points (i*7919) % 2000: every value from 0 to 1999 comes n/2000 times. It
// returns each user's points.
func (r *rig) storePoints(t *testing.T, n int) map[string]int {
	t.Helper()
	points := make(map[string]int, n)
	ws := make([]membership.UserWrite, 0, n)
	for i := range n {
		u := fmt.Sprintf("u%d", i)
		points[u] = (i * 7919) % 2000
		p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": float64(points[u])}))
		ws = append(ws, membership.UserWrite{OrgID: r.org, UserID: u, Version: 1, Profile: p})
	}
	if _, err := r.users.Write(context.Background(), ws); err != nil {
		t.Fatal(err)
	}
	return points
}

// newCriteria gives segment id the criteria c, as a PUT does (a new
// generation, building), and returns it.
func (r *rig) newCriteria(t *testing.T, id string, c segment.Criteria) segment.Definition {
	t.Helper()
	d, err := r.defs.Update(context.Background(), r.org, id, func(d *segment.Definition) error {
		d.Criteria, d.Generation, d.Status = c, d.Generation+1, segment.StatusBuilding
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// membersAtLeast returns the users of points that atLeast(n) holds.
func membersAtLeast(points map[string]int, n int) map[string]bool {
	out := map[string]bool{}
	for u, p := range points {
		if p >= n {
			out[u] = true
		}
	}
	return out
}

// atLeast is the criteria points >= n.
func atLeast(n float64) segment.Criteria {
	return segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: n, HasValue: true}}}
}

// buildingSegment creates the segment "rich" with the criteria c, building
// as the API creates it, and returns it compiled, ready for a backfill.
func (r *rig) buildingSegment(t *testing.T, c segment.Criteria) *processor.CompiledSegment {
	t.Helper()
	d, err := r.defs.Create(context.Background(), segment.Definition{OrgID: r.org, Name: "rich", Type: segment.TypeDynamic, Criteria: c, Status: segment.StatusBuilding})
	if err != nil {
		t.Fatal(err)
	}
	return compiled(t, d)
}

// compiled returns the definition d with its rule.
func compiled(t *testing.T, d segment.Definition) *processor.CompiledSegment {
	t.Helper()
	rule, err := segment.Compile(d.Criteria)
	if err != nil {
		t.Fatal(err)
	}
	return &processor.CompiledSegment{Def: d, Rule: rule}
}

// publisher returns a publisher to the rig's membership topic, closed when
// the test ends.
func (r *rig) publisher(t *testing.T) processor.ChangePublisher {
	w := kafkaio.NewWriter(r.brokers)
	t.Cleanup(func() { w.Close() })
	return kafkaio.NewPublisher(w, r.membershipT)
}

// jobsOf configures newJobs: an empty instance is a unique one, a nil
// registry or clock none.
type jobsOf struct {
	instance string
	pub      processor.ChangePublisher
	registry *processor.Registry
	now      func() time.Time
	metrics  *prometheus.Registry     // nil: a registry of its own
	users    processor.JobUsers       // nil: the rig's
	defs     processor.JobDefinitions // nil: the rig's
	remover  processor.SegmentRemover
	// processor is the instance's processor (nil: none).
	processor *processor.Processor
	// timerInterval bounds a call of FireTimers's rounds (0: the default).
	timerInterval time.Duration
	// estimateInterval is SEGMENTD_ESTIMATE_INTERVAL (0: the default).
	estimateInterval time.Duration
}

// compiled reloads reg and returns segment id of the rig's organisation as
// compiled now, with the definitions' revision.
func (r *rig) compiled(t *testing.T, reg *processor.Registry, id string) (*processor.CompiledSegment, int64) {
	t.Helper()
	if err := reg.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	snap := reg.Current()
	return snap.Org(r.org).Segments[id], snap.Revision
}

// registry returns a registry of the rig's definitions, loaded.
func (r *rig) registry(t *testing.T) *processor.Registry {
	t.Helper()
	reg := processor.NewRegistry(r.defs, time.Second, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
	if err := reg.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	return reg
}

// newJobs returns the background jobs of one test instance, not running.
func (r *rig) newJobs(t *testing.T, o jobsOf) *processor.Jobs {
	if o.instance == "" {
		o.instance = testenv.UniqueName(t, "inst")
	}
	if o.metrics == nil {
		o.metrics = prometheus.NewRegistry()
	}
	if o.users == nil {
		o.users = r.users
	}
	if o.defs == nil {
		o.defs = r.defs
	}
	committed := kafkaio.NewGroupOffsets(r.brokers, r.group, r.profile)
	t.Cleanup(func() { committed.Close() })
	j, err := processor.NewJobs(processor.JobsConfig{
		InstanceID: o.instance, Definitions: o.defs, Users: o.users, Schedules: membership.NewSchedules(r.rdb),
		Sizes: membership.NewSets(r.rdb), Coordinator: membership.NewCoordinator(r.rdb), Publisher: o.pub, Registry: o.registry,
		Remover: o.remover, Registerer: o.metrics, Logger: slog.New(slog.NewTextHandler(testLogWriter(), nil)), Now: o.now,
		TimerInterval: o.timerInterval, EstimateInterval: o.estimateInterval, Processor: o.processor,
		Committed: committed, ProfileTopic: r.profile,
	})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// TestBackfillSkipsUnreadableUser checks that one user whose stored state
// cannot be decoded does not hold a backfill up: the segment becomes ready
// with every other user right, and the unreadable state is left alone.
func TestBackfillSkipsUnreadableUser(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	points := r.storePoints(t, 500)
	key := membership.ProfileKey(r.org, "bad")
	p := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": 1999.0}))
	if err := r.rdb.HSet(ctx, key, "r", "garbage", "p", p).Err(); err != nil {
		t.Fatal(err)
	}
	// In the organisation's index, as the user's first write put it there.
	if n, err := r.users.Reindex(ctx, []string{r.org}); err != nil || n != 1 {
		t.Fatalf("reindex added %d users, %v; want the unreadable one", n, err)
	}
	cs := r.buildingSegment(t, atLeast(1000))
	d := cs.Def
	if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, cs, 0); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, u := range testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, d.ID)) {
		got[u] = true
	}
	for u, pts := range points {
		if got[u] != (pts >= 1000) {
			t.Errorf("%s (points %d) member: %v", u, pts, got[u])
		}
	}
	if got["bad"] {
		t.Error("the unreadable user was let in")
	}
	if rev, err := r.rdb.HGet(ctx, key, "r").Result(); err != nil || rev != "garbage" {
		t.Errorf("stored revision = %q, %v; the unreadable state must be left alone", rev, err)
	}
	if st, err := r.defs.Get(ctx, r.org, d.ID); err != nil || st.Status != segment.StatusReady {
		t.Errorf("segment status %q, %v; want ready", st.Status, err)
	}
}

// TestFinishedBackfillIsNotRunAgain asks for the backfill of a generation
// that is already built, as a registry snapshot older than its end would:
// it is not run (scanned, amended, marked ready) again.
func TestFinishedBackfillIsNotRunAgain(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	r.storePoints(t, 400)
	cs := r.buildingSegment(t, atLeast(1000))
	reg := prometheus.NewRegistry()
	jobs := r.newJobs(t, jobsOf{pub: r.publisher(t), metrics: reg})
	ready := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "segmentd_backfills_total" {
				for _, m := range mf.GetMetric() {
					if m.GetLabel()[0].GetValue() == "ready" {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return 0
	}
	for range 2 {
		if err := jobs.Backfill(ctx, r.org, cs, 0); err != nil {
			t.Fatal(err)
		}
	}
	if n := ready(); n != 1 {
		t.Errorf("the generation was built %v times, want once", n)
	}
}

// TestFinishedBackfillNotPublishedAgain: once a segment is ready, the
// stream knows its backfill published every change it wrote, and a user's
// next change of that segment does not publish the backfill's entry again
// first (as it does for a job's entry that may be unpublished): each
// member's entry is on the topic once, then its exit.
func TestFinishedBackfillNotPublishedAgain(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	points := r.storePoints(t, 20)
	cs := r.buildingSegment(t, atLeast(1000))
	reg := r.startAll(t)
	r.waitReady(t, cs.Def.ID, 30*time.Second)
	seen := func() bool {
		o := reg.Current().Org(r.org)
		return o != nil && o.Segments[cs.Def.ID] != nil && o.Segments[cs.Def.ID].Def.Status == segment.StatusReady
	}
	if !testenv.Eventually(10*time.Second, seen) {
		t.Fatal("the stream's definitions never showed the segment ready")
	}
	var lines []string
	for u, p := range points {
		if p >= 1000 {
			lines = append(lines, `{"eventId":"x-`+u+`","type":"profile.updated","orgId":"`+r.org+`","userId":"`+u+`","version":2,"changes":{"points":0}}`)
		}
	}
	if len(lines) == 0 {
		t.Fatal("no member to leave")
	}
	r.produce(t, lines...)
	msgs := readTopic(t, r.brokers, r.membershipT, 2*len(lines), 30*time.Second)
	count := map[string]int{}
	for _, m := range msgs {
		var c struct{ EventID, UserID, Change string }
		if err := json.Unmarshal(m.Value, &c); err != nil {
			t.Fatal(err)
		}
		count[c.UserID+" "+c.Change]++
	}
	for u, p := range points {
		if p < 1000 {
			continue
		}
		if count[u+" entered"] != 1 || count[u+" exited"] != 1 {
			t.Errorf("%s: entered %d times, exited %d times on the topic; want once each", u, count[u+" entered"], count[u+" exited"])
		}
	}
}

// TestBackfillReadsUsersOwnIDs backfills a segment on userId over
// profiles stored without one (as builds before it stored them): the
// listed users enter, and verify agrees.
func TestBackfillReadsUsersOwnIDs(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	r.storePoints(t, 5)
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "listed", Type: segment.TypeDynamic, Status: segment.StatusBuilding,
		Criteria: segment.Criteria{Include: []segment.Criterion{{Field: "userId", Operator: "in", Value: []any{"u1", "u3"}, HasValue: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
		t.Fatal(err)
	}
	if got := testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, d.ID)); !slices.Equal(got, []string{"u1", "u3"}) {
		t.Errorf("members %v, want u1 u3", got)
	}
	diffs, _, err := processor.Verify(ctx, r.defs, r.users, membership.NewSets(r.rdb), time.Now(), r.org)
	if err != nil || len(diffs) != 0 {
		t.Errorf("verify: %v, %v; want no difference", diffs, err)
	}
}

// TestAudienceSkipsKeyOfAnotherType: a profile key of another type
// (written by hand) leaves that user out of an audience search, as the
// stream and the backfills leave it; the others are counted.
func TestAudienceSkipsKeyOfAnotherType(t *testing.T) {
	r := newRig(t, testenv.RedisClusterClient(t))
	ctx := context.Background()
	r.storePoints(t, 20)
	if err := r.rdb.Set(ctx, membership.ProfileKey(r.org, "u3"), "written by hand", 0).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := processor.NewAudience(r.users, nil).Search(ctx, r.org, segment.Criteria{}, 100, "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Count != 19 || slices.Contains(res.UserIDs, "u3") {
		t.Errorf("count %d, ids %v; want the 19 others", res.Count, res.UserIDs)
	}
}

// TestTimerOfUnreadableUserIsKept fires the timers of two members, one of
// whose stored state (its revision, or its profile alone) cannot be read:
// the other leaves, and the unreadable one stays as it is, its timer put
// off instead of being dropped as a deleted user's. A backfill of new
// criteria then leaves it as it is too.
func TestTimerOfUnreadableUserIsKept(t *testing.T) {
	for name, field := range map[string]string{"revision": "r", "profile": "p"} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			flip := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
			seg, fire := r.dueTimers(t, 2, flip)
			fire(r.publisher(t), time.Now())
			if got := testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, seg)); len(got) != 2 {
				t.Fatalf("members %v, want both", got)
			}
			if err := r.rdb.HSet(ctx, membership.ProfileKey(r.org, "u1"), field, "garbage").Err(); err != nil {
				t.Fatal(err)
			}
			// Timers due again (as a profile event may have moved them):
			// both stay in.
			now := time.Now()
			if err := membership.NewSchedules(r.rdb).Schedule(ctx, []membership.Due{{OrgID: r.org, UserID: "u0", At: now}, {OrgID: r.org, UserID: "u1", At: now}}); err != nil {
				t.Fatal(err)
			}
			now = now.Add(time.Second)
			fire(r.publisher(t), now)
			if got := testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, seg)); len(got) != 2 {
				t.Errorf("members after the timers %v, want both", got)
			}
			at, err := r.rdb.ZScore(ctx, membership.ScheduleKey(r.org), "u1").Result()
			if err != nil {
				t.Fatalf("u1's timer: %v (dropped?)", err)
			}
			if when := time.UnixMilli(int64(at)); !when.After(now) {
				t.Errorf("u1's timer at %s, want put off past %s", when, now)
			}
			// The new criteria hold for neither user (a month-old update): u0
			// leaves.
			d := r.newCriteria(t, seg, segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: ">", Value: "now-30d", HasValue: true}}})
			if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, compiled(t, d), 0); err != nil {
				t.Fatal(err)
			}
			if got := testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, seg)); !slices.Equal(got, []string{"u1"}) {
				t.Errorf("members after the backfill %v, want u1 alone", got)
			}
		})
	}
}

// TestBackfillFindsUserCreatedAfterItsDeletion: a deletion that arrives
// before the user's first profile is the user's first write, and leaves a
// tombstone and no profile; the user must be in the organisation's index
// from then on, or the backfill of a segment created after its profile
// arrived would never see it.
func TestBackfillFindsUserCreatedAfterItsDeletion(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.startAll(t)
	rich := segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}}
	create := func(name string) string {
		d, err := r.defs.Create(context.Background(), segment.Definition{OrgID: r.org, Name: name, Type: segment.TypeDynamic,
			Status: segment.StatusBuilding, Criteria: rich})
		if err != nil {
			t.Fatal(err)
		}
		r.waitReady(t, d.ID, time.Minute)
		return d.ID
	}
	// From the first backfill on, the organisation's index is read (it is
	// marked whole by the jobs' completion of every index, or by this
	// first read's scan of the keyspace).
	create("first")
	r.produceEvents(t, []events.ProfileEvent{
		{EventID: "d", Type: events.ProfileDeleted, OrgID: r.org, UserID: "late", Version: 1, HasVersion: true},
	})
	r.waitVersion(t, "late", 1)
	r.produceEvents(t, []events.ProfileEvent{
		{EventID: "c", Type: events.ProfileCreated, OrgID: r.org, UserID: "late", Version: 2, HasVersion: true, Profile: map[string]any{"points": 2000}},
		{EventID: "n", Type: events.ProfileCreated, OrgID: r.org, UserID: "new", Version: 1, HasVersion: true, Profile: map[string]any{"points": 2000}},
	})
	r.waitVersion(t, "late", 2)
	r.waitVersion(t, "new", 1)
	seg := create("second")
	if got := testenv.SMembers(t, r.rdb, membership.SegmentMembersKey(r.org, seg)); !slices.Equal(got, []string{"late", "new"}) {
		t.Fatalf("members after the backfill: %v, want [late new]", got)
	}
}

// TestJobsCompleteUserIndexes checks that the background jobs complete the
// organisations' user indexes once: a user that a build older than the
// indexes stored is in its organisation's index afterwards, and every
// organisation is then marked as indexed, so none scans the keyspace on its
// first read.
func TestJobsCompleteUserIndexes(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	if err := r.rdb.Del(ctx, membership.AllIndexedKey).Err(); err != nil {
		t.Fatal(err)
	}
	// A profile hash and nothing else, as the older build stored it.
	if err := r.rdb.HSet(ctx, membership.ProfileKey(r.org, "old"), "r", 1, "v", 1, "p", `{"points":1}`).Err(); err != nil {
		t.Fatal(err)
	}
	reg := processor.NewRegistry(r.defs, 100*time.Millisecond, slog.New(slog.NewTextHandler(testLogWriter(), nil)))
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg}).Run(jctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("jobs: %v", err)
		}
	}()
	marked := func() bool {
		n, err := r.rdb.Exists(ctx, membership.AllIndexedKey).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	if !testenv.Eventually(30*time.Second, marked) {
		t.Fatal("the user indexes were not marked complete within 30 s")
	}
	var ids []string
	if err := membership.NewUsers(r.rdb).ScanUserIDs(ctx, r.org, func(page []string) error {
		ids = append(ids, page...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{"old"}) {
		t.Fatalf("the organisation's index holds %v, want [old]", ids)
	}
}

// landingAfterRead is a member reader whose first whole-set read is
// followed by the write that was in flight: the member it lacked lands.
type landingAfterRead struct {
	*membership.Sets
	land func()
	once sync.Once
}

func (l *landingAfterRead) AllMembers(ctx context.Context, org, seg string) ([]string, error) {
	ids, err := l.Sets.AllMembers(ctx, org, seg)
	l.once.Do(l.land)
	return ids, err
}

// TestVerifyLooksAgain: a membership written just after verify's pass read
// the sets is no difference; one that stays wrong still is.
func TestVerifyLooksAgain(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	seg := r.segment(t, "rich", atLeast(1000))
	points := r.storePoints(t, 2) // u0: 0 points, u1: 1919
	if points["u0"] != 0 || points["u1"] < 1000 {
		t.Fatalf("points %v", points)
	}
	// u1 belongs in the segment; its write lands after the pass. u0 is
	// wrongly in the user set and stays so.
	if err := r.rdb.SAdd(ctx, membership.UserSegmentsKey(r.org, "u0"), seg).Err(); err != nil {
		t.Fatal(err)
	}
	sets := &landingAfterRead{Sets: membership.NewSets(r.rdb), land: func() {
		r.rdb.SAdd(ctx, membership.SegmentMembersKey(r.org, seg), "u1")
		r.rdb.SAdd(ctx, membership.UserSegmentsKey(r.org, "u1"), seg)
	}}
	diffs, _, err := processor.Verify(ctx, r.defs, r.users, sets, time.Now(), r.org)
	if err != nil {
		t.Fatal(err)
	}
	want := []processor.Difference{{OrgID: r.org, SegmentID: seg, UserID: "u0", Want: false, Where: processor.WhereUser}}
	if !slices.Equal(diffs, want) {
		t.Errorf("differences %v, want %v", diffs, want)
	}
}

// TestUnfinishedDeletionIsFinished: a DELETE marked a segment deleting and
// stopped before removing its members (its instance died). Once the grace
// is over, the jobs must remove them, publish their exits and drop the
// definition; before it, leave the segment alone for the request's retry.
func TestUnfinishedDeletionIsFinished(t *testing.T) {
	r := newRig(t, testenv.RedisClusterClient(t))
	ctx := context.Background()
	points := r.storePoints(t, 300)
	cs := r.buildingSegment(t, atLeast(1000))
	seg := cs.Def.ID
	if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, r.org, cs, 0); err != nil {
		t.Fatal(err)
	}
	want := membersAtLeast(points, 1000)
	if _, err := r.defs.MarkDeleting(ctx, r.org, seg); err != nil {
		t.Fatal(err)
	}
	sets := membership.NewSets(r.rdb)
	pub := r.publisher(t)
	r.newJobs(t, jobsOf{pub: pub, remover: sets}).FinishDeletions(ctx)
	if n, err := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, seg)).Result(); err != nil || n != int64(len(want)) {
		t.Fatalf("%d members within the grace (%v), want all %d left for the request", n, err, len(want))
	}
	later := func() time.Time { return time.Now().Add(11 * time.Minute) }
	// The search runs once a minute, on one instance: a minute on, the
	// lease the first call took is gone.
	if err := r.rdb.Del(ctx, "lock:{deletions}").Err(); err != nil {
		t.Fatal(err)
	}
	r.newJobs(t, jobsOf{pub: pub, remover: sets, now: later}).FinishDeletions(ctx)
	if n, err := r.rdb.Exists(ctx, membership.SegmentMembersKey(r.org, seg)).Result(); err != nil || n != 0 {
		t.Errorf("member set still there (%v)", err)
	}
	if _, err := r.defs.Get(ctx, r.org, seg); !errors.Is(err, membership.ErrNotFound) {
		t.Errorf("definition after the deletion was finished: %v, want not found", err)
	}
	for u := range want {
		if in, err := r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, u), seg).Result(); err != nil || in {
			t.Fatalf("user %s's set still holds the segment (%v)", u, err)
		}
	}
	exited := 0
	for _, m := range readOwn(t, r, 2*len(want)) {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if !c.Entered && c.SegmentID == seg {
			exited++
		}
	}
	if exited != len(want) {
		t.Errorf("%d exit events, want %d", exited, len(want))
	}
}

// TestUnfinishedStaticCreateIsRolledBack: a static create stopped part way
// through its list (its instance died) left a building segment with part
// of the list, every listed user's entry published. Within the grace (a
// keyed create's retry may still take it over) the jobs leave it; past
// it, they remove it as a deletion, with an exit for each member. A
// finished static create is left alone.
func TestUnfinishedStaticCreateIsRolledBack(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	cut, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "cut", Type: segment.TypeStatic, Status: segment.StatusBuilding})
	if err != nil {
		t.Fatal(err)
	}
	done, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "done", Type: segment.TypeStatic, Status: segment.StatusReady})
	if err != nil {
		t.Fatal(err)
	}
	for _, seg := range []string{cut.ID, done.ID} {
		for _, u := range []string{"u1", "u2"} {
			r.rdb.SAdd(ctx, membership.SegmentMembersKey(r.org, seg), u)
			r.rdb.SAdd(ctx, membership.UserSegmentsKey(r.org, u), seg)
		}
	}
	sets := membership.NewSets(r.rdb)
	pub := r.publisher(t)
	// The search's lease, which an earlier test may hold.
	if err := r.rdb.Del(ctx, "lock:{deletions}").Err(); err != nil {
		t.Fatal(err)
	}
	r.newJobs(t, jobsOf{pub: pub, remover: sets, now: func() time.Time { return time.Now().Add(15 * time.Minute) }}).FinishDeletions(ctx)
	if got, err := r.defs.Get(ctx, r.org, cut.ID); err != nil || got.Status != segment.StatusBuilding {
		t.Fatalf("within the grace: %v, %v; want the segment left building", got.Status, err)
	}
	if err := r.rdb.Del(ctx, "lock:{deletions}").Err(); err != nil {
		t.Fatal(err)
	}
	r.newJobs(t, jobsOf{pub: pub, remover: sets, now: func() time.Time { return time.Now().Add(21 * time.Minute) }}).FinishDeletions(ctx)
	if _, err := r.defs.Get(ctx, r.org, cut.ID); !errors.Is(err, membership.ErrNotFound) {
		t.Errorf("an unfinished create past the grace: %v, want it gone", err)
	}
	if got, err := r.defs.Get(ctx, r.org, done.ID); err != nil || got.Status != segment.StatusReady {
		t.Errorf("a finished static create: %v, %v; want it ready", got.Status, err)
	}
	for _, u := range []string{"u1", "u2"} {
		if got := testenv.SMembers(t, r.rdb, membership.UserSegmentsKey(r.org, u)); !slices.Equal(got, []string{done.ID}) {
			t.Errorf("user %s's segments %v, want only %s", u, got, done.ID)
		}
	}
	exited := 0
	for _, m := range readOwn(t, r, 2) {
		c, err := events.DecodeChange(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if !c.Entered && c.SegmentID == cut.ID {
			exited++
		}
	}
	if exited != 2 {
		t.Errorf("%d exit events of the rolled back segment, want 2", exited)
	}
}

// TestDeletionForgetsKilledBackfillsUsers: a backfill whose instance was
// killed had amended users (the segment in their own sets) and not yet
// projected them onto the member set. The segment's deletion, finished by
// the jobs, must take it out of those users' sets too, not only out of the
// sets of the users its member set names.
func TestDeletionForgetsKilledBackfillsUsers(t *testing.T) {
	r := newRig(t, testenv.RedisClusterClient(t))
	ctx := context.Background()
	r.storePoints(t, 50)
	cs := r.buildingSegment(t, atLeast(1000))
	seg := cs.Def.ID
	if _, _, err := r.defs.BeginBackfill(ctx, r.org, seg, cs.Def.Generation); err != nil {
		t.Fatal(err)
	}
	amended := []string{"u1", "u2", "u3"}
	for _, u := range amended {
		if err := r.rdb.SAdd(ctx, membership.UserSegmentsKey(r.org, u), seg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.defs.MarkDeleting(ctx, r.org, seg); err != nil {
		t.Fatal(err)
	}
	later := func() time.Time { return time.Now().Add(11 * time.Minute) }
	// The search's lease, which an earlier test may hold.
	if err := r.rdb.Del(ctx, "lock:{deletions}").Err(); err != nil {
		t.Fatal(err)
	}
	r.newJobs(t, jobsOf{pub: r.publisher(t), remover: membership.NewSets(r.rdb), now: later}).FinishDeletions(ctx)
	if _, err := r.defs.Get(ctx, r.org, seg); !errors.Is(err, membership.ErrNotFound) {
		t.Fatalf("definition after the deletion was finished: %v, want not found", err)
	}
	for _, u := range amended {
		if in, err := r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, u), seg).Result(); err != nil || in {
			t.Errorf("user %s's set still holds the deleted segment (%v)", u, err)
		}
	}
}

// TestStaticCreateRollbackForgetsUsersTheMemberSetMissed: a static create
// writes each chunk to the users' own sets, then to the segment's member
// set. Killed in between (a chunk of users holds the segment in their own
// set and not in the member set), the rollback must not leave the deleted
// id in the sets of those of them who have a stored profile.
func TestStaticCreateRollbackForgetsUsersTheMemberSetMissed(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	r.storePoints(t, 5)
	cut, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "cut", Type: segment.TypeStatic, Status: segment.StatusBuilding})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"u1", "u2"} {
		r.rdb.SAdd(ctx, membership.SegmentMembersKey(r.org, cut.ID), u)
		r.rdb.SAdd(ctx, membership.UserSegmentsKey(r.org, u), cut.ID)
	}
	// The killed create's last chunk reached u3's own set only.
	r.rdb.SAdd(ctx, membership.UserSegmentsKey(r.org, "u3"), cut.ID)
	if err := r.rdb.Del(ctx, "lock:{deletions}").Err(); err != nil {
		t.Fatal(err)
	}
	later := func() time.Time { return time.Now().Add(21 * time.Minute) }
	r.newJobs(t, jobsOf{pub: r.publisher(t), remover: membership.NewSets(r.rdb), now: later}).FinishDeletions(ctx)
	if _, err := r.defs.Get(ctx, r.org, cut.ID); !errors.Is(err, membership.ErrNotFound) {
		t.Fatalf("rolled back create: %v, want it gone", err)
	}
	for _, u := range []string{"u1", "u2", "u3"} {
		if in, err := r.rdb.SIsMember(ctx, membership.UserSegmentsKey(r.org, u), cut.ID).Result(); err != nil || in {
			t.Errorf("user %s's set still holds the rolled-back segment %s (%v)", u, cut.ID, err)
		}
	}
}
