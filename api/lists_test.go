package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// ids returns n user ids with the prefix.
func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

// TestConcurrentAddsKeepTheLimit adds 60,000 members to an empty static
// segment from two requests at once: one passes, the other would take the
// segment past 100,000 and is refused.
func TestConcurrentAddsKeepTheLimit(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	id := str(a.as("POST", "/v1/segments", map[string]any{"name": "big", "type": "static", "userIds": []string{}}).mustStatus(t, http.StatusCreated).body["id"])
	answers := make(chan response, 2)
	for _, prefix := range []string{"a", "b"} {
		body := map[string]any{"add": ids(prefix, 60000)}
		go func() { answers <- a.as("POST", "/v1/segments/"+id+"/members", body) }()
	}
	var statuses []int
	for range 2 {
		r := <-answers
		statuses = append(statuses, r.status)
		if r.status == http.StatusBadRequest {
			r.wantError(t, http.StatusBadRequest, "limit_exceeded", "add")
		}
	}
	slices.Sort(statuses)
	if !slices.Equal(statuses, []int{http.StatusOK, http.StatusBadRequest}) {
		t.Errorf("statuses %v, want one 200 and one 400", statuses)
	}
	if n := rdb.SCard(context.Background(), membership.SegmentMembersKey(a.org, id)).Val(); n != 60000 {
		t.Errorf("%d members, want 60000", n)
	}
}

// TestDeleteWaitsForListWrite deletes a static segment while a new list of
// 100,000 ids is being written: the deletion waits for the write, so that
// no user's segment set keeps the deleted segment.
func TestDeleteWaitsForListWrite(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	ctx := context.Background()
	id := str(a.as("POST", "/v1/segments", map[string]any{"name": "big", "type": "static", "userIds": []string{"x"}}).mustStatus(t, http.StatusCreated).body["id"])
	users := ids("w", 100000)
	put := make(chan response, 1)
	go func() { put <- a.as("PUT", "/v1/segments/"+id, map[string]any{"userIds": users}) }()
	// The deletion starts once the write has begun writing members.
	// A fine poll: what follows must happen while the write goes on.
	writing := func() bool { return rdb.SCard(ctx, membership.SegmentMembersKey(a.org, id)).Val() > 1 }
	if !testenv.EventuallyEvery(30*time.Second, 2*time.Millisecond, writing) {
		t.Fatal("the list write wrote no member within 30 s")
	}
	a.as("DELETE", "/v1/segments/"+id, nil).mustStatus(t, http.StatusNoContent)
	if r := <-put; r.status != http.StatusOK && r.status != http.StatusNotFound {
		t.Fatalf("PUT answered %d: %s", r.status, r.raw)
	}
	pipe := rdb.Pipeline()
	cmds := make([]*redis.BoolCmd, len(users))
	for i, u := range users {
		cmds[i] = pipe.SIsMember(ctx, membership.UserSegmentsKey(a.org, u), id)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	stale := 0
	for _, c := range cmds {
		if c.Val() {
			stale++
		}
	}
	if stale > 0 || rdb.Exists(ctx, membership.SegmentMembersKey(a.org, id)).Val() != 0 {
		t.Errorf("after the deletion, %d users' sets still hold the segment (members key exists: %d)", stale, rdb.Exists(ctx, membership.SegmentMembersKey(a.org, id)).Val())
	}
}

// halfWrittenLists writes a list's changes to the users' sets and then
// fails, as a Redis failure between the users' sets and the segment's set
// leaves them.
type halfWrittenLists struct {
	MembershipStore
	rdb redis.UniversalClient
}

func (h halfWrittenLists) ApplyList(ctx context.Context, org, seg string, changes []events.Change) error {
	for _, c := range changes {
		if err := h.rdb.SAdd(ctx, membership.UserSegmentsKey(c.OrgID, c.UserID), c.SegmentID).Err(); err != nil {
			return err
		}
	}
	return errors.New("segment sets: connection reset")
}

// TestRolledBackCreateLeavesNoUserSet: a static create whose list reached
// the users' sets and not the segment's is rolled back; no user's set may
// keep the segment.
func TestRolledBackCreateLeavesNoUserSet(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb, testOptions{membership: func(m MembershipStore) MembershipStore { return halfWrittenLists{m, rdb} }})
	body := map[string]any{"name": "Beta", "type": "static", "userIds": []string{"u1", "u2"}}
	a.do("POST", "/v1/segments", a.key, body).wantError(t, http.StatusServiceUnavailable, "unavailable")
	for _, u := range []string{"u1", "u2"} {
		if segs := testenv.SMembers(t, rdb, membership.UserSegmentsKey(a.org, u)); len(segs) != 0 {
			t.Errorf("user %s's set after the rollback: %v, want empty", u, segs)
		}
	}
}

