package membership_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// TestMarkPublished marks entries of many users published (more than one
// script call takes on a single Redis) and checks that every reader of an
// outbox sees the marks of its own user's entries only, the sixteen of the
// highest revisions whatever order the marks came in, and none for a
// revision the user has not reached.
func TestMarkPublished(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		users := membership.NewUsers(rdb)
		profile := segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": 1.0}))
		const n = 150
		var ws []membership.UserWrite
		var refs []membership.UserRef
		for i := range n {
			id := fmt.Sprintf("u%03d", i)
			ws = append(ws, membership.UserWrite{OrgID: org, UserID: id, Version: 1, Profile: profile})
			refs = append(refs, membership.UserRef{OrgID: org, UserID: id})
		}
		if _, err := users.Write(ctx, ws); err != nil {
			t.Fatal(err)
		}
		// Each user enters and leaves s in turn: one timer entry a write,
		// revisions 2 to 21 for "u000", 2 for the others.
		entry := func(rev int64, enter bool) membership.OutboxEntry {
			return membership.OutboxEntry{EventID: fmt.Sprintf("time:s:%d", rev), CauseType: "time", Rev: rev, AtMillis: 1_700_000_000_000 + rev,
				Changes: []membership.OutboxChange{{SegmentID: "s", Entered: enter}}}
		}
		amend := func(user string, rev int64) membership.Amend {
			enter := rev%2 == 0
			return membership.Amend{OrgID: org, UserID: user, SegmentID: "s", ExpectRev: rev - 1, Entered: enter, Entry: entry(rev, enter)}
		}
		var first []membership.Amend
		for i := range n {
			first = append(first, amend(fmt.Sprintf("u%03d", i), 2))
		}
		if _, err := users.Amend(ctx, first); err != nil {
			t.Fatal(err)
		}
		for rev := int64(3); rev <= 21; rev++ {
			if out, err := users.Amend(ctx, []membership.Amend{amend("u000", rev)}); err != nil || out[0].Result != membership.AmendApplied {
				t.Fatalf("amend of revision %d: %+v, %v", rev, out, err)
			}
		}
		var marks []membership.Published
		for i := 2; i < n; i += 2 {
			marks = append(marks, membership.Published{OrgID: org, UserID: fmt.Sprintf("u%03d", i), Rev: 2})
		}
		// The oldest last: it must not push out a newer one.
		for rev := int64(3); rev <= 21; rev++ {
			marks = append(marks, membership.Published{OrgID: org, UserID: "u000", Rev: rev})
		}
		marks = append(marks, membership.Published{OrgID: org, UserID: "u000", Rev: 2})
		// Again (a retry), and one the user has not reached.
		marks = append(marks, membership.Published{OrgID: org, UserID: "u000", Rev: 21}, membership.Published{OrgID: org, UserID: "u001", Rev: 3})
		if err := users.MarkPublished(ctx, marks); err != nil {
			t.Fatal(err)
		}

		want := func(user string, rev int64) bool {
			if user == "u000" {
				return rev >= 6 // the highest sixteen
			}
			var i int
			fmt.Sscanf(user, "u%03d", &i)
			return i%2 == 0
		}
		check := func(reader, user string, outbox []membership.OutboxEntry) {
			t.Helper()
			if len(outbox) == 0 {
				t.Fatalf("%s: user %s: no outbox", reader, user)
			}
			for _, e := range outbox {
				if e.Published != want(user, e.Rev) {
					t.Errorf("%s: user %s, entry of revision %d: published %v, want %v", reader, user, e.Rev, e.Published, !e.Published)
				}
			}
		}
		states, err := users.Load(ctx, refs)
		if err != nil {
			t.Fatal(err)
		}
		for i, st := range states {
			check("Load", refs[i].UserID, st.Outbox)
		}
		ids := make([]string, n)
		for i, r := range refs {
			ids[i] = r.UserID
		}
		views, err := users.ViewUsers(ctx, org, ids, membership.ViewFields{Outbox: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range views {
			check("ViewUsers", v.UserID, v.Outbox)
		}
		// An amend finds the marks with the outbox; u001 leaves s.
		out, err := users.Amend(ctx, []membership.Amend{amend("u000", 22), amend("u001", 3), amend("u002", 3)})
		if err != nil {
			t.Fatal(err)
		}
		for i, user := range []string{"u000", "u001", "u002"} {
			if out[i].Result != membership.AmendApplied {
				t.Fatalf("amend of %s: %v", user, out[i].Result)
			}
			check("Amend", user, out[i].Before)
		}
		// The mark of a revision u001 had not reached did not wait for it.
		after, err := users.Load(ctx, []membership.UserRef{{OrgID: org, UserID: "u001"}})
		if err != nil {
			t.Fatal(err)
		}
		check("Load after the amend", "u001", after[0].Outbox)
		if j := rdb.HGet(ctx, membership.ProfileKey(org, "u000"), "j").Val(); j != "6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21," {
			t.Errorf("marks of u000 stored as %q", j)
		}
	})
}
