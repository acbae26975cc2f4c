package membership_test

import (
	"context"
	"slices"
	"strings"
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
		org := testenv.Org(t, rdb, "org")
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
		claimed, err := s.Claim(ctx, org, "", base.Add(time.Hour), 30*time.Second, 10)
		if err != nil || len(claimed) != 1 {
			t.Fatalf("claimed %v, %v", claimed, err)
		}
		if err := s.Done(ctx, claimed, []time.Time{base.Add(3 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if got := at("u1"); !got.Equal(base.Add(3 * time.Hour)) {
			t.Fatalf("after Done, timer at %v, want the next flip %v", got, base.Add(3*time.Hour))
		}
	})
}

// TestClaimKeepsItsFlip: a claim that never finished is taken again for the
// same flip once its lease ends; a timer moved earlier in between is taken
// for its new flip, with the unfinished one in Earlier; Done forgets both.
func TestClaimKeepsItsFlip(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		s := membership.NewSchedules(rdb)
		base := time.UnixMilli(1_800_000_000_000)
		lease := 30 * time.Second
		claim := func(now time.Time) membership.Claimed {
			t.Helper()
			claimed, err := s.Claim(ctx, org, "", now, lease, 10)
			if err != nil || len(claimed) != 1 {
				t.Fatalf("claim at %v: %v, %v; want one timer", now, claimed, err)
			}
			return claimed[0]
		}
		schedule := func(at time.Time) {
			t.Helper()
			if err := s.Schedule(ctx, []membership.Due{{OrgID: org, UserID: "u1", At: at}}); err != nil {
				t.Fatal(err)
			}
		}
		check := func(name string, c membership.Claimed, at time.Time, earlier ...time.Time) {
			t.Helper()
			if !c.At.Equal(at) || len(c.Earlier) != len(earlier) {
				t.Fatalf("%s: claimed for %v, earlier %v; want %v, earlier %v", name, c.At, c.Earlier, at, earlier)
			}
			for i := range earlier {
				if !c.Earlier[i].Equal(earlier[i]) {
					t.Fatalf("%s: earlier %v, want %v", name, c.Earlier, earlier)
				}
			}
		}
		flip := base.Add(time.Hour)
		schedule(flip)
		first := claim(flip)
		check("first claim", first, flip)
		if claimed, err := s.Claim(ctx, org, "", flip.Add(lease/2), lease, 10); err != nil || len(claimed) != 0 {
			t.Fatalf("claim within the lease: %v, %v; want none", claimed, err)
		}
		retry := claim(flip.Add(lease + time.Second))
		check("retry after the lease", retry, flip)

		moved := flip.Add(lease + 10*time.Second)
		schedule(moved) // earlier than the retry's lease
		third := claim(moved)
		check("timer moved since", third, moved, flip)
		unfinished, err := s.Unfinished(ctx, org, time.Time{})
		if err != nil || len(unfinished) != 1 || !slices.EqualFunc(unfinished["u1"], []time.Time{moved, flip}, time.Time.Equal) {
			t.Fatalf("unfinished: %v, %v; want u1 at %v then %v", unfinished, err, moved, flip)
		}
		// Within the third claim's lease, and past it.
		if live, err := s.Unfinished(ctx, org, moved.Add(lease/2)); err != nil || len(live) != 0 {
			t.Fatalf("unfinished past their lease, within it: %v, %v; want none", live, err)
		}
		if ended, err := s.Unfinished(ctx, org, moved.Add(lease)); err != nil || len(ended) != 1 {
			t.Fatalf("unfinished past their lease, after it: %v, %v; want u1", ended, err)
		}
		if err := s.Done(ctx, []membership.Claimed{third}, []time.Time{{}}); err != nil {
			t.Fatal(err)
		}
		if n, err := rdb.HLen(ctx, membership.ClaimsKey(org)).Result(); err != nil || n != 0 {
			t.Fatalf("claim records after Done: %d, %v; want none", n, err)
		}
		if unfinished, err := s.Unfinished(ctx, org, time.Time{}); err != nil || len(unfinished) != 0 {
			t.Fatalf("unfinished after Done: %v, %v; want none", unfinished, err)
		}
		next := moved.Add(time.Hour)
		schedule(next)
		check("claim after Done", claim(next), next)
	})
}

