package membership_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
)

// TestProjectNewestDecisionWins projects decisions onto two segments in
// several calls and orders: for each user the decision of the highest
// revision stands, and decisions of one revision apply in order.
func TestProjectNewestDecisionWins(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		users := membership.NewUsers(rdb)
		proj := func(seg, user string, rev int64, entered bool) membership.Projection {
			return membership.Projection{Change: events.Change{OrgID: org, SegmentID: seg, UserID: user, Entered: entered}, Rev: rev}
		}
		calls := [][]membership.Projection{
			{
				proj("a", "u1", 2, true), proj("b", "u1", 2, true),
				proj("a", "u2", 5, true), proj("a", "u2", 5, false), // one write: in order
				proj("a", "u3", 1, true),
			},
			{
				proj("a", "u1", 1, false),                           // older than what is there: ignored
				proj("b", "u1", 3, false),                           // newer: applied
				proj("a", "u3", 4, false), proj("a", "u3", 3, true), // newest first in one call
				proj("b", "u4", 7, true),
			},
			{proj("a", "u2", 5, true), proj("a", "u2", 5, false)}, // a replay of u2's write: same end
		}
		for _, c := range calls {
			if _, err := users.Project(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		for seg, want := range map[string]string{"a": "u1", "b": "u4"} {
			if got := strings.Join(testenv.SMembers(t, rdb, membership.SegmentMembersKey(org, seg)), ","); got != want {
				t.Errorf("members of %s = %q, want %q", seg, got, want)
			}
		}
		// Which write's decision each set holds, asked in one mixed call.
		asked := []membership.Projection{proj("a", "u1", 0, false), proj("b", "u1", 0, false), proj("a", "u2", 0, false),
			proj("a", "u3", 0, false), proj("b", "u4", 0, false), proj("a", "u4", 0, false), proj("c", "u1", 0, false)}
		cs := make([]events.Change, len(asked))
		for i, a := range asked {
			cs[i] = a.Change
		}
		revs, err := users.ProjectedRevisions(ctx, cs)
		if err != nil {
			t.Fatal(err)
		}
		if want := []int64{2, 3, 5, 4, 7, -1, -1}; fmt.Sprint(revs) != fmt.Sprint(want) {
			t.Errorf("ProjectedRevisions = %v, want %v", revs, want)
		}
	})
}

// TestProjectOntoDeletedSegment: a write made before a segment's deletion
// and projected after it (its instance died in between) puts no member
// back and takes the segment out of the user's set; its change is refused
// (the deletion published the exit), unless it is an exit that had reached
// the member set before the deletion: that one the deletion did not see,
// and its repeated projection must still let it be published. An entry is
// refused even when it had reached the set: the deletion answered it with
// an exit. A probe writes nothing.
func TestProjectOntoDeletedSegment(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		users, sets := membership.NewUsers(rdb), membership.NewSets(rdb)
		proj := func(seg, user string, rev int64, entered bool) membership.Projection {
			return membership.Projection{Change: events.Change{OrgID: org, SegmentID: seg, UserID: user, Entered: entered}, Rev: rev}
		}
		// u2 entered at revision 1 and left at revision 3, projected; its
		// exit's batch then failed before publishing. u3 entered at
		// revision 2, projected, and its batch failed likewise.
		for _, p := range []membership.Projection{proj("gone", "u2", 1, true), proj("gone", "u2", 3, false), proj("gone", "u3", 2, true)} {
			if _, err := users.Project(ctx, []membership.Projection{p}); err != nil {
				t.Fatal(err)
			}
		}
		// The stale write: u1's set holds "gone" and "kept".
		if err := rdb.SAdd(ctx, membership.UserSegmentsKey(org, "u1"), "gone", "kept").Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := sets.DeleteSegment(ctx, org, "gone", time.Now(), nil); err != nil {
			t.Fatal(err)
		}
		probe := proj("kept", "u4", 1, true)
		probe.Probe = true
		again := []membership.Projection{proj("gone", "u1", 1, true), proj("kept", "u1", 1, true), proj("gone", "u2", 3, false), proj("gone", "u2", 4, true), proj("gone", "u3", 2, true), probe}
		deleted, err := users.Project(ctx, again)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			p    membership.Projection
			want bool
		}{
			{"a decision that never reached the deleted segment", again[0], true},
			{"a segment not deleted", again[1], false},
			{"a decision projected before the deletion", again[2], false},
			{"a later decision than any projected", again[3], true},
			{"an entry projected before the deletion", again[4], true},
			{"a probe of a segment not deleted", again[5], false},
		} {
			if got := deleted.Refuses(tc.p.Change, tc.p.Rev); got != tc.want {
				t.Errorf("%s: Refuses = %v, want %v", tc.name, got, tc.want)
			}
		}
		if n := rdb.Exists(ctx, membership.SegmentMembersKey(org, "gone")).Val(); n != 0 {
			t.Error("the deleted segment's member set came back")
		}
		if got := strings.Join(testenv.SMembers(t, rdb, membership.UserSegmentsKey(org, "u1")), ","); got != "kept" {
			t.Errorf("u1's segments = %q, want kept", got)
		}
		if got := strings.Join(testenv.SMembers(t, rdb, membership.SegmentMembersKey(org, "kept")), ","); got != "u1" {
			t.Errorf("members of kept = %q, want u1", got)
		}
		if ttl := rdb.TTL(ctx, membership.SegmentRevisionsKey(org, "gone")).Val(); ttl <= 0 || ttl > time.Hour {
			t.Errorf("the deleted segment's revisions expire in %v, want within an hour", ttl)
		}
	})
}

