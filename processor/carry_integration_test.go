package processor_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// unreachableKafka is a producer for a broker that does not answer.
type unreachableKafka struct{}

func (unreachableKafka) Produce(context.Context, []processor.Record) error {
	return errors.New("kafka: broker not reachable")
}

// unpublished configures a processor whose batches are written and never
// published (its broker does not answer), of at most batchSize events (0:
// the rig's), and that stops within a second.
func unpublished(batchSize int) func(*processor.Config) {
	return func(c *processor.Config) {
		c.Producer = unreachableKafka{}
		if batchSize > 0 {
			c.BatchSize = batchSize
		}
		c.ShutdownTimeout = time.Second
	}
}

// TestUnfinishedBatchKeepsItsOutbox writes a user in one batch whose change
// events cannot be published, then again in the next batch (which runs
// while the first is still retrying), and stops the processor: nothing is
// committed. The second write must keep the first batch's diff in the
// user's outbox, so that the processor taking over replays it: the user
// enters the segment and the event announcing it is published. Dropping the
// diff would lose both for good, since the redelivered first event is by
// then older than the stored version.
func TestUnfinishedBatchKeepsItsOutbox(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	seg := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	stop := r.startWith(t, unpublished(1))
	o := r.org
	r.produce(t,
		`{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"tier":"gold","points":1200}}`,
		`{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"tier":"silver"}}`,
	)
	ctx := context.Background()
	st := r.waitVersion(t, "u1", 2)
	var ids []string
	for _, e := range st.Outbox {
		ids = append(ids, e.EventID)
	}
	if !slices.Equal(ids, []string{"e1", "e2"}) {
		t.Fatalf("outbox after the second batch holds %q, want e1 then e2", ids)
	}
	// New definitions come into force while the batches wait to be
	// published: the processor must still report the revision they were
	// evaluated with, so that no backfill publishes before them.
	applied := r.proc.AppliedRevision()
	r.segment(t, "later", segment.Criteria{Include: []segment.Criterion{{Field: "xp", Operator: ">=", Value: 1.0, HasValue: true}}})
	rev, err := r.defs.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // several registry polls
	if got := r.proc.AppliedRevision(); got != applied || got >= rev {
		t.Fatalf("AppliedRevision = %d with batches of revision %d unpublished (definitions now at %d)", got, applied, rev)
	}
	stop()

	r.start(t)
	r.wantOnlyEntry(t, seg, "u1", "e1")
}

// wantOnlyEntry checks that the membership topic holds one change event,
// user entering seg by the profile event eventID, and that the user is the
// segment's only member.
func (r *rig) wantOnlyEntry(t *testing.T, seg, user, eventID string) {
	t.Helper()
	msgs := readTopic(t, r.brokers, r.membershipT, 1, 60*time.Second)
	if len(msgs) != 1 {
		t.Fatalf("%d change events, want 1", len(msgs))
	}
	d, err := events.DecodeChange(msgs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if d.UserID != user || d.SegmentID != seg || !d.Entered || d.Cause.EventID != eventID {
		t.Errorf("change event %+v, want %s entering by %s", d, user, eventID)
	}
	if g := members(t, r.rdb, membership.SegmentMembersKey(r.org, seg)); g != user {
		t.Errorf("members = %q, want %s", g, user)
	}
}

// TestReplayedBatchKeepsItsOutbox redelivers a batch that was written and
// never published (its processor stopped) to a processor that cannot
// publish either: it replays the batch from the outbox, writing nothing,
// then writes the user's next event. That write must keep the replayed
// entry, so that the processor taking over still publishes the change.
func TestReplayedBatchKeepsItsOutbox(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	seg := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	o := r.org
	stop := r.startWith(t, unpublished(1))
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"tier":"gold","points":1200}}`)
	r.waitVersion(t, "u1", 1)
	stop()

	stop = r.startWith(t, unpublished(1))
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"tier":"silver"}}`)
	st := r.waitVersion(t, "u1", 2)
	var ids []string
	for _, e := range st.Outbox {
		ids = append(ids, e.EventID)
	}
	if !slices.Equal(ids, []string{"e1", "e2"}) {
		t.Errorf("outbox after the write that followed the replay holds %q, want e1 then e2", ids)
	}
	stop()

	r.start(t)
	r.wantOnlyEntry(t, seg, "u1", "e1")
}

