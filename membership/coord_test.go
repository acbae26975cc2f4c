package membership_test

import (
	"context"
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
			{"a's lease lapses", func() (bool, error) { time.Sleep(100 * time.Millisecond); return c.Extend(ctx, name, "a", time.Minute) }, false},
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