// TestProjectManyChanges projects more changes than one round trip takes:
// each segment's projections go whole, in order, and the deleted segment's
// revisions of all its users decide what is published.
func TestProjectManyChanges(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		users, sets := membership.NewUsers(rdb), membership.NewSets(rdb)
		const n = 12500
		proj := func(seg string, i int, entered bool) membership.Projection {
			return membership.Projection{Change: events.Change{OrgID: org, SegmentID: seg, UserID: fmt.Sprintf("u%05d", i), Entered: entered}, Rev: 1}
		}
		var left []membership.Projection
		for i := range n {
			left = append(left, proj("gone", i, false))
		}
		if _, err := users.Project(ctx, left); err != nil {
			t.Fatal(err)
		}
		if _, err := sets.DeleteSegment(ctx, org, "gone", time.Now(), nil); err != nil {
			t.Fatal(err)
		}
		var ps []membership.Projection
		for i := range n {
			ps = append(ps, proj("big", i, true))
		}
		ps = append(ps, left...) // the exits repeated after the deletion
		for i := range n / 2 {
			ps = append(ps, proj("big", i, false)) // the same write: after its entries
		}
		deleted, err := users.Project(ctx, ps)
		if err != nil {
			t.Fatal(err)
		}
		refused := 0
		for _, p := range left {
			if deleted.Refuses(p.Change, p.Rev) {
				refused++
			}
		}
		if refused != 0 {
			t.Errorf("%d of the %d exits projected before the deletion refused", refused, n)
		}
		if got := rdb.SCard(ctx, membership.SegmentMembersKey(org, "big")).Val(); got != n/2 {
			t.Errorf("big has %d members, want %d", got, n/2)
		}
		if in := rdb.SIsMember(ctx, membership.SegmentMembersKey(org, "big"), "u00000").Val(); in {
			t.Error("u00000 is in big: its exit was applied before its entry")
		}
	})
}

// TestProjectOverDamagedRevision: a user's revision in a segment's
// revisions hash that is not a number (written by hand) counts as none: a
// projection repairs it, where it used to fail every batch that projected
// onto the segment, and ProjectedRevisions answers -1 for it.
func TestProjectOverDamagedRevision(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		users := membership.NewUsers(rdb)
		if err := rdb.HSet(ctx, membership.SegmentRevisionsKey(org, "s"), "u1", "garbage").Err(); err != nil {
			t.Fatal(err)
		}
		c := events.Change{OrgID: org, SegmentID: "s", UserID: "u1", Entered: true}
		revs, err := users.ProjectedRevisions(ctx, []events.Change{c})
		if err != nil || len(revs) != 1 || revs[0] != -1 {
			t.Fatalf("ProjectedRevisions = %v, %v; want [-1]", revs, err)
		}
		// A call of a few projections, and one of many (see projectScript).
		for _, n := range []int{2, 20} {
			seg := fmt.Sprintf("s%d", n)
			if err := rdb.HSet(ctx, membership.SegmentRevisionsKey(org, seg), "u1", "garbage").Err(); err != nil {
				t.Fatal(err)
			}
			ps := []membership.Projection{{Change: events.Change{OrgID: org, SegmentID: seg, UserID: "u1", Entered: true}, Rev: 3}}
			for i := 2; i <= n; i++ {
				ps = append(ps, membership.Projection{Change: events.Change{OrgID: org, SegmentID: seg, UserID: fmt.Sprintf("u%d", i), Entered: true}, Rev: 1})
			}
			if _, err := users.Project(ctx, ps); err != nil {
				t.Fatal(err)
			}
			if got := rdb.SCard(ctx, membership.SegmentMembersKey(org, seg)).Val(); got != int64(n) {
				t.Errorf("%d projections: %d members, want %d", n, got, n)
			}
			if got := rdb.HGet(ctx, membership.SegmentRevisionsKey(org, seg), "u1").Val(); got != "3" {
				t.Errorf("%d projections: u1's revision = %q, want 3", n, got)
			}
		}
	})
}

// TestProjectInOneCallOrOneByOne: projections onto a segment decide the
// same whether they come in one call (decided in Lua, written in a few
// commands) or one call each (written one by one): the newest revision
// wins, equal revisions apply in order, probes write nothing.
func TestProjectInOneCallOrOneByOne(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		users := membership.NewUsers(rdb)
		rnd := rand.New(rand.NewPCG(7, 7))
		for trial := range 20 {
			together, alone := fmt.Sprintf("together%d", trial), fmt.Sprintf("alone%d", trial)
			var ps []membership.Projection
			for range 5 + rnd.IntN(60) {
				p := membership.Projection{Change: events.Change{OrgID: org, SegmentID: together, UserID: fmt.Sprintf("u%d", rnd.IntN(12)), Entered: rnd.IntN(2) == 0},
					Rev: int64(rnd.IntN(6)), Probe: rnd.IntN(8) == 0}
				ps = append(ps, p)
			}
			if _, err := users.Project(ctx, ps); err != nil {
				t.Fatal(err)
			}
			for _, p := range ps {
				p.Change.SegmentID = alone
				if _, err := users.Project(ctx, []membership.Projection{p}); err != nil {
					t.Fatal(err)
				}
			}
			members := func(seg string) string {
				return strings.Join(testenv.SMembers(t, rdb, membership.SegmentMembersKey(org, seg)), ",")
			}
			revisions := func(seg string) string {
				return fmt.Sprint(rdb.HGetAll(ctx, membership.SegmentRevisionsKey(org, seg)).Val()) // fmt sorts map keys
			}
			if got, want := members(together), members(alone); got != want {
				t.Errorf("trial %d: members %s in one call, %s one by one", trial, got, want)
			}
			if got, want := revisions(together), revisions(alone); got != want {
				t.Errorf("trial %d: revisions %s in one call, %s one by one", trial, got, want)
			}
		}
	})
}