// TestScheduleDuringClaim: an instant scheduled while the timer is claimed,
// later than the claim's lease (which is then the timer's score), survives
// the claim's Done, which would otherwise put its own next flip, computed
// before, or remove the timer.
func TestScheduleDuringClaim(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		s := membership.NewSchedules(rdb)
		base := time.UnixMilli(1_800_000_000_000)
		tests := map[string]struct {
			next, during, want time.Time // zero next: the claim found no further flip
		}{
			"no next flip":         {time.Time{}, base.Add(time.Hour), base.Add(time.Hour)},
			"next flip later":      {base.Add(2 * time.Hour), base.Add(time.Hour), base.Add(time.Hour)},
			"next flip earlier":    {base.Add(time.Hour), base.Add(2 * time.Hour), base.Add(time.Hour)},
			"during, within lease": {time.Time{}, base.Add(10 * time.Second), base.Add(10 * time.Second)},
			// The claim's next flip, earlier still (already passed: a retry
			// found it), must fire at the next round, not at the later one.
			"during, within lease, next flip earlier": {base.Add(5 * time.Second), base.Add(10 * time.Second), base.Add(5 * time.Second)},
			"during, within lease, next flip later":   {base.Add(20 * time.Second), base.Add(10 * time.Second), base.Add(10 * time.Second)},
		}
		for name, tc := range tests {
			t.Run(name, func(t *testing.T) {
				user := "u-" + name
				if err := s.Schedule(ctx, []membership.Due{{OrgID: org, UserID: user, At: base}}); err != nil {
					t.Fatal(err)
				}
				claimed, err := s.Claim(ctx, org, "", base, 30*time.Second, 10)
				if err != nil || len(claimed) != 1 {
					t.Fatalf("claimed %v, %v", claimed, err)
				}
				if err := s.Schedule(ctx, []membership.Due{{OrgID: org, UserID: user, At: tc.during}}); err != nil {
					t.Fatal(err)
				}
				if err := s.Done(ctx, claimed, []time.Time{tc.next}); err != nil {
					t.Fatal(err)
				}
				ms, err := rdb.ZScore(ctx, membership.ScheduleKey(org), user).Result()
				if err != nil || !time.UnixMilli(int64(ms)).Equal(tc.want) {
					t.Errorf("timer at %v (%v), want %v", time.UnixMilli(int64(ms)), err, tc.want)
				}
				if n, err := rdb.HLen(ctx, membership.PendingKey(org)).Result(); err != nil || n != 0 {
					t.Errorf("%d pending instants left (%v), want none", n, err)
				}
				if err := rdb.ZRem(ctx, membership.ScheduleKey(org), user).Err(); err != nil {
					t.Fatal(err)
				}
			})
		}
	})
}

// TestClaimsWithOneLease: two claims of one timer can get the same lease
// (two instances in one millisecond, the timer moved due in between); the
// first one's Done must not move the timer the second one holds.
func TestClaimsWithOneLease(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		s := membership.NewSchedules(rdb)
		base := time.UnixMilli(1_800_000_000_000)
		schedule := func(at time.Time) {
			t.Helper()
			if err := s.Schedule(ctx, []membership.Due{{OrgID: org, UserID: "u1", At: at}}); err != nil {
				t.Fatal(err)
			}
		}
		claim := func() []membership.Claimed {
			t.Helper()
			c, err := s.Claim(ctx, org, "", base, 30*time.Second, 10)
			if err != nil || len(c) != 1 {
				t.Fatalf("claimed %v, %v; want one", c, err)
			}
			return c
		}
		schedule(base)
		first := claim()
		schedule(base.Add(-time.Millisecond)) // a write made the flip due again
		second := claim()
		if first[0].Lease != second[0].Lease {
			t.Fatalf("leases %d and %d; the test needs them equal", first[0].Lease, second[0].Lease)
		}
		// The first claim read the profile before the write: its next flip
		// is stale. The second one's is right.
		if err := s.Done(ctx, first, []time.Time{base.Add(500 * time.Second)}); err != nil {
			t.Fatal(err)
		}
		if err := s.Done(ctx, second, []time.Time{base.Add(100 * time.Second)}); err != nil {
			t.Fatal(err)
		}
		ms, err := rdb.ZScore(ctx, membership.ScheduleKey(org), "u1").Result()
		if err != nil || !time.UnixMilli(int64(ms)).Equal(base.Add(100*time.Second)) {
			t.Errorf("timer at %v (%v), want the second claim's next flip %v", time.UnixMilli(int64(ms)), err, base.Add(100*time.Second))
		}
	})
}

