package membership_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// TestAmendOutcomes: an amend applies on the revision it was computed from,
// is stale on any other (a deletion since the read included), and changes nothing when the
// user's segment set already says what it would write.
func TestAmendOutcomes(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		users := membership.NewUsers(rdb)
		profile := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": 1.0}))
		// The entry of the stream's write that put "in" in s.
		written := membership.OutboxEntry{EventID: "e1", Version: 1, Rev: 1, AtMillis: 1_700_000_000_000,
			Changes: []membership.OutboxChange{{SegmentID: "s", Entered: true}}}
		ws := []membership.UserWrite{
			{OrgID: org, UserID: "out", Version: 1, Profile: profile},
			{OrgID: org, UserID: "in", Version: 1, Profile: profile, Add: []string{"s"}, Outbox: []membership.OutboxEntry{written}},
			{OrgID: org, UserID: "gone", Version: 1, Profile: profile},
		}
		if _, err := users.Write(ctx, ws); err != nil {
			t.Fatal(err)
		}
		if _, err := users.Write(ctx, []membership.UserWrite{{OrgID: org, UserID: "gone", ExpectRev: 1, Version: 2}}); err != nil {
			t.Fatal(err)
		}
		amend := func(user string, rev int64, enter bool) membership.Amend {
			return membership.Amend{OrgID: org, UserID: user, SegmentID: "s", ExpectRev: rev, Entered: enter,
				Entry: membership.OutboxEntry{EventID: "segment:s:1", Rev: rev + 1, Changes: []membership.OutboxChange{{SegmentID: "s", Entered: enter}}}}
		}
		for _, tc := range []struct {
			name   string
			amend  membership.Amend
			want   membership.AmendResult
			before []membership.OutboxEntry // the outbox an applied amend found
		}{
			{"older revision", amend("out", 0, true), membership.AmendStale, nil},
			{"deleted since the read", amend("gone", 1, true), membership.AmendStale, nil},
			{"already in", amend("in", 1, true), membership.AmendUnchanged, nil},
			{"already out", amend("out", 1, false), membership.AmendUnchanged, nil},
			{"enters", amend("out", 1, true), membership.AmendApplied, nil},
			{"leaves", amend("in", 1, false), membership.AmendApplied, []membership.OutboxEntry{written}},
		} {
			got, err := users.Amend(ctx, []membership.Amend{tc.amend})
			if err != nil {
				t.Fatal(err)
			}
			if got[0].Result != tc.want || !reflect.DeepEqual(got[0].Before, tc.before) {
				t.Errorf("%s: %v, found %+v; want %v, found %+v", tc.name, got[0].Result, got[0].Before, tc.want, tc.before)
			}
		}
		states, err := users.Load(ctx, []membership.UserRef{{OrgID: org, UserID: "out"}, {OrgID: org, UserID: "in"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(states[0].Segments) != 1 || len(states[1].Segments) != 0 || states[0].Rev != 2 || states[1].Rev != 2 {
			t.Errorf("after the amends: out %v rev %d, in %v rev %d; want [s] 2, [] 2",
				states[0].Segments, states[0].Rev, states[1].Segments, states[1].Rev)
		}
	})
}

// TestAmendMany amends more users in one call than one script call takes
// on a single Redis, with every outcome mixed, and checks that each outcome
// and each segment set is the user's own.
func TestAmendMany(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		users := membership.NewUsers(rdb)
		profile := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": 1.0}))
		const n = 250
		ws := make([]membership.UserWrite, n)
		as := make([]membership.Amend, n)
		refs := make([]membership.UserRef, n)
		want := make([]membership.AmendResult, n)
		for i := range n {
			id := fmt.Sprintf("u%03d", i)
			ws[i] = membership.UserWrite{OrgID: org, UserID: id, Version: 1, Profile: profile}
			refs[i] = membership.UserRef{OrgID: org, UserID: id}
			as[i] = membership.Amend{OrgID: org, UserID: id, SegmentID: "s", ExpectRev: 1, Entered: true,
				Entry: membership.OutboxEntry{EventID: "segment:s:1", Rev: 2, Changes: []membership.OutboxChange{{SegmentID: "s", Entered: true}}}}
			switch i % 3 {
			case 0:
				as[i].ExpectRev, want[i] = 5, membership.AmendStale
			case 1:
				want[i] = membership.AmendApplied
			case 2:
				as[i].Entered, want[i] = false, membership.AmendUnchanged
			}
		}
		if _, err := users.Write(ctx, ws); err != nil {
			t.Fatal(err)
		}
		got, err := users.Amend(ctx, as)
		if err != nil {
			t.Fatal(err)
		}
		states, err := users.Load(ctx, refs)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			member := len(states[i].Segments) == 1
			if got[i].Result != want[i] || member != (want[i] == membership.AmendApplied) {
				t.Fatalf("user %d: outcome %v, member %v; want %v", i, got[i].Result, member, want[i])
			}
		}
	})
}