// TestStreamKeepsRecentAmendEntries writes a user as a backfill does (an
// amend with its outbox entry) and stops there, as a backfill that dies
// before publishing; then a profile event writes the user. The amend's
// entry must survive that write, so that the retried backfill finds it and
// publishes the change it made.
func TestStreamKeepsRecentAmendEntries(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	gold := r.segment(t, "gold", segment.Criteria{Include: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "gold", HasValue: true}}})
	r.start(t)
	o := r.org
	ctx := context.Background()
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"tier":"silver","points":1200}}`)
	st := r.waitVersion(t, "u1", 1)

	// The backfill's write, and nothing after it.
	entry := membership.OutboxEntry{EventID: "segment:" + gold + ":1", CauseType: events.CauseSegment, AtMillis: time.Now().UnixMilli(), Rev: st.Rev + 1,
		Changes: []membership.OutboxChange{{SegmentID: gold, Entered: true}}}
	applied, err := r.users.Amend(ctx, []membership.Amend{{OrgID: o, UserID: "u1", SegmentID: gold, ExpectRev: st.Rev, Entered: true, Entry: entry}})
	if err != nil || applied[0].Result != membership.AmendApplied {
		t.Fatalf("amend applied %v, %v", applied, err)
	}

	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"points":1300}}`)
	st = r.waitVersion(t, "u1", 2)
	var ids []string
	for _, e := range st.Outbox {
		ids = append(ids, e.EventID)
	}
	if !slices.Contains(ids, entry.EventID) || !slices.Contains(ids, "e2") {
		t.Fatalf("outbox after the stream's write holds %q, want the backfill's %q and e2", ids, entry.EventID)
	}
	if !slices.Contains(st.Segments, gold) {
		t.Errorf("segments %q lost the backfill's %s", st.Segments, gold)
	}
}

// TestStreamKeepsUnfinishedBackfillEntries: a user's outbox holds the
// entries of two backfills older than the grace the stream gives such
// entries, one of a segment still being built at that generation (its
// backfill died before publishing and has not been retried yet, say because
// no instance ran for a while) and one of a segment built since, and those
// of two timers, one an hour old (claimed again after an outage of an hour)
// and one older than a day. The stream's next write of the user keeps the
// first backfill's and the first timer's entries, which their retries
// publish from, and drops the others.
func TestStreamKeepsUnfinishedBackfillEntries(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	points := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	gold := r.segment(t, "gold", segment.Criteria{Include: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "gold", HasValue: true}}})
	vip, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "vip", Type: segment.TypeDynamic, Status: segment.StatusBuilding,
		Criteria: segment.Criteria{Include: []segment.Criterion{{Field: "xp", Operator: ">=", Value: 5.0, HasValue: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	long := time.Now().Add(-time.Hour).UnixMilli()
	building := fmt.Sprintf("segment:%s:%d", vip.ID, vip.Generation)
	built := "segment:" + gold + ":1"
	timer, oldTimer := fmt.Sprintf("time:%s:%d", points, long), fmt.Sprintf("time:%s:%d", points, long-1)
	if _, err := r.users.Write(ctx, []membership.UserWrite{{OrgID: r.org, UserID: "u1", Version: 1,
		Profile: segment.AppendProfile(nil, segment.NewProfile(map[string]any{"tier": "gold", "points": 1200.0, "xp": 9.0})),
		Add:     []string{points, gold, vip.ID},
		Outbox: []membership.OutboxEntry{
			{EventID: "e1", Version: 1, Rev: 1, AtMillis: long, Changes: []membership.OutboxChange{{SegmentID: points, Entered: true}}},
			{EventID: built, CauseType: events.CauseSegment, AtMillis: long, Rev: 1, Changes: []membership.OutboxChange{{SegmentID: gold, Entered: true}}},
			{EventID: building, CauseType: events.CauseSegment, AtMillis: long, Rev: 1, Changes: []membership.OutboxChange{{SegmentID: vip.ID, Entered: true}}},
			{EventID: oldTimer, CauseType: events.CauseTime, AtMillis: time.Now().Add(-25 * time.Hour).UnixMilli(), Rev: 1},
			{EventID: timer, CauseType: events.CauseTime, AtMillis: long, Rev: 1},
		}}}); err != nil {
		t.Fatal(err)
	}
	r.start(t)
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+r.org+`","userId":"u1","version":2,"changes":{"points":1300}}`)
	st := r.waitVersion(t, "u1", 2)
	var ids []string
	for _, e := range st.Outbox {
		ids = append(ids, e.EventID)
	}
	if want := []string{building, timer, "e2"}; !slices.Equal(ids, want) {
		t.Fatalf("outbox after the stream's write holds %q, want %q: the entries of the backfill still building and of the hour-old timer kept, the others dropped", ids, want)
	}
}

// TestReplayOfPartOfAWrite: another instance wrote two events of a user in
// one write (entered a segment, then left it) and projected them; this
// instance, whose batch holds only the first of them, replays it. The
// segment set must end with the write's last decision, not the replayed one.
func TestReplayOfPartOfAWrite(t *testing.T) {
	r := newRig(t, testenv.RedisClusterClient(t))
	ctx := context.Background()
	seg := r.segment(t, "rich", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	now := time.Now().UnixMilli()
	w := membership.UserWrite{OrgID: r.org, UserID: "u1", Version: 2,
		Profile: segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": 10.0})),
		Outbox: []membership.OutboxEntry{
			{EventID: "e1", Version: 1, Rev: 1, AtMillis: now, Changes: []membership.OutboxChange{{SegmentID: seg, Entered: true}}},
			{EventID: "e2", Version: 2, Rev: 1, AtMillis: now, Changes: []membership.OutboxChange{{SegmentID: seg, Entered: false}}},
		}}
	if _, err := r.users.Write(ctx, []membership.UserWrite{w}); err != nil {
		t.Fatal(err)
	}
	var ps []membership.Projection
	for _, e := range w.Outbox {
		ps = append(ps, membership.Projection{Rev: e.Rev, Change: events.Change{OrgID: r.org, SegmentID: seg, UserID: "u1", Entered: e.Changes[0].Entered}})
	}
	if _, err := r.users.Project(ctx, ps); err != nil {
		t.Fatal(err)
	}
	r.start(t)
	r.produce(t, fmt.Sprintf(`{"eventId":"e1","type":"profile.created","orgId":%q,"userId":"u1","version":1,"profile":{"points":2000}}`, r.org))
	// The replay publishes e1's change again, and projects it.
	msgs := readOwn(t, r, 1)
	if c, err := events.DecodeChange(msgs[0].Value); err != nil || !c.Entered || c.Cause.EventID != "e1" {
		t.Fatalf("replayed change %+v (%v), want e1's entry", c, err)
	}
	// A batch's projections are written before its change events.
	if in, err := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u1").Result(); err != nil || in {
		t.Fatalf("u1 in the segment set (%v, %v): the replay of e1 left its decision over e2's", in, err)
	}
}

// unreachableTimers fails every store of timers, as a Redis gone would.
type unreachableTimers struct{}

func (unreachableTimers) Schedule(context.Context, []membership.Due) error {
	return errors.New("redis: connection refused")
}

// TestReplayStoresTheTimer writes a user whose timer cannot be stored and
// stops the processor: the processor taking over replays the batch from
// the outbox and must store the timer, or the user would never enter the
// time-relative segment without another event. Also when the replay comes
// after the flip: the timer is then past, and fires at once.
func TestReplayStoresTheTimer(t *testing.T) {
	for name, late := range map[string]time.Duration{"before the flip": 0, "after the flip": 31 * 24 * time.Hour} {
		t.Run(name, func(t *testing.T) { replayStoresTheTimer(t, late) })
	}
}

func replayStoresTheTimer(t *testing.T, late time.Duration) {
	r := newRig(t, testenv.RedisClient(t))
	r.segment(t, "inactive", segment.Criteria{Include: []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: "now-30d", HasValue: true}}})
	stop := r.startWith(t, func(c *processor.Config) {
		c.Producer, c.Scheduler = unreachableKafka{}, unreachableTimers{}
		c.BatchSize = 1
		c.ShutdownTimeout = time.Second
	})
	updated := time.Now().UTC().Truncate(time.Second)
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+r.org+`","userId":"u1","version":1,"profile":{"updatedAt":"`+updated.Format(time.RFC3339)+`"}}`)
	r.waitVersion(t, "u1", 1)
	stop()
	ctx := context.Background()
	if err := r.rdb.ZScore(ctx, membership.ScheduleKey(r.org), "u1").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("timer stored by a processor that could not store it: %v", err)
	}

	r.startWith(t, func(c *processor.Config) { c.Now = func() time.Time { return time.Now().Add(late) } })
	flip := float64(updated.Add(30 * 24 * time.Hour).UnixMilli())
	var at float64
	stored := func() bool {
		var err error
		if at, err = r.rdb.ZScore(ctx, membership.ScheduleKey(r.org), "u1").Result(); err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		return err == nil
	}
	if !testenv.Eventually(30*time.Second, stored) {
		t.Fatal("the replay stored no timer within 30 s")
	}
	if at < flip || at > flip+1000 {
		t.Errorf("timer at %v, want the flip %v", at, flip)
	}
}