// stoppedRollback is halfWrittenLists whose removals fail once, as a Redis
// failure in the middle of the rollback does.
type stoppedRollback struct {
	halfWrittenLists
	failed atomic.Bool
}

func (s *stoppedRollback) Apply(context.Context, []events.Change) error {
	return errors.New("user sets: connection reset")
}

func (s *stoppedRollback) DeleteSegment(ctx context.Context, org, seg string, at time.Time, publish func(context.Context, []events.Change) error) (int, error) {
	if !s.failed.Swap(true) {
		return 0, errors.New("segment sets: connection reset")
	}
	return s.MembershipStore.DeleteSegment(ctx, org, seg, at, publish)
}

// TestStoppedRollbackIsFinished: a static create whose list reached the
// users' sets and not the segment's is rolled back, and the rollback stops
// part way. The segment stays hidden; a DELETE of it then must take it out
// of every listed user's set and answer each published entry with an exit.
func TestStoppedRollbackIsFinished(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb, testOptions{membership: func(m MembershipStore) MembershipStore {
		return &stoppedRollback{halfWrittenLists: halfWrittenLists{m, rdb}}
	}})
	body := map[string]any{"name": "Beta", "type": "static", "userIds": []string{"u1", "u2"}}
	a.do("POST", "/v1/segments", a.key, body).wantError(t, http.StatusServiceUnavailable, "unavailable")
	entered := map[string]bool{}
	var id string
	for _, c := range a.pub.take() {
		entered[c.UserID] = c.Entered
		id = c.SegmentID
	}
	if !entered["u1"] || !entered["u2"] {
		t.Fatalf("entries published before the failed write: %v, want u1 and u2", entered)
	}
	a.as("GET", "/v1/segments/"+id, nil).mustStatus(t, http.StatusNotFound)
	a.as("DELETE", "/v1/segments/"+id, nil).mustStatus(t, http.StatusNoContent)
	for _, c := range a.pub.take() {
		if c.SegmentID == id && !c.Entered {
			delete(entered, c.UserID)
		}
	}
	if len(entered) != 0 {
		t.Errorf("users whose entry no exit answered: %v", entered)
	}
	for _, u := range []string{"u1", "u2"} {
		if segs := testenv.SMembers(t, rdb, membership.UserSegmentsKey(a.org, u)); len(segs) != 0 {
			t.Errorf("user %s's set after the deletion: %v, want empty", u, segs)
		}
	}
}

// TestListLeaseIsShort: a list change in progress holds a lease of
// membership.ListLockTTL, renewed while it works, so that the list of an
// instance killed mid-change is free again within it (a lease as long as
// a request may run kept a DELETE's retries answering 409 for minutes).
func TestListLeaseIsShort(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	ctx := context.Background()
	id := str(a.as("POST", "/v1/segments", map[string]any{"name": "big", "type": "static", "userIds": []string{"x"}}).mustStatus(t, http.StatusCreated).body["id"])
	put := make(chan response, 1)
	go func() { put <- a.as("PUT", "/v1/segments/"+id, map[string]any{"userIds": ids("w", 100000)}) }()
	lock := "lock:{" + membership.ListLock(a.org, id) + "}"
	// A fine poll: what follows must happen while the write goes on.
	writing := func() bool { return rdb.SCard(ctx, membership.SegmentMembersKey(a.org, id)).Val() > 1 }
	if !testenv.EventuallyEvery(30*time.Second, 2*time.Millisecond, writing) {
		t.Fatal("the list write wrote no member within 30 s")
	}
	ttl := rdb.PTTL(ctx, lock).Val()
	(<-put).mustStatus(t, http.StatusOK)
	if ttl <= 0 || ttl > membership.ListLockTTL {
		t.Errorf("the list's lease has %v to run while the list is written; want (0, %v]", ttl, membership.ListLockTTL)
	}
	if n := rdb.Exists(ctx, lock).Val(); n != 0 {
		t.Errorf("the list's lease is still held after the change answered")
	}
}

