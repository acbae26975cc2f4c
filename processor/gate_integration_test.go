package processor_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// TestRevisionGate waits on real heartbeats in a database of its own, so
// that no other test's instances take part.
func TestRevisionGate(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t), DB: 9})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	coord := membership.NewCoordinator(rdb)
	beat := func(id string, rev int64, at time.Time) {
		t.Helper()
		if err := coord.Beat(ctx, id, rev, at); err != nil {
			t.Fatal(err)
		}
	}
	gate := processor.NewRevisionGate(coord, nil)
	beat("a", 5, time.Now())
	beat("b", 7, time.Now())
	if err := gate.Wait(ctx, 5); err != nil {
		t.Fatalf("Wait(5) with instances at 5 and 7: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- gate.Wait(ctx, 6) }()
	select {
	case err := <-done:
		t.Fatalf("Wait(6) returned %v while instance a is at 5", err)
	case <-time.After(400 * time.Millisecond):
	}
	beat("a", 6, time.Now())
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Wait(6) after a moved to 6: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait(6) did not return within 5 s of a moving to 6")
	}
	// An instance that stopped beating a minute ago is gone, not waited for.
	beat("c", 1, time.Now().Add(-time.Minute))
	if err := gate.Wait(ctx, 6); err != nil {
		t.Fatalf("Wait(6) with a dead instance at 1: %v", err)
	}
	// Waiting ends with the context.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := gate.Wait(cctx, 8); err == nil {
		t.Fatal("Wait(8) returned nil with every instance behind")
	}
}

// racingSource is the definitions as one instance's registry reads them,
// with a criteria change (a PUT served by any instance) landing between the
// registry's read of the revision and its read of the definitions: the
// definition is written first and the revision bumped just after, two
// writes (different cluster slots), so a reload can meet exactly this.
type racingSource struct {
	*membership.Definitions
	once   sync.Once
	change func()
}

func (s *racingSource) All(ctx context.Context) ([]segment.Definition, error) {
	s.once.Do(s.change)
	return s.Definitions.All(ctx)
}

func (s *racingSource) OrgDefinitions(ctx context.Context, org string) ([]segment.Definition, error) {
	s.once.Do(s.change)
	return s.Definitions.OrgDefinitions(ctx, org)
}

// writeHook runs before the write of the given user at the given version.
type writeHook struct {
	*membership.Users
	user    string
	version int64
	once    sync.Once
	before  func()
}

func (h *writeHook) Write(ctx context.Context, ws []membership.UserWrite) ([]bool, error) {
	for _, w := range ws {
		if w.UserID == h.user && w.Version == h.version {
			h.once.Do(h.before)
		}
	}
	return h.Users.Write(ctx, ws)
}

// TestBackfillGateUsesRevisionOfItsGeneration: instance B evaluates a batch
// with the old criteria (its snapshot and its batch are at revision R) and
// writes it a moment later; meanwhile a PUT changes the criteria (revision
// R+1) and instance A's registry reloads across the PUT's two writes, so
// that its snapshot says R but holds the new generation. A's backfill of
// that generation must wait until B evaluates with the new criteria (B's
// batch of R done), as the README promises ("starts only when every live
// instance is at the new revision"). Waiting for R, it would pass at once,
// and B's write of what the old criteria decide would land after it: the
// member set left wrong. In the second case the PUT's writer has not moved
// the revision yet when the backfill reads it (it stalled, or died, between
// its two writes): reading the revision is not enough there either.
func TestBackfillGateUsesRevisionOfItsGeneration(t *testing.T) {
	for _, tc := range []struct {
		name string
		// stalled makes the backfill's store report the revision as the
		// PUT's writer left it before moving it.
		stalled bool
	}{
		{name: "registry reloaded across the change's two writes"},
		{name: "the change's writer stalled before moving the revision", stalled: true},
	} {
		t.Run(tc.name, func(t *testing.T) { backfillGateCase(t, tc.stalled) })
	}
}

// stalledRevision is a definitions store whose revision has not moved past
// rev, as while a change's writer is between its definition's write and its
// move of the revision.
type stalledRevision struct {
	processor.JobDefinitions
	rev int64
}

func (s stalledRevision) Revision(context.Context) (int64, error) { return s.rev, nil }