// failingFetches is a fetcher whose first n fetches fail, as kafka-go's do
// while the broker is unreachable, before it reads from the real group.
type failingFetches struct {
	processor.Fetcher
	mu sync.Mutex
	n  int
}

func (f *failingFetches) Fetch(ctx context.Context) (processor.Record, error) {
	f.mu.Lock()
	fail := f.n > 0
	f.n--
	f.mu.Unlock()
	if fail {
		if f.n%2 == 0 {
			// A coordinator's connection closed by the broker or a proxy:
			// kafka-go gives it as a bare io.EOF.
			return processor.Record{}, io.EOF
		}
		return processor.Record{}, errors.New("dial tcp 127.0.0.1:9: connect: connection refused")
	}
	return f.Fetcher.Fetch(ctx)
}

// TestFetchFailuresAreRetried: fetching that fails (Kafka unreachable) is
// retried until it works again, reporting the processor unhealthy meanwhile,
// instead of stopping it.
func TestFetchFailuresAreRetried(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	var sawUnhealthy atomic.Bool
	r.startWith(t, func(c *processor.Config) { c.Fetcher = &failingFetches{Fetcher: c.Fetcher, n: 4} })
	go func() {
		if testenv.EventuallyEvery(5*time.Second, 10*time.Millisecond, func() bool { return !r.proc.Healthy() }) {
			sawUnhealthy.Store(true)
		}
	}()
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+r.org+`","userId":"u1","version":1,"profile":{"points":1200}}`)
	r.waitVersion(t, "u1", 1)
	if !sawUnhealthy.Load() {
		t.Error("the processor never reported itself unhealthy while its fetches failed")
	}
	if !testenv.Eventually(10*time.Second, r.proc.Healthy) {
		t.Fatal("the processor is still unhealthy 10 s after fetching works again")
	}
}