// stalledLists writes half of a list's changes and then waits for release,
// as an instance killed in the middle of a static list's write leaves the
// list: nothing rolls back.
type stalledLists struct {
	MembershipStore
	rdb     redis.UniversalClient
	reached chan struct{}
	release chan struct{}
}

func (s stalledLists) ApplyList(ctx context.Context, org, seg string, changes []events.Change) error {
	for _, c := range changes[:len(changes)/2] {
		s.rdb.SAdd(ctx, membership.UserSegmentsKey(c.OrgID, c.UserID), c.SegmentID)
		s.rdb.SAdd(ctx, membership.SegmentMembersKey(c.OrgID, c.SegmentID), c.UserID)
	}
	close(s.reached)
	<-s.release
	return context.Canceled
}

// TestStoppedStaticCreateIsBuilding: a static create whose instance dies
// part way through writing the list (here: stalls) leaves a segment with
// part of its list. It must not read as ready: it is building until a
// retry finishes it or the jobs roll it back (processor's
// TestUnfinishedStaticCreateIsRolledBack); a finished create is ready.
func TestStoppedStaticCreateIsBuilding(t *testing.T) {
	rdb := testenv.RedisClient(t)
	stalled := stalledLists{rdb: rdb, reached: make(chan struct{}), release: make(chan struct{})}
	var stall atomic.Bool
	a := newTestAPI(t, rdb, testOptions{membership: func(m MembershipStore) MembershipStore {
		stalled.MembershipStore = m
		return stallingWhen{MembershipStore: m, stalled: stalled, when: &stall}
	}})
	ready := a.as("POST", "/v1/segments", map[string]any{"name": "done", "type": "static", "userIds": []string{"a", "b"}}).mustStatus(t, http.StatusCreated)
	if got := str(ready.body["status"]); got != "ready" {
		t.Errorf("a finished static create answers status %q, want ready", got)
	}
	if got := str(a.as("GET", "/v1/segments/"+str(ready.body["id"]), nil).body["status"]); got != "ready" {
		t.Errorf("a finished static create reads as %q, want ready", got)
	}

	stall.Store(true)
	answered := make(chan response, 1)
	go func() {
		answered <- a.as("POST", "/v1/segments", map[string]any{"name": "cut", "type": "static", "userIds": []string{"u1", "u2", "u3", "u4"}})
	}()
	select {
	case <-stalled.reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the list write was not reached")
	}
	var id string
	for _, c := range a.pub.take() {
		id = c.SegmentID
	}
	if got := str(a.as("GET", "/v1/segments/"+id, nil).body["status"]); got != "building" {
		t.Errorf("a static segment whose list is half written reads as %q, want building", got)
	}
	close(stalled.release)
	<-answered
}

// stallingWhen sends list writes to stalled while when is set.
type stallingWhen struct {
	MembershipStore
	stalled stalledLists
	when    *atomic.Bool
}

func (s stallingWhen) ApplyList(ctx context.Context, org, seg string, changes []events.Change) error {
	if s.when.Load() {
		return s.stalled.ApplyList(ctx, org, seg, changes)
	}
	return s.MembershipStore.ApplyList(ctx, org, seg, changes)
}

