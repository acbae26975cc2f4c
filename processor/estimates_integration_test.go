package processor_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// flakyEstimates fails the next failures estimate writes of its
// organisation and counts the ones that reach Redis.
type flakyEstimates struct {
	*membership.Definitions
	org      string
	failures atomic.Int64
	written  atomic.Int64
}

func (f *flakyEstimates) SetEstimatedSize(ctx context.Context, org, id string, generation, n int64) error {
	if org == f.org {
		if f.failures.Add(-1) >= 0 {
			return errors.New("injected failure")
		}
		f.written.Add(1)
	}
	return f.Definitions.SetEstimatedSize(ctx, org, id, generation, n)
}

// estimateRig is an organisation with one static segment, for the refresh
// of estimatedSize.
func estimateRig(t *testing.T) (*rig, segment.Definition) {
	t.Helper()
	r := newRig(t, testenv.RedisClient(t))
	d, err := r.defs.Create(context.Background(), segment.Definition{OrgID: r.org, Name: "s", Type: segment.TypeStatic, Status: segment.StatusReady})
	if err != nil {
		t.Fatal(err)
	}
	return r, d
}

func (r *rig) addMembers(t *testing.T, seg string, users ...any) {
	t.Helper()
	if err := r.rdb.SAdd(context.Background(), membership.SegmentMembersKey(r.org, seg), users...).Err(); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) estimatedSize(t *testing.T, seg string) int64 {
	t.Helper()
	d, err := r.defs.Get(context.Background(), r.org, seg)
	if err != nil {
		t.Fatal(err)
	}
	return d.EstimatedSize
}

// TestEstimateIntervalShortened: an operator lowers
// SEGMENTD_ESTIMATE_INTERVAL (from a day to a second) and restarts; the new
// instances refresh estimatedSize at the new interval instead of waiting
// out the lease that the old setting left.
func TestEstimateIntervalShortened(t *testing.T) {
	r, d := estimateRig(t)
	ctx := context.Background()
	r.newJobs(t, jobsOf{estimateInterval: 24 * time.Hour}).RefreshEstimates(ctx)
	r.addMembers(t, d.ID, "u1", "u2", "u3")
	r.newJobs(t, jobsOf{estimateInterval: time.Second}).RefreshEstimates(ctx)
	if got := r.estimatedSize(t, d.ID); got != 3 {
		t.Fatalf("estimatedSize = %d after a restart with a 1 s interval; want 3", got)
	}
}

// TestEstimateRefreshedOneIntervalOn checks that a refresh one interval
// after the last finds that refresh's lease gone. A lease of exactly the
// interval outlived the next tick by the time the refresh took to reach
// the organisation, and the refresh came every other interval.
func TestEstimateRefreshedOneIntervalOn(t *testing.T) {
	r, d := estimateRig(t)
	ctx := context.Background()
	const interval = time.Second
	j := r.newJobs(t, jobsOf{estimateInterval: interval})
	j.RefreshEstimates(ctx)
	// The tick one interval on (less a twentieth: the refresh above may
	// have reached the organisation a little after the tick).
	next := time.Now().Add(interval - interval/20)
	r.addMembers(t, d.ID, "u1", "u2")
	time.Sleep(time.Until(next))
	j.RefreshEstimates(ctx)
	if got := r.estimatedSize(t, d.ID); got != 2 {
		t.Fatalf("estimatedSize = %d one interval after the last refresh; want 2", got)
	}
}

// TestEstimateFailureRetriedNextTick checks that a refresh whose write
// fails gives its lease back: the next tick refreshes, not one a whole
// interval later.
func TestEstimateFailureRetriedNextTick(t *testing.T) {
	r, d := estimateRig(t)
	ctx := context.Background()
	defs := &flakyEstimates{Definitions: r.defs, org: r.org}
	defs.failures.Store(1)
	j := r.newJobs(t, jobsOf{defs: defs, estimateInterval: time.Hour})
	r.addMembers(t, d.ID, "u1")
	j.RefreshEstimates(ctx)
	if got := r.estimatedSize(t, d.ID); got != 0 || defs.written.Load() != 0 {
		t.Fatalf("estimatedSize = %d after a failed refresh; want 0", got)
	}
	j.RefreshEstimates(ctx)
	if got := r.estimatedSize(t, d.ID); got != 1 {
		t.Fatalf("estimatedSize = %d on the tick after a failed refresh; want 1", got)
	}
}

// TestEstimateSkipsUnsettledSegments: a refresh that comes while a static
// list is being changed (its lease held: a replacement adds the new list
// before it removes the old, so the set holds both for a moment) or while
// a dynamic segment is being built (its set holds part of its members)
// leaves the estimate as it was, rather than record for a whole interval a
// size the segment never had; the next refresh after it settles records it.
func TestEstimateSkipsUnsettledSegments(t *testing.T) {
	for _, tc := range []struct {
		name string
		// unsettled creates a segment in its unsettled state and returns
		// it, and the end of that state.
		unsettled func(t *testing.T, r *rig) (string, func())
	}{
		{name: "static list being changed", unsettled: func(t *testing.T, r *rig) (string, func()) {
			ctx := context.Background()
			d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "s", Type: segment.TypeStatic, Status: segment.StatusReady})
			if err != nil {
				t.Fatal(err)
			}
			lock := membership.NewCoordinator(r.rdb)
			if ok, err := lock.TryLock(ctx, membership.ListLock(r.org, d.ID), "a PUT", membership.ListLockTTL); err != nil || !ok {
				t.Fatal(ok, err)
			}
			return d.ID, func() {
				if err := lock.Unlock(ctx, membership.ListLock(r.org, d.ID), "a PUT"); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{name: "dynamic segment being built", unsettled: func(t *testing.T, r *rig) (string, func()) {
			ctx := context.Background()
			d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "b", Type: segment.TypeDynamic, Criteria: atLeast(1), Status: segment.StatusBuilding})
			if err != nil {
				t.Fatal(err)
			}
			return d.ID, func() {
				if err := r.defs.MarkReady(ctx, r.org, d.ID, d.Generation); err != nil {
					t.Fatal(err)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testenv.RedisClient(t))
			ctx := context.Background()
			seg, settle := tc.unsettled(t, r)
			r.addMembers(t, seg, "u1", "u2", "u3")
			const interval = time.Second
			j := r.newJobs(t, jobsOf{estimateInterval: interval})
			j.RefreshEstimates(ctx)
			if got := r.estimatedSize(t, seg); got != 0 {
				t.Errorf("estimatedSize = %d, recorded while the segment was unsettled; want it left at 0", got)
			}
			settle()
			time.Sleep(interval)
			j.RefreshEstimates(ctx)
			if got := r.estimatedSize(t, seg); got != 3 {
				t.Errorf("estimatedSize = %d at the first refresh after the segment settled; want 3", got)
			}
		})
	}
}