// failingCommits is a fetcher whose commits fail while fail is set, as
// they do while the group's coordinator is unavailable.
type failingCommits struct {
	processor.Fetcher
	fail atomic.Bool
}

func (f *failingCommits) Commit(ctx context.Context, rs []processor.Record) error {
	if f.fail.Load() {
		return errors.New("kafka: coordinator not available")
	}
	return f.Fetcher.Commit(ctx, rs)
}

// TestCommitFailuresMakeUnhealthy: while offsets cannot be committed the
// processor reports itself unhealthy (/readyz 503), as for any stage that
// fails, and healthy again once a commit succeeds.
func TestCommitFailuresMakeUnhealthy(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	fc := &failingCommits{}
	fc.fail.Store(true)
	r.startWith(t, func(c *processor.Config) { fc.Fetcher = c.Fetcher; c.Fetcher = fc })
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+r.org+`","userId":"u1","version":1,"profile":{"points":1200}}`)
	r.waitVersion(t, "u1", 1)
	if !testenv.Eventually(10*time.Second, func() bool { return !r.proc.Healthy() }) {
		t.Fatal("the processor reports itself healthy 10 s into failing commits")
	}
	// Commits work again, with no more traffic: the batch whose commit was
	// given up is committed on its own.
	time.Sleep(5 * time.Second) // past its retries
	fc.fail.Store(false)
	r.waitCommitted(t, 1)
	if !testenv.Eventually(10*time.Second, r.proc.Healthy) {
		t.Fatal("the processor is still unhealthy 10 s after commits work again")
	}
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+r.org+`","userId":"u1","version":2,"changes":{"points":1}}`)
	r.waitCommitted(t, 2)
}

// waitCommitted waits until group has committed n records of the rig's
// profile topic.
func (r *rig) waitCommitted(t *testing.T, n int64) {
	t.Helper()
	// Each check asks Kafka: a slower poll than Eventually's.
	if !testenv.EventuallyEvery(60*time.Second, 50*time.Millisecond, func() bool { return committed(t, r.brokers, r.group, r.profile) >= n }) {
		t.Fatalf("group %s did not commit %d records within 60 s", r.group, n)
	}
}

// profilePoints returns the points of a stored profile, -1 when none.
func profilePoints(st membership.UserState) float64 {
	p, err := segment.DecodeProfile(st.Profile)
	if err != nil || st.Profile == "" {
		return -1
	}
	f, ok := p.Get("points").(float64)
	if !ok {
		return -1
	}
	return f
}

// TestUnversionedRedelivery redelivers two events without a version whose
// batches were published and committed, as a lost commit or a rebalance
// does (here: a new group reading from the start). The user's next batch
// has replaced the first event's outbox entry, and the first event, applied
// again over the second, would undo it: it must be taken for a duplicate,
// and the state and the sets stay as the second event left them.
func TestUnversionedRedelivery(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	gold := r.segment(t, "gold", segment.Criteria{Include: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "gold", HasValue: true}}})
	silver := r.segment(t, "silver", segment.Criteria{Include: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "silver", HasValue: true}}})
	o := r.org
	stop := r.start(t)
	r.produce(t, `{"eventId":"e1","type":"profile.updated","orgId":"`+o+`","userId":"u1","profile":{"tier":"gold","points":1}}`)
	r.waitCommitted(t, 1)
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","profile":{"tier":"silver","points":2}}`)
	r.waitCommitted(t, 2)
	stop()
	st := r.waitState(t, "u1", func(st membership.UserState) bool { return profilePoints(st) == 2 })
	if len(st.Outbox) != 1 || st.Outbox[0].EventID != "e2" {
		t.Fatalf("outbox %+v, want e2's entry alone (the test needs e1's gone)", st.Outbox)
	}

	r.group = testenv.UniqueName(t, "again")
	r.start(t)
	r.waitCommitted(t, 2)
	st = r.waitState(t, "u1", func(membership.UserState) bool { return true })
	if got := profilePoints(st); got != 2 || !slices.Equal(st.Segments, []string{silver}) {
		t.Errorf("after the redelivery: points %v, segments %v; want 2 and [%s]", got, st.Segments, silver)
	}
	if g := members(t, r.rdb, membership.SegmentMembersKey(o, gold)); g != "" {
		t.Errorf("gold members %q, want none", g)
	}
	if g := members(t, r.rdb, membership.SegmentMembersKey(o, silver)); g != "u1" {
		t.Errorf("silver members %q, want u1", g)
	}
}

// TestSameEventTwiceInABatch: a producer's retry puts one event without a
// version on the topic twice, and both copies come in one batch that is
// written and never published. Redelivered, the change the event made
// must be published: the second copy is a duplicate, not an event that
// changed nothing.
func TestSameEventTwiceInABatch(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	seg := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	o := r.org
	stop := r.startWith(t, unpublished(0))
	e1 := `{"eventId":"e1","type":"profile.created","orgId":"` + o + `","userId":"u1","profile":{"tier":"gold","points":1200}}`
	r.produce(t, e1, e1)
	st := r.waitState(t, "u1", func(st membership.UserState) bool { return profilePoints(st) == 1200 })
	stop()
	if len(st.Outbox) != 1 {
		t.Errorf("outbox %+v, want one entry", st.Outbox)
	}
	r.start(t)
	r.wantOnlyEntry(t, seg, "u1", "e1")
}