// TestOldestDueCountsUnfinishedClaims: OldestDue gives the earliest flip
// due and not fired yet, nothing when none is: a timer under a claim that
// has not finished (its round running or failed, or its instance dead)
// counts from the flip it was claimed for, neither skipped while its lease
// runs nor counted from the lease once it ran out; one whose claim
// finished no longer counts.
func TestOldestDueCountsUnfinishedClaims(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		s := membership.NewSchedules(rdb)
		base := time.UnixMilli(1_800_000_000_000)
		if err := s.Schedule(ctx, []membership.Due{{OrgID: org, UserID: "u1", At: base.Add(-10 * time.Second)},
			{OrgID: org, UserID: "u2", At: base.Add(-5 * time.Second)}, {OrgID: org, UserID: "u3", At: base.Add(5 * time.Second)}}); err != nil {
			t.Fatal(err)
		}
		steps := []struct {
			name  string
			claim int  // timers claimed at the step's instant first
			done  bool // and their claims finished (the timers removed)
			now   time.Time
			want  time.Time // zero: none due
		}{
			{"two due", 0, false, base, base.Add(-10 * time.Second)},
			{"the oldest claimed, its round running or failed", 1, false, base, base.Add(-10 * time.Second)},
			{"the other claimed and fired", 1, true, base, base.Add(-10 * time.Second)},
			{"a later one due, the claim still leased", 0, false, base.Add(20 * time.Second), base.Add(-10 * time.Second)},
			{"the claim's lease run out", 0, false, base.Add(31 * time.Second), base.Add(-10 * time.Second)},
			{"both fired", 2, true, base.Add(31 * time.Second), time.Time{}},
		}
		for _, st := range steps {
			if st.claim > 0 {
				c, err := s.Claim(ctx, org, "", st.now, 30*time.Second, st.claim)
				if err != nil || len(c) != st.claim {
					t.Fatalf("%s: claimed %v, %v", st.name, c, err)
				}
				if st.done {
					if err := s.Done(ctx, c, make([]time.Time, len(c))); err != nil {
						t.Fatal(err)
					}
				}
			}
			at, ok, err := s.OldestDue(ctx, org, st.now)
			if err != nil {
				t.Fatal(err)
			}
			if ok != !st.want.IsZero() || !at.Equal(st.want) {
				t.Errorf("%s: oldest due %v (%v), want %v", st.name, at, ok, st.want)
			}
		}
	})
}

// TestTakeOver: the unfinished claims of an instance that stopped beating
// become due at once, before their lease ends, and their next claim is a
// retry of the silent instance's, under the same flip; a claim of another
// owner, and a timer moved earlier since its claim, are left as they are.
func TestTakeOver(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		s := membership.NewSchedules(rdb)
		base := time.UnixMilli(1_800_000_000_000)
		var due []membership.Due
		for _, u := range []string{"u1", "u2", "u3"} {
			due = append(due, membership.Due{OrgID: org, UserID: u, At: base})
		}
		if err := s.Schedule(ctx, due); err != nil {
			t.Fatal(err)
		}
		if c, err := s.Claim(ctx, org, "dead-1", base, 30*time.Second, 2); err != nil || len(c) != 2 {
			t.Fatalf("claim of the instance that dies: %v, %v", c, err)
		}
		if c, err := s.Claim(ctx, org, "alive-1", base, 30*time.Second, 10); err != nil || len(c) != 1 {
			t.Fatalf("claim of the instance that lives: %v, %v", c, err)
		}
		// One of the dead instance's users gets an earlier flip meanwhile:
		// its timer is due then on its own.
		moved := base.Add(2 * time.Second)
		var movedUser string
		if recs, err := rdb.HGetAll(ctx, membership.ClaimsKey(org)).Result(); err != nil {
			t.Fatal(err)
		} else {
			for u, rec := range recs {
				if strings.HasSuffix(rec, "@dead-1") && movedUser == "" {
					movedUser = u
				}
			}
		}
		if err := s.Schedule(ctx, []membership.Due{{OrgID: org, UserID: movedUser, At: moved}}); err != nil {
			t.Fatal(err)
		}
		now := base.Add(5 * time.Second)
		if n, err := s.TakeOver(ctx, org, []string{"someone-else"}, now); err != nil || n != 0 {
			t.Errorf("take over of an instance with no claims = %d, %v; want 0", n, err)
		}
		if n, err := s.TakeOver(ctx, org, []string{"dead-1"}, now); err != nil || n != 1 {
			t.Errorf("take over of the dead instance = %d, %v; want its 1 claim still at its lease", n, err)
		}
		c, err := s.Claim(ctx, org, "alive-2", now, 30*time.Second, 10)
		if err != nil || len(c) != 2 {
			t.Fatalf("claim after the take over = %v, %v; want the dead instance's two users, not the live one's", c, err)
		}
		for _, cl := range c {
			switch {
			case cl.UserID == movedUser:
				if !cl.At.Equal(moved) || len(cl.Earlier) != 1 || !cl.Earlier[0].Equal(base) {
					t.Errorf("the moved timer claimed for %v (earlier %v), want its new flip %v with %v unfinished", cl.At, cl.Earlier, moved, base)
				}
			case !cl.At.Equal(base) || len(cl.Earlier) != 0:
				t.Errorf("the taken-over timer of %s claimed for %v (earlier %v), want a retry for the same flip %v", cl.UserID, cl.At, cl.Earlier, base)
			}
		}
	})
}
