package membership_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
)

// TestLeases: a lease goes to one owner at a time; its holder extends it;
// a holder whose lease lapsed cannot extend it, even when no one holds it
// now, since another may have held it meanwhile.
func TestLeases(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		c := membership.NewCoordinator(rdb)
		name := testenv.UniqueName(t, "lease")
		t.Cleanup(func() { _ = c.Unlock(context.Background(), name, "a") })
		steps := []struct {
			name string
			do   func() (bool, error)
			want bool
		}{
			{"a takes it", func() (bool, error) { return c.TryLock(ctx, name, "a", time.Minute) }, true},
			{"b cannot take it", func() (bool, error) { return c.TryLock(ctx, name, "b", time.Minute) }, false},
			{"b cannot extend it", func() (bool, error) { return c.Extend(ctx, name, "b", time.Minute) }, false},
			{"a extends it", func() (bool, error) { return c.Extend(ctx, name, "a", 50*time.Millisecond) }, true},
			{"a's lease lapses", func() (bool, error) {
				// The embedded Redis expires keys at its clock's ticks, late
				// by up to a tick when it holds many keys.
				testenv.Eventually(10*time.Second, func() bool { return rdb.Exists(ctx, "lock:{"+name+"}").Val() == 0 })
				return c.Extend(ctx, name, "a", time.Minute)
			}, false},
			{"a takes it again", func() (bool, error) { return c.TryLock(ctx, name, "a", time.Minute) }, true},
		}
		for _, st := range steps {
			got, err := st.do()
			if err != nil || got != st.want {
				t.Fatalf("%s: %v, %v; want %v", st.name, got, err, st.want)
			}
		}
	})
}

// TestKeepLease: a kept lease is renewed past its ttl while kept, is not
// given up when the keeping stops, and a lease found taken by another
// owner ends the keeper's context with ErrLeaseLost.
func TestKeepLease(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		c := membership.NewCoordinator(rdb)
		name := testenv.UniqueName(t, "kept")
		// Long enough that a renewal held up on a loaded machine (a third
		// of it apart, so one may come up to two thirds late) still lands.
		const ttl = 2 * time.Second
		if ok, err := c.TryLock(ctx, name, "a", ttl); !ok || err != nil {
			t.Fatalf("take: %v, %v", ok, err)
		}
		held, stop := membership.KeepLease(ctx, c, name, "a", ttl)
		// Renewed: the lease is still a's past its ttl.
		time.Sleep(ttl * 3 / 2)
		if ok, err := c.TryLock(ctx, name, "b", time.Minute); ok || err != nil {
			t.Fatalf("b took a kept lease past its ttl: %v, %v", ok, err)
		}
		if held.Err() != nil {
			t.Fatalf("the kept lease's context ended: %v", context.Cause(held))
		}
		stop()
		if ok, err := c.TryLock(ctx, name, "b", time.Minute); ok || err != nil {
			t.Fatalf("b took the lease as soon as the keeping stopped: %v, %v", ok, err)
		}
		if err := c.Unlock(ctx, name, "a"); err != nil {
			t.Fatal(err)
		}

		// Lost: b holds it when a's next renewal comes.
		if ok, err := c.TryLock(ctx, name, "a", ttl); !ok || err != nil {
			t.Fatalf("take again: %v, %v", ok, err)
		}
		held, stop = membership.KeepLease(ctx, c, name, "a", ttl)
		defer stop()
		if err := c.Unlock(ctx, name, "a"); err != nil {
			t.Fatal(err)
		}
		if ok, err := c.TryLock(ctx, name, "b", time.Minute); !ok || err != nil {
			t.Fatalf("b takes it: %v, %v", ok, err)
		}
		t.Cleanup(func() { _ = c.Unlock(context.Background(), name, "b") })
		select {
		case <-held.Done():
			if cause := context.Cause(held); !errors.Is(cause, membership.ErrLeaseLost) {
				t.Fatalf("context ended with %v; want ErrLeaseLost", cause)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the keeper's context still runs 10 s after another owner took the lease")
		}
	})
}

// unreachable is a lease store whose node cannot be reached: every
// renewal fails with an error.
type unreachable struct{}

func (unreachable) Extend(context.Context, string, string, time.Duration) (bool, error) {
	return false, errors.New("dial tcp: i/o timeout")
}

// TestKeptLeaseEndsBeforeItCanLapse: renewals that keep failing let the
// lease lapse after ttl, when another holder may take it (a DELETE waiting
// for the list, whose members it then removes). The holder's context must
// end before then, not go on writing the list beside the new holder until
// a renewal that reaches Redis finds the lease taken.
func TestKeptLeaseEndsBeforeItCanLapse(t *testing.T) {
	// Long enough that the ticker, held up on a loaded machine, still
	// ends the context before the lease could lapse.
	const ttl = 3 * time.Second
	taken := time.Now()
	held, stop := membership.KeepLease(context.Background(), unreachable{}, "list:o:s", "a", ttl)
	defer stop()
	select {
	case <-held.Done():
		if lapse := taken.Add(ttl); time.Now().After(lapse) {
			t.Errorf("the context ended %v after the lease could lapse", time.Since(lapse))
		}
	case <-time.After(3 * ttl):
		t.Fatalf("the holder's context still runs %v after its lease was taken, %v after it may have lapsed, every renewal having failed", 3*ttl, 2*ttl)
	}
}