// TestReplayedDeletionKeepsStaticReAdd: a user's deletion takes it out of a
// static segment and is never committed; a list then puts the user back
// (the API writes both sets and leaves the user's revision alone). The
// deletion, redelivered and replayed, must not take the user out of the
// segment's set again while the user's own set keeps it.
func TestReplayedDeletionKeepsStaticReAdd(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "list", Type: segment.TypeStatic, Status: segment.StatusReady})
	if err != nil {
		t.Fatal(err)
	}
	sets := membership.NewSets(r.rdb)
	add := func(id string) {
		c := events.Change{OrgID: r.org, SegmentID: d.ID, UserID: "u1", Entered: true, At: time.Now(), Cause: events.Cause{Type: events.CauseStatic, EventID: id}}
		if err := sets.Apply(ctx, []events.Change{c}); err != nil {
			t.Fatal(err)
		}
	}
	o := r.org
	stop := r.start(t)
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"tier":"gold"}}`)
	r.waitCommitted(t, 1)
	stop()
	add("list-1")
	stop = r.startWith(t, unpublished(0))
	r.produce(t, `{"eventId":"e2","type":"profile.deleted","orgId":"`+o+`","userId":"u1","version":2}`)
	r.waitState(t, "u1", func(st membership.UserState) bool { return st.Deleted })
	// The deletion's exit is projected before its publication fails.
	if !testenv.Eventually(30*time.Second, func() bool { return members(t, r.rdb, membership.SegmentMembersKey(o, d.ID)) == "" }) {
		t.Fatal("the deletion's exit was not projected within 30 s")
	}
	stop()
	add("list-2")
	r.start(t)
	r.waitCommitted(t, 2)
	if g := members(t, r.rdb, membership.SegmentMembersKey(o, d.ID)); g != "u1" {
		t.Errorf("members after the replay %q, want u1, whom the list put back", g)
	}
	if in, err := r.rdb.SIsMember(ctx, membership.UserSegmentsKey(o, "u1"), d.ID).Result(); err != nil || !in {
		t.Errorf("user's own set holds the segment: %v (%v), want true", in, err)
	}
}

// TestVersionedEventIgnoresPosition: an event with a version is judged by
// its version alone, whatever the position stored for the user says (here a
// position past every offset, as a broker that started over leaves).
func TestVersionedEventIgnoresPosition(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	o := r.org
	r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	stop := r.start(t)
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"points":1}}`)
	r.waitCommitted(t, 1)
	stop()
	st := r.waitState(t, "u1", func(st membership.UserState) bool { return profilePoints(st) == 1 })
	parts := strings.Split(st.Applied, ":")
	if len(parts) != 4 {
		t.Fatalf("stored position %q, want offset:partition:topic:time", st.Applied)
	}
	parts[0] = "999999999"
	parts[3] = strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 36)
	if err := r.rdb.HSet(ctx, membership.ProfileKey(o, "u1"), "k", strings.Join(parts, ":")).Err(); err != nil {
		t.Fatal(err)
	}
	r.start(t) // a processor with no cache of the user, which reads the position set above
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"points":2}}`)
	r.waitState(t, "u1", func(st membership.UserState) bool { return profilePoints(st) == 2 })
}

// TestRepairedDeadLetterIsApplied follows README's replay of a dead letter:
// a patch that applies to no profile ({"points":2000,"points.x":1}, which
// takes no version) is dead-lettered in the batch of another event of the
// user, whose write keeps its entry in the outbox; the operator repairs it
// and produces it again, same eventId (and version, when it has one). It
// must be applied, not taken for another copy of that entry.
func TestRepairedDeadLetterIsApplied(t *testing.T) {
	for name, version := range map[string]string{"with a version": `"version":3,`, "without a version": ``} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			seg := r.segment(t, "points", atLeast(1000))
			o := r.org
			v := func(n string) string {
				if version == "" {
					return ""
				}
				return `"version":` + n + `,`
			}
			// One batch (produced before the processor starts).
			r.produce(t,
				`{"eventId":"p1","type":"profile.created","orgId":"`+o+`","userId":"u",`+v("1")+`"profile":{"tier":"gold"}}`,
				`{"eventId":"p2","type":"profile.updated","orgId":"`+o+`","userId":"u",`+v("2")+`"changes":{"tier":"silver"}}`,
				`{"eventId":"p3","type":"profile.updated","orgId":"`+o+`","userId":"u",`+version+`"changes":{"points":2000,"points.x":1}}`)
			r.start(t)
			r.waitCommitted(t, 3)
			if dl := readAll(t, r.brokers, r.dlq); len(dl) != 1 {
				t.Fatalf("dead letters: %d, want 1", len(dl))
			}
			r.produce(t, `{"eventId":"p3","type":"profile.updated","orgId":"`+o+`","userId":"u",`+version+`"changes":{"points":2000}}`)
			r.waitCommitted(t, 4)
			if dl := readAll(t, r.brokers, r.dlq); len(dl) != 1 {
				t.Errorf("dead letters: %d, want 1 (the first copy's)", len(dl))
			}
			r.waitState(t, "u", func(st membership.UserState) bool { return profilePoints(st) == 2000 })
			if got := r.followed(t, seg, "u"); !slices.Equal(got, []string{"entered"}) {
				t.Errorf("the topic gives u %v, want [entered]", got)
			}
		})
	}
}

// TestRepairedDeadLetterRedeliveredWithOriginal: a batch applies p1 and
// dead-letters p2 (a patch that applies to no profile); its dead letter is
// published but the offsets are not committed (the group coordinator is
// away, then the instance stops). The operator repairs p2 and produces it
// again, same eventId. The next instance reads p1, p2 and the repaired p2
// again, in one batch. README: a later copy of a dead-lettered event (the
// dead letter repaired and produced again) is a new event, applied. It must
// be applied (or at least not vanish without a dead letter).
func TestRepairedDeadLetterRedeliveredWithOriginal(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	seg := r.segment(t, "points", atLeast(1000))
	o := r.org
	fc := &failingCommits{}
	fc.fail.Store(true)
	stop := r.startWith(t, func(c *processor.Config) {
		fc.Fetcher = c.Fetcher
		c.Fetcher = fc
		c.ShutdownTimeout = time.Second
	})
	r.produce(t,
		`{"eventId":"p1","type":"profile.created","orgId":"`+o+`","userId":"u","profile":{"tier":"gold"}}`,
		`{"eventId":"p2","type":"profile.updated","orgId":"`+o+`","userId":"u","changes":{"points":2000,"points.x":1}}`)
	if !testenv.Eventually(30*time.Second, func() bool { return len(readAll(t, r.brokers, r.dlq)) == 1 }) {
		t.Fatal("p2 not dead-lettered")
	}
	stop()
	if n := committed(t, r.brokers, r.group, r.profile); n != 0 {
		t.Fatalf("committed %d, want 0", n)
	}
	// The repair, produced while no instance runs.
	r.produce(t, `{"eventId":"p2","type":"profile.updated","orgId":"`+o+`","userId":"u","changes":{"points":2000}}`)
	r.start(t)
	r.waitCommitted(t, 3)
	r.waitState(t, "u", func(st membership.UserState) bool { return profilePoints(st) == 2000 })
	if got := r.followed(t, seg, "u"); !slices.Equal(got, []string{"entered"}) {
		t.Errorf("the topic gives u %v, want [entered]", got)
	}
}

// TestDeadLetterDecisionSurvivesRedelivery: a patch dead-lettered against
// the state it met, then a full profile applied after it, in batches never
// published. Redelivered, the patch must be dead-lettered again (it would
// apply to the newer profile, or, with a version, pass for a late event)
// and the state stay the full profile's.
func TestDeadLetterDecisionSurvivesRedelivery(t *testing.T) {
	for name, version := range map[string]string{"without versions": "", "with versions": `"version":%d,`} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			o := r.org
			v := func(n int) string {
				if version == "" {
					return ""
				}
				return fmt.Sprintf(version, n)
			}
			stop := r.start(t)
			r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1",`+v(1)+`"profile":{"points":5}}`)
			r.waitCommitted(t, 1)
			stop()
			stop = r.startWith(t, unpublished(1))
			r.produce(t,
				`{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1",`+v(2)+`"changes":{"points.x":1}}`,
				`{"eventId":"e3","type":"profile.updated","orgId":"`+o+`","userId":"u1",`+v(3)+`"profile":{"tier":"gold"}}`,
			)
			r.waitState(t, "u1", func(st membership.UserState) bool { return strings.Contains(st.Profile, "gold") })
			stop()

			r.start(t)
			r.waitCommitted(t, 3)
			msgs := readTopic(t, r.brokers, r.dlq, 1, 60*time.Second)
			if len(msgs) != 1 || !strings.Contains(string(msgs[0].Value), `"e2"`) {
				t.Fatalf("%d dead letters, want e2's", len(msgs))
			}
			st := r.waitState(t, "u1", func(membership.UserState) bool { return true })
			if p, err := segment.DecodeProfile(st.Profile); err != nil || p.Get("points") != nil || p.Get("tier") != "gold" {
				t.Errorf("profile after the redelivery %q (%v), want e3's alone", st.Profile, err)
			}
		})
	}
}