// TestUnfinishedStaticCreateRefusesListChanges: the list of a static
// segment whose create stopped part way is not changed by a PUT or a
// members edit (its create's retry finishes it, or the jobs roll it
// back), and the segment can be deleted.
func TestUnfinishedStaticCreateRefusesListChanges(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	d, err := membership.NewDefinitions(rdb).Create(context.Background(), segment.Definition{OrgID: a.org, Name: "cut", Type: segment.TypeStatic, Status: segment.StatusBuilding})
	if err != nil {
		t.Fatal(err)
	}
	a.as("PUT", "/v1/segments/"+d.ID, map[string]any{"userIds": []string{"u1"}}).wantError(t, http.StatusConflict, "segment_busy")
	a.as("POST", "/v1/segments/"+d.ID+"/members", map[string]any{"add": []string{"u1"}}).wantError(t, http.StatusConflict, "segment_busy")
	a.as("PUT", "/v1/segments/"+d.ID, map[string]any{"name": "renamed"}).mustStatus(t, http.StatusOK)
	a.as("DELETE", "/v1/segments/"+d.ID, nil).mustStatus(t, http.StatusNoContent)
}

// TestDeleteForgetsKilledBackfillsUsers: a DELETE of a dynamic segment
// whose backfill's instance was killed takes the segment out of the sets
// of the users that backfill amended and never projected, whom the member
// set does not name.
func TestDeleteForgetsKilledBackfillsUsers(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	ctx := context.Background()
	defs := membership.NewDefinitions(rdb)
	users := membership.NewUsers(rdb)
	var ws []membership.UserWrite
	for _, u := range []string{"u1", "u2"} {
		ws = append(ws, membership.UserWrite{OrgID: a.org, UserID: u, Version: 1, Profile: segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": 2000.0}))})
	}
	if _, err := users.Write(ctx, ws); err != nil {
		t.Fatal(err)
	}
	d, err := defs.Create(ctx, segment.Definition{OrgID: a.org, Name: "rich", Type: segment.TypeDynamic, Status: segment.StatusBuilding,
		Criteria: segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := defs.BeginBackfill(ctx, a.org, d.ID, d.Generation); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"u1", "u2"} {
		if err := rdb.SAdd(ctx, membership.UserSegmentsKey(a.org, u), d.ID).Err(); err != nil {
			t.Fatal(err)
		}
	}
	a.as("DELETE", "/v1/segments/"+d.ID, nil).mustStatus(t, http.StatusNoContent)
	for _, u := range []string{"u1", "u2"} {
		if in := rdb.SIsMember(ctx, membership.UserSegmentsKey(a.org, u), d.ID).Val(); in {
			t.Errorf("user %s's set still holds the deleted segment", u)
		}
	}
}

// TestDeleteOfUnfinishedStaticCreateForgetsItsUsers: a static create killed
// between a chunk's write to the users' own sets and to the member set
// left users holding the segment that the member set does not name; its
// DELETE takes it out of their sets too (those with a stored profile).
func TestDeleteOfUnfinishedStaticCreateForgetsItsUsers(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	ctx := context.Background()
	if _, err := membership.NewUsers(rdb).Write(ctx, []membership.UserWrite{{OrgID: a.org, UserID: "u1", Version: 1,
		Profile: segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": 1.0}))}}); err != nil {
		t.Fatal(err)
	}
	d, err := membership.NewDefinitions(rdb).Create(ctx, segment.Definition{OrgID: a.org, Name: "cut", Type: segment.TypeStatic, Status: segment.StatusBuilding})
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.SAdd(ctx, membership.UserSegmentsKey(a.org, "u1"), d.ID).Err(); err != nil {
		t.Fatal(err)
	}
	a.as("DELETE", "/v1/segments/"+d.ID, nil).mustStatus(t, http.StatusNoContent)
	if rdb.SIsMember(ctx, membership.UserSegmentsKey(a.org, "u1"), d.ID).Val() {
		t.Error("u1's set still holds the deleted segment")
	}
}

// TestTimesAreOfTheWrite: a request that waited (for the list's lock, for
// the revision gate) stamps what it writes with the time it writes it, not
// with its start: updatedAt never goes back past a write answered before,
// and a deletion's exits come after the changes published while it
// waited (consumers may order a segment's events by their "at").
func TestTimesAreOfTheWrite(t *testing.T) {
	ctx := context.Background()
	t.Run("updatedAt of a list change that waited for the lock", func(t *testing.T) {
		rdb := testenv.RedisClient(t)
		a := newTestAPI(t, rdb)
		id := str(a.as("POST", "/v1/segments", map[string]any{"name": "s", "type": "static", "userIds": []string{"u1"}}).mustStatus(t, http.StatusCreated).body["id"])
		// Another change of the list holds its lock, as a members edit on
		// another instance does.
		coord := membership.NewCoordinator(rdb)
		if ok, err := coord.TryLock(ctx, membership.ListLock(a.org, id), "someone-else", 30*time.Second); err != nil || !ok {
			t.Fatalf("lock: %v %v", ok, err)
		}
		a.pub.take()
		put := make(chan response, 1)
		go func() { put <- a.as("PUT", "/v1/segments/"+id, map[string]any{"userIds": []string{"u2"}}) }()
		time.Sleep(300 * time.Millisecond)
		named := a.as("PUT", "/v1/segments/"+id, map[string]any{"name": "renamed"}).mustStatus(t, http.StatusOK)
		time.Sleep(50 * time.Millisecond)
		released := time.Now().Truncate(time.Millisecond)
		if err := coord.Unlock(ctx, membership.ListLock(a.org, id), "someone-else"); err != nil {
			t.Fatal(err)
		}
		listed := (<-put).mustStatus(t, http.StatusOK)
		got := a.as("GET", "/v1/segments/"+id, nil).mustStatus(t, http.StatusOK)
		if str(got.body["updatedAt"]) < str(named.body["updatedAt"]) || str(listed.body["updatedAt"]) < str(named.body["updatedAt"]) {
			t.Errorf("updatedAt went back: the rename answered %s, the list change after it %s, then GET %s",
				named.body["updatedAt"], listed.body["updatedAt"], got.body["updatedAt"])
		}
		for _, c := range a.pub.take() {
			if c.At.Before(released) {
				t.Errorf("the list change's %s of %s at %s, before it had the lock (%s)", c.Direction(), c.UserID, c.At, released.UTC())
			}
		}
	})
	t.Run("updatedAt of a members edit after a clock ahead", func(t *testing.T) {
		rdb := testenv.RedisClient(t)
		a := newTestAPI(t, rdb)
		id := str(a.as("POST", "/v1/segments", map[string]any{"name": "s", "type": "static", "userIds": []string{"u1"}}).mustStatus(t, http.StatusCreated).body["id"])
		// Written by an instance whose clock is an hour ahead.
		ahead := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
		if _, err := membership.NewDefinitions(rdb).Update(ctx, a.org, id, func(d *segment.Definition) error {
			d.UpdatedAt = ahead
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"u2"}}).mustStatus(t, http.StatusOK)
		got := a.as("GET", "/v1/segments/"+id, nil).mustStatus(t, http.StatusOK)
		if at, err := time.Parse(time.RFC3339Nano, str(got.body["updatedAt"])); err != nil || at.Before(ahead) {
			t.Errorf("updatedAt %s after the edit: went back from %s", got.body["updatedAt"], ahead)
		}
	})
	t.Run("a deletion's exits after its gate", func(t *testing.T) {
		var passed atomic.Int64
		a := newTestAPI(t, testenv.RedisClient(t), testOptions{await: func(context.Context, int64) error {
			time.Sleep(300 * time.Millisecond) // an instance finishing a backfill's publication
			passed.Store(time.Now().UnixNano())
			return nil
		}})
		id := str(a.as("POST", "/v1/segments", map[string]any{"name": "s", "type": "static", "userIds": []string{"u1"}}).mustStatus(t, http.StatusCreated).body["id"])
		a.pub.take()
		a.as("DELETE", "/v1/segments/"+id, nil).mustStatus(t, http.StatusNoContent)
		exits := a.pub.take()
		if len(exits) != 1 {
			t.Fatalf("%d changes published, want the one exit", len(exits))
		}
		// Milliseconds: the time events carry.
		if gate := time.Unix(0, passed.Load()).Truncate(time.Millisecond); exits[0].At.Before(gate) {
			t.Errorf("the exit's at %s is before the deletion passed its gate, %s", exits[0].At, gate.UTC())
		}
	})
}

// pausedLists holds the first list write after it is done until release is
// closed, as a slow request's last step (the definition's update) does.
type pausedLists struct {
	MembershipStore
	armed   atomic.Bool
	written chan struct{}
	release chan struct{}
}

func (p *pausedLists) ApplyList(ctx context.Context, org, seg string, changes []events.Change) error {
	err := p.MembershipStore.ApplyList(ctx, org, seg, changes)
	if p.armed.Swap(false) {
		close(p.written)
		<-p.release
	}
	return err
}

// TestMembersEditRacingDeleteAnswersWhatItDid: a members add whose entries
// were published and written, and which a DELETE then follows, must not
// answer 404 "segment not found": the entries went out to analytics (and the
// deletion answered them with exits), so the client must learn that its add
// was made.
func TestMembersEditRacingDeleteAnswersWhatItDid(t *testing.T) {
	rdb := testenv.RedisClient(t)
	p := &pausedLists{written: make(chan struct{}), release: make(chan struct{})}
	a := newTestAPI(t, rdb, testOptions{membership: func(m MembershipStore) MembershipStore { p.MembershipStore = m; return p }})
	id := str(a.as("POST", "/v1/segments", map[string]any{"name": "l", "type": "static", "userIds": []string{"a"}}).mustStatus(t, http.StatusCreated).body["id"])
	a.pub.take()
	edit := make(chan response, 1)
	p.armed.Store(true)
	go func() { edit <- a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"b"}}) }()
	<-p.written
	del := make(chan response, 1)
	go func() { del <- a.as("DELETE", "/v1/segments/"+id, nil) }()
	// A fine poll: the edit is released as soon as the DELETE has begun.
	if !testenv.EventuallyEvery(10*time.Second, 5*time.Millisecond, func() bool { return a.as("GET", "/v1/segments/"+id, nil).status == http.StatusNotFound }) {
		t.Fatal("the DELETE did not begin")
	}
	close(p.release)
	r := <-edit
	(<-del).mustStatus(t, http.StatusNoContent)
	entered := 0
	for _, c := range a.pub.take() {
		if c.UserID == "b" && c.Entered {
			entered++
		}
	}
	if entered == 0 {
		t.Fatal("the add's entry was not published")
	}
	if r.status != http.StatusOK {
		t.Errorf("members add answered %d %s, though its entry for b was published (and answered by the deletion's exit)", r.status, r.raw)
	}
}

// TestAddingAMemberAgainRestoresItsUserSet: a user that a static segment's
// set holds and whose own set lost the segment (an add racing the user's
// deletion, README's known limits) is put right by adding the user to the
// list again, as the README says: its own set holds the segment again, and
// no event is published (the user was a member all along).
func TestAddingAMemberAgainRestoresItsUserSet(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	ctx := context.Background()
	id := str(a.as("POST", "/v1/segments", map[string]any{"name": "l", "type": "static", "userIds": []string{"u1", "u2"}}).mustStatus(t, http.StatusCreated).body["id"])
	a.pub.take()
	// The state the race leaves: in the segment's set, not in the user's own.
	if err := rdb.SRem(ctx, membership.UserSegmentsKey(a.org, "u1"), id).Err(); err != nil {
		t.Fatal(err)
	}
	edit := a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"u1", "u3"}}).mustStatus(t, http.StatusOK)
	if num(edit.body["added"]) != 1 || num(edit.body["size"]) != 3 {
		t.Errorf("edit = %s", edit.raw)
	}
	if got := changeSigns(a.pub.take()); !slices.Equal(got, []string{"+u3"}) {
		t.Errorf("published %v, want only u3's entry", got)
	}
	if got := testenv.SMembers(t, rdb, membership.UserSegmentsKey(a.org, "u1")); !slices.Equal(got, []string{id}) {
		t.Errorf("u1's segments after adding u1 again = %v, want [%s]", got, id)
	}
	us := a.as("GET", "/v1/users/u1/segments", nil).mustStatus(t, http.StatusOK)
	if data, _ := us.body["data"].([]any); len(data) != 1 {
		t.Errorf("GET /v1/users/u1/segments = %s, want the segment", us.raw)
	}
}