func backfillGateCase(t *testing.T, stalled bool) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	seg := r.segment(t, "pts", atLeast(1000))
	coord := membership.NewCoordinator(r.rdb)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	done := make(chan error, 1)
	var beatB sync.WaitGroup
	stopBeat := make(chan struct{})
	hook := &writeHook{Users: r.users, user: "u0", version: 2, before: func() {
		// B's heartbeat, as its jobs publish it: the oldest revision of its
		// batches in flight (this one's: R).
		beatB.Add(1)
		go func() {
			defer beatB.Done()
			for {
				_ = coord.Beat(ctx, "B-"+r.org, r.proc.AppliedRevision(), time.Now())
				select {
				case <-stopBeat:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
		time.Sleep(200 * time.Millisecond)
		// Instance A starts (or reloads) while the PUT is served.
		src := &racingSource{Definitions: r.defs, change: func() {
			r.newCriteria(t, seg, atLeast(2000))
		}}
		regA := processor.NewRegistry(src, time.Hour, log)
		if err := regA.Reload(ctx); err != nil {
			t.Error(err)
			return
		}
		snap := regA.Current()
		cs := snap.Org(r.org).Segments[seg]
		now, _ := r.defs.Revision(ctx)
		t.Logf("A's snapshot: revision %d, generation %d; stored revision %d; B at %d", snap.Revision, cs.Def.Generation, now, r.proc.AppliedRevision())
		o := jobsOf{pub: r.publisher(t), registry: regA}
		if stalled {
			o.defs = stalledRevision{JobDefinitions: r.defs, rev: snap.Revision}
		}
		jobs := r.newJobs(t, o)
		go func() { done <- jobs.Backfill(ctx, r.org, cs, snap.Revision) }()
		// B's write comes a moment later (a few ms in production; here it
		// waits for the backfill, or 3 s).
		select {
		case err := <-done:
			t.Logf("backfill ended before B's write: %v", err)
			done <- err
		case <-time.After(3 * time.Second):
		}
	}}
	r.startWith(t, func(c *processor.Config) { c.Users = hook })
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+r.org+`","userId":"u0","version":1,"profile":{"points":2500}}`)
	r.waitVersion(t, "u0", 1)
	r.produce(t, `{"eventId":"e2","type":"profile.updated","orgId":"`+r.org+`","userId":"u0","version":2,"changes":{"points":1500}}`)
	r.waitVersion(t, "u0", 2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	close(stopBeat)
	beatB.Wait()
	_ = coord.Leave(ctx, "B-"+r.org)
	r.waitReady(t, seg, 10*time.Second)
	if in, err := r.rdb.SIsMember(ctx, membership.SegmentMembersKey(r.org, seg), "u0").Result(); err != nil || in {
		t.Errorf("u0 (points 1500) is in segment %s, whose criteria are now points >= 2000: %v (%v)", seg, in, err)
	}
	r.verifyClean(t)
}

// TestBackfillNotHeldDoesNotMoveRevision: an instance whose backfill of a
// segment finds another instance holding its lease moves no revision (each
// move makes every instance load the organisation again): only the holder
// moves it, once it has found the generation still building.
func TestBackfillNotHeldDoesNotMoveRevision(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "rich", Type: segment.TypeDynamic, Criteria: atLeast(1000), Status: segment.StatusBuilding})
	if err != nil {
		t.Fatal(err)
	}
	// A's backfill holds the lease.
	coord := membership.NewCoordinator(r.rdb)
	if ok, err := coord.TryLock(ctx, "backfill:"+r.org+":"+d.ID, "instance-A/1/1", time.Minute); err != nil || !ok {
		t.Fatal(ok, err)
	}
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, 250*time.Millisecond, log)
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	before, _ := r.defs.Revision(ctx)
	jobs := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg})
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	go reg.Run(rctx)
	_ = jobs.Run(rctx)
	after, _ := r.defs.Revision(ctx)
	if after-before > 1 {
		t.Errorf("the revision moved %d times in 3 s on an instance that holds no backfill (another instance builds the segment)", after-before)
	}
}

// failingMove is a definitions store whose MoveRevision fails (Redis
// failing for that call), counting the calls.
// failingMove is a definitions store that cannot move the revision.
type failingMove struct {
	processor.JobDefinitions
	calls atomic.Int64
}

func (f *failingMove) MoveRevision(context.Context, string) (int64, error) {
	f.calls.Add(1)
	return 0, errors.New("redis: connection refused")
}

// TestBackfillMoveFailureBacksOff: a backfill whose start fails is retried
// with a growing pause (backfillRetries: "an outage must not restart them
// twice a second for its whole length"). A failing MoveRevision in
// startBackfills skips backfillRetries: it is tried, and a warning logged,
// on every 500 ms tick for every building segment.
// TestBackfillMoveFailureBacksOff: a backfill whose move of the revision
// fails (Redis failing) is retried with the backoff of any failed
// backfill, not at every tick.
func TestBackfillMoveFailureBacksOff(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c"} {
		if _, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: n, Type: segment.TypeDynamic, Criteria: atLeast(1000), Status: segment.StatusBuilding}); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(testLogWriter(), nil))
	reg := processor.NewRegistry(r.defs, time.Second, log)
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	defs := &failingMove{JobDefinitions: r.defs}
	jobs := r.newJobs(t, jobsOf{pub: r.publisher(t), registry: reg, defs: defs})
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = jobs.Run(rctx)
	// With the backoff (500 ms, x1.5, up to 10 s) each segment is tried
	// about 5 times in 5 s; 3 segments: ~15.
	if n := defs.calls.Load(); n > 24 {
		t.Errorf("MoveRevision tried %d times in 5 s for 3 building segments: no backoff", n)
	}
}