// TestInvalidFirstPatchStoresNothing: a user whose first event is a patch
// that applies to no profile is dead-lettered and not stored (no tombstone,
// not in the organisation's index).
func TestInvalidFirstPatchStoresNothing(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	o := r.org
	r.start(t)
	r.produce(t, `{"eventId":"e1","type":"profile.updated","orgId":"`+o+`","userId":"u9","changes":{"a":1,"a.b":2}}`)
	if msgs := readTopic(t, r.brokers, r.dlq, 1, 60*time.Second); len(msgs) != 1 {
		t.Fatalf("%d dead letters, want the patch's", len(msgs))
	}
	r.waitCommitted(t, 1)
	if n, err := r.rdb.Exists(ctx, membership.ProfileKey(o, "u9")).Result(); err != nil || n != 0 {
		t.Errorf("user stored after its only event was dead-lettered (%v)", err)
	}
	var indexed []string
	if err := r.users.ScanUserIDs(ctx, o, func(ids []string) error { indexed = append(indexed, ids...); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(indexed) != 0 {
		t.Errorf("organisation's index holds %v, want none", indexed)
	}
}

// TestPatchInvalidOnAnyProfileTakesNoVersion: a patch that can apply to no
// profile is dead-lettered the same whatever the state, and takes no
// version: a valid event of that version that follows it is applied.
// (Dead-lettered against one state and redelivered against another, it
// would otherwise take the version in one case only.)
func TestPatchInvalidOnAnyProfileTakesNoVersion(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	o := r.org
	r.start(t)
	r.produce(t,
		`{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"points":1}}`,
		`{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":5,"changes":{"a":1,"a.b":2}}`,
		`{"eventId":"e3","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":5,"changes":{"points":2}}`,
	)
	r.waitState(t, "u1", func(st membership.UserState) bool { return profilePoints(st) == 2 && st.Version == 5 })
}

// TestPatchToCorruptProfileIsDeadLettered: a patch to a stored profile that
// cannot be read is dead-lettered, not made the user's whole profile (every
// other field would be lost, and the user re-evaluated on the patch alone);
// a full profile then replaces the corrupt one.
func TestPatchToCorruptProfileIsDeadLettered(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	o := r.org
	key := membership.ProfileKey(o, "u1")
	if err := r.rdb.HSet(ctx, key, "r", "1", "v", "1", "p", "\xff\xfecorrupt").Err(); err != nil {
		t.Fatal(err)
	}
	r.start(t)
	r.produce(t, `{"eventId":"e1","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"points":5}}`)
	dl := readTopic(t, r.brokers, r.dlq, 1, 60*time.Second)
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want the patch's", len(dl))
	}
	for _, h := range dl[0].Headers {
		if h.Key == "segmentd-error" && !strings.Contains(string(h.Value), "stored profile cannot be read") {
			t.Errorf("reason %q does not say the stored profile cannot be read", h.Value)
		}
	}
	r.waitCommitted(t, 1)
	if p, err := r.rdb.HGet(ctx, key, "p").Result(); err != nil || p != "\xff\xfecorrupt" {
		t.Errorf("stored profile %q (%v): the patch must leave it alone", p, err)
	}
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":3,"profile":{"points":7}}`)
	r.waitState(t, "u1", func(st membership.UserState) bool { return profilePoints(st) == 7 && st.Version == 3 })
}

// TestReplayAfterANewerDecision: batches of u1 are written and projected,
// and their instance dies before publishing (its clock a minute behind, so
// that their entries are older than racedWindow to anyone who meets them).
// Before they are processed again, another write of u1 decides the segment
// anew. A consumer that reads the topic in order and drops repeated
// eventIds must see every change, in the order written, and end where the
// segment's set is. When the later write is a backfill's, it publishes the
// killed batches' changes before its own (the replay repeats them): all of
// them, when one batch entered and exited u1; when it is the stream's own
// (a later batch, killed too), the partition's order puts it after the
// replay.
func TestReplayAfterANewerDecision(t *testing.T) {
	e1 := `{"eventId":"e1","type":"profile.created","orgId":"%s","userId":"u1","version":1,"profile":{"points":1200}}`
	e2 := `{"eventId":"e2","type":"profile.updated","orgId":"%s","userId":"u1","version":2,"changes":{"points":500}}`
	for name, tt := range map[string]struct {
		killed      []string // u1's events in the killed batches
		batchSize   int      // of the killed batches (0: the rig's, one batch here)
		backfillMin float64  // the backfill's criteria, points >= it (0: no backfill)
		member      bool     // whether u1 ends in the segment
	}{
		"a backfill exits u1":                                 {killed: []string{e1}, batchSize: 1, backfillMin: 2000},
		"a later batch exits u1":                              {killed: []string{e1, e2}, batchSize: 1},
		"one batch enters and exits u1, a backfill enters it": {killed: []string{e1, e2}, backfillMin: 400, member: true},
	} {
		t.Run(name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			seg := r.segment(t, "points", atLeast(1000))
			behind := func() time.Time { return time.Now().Add(-time.Minute) }
			stop := r.startWith(t, func(c *processor.Config) {
				unpublished(tt.batchSize)(c)
				c.Now = behind
			})
			o := r.org
			for _, e := range tt.killed {
				r.produce(t, fmt.Sprintf(e, o))
			}
			st := r.waitVersion(t, "u1", int64(len(tt.killed)))
			// The batches are projected, then the publication fails: wait
			// for the projection of the last one.
			projected := func() bool {
				rev, _ := r.rdb.HGet(ctx, membership.SegmentRevisionsKey(o, seg), "u1").Int64()
				return rev == st.Rev
			}
			if !testenv.Eventually(10*time.Second, projected) {
				t.Fatal("the killed batches were not projected")
			}
			stop()
			want := []string{"entered", "exited"}
			if tt.backfillMin > 0 {
				d := r.newCriteria(t, seg, atLeast(tt.backfillMin))
				if err := r.newJobs(t, jobsOf{pub: r.publisher(t)}).Backfill(ctx, o, compiled(t, d), 0); err != nil {
					t.Fatal(err)
				}
				if tt.member {
					want = append(want, "entered")
				}
			}
			r.startWith(t, func(c *processor.Config) { c.BatchSize = 1 })
			r.waitCommitted(t, int64(len(tt.killed)))
			got := r.followedCauses(t, seg, "u1")
			member := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(o, seg), "u1").Val()
			if !slices.Equal(directions(got), want) || member != tt.member {
				t.Errorf("the topic gives u1 %v (each eventId once), and u1 member = %v: want %v, and member = %v", got, member, want, tt.member)
			}
		})
	}
}

