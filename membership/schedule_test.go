package membership_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
)

// TestScheduleOnlyMovesEarlier: a write moves a timer earlier, never later;
// a claim leases it, and Done moves it to the next flip unless it was
// rescheduled since.
func TestScheduleOnlyMovesEarlier(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.UniqueName(t, "org")
		s := membership.NewSchedules(rdb)
		base := time.UnixMilli(1_800_000_000_000)
		at := func(user string) time.Time {
			t.Helper()
			ms, err := rdb.ZScore(ctx, membership.ScheduleKey(org), user).Result()
			if err != nil {
				t.Fatalf("timer of %s: %v", user, err)
			}
			return time.UnixMilli(int64(ms))
		}
		steps := []struct {
			name string
			due  time.Time
			want time.Time
		}{
			{"first", base.Add(time.Hour), base.Add(time.Hour)},
			{"later: stays", base.Add(2 * time.Hour), base.Add(time.Hour)},
			{"earlier: moves", base.Add(time.Minute), base.Add(time.Minute)},
		}
		for _, st := range steps {
			if err := s.Schedule(ctx, []membership.Due{{OrgID: org, UserID: "u1", At: st.due}}); err != nil {
				t.Fatal(err)
			}
			if got := at("u1"); !got.Equal(st.want) {
				t.Fatalf("%s: timer at %v, want %v", st.name, got, st.want)
			}
		}
		claimed, err := s.Claim(ctx, org, base.Add(time.Hour), 30*time.Second, 10)
		if err != nil || len(claimed) != 1 {
			t.Fatalf("claimed %v, %v", claimed, err)
		}
		if err := s.Done(ctx, claimed[0], base.Add(3*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if got := at("u1"); !got.Equal(base.Add(3 * time.Hour)) {
			t.Fatalf("after Done, timer at %v, want the next flip %v", got, base.Add(3*time.Hour))
		}
	})
}