// slowFailing renews the lease once, fails fast once, then takes block to
// fail, as a renewal does whose connection dials or reads until its
// timeouts and retries (3 s each, two retries: ~10 s of a 30 s lease).
type slowFailing struct {
	calls *atomic.Int32
	block time.Duration
}

func (s slowFailing) Extend(ctx context.Context, _, _ string, _ time.Duration) (bool, error) {
	switch s.calls.Add(1) {
	case 1:
		return true, nil
	case 2:
		return false, errors.New("connection refused")
	}
	select {
	case <-time.After(s.block):
	case <-ctx.Done():
	}
	return false, errors.New("i/o timeout")
}

// TestKeptLeaseEndsBeforeItCanLapseWhenARenewalHangs: a renewal that takes
// long to fail must not keep the holder working past the lease's lapse.
func TestKeptLeaseEndsBeforeItCanLapseWhenARenewalHangs(t *testing.T) {
	const ttl = 3 * time.Second
	var calls atomic.Int32
	held, stop := membership.KeepLease(context.Background(), slowFailing{calls: &calls, block: ttl / 2}, "list:o:s", "a", ttl)
	defer stop()
	var lapse time.Time
	// A fine poll: the lapse below is reckoned from when the second call is seen.
	if !testenv.EventuallyEvery(10*time.Second, time.Millisecond, func() bool { return calls.Load() >= 2 }) {
		t.Fatal("the lease was not renewed twice within 10 s")
	}
	// The first renewal succeeded about ttl/3 after the lease was taken.
	lapse = time.Now().Add(-ttl / 3).Add(ttl)
	select {
	case <-held.Done():
		if time.Now().After(lapse) {
			t.Errorf("the context ended %v after the lease could lapse", time.Since(lapse).Round(time.Millisecond))
		}
	case <-time.After(3 * ttl):
		t.Fatal("the holder's context did not end")
	}
}

// TestBeats: an instance that beat within the age is live, with its
// revision; one silent for ten times the age is pruned by LiveRevisions;
// one that left is gone; and each beat's stored value differs from the one
// before, even at the same instant, which is how Beats' readers tell a live
// instance.
func TestBeats(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		c := membership.NewCoordinator(rdb)
		now := time.Now()
		id := func(s string) string { return testenv.UniqueName(t, s) }
		live, silent, gone, left := id("live"), id("silent"), id("gone"), id("left")
		ours := func(ids []string) []string {
			return slices.DeleteFunc(slices.Sorted(slices.Values(ids)), func(s string) bool { return !slices.Contains([]string{live, silent, gone, left}, s) })
		}
		for _, b := range []struct {
			id  string
			rev int64
			at  time.Time
		}{{live, 7, now.Add(-time.Second)}, {silent, 5, now.Add(-5 * time.Second)}, {gone, 3, now.Add(-time.Minute)}, {left, 9, now}} {
			if err := c.Beat(ctx, b.id, b.rev, b.at); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Leave(ctx, left); err != nil {
			t.Fatal(err)
		}
		before, err := c.Beats(ctx)
		if err != nil || !slices.Equal(ours(slices.Collect(maps.Keys(before))), ours([]string{live, silent, gone})) {
			t.Fatalf("beats = %v, %v; want %s, %s and %s", before, err, live, silent, gone)
		}
		revs, err := c.LiveRevisions(ctx, now, 3*time.Second)
		if err != nil || revs[live] != 7 || len(ours(slices.Collect(maps.Keys(revs)))) != 1 {
			t.Errorf("live revisions = %v, %v; want %s at 7 alone of ours", revs, err, live)
		}
		// The same instant again: the value still changes.
		if err := c.Beat(ctx, live, 7, now.Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		after, err := c.Beats(ctx)
		if err != nil || after[live] == before[live] || after[silent] != before[silent] {
			t.Errorf("beats after %s beat again at the same instant: %v, %v (before: %v); want its value changed, %s's not", live, after, err, before, silent)
		}
		if _, ok := after[gone]; ok {
			t.Errorf("%s, silent for ten times the age, not pruned: %v", gone, after)
		}
		if revs, err := c.LiveRevisions(ctx, now, 3*time.Second); err != nil || revs[live] != 7 {
			t.Errorf("live revisions after a numbered beat = %v, %v; want %s at 7", revs, err, live)
		}
		for _, i := range []string{live, silent} {
			_ = c.Leave(ctx, i)
		}
	})
}