// directions returns the first word of each of followedCauses' changes.
func directions(changes []string) []string {
	out := make([]string, len(changes))
	for i, c := range changes {
		out[i], _, _ = strings.Cut(c, " ")
	}
	return out
}

// TestReplayAfterDeletion: a batch enters u1, is projected, and its
// instance dies before publishing (as a SIGKILL does). The segment is then
// deleted, which takes the segment out of the user's set and publishes an
// exit for each member, u1 among them, after the entry of u1's outbox that
// may be unpublished. The replayed batch, which finds the user's set without
// the segment, must publish no entry of it: consumers would see the user
// enter a deleted segment after its exit. With the deletion's publisher, a
// consumer following the topic sees u1 enter, then leave; without one (the
// deletion's events are not this test's), the replay publishes nothing.
func TestReplayAfterDeletion(t *testing.T) {
	for _, withPublisher := range []bool{true, false} {
		t.Run(fmt.Sprintf("deletion publishes %v", withPublisher), func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			seg := r.segment(t, "points", atLeast(1000))
			o := r.org
			stop := r.startWith(t, unpublished(0))
			r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"points":1200}}`)
			if !testenv.Eventually(30*time.Second, func() bool { return members(t, r.rdb, membership.SegmentMembersKey(o, seg)) == "u1" }) {
				t.Fatal("the entry was not projected within 30 s")
			}
			stop()
			var publish func(context.Context, []events.Change) error
			if withPublisher {
				publish = r.publisher(t).Publish
			}
			if _, err := membership.NewSets(r.rdb).DeleteSegment(ctx, o, seg, time.Now(), publish); err != nil {
				t.Fatal(err)
			}
			if err := r.defs.Delete(ctx, o, seg); err != nil {
				t.Fatal(err)
			}
			r.start(t)
			r.waitCommitted(t, 1)
			if withPublisher {
				if got, want := r.followed(t, seg, "u1"), []string{"entered", "exited"}; !slices.Equal(got, want) {
					t.Errorf("the topic gives u1 %v (each eventId once), want %v", got, want)
				}
				return
			}
			for _, m := range readAll(t, r.brokers, r.membershipT) {
				if c, err := events.DecodeChange(m.Value); err != nil || c.SegmentID == seg {
					t.Errorf("published after the deletion: %+v (%v)", c, err)
				}
			}
		})
	}
}

// projectOnce projects the first batch's changes and fails every later
// projection (a Redis node going away).
type projectOnce struct {
	processor.UserStore
	calls atomic.Int32
}

func (p *projectOnce) Project(ctx context.Context, ps []membership.Projection) (membership.Deletions, error) {
	if p.calls.Add(1) > 1 {
		return nil, errors.New("project: connection refused")
	}
	return p.UserStore.Project(ctx, ps)
}

// TestDeletionAfterProjectedEntryAndUnprojectedExit: batch 1 enters u1 and
// is projected, batch 2 takes u1 out and is written, not projected; neither
// is published (the instance dies). The segment is deleted, then the
// batches are replayed. A consumer following the topic (each eventId once)
// must see u1 enter, then leave: the member set held u1, from e1.
func TestDeletionAfterProjectedEntryAndUnprojectedExit(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	seg := r.segment(t, "points", atLeast(1000))
	o := r.org
	stop := r.startWith(t, func(c *processor.Config) {
		unpublished(1)(c)
		c.Users = &projectOnce{UserStore: c.Users}
	})
	r.produce(t,
		`{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"points":1200}}`,
		`{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"points":500}}`)
	r.waitVersion(t, "u1", 2)
	if !testenv.Eventually(10*time.Second, func() bool { return members(t, r.rdb, membership.SegmentMembersKey(o, seg)) == "u1" }) {
		t.Fatal("e1 not projected")
	}
	stop()
	if _, err := membership.NewSets(r.rdb).DeleteSegment(ctx, o, seg, time.Now(), r.publisher(t).Publish); err != nil {
		t.Fatal(err)
	}
	if err := r.defs.Delete(ctx, o, seg); err != nil {
		t.Fatal(err)
	}
	r.start(t)
	r.waitCommitted(t, 2)
	if got, want := r.followedCauses(t, seg, "u1"), []string{"entered e1", "exited delete:" + seg}; !slices.Equal(got, want) {
		t.Errorf("the topic gives u1 %v (each eventId once), want %v", got, want)
	}
}