// turnPublisher publishes one call at a time, as the Kafka publisher does
// (one writer shared by every organisation's lists and deletions): a call
// waits for the one in progress. Its first call of the organisation org
// holds its turn until release is closed. It records the organisation of
// each call, in the order the calls went out.
type turnPublisher struct {
	turn    chan struct{}
	org     string
	release chan struct{}
	held    atomic.Bool
	waiting atomic.Int32
	mu      sync.Mutex
	calls   []string
}

func newTurnPublisher(org string) *turnPublisher {
	return &turnPublisher{turn: make(chan struct{}, 1), org: org, release: make(chan struct{})}
}

func (p *turnPublisher) Publish(ctx context.Context, cs []events.Change) error {
	p.waiting.Add(1)
	select {
	case p.turn <- struct{}{}:
	case <-ctx.Done():
		p.waiting.Add(-1)
		return ctx.Err()
	}
	p.waiting.Add(-1)
	defer func() { <-p.turn }()
	if cs[0].OrgID == p.org && p.held.CompareAndSwap(false, true) {
		<-p.release
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for range cs {
		p.calls = append(p.calls, cs[0].OrgID)
	}
	return nil
}

// TestLargeListLetsOtherOrganisationsPublish writes a static list of 2,500
// ids while another organisation edits a list of its own: the list's
// changes are published a chunk at a time, so the other organisation's one
// change goes out between two chunks rather than after the whole list (at
// 100,000 ids, the whole list held the shared writer for most of a second
// on a local broker, and the members of the list all held in memory at once).
func TestLargeListLetsOtherOrganisationsPublish(t *testing.T) {
	rdb := testenv.RedisClient(t)
	var pub *turnPublisher
	a := newTestAPI(t, rdb, testOptions{publisher: publisherFunc(func(ctx context.Context, cs []events.Change) error {
		return pub.Publish(ctx, cs)
	})})
	pub = newTurnPublisher(a.org)
	small := str(a.do("POST", "/v1/segments", a.otherKey, map[string]any{"name": "small", "type": "static", "userIds": []string{}}).mustStatus(t, http.StatusCreated).body["id"])
	pub.calls = nil
	created := make(chan response, 1)
	go func() {
		created <- a.as("POST", "/v1/segments", map[string]any{"name": "big", "type": "static", "userIds": ids("u", 2500)})
	}()
	if !testenv.Eventually(10*time.Second, pub.held.Load) {
		t.Fatal("the list's changes were not published")
	}
	edited := make(chan response, 1)
	go func() {
		edited <- a.do("POST", "/v1/segments/"+small+"/members", a.otherKey, map[string]any{"add": []string{"x"}})
	}()
	if !testenv.Eventually(10*time.Second, func() bool { return pub.waiting.Load() == 1 }) {
		t.Fatal("the other organisation's change did not reach the publisher")
	}
	close(pub.release)
	(<-created).mustStatus(t, http.StatusCreated)
	(<-edited).mustStatus(t, http.StatusOK)
	pub.mu.Lock()
	defer pub.mu.Unlock()
	at := slices.Index(pub.calls, a.otherOrg)
	if n := len(pub.calls); n != 2501 || at < 0 {
		t.Fatalf("%d changes published, the other organisation's at %d; want 2,501", n, at)
	}
	if after := len(pub.calls) - 1 - at; after == 0 {
		t.Errorf("the other organisation's change went out after all 2,500 of the list's: it waited for the whole list")
	}
}

// publisherFunc is a Publisher of a function.
type publisherFunc func(ctx context.Context, cs []events.Change) error

func (f publisherFunc) Publish(ctx context.Context, cs []events.Change) error { return f(ctx, cs) }
