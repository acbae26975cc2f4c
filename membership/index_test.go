package membership_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
)

// scanIDs returns every user id ScanUserIDs gives for org, sorted and
// without repeats.
func scanIDs(t *testing.T, users *membership.Users, org string) []string {
	t.Helper()
	var ids []string
	if err := users.ScanUserIDs(context.Background(), org, func(page []string) error {
		ids = append(ids, page...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// TestUserIndex checks that an organisation's scans see its own users
// only, through its index: users stored before the index existed are
// found once by a scan of the keyspace, which then marks the organisation
// indexed; after that, only users written as created are seen, which a
// stored profile outside the index proves.
func TestUserIndex(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org, other := testenv.Org(t, rdb, "org"), testenv.Org(t, rdb, "other")
		users := membership.NewUsers(rdb)
		p := []byte(`{"points":1}`)
		write := func(w membership.UserWrite) {
			t.Helper()
			if applied, err := users.Write(ctx, []membership.UserWrite{w}); err != nil || !applied[0] {
				t.Fatalf("write %s: applied %v, %v", w.UserID, applied, err)
			}
		}
		// As a build without the index stored them: the profile hash only.
		legacy := func(org, user string) {
			t.Helper()
			if err := rdb.HSet(ctx, membership.ProfileKey(org, user), "r", 1, "v", 1, "p", string(p)).Err(); err != nil {
				t.Fatal(err)
			}
		}
		var want []string
		for i := range 40 {
			id := fmt.Sprintf("u%02d", i)
			if i%4 == 0 {
				legacy(org, id)
			} else {
				write(membership.UserWrite{OrgID: org, UserID: id, Version: 1, Profile: p})
			}
			want = append(want, id)
			write(membership.UserWrite{OrgID: other, UserID: "x" + id, Version: 1, Profile: p})
		}
		if got := scanIDs(t, users, org); !slices.Equal(got, want) {
			t.Fatalf("first scan (keyspace): %v, want %v", got, want)
		}
		if got := scanIDs(t, users, org); !slices.Equal(got, want) {
			t.Fatalf("second scan (index): %v, want %v", got, want)
		}

		// Indexed now: a profile stored around the index is not seen...
		legacy(org, "outside")
		if got := scanIDs(t, users, org); slices.Contains(got, "outside") {
			t.Fatalf("the index scan found a user outside the index: the keyspace was scanned again")
		}
		// ...while the writes a user goes through are: a deletion keeps the
		// user (its tombstone stays), and a deletion that comes before the
		// user's first profile indexes it as that profile would.
		write(membership.UserWrite{OrgID: org, UserID: "u01", ExpectRev: 1, Version: 2})
		write(membership.UserWrite{OrgID: org, UserID: "early", Version: 1})
		write(membership.UserWrite{OrgID: org, UserID: "early", ExpectRev: 1, Version: 2, Profile: p})
		want = append(want, "early")
		slices.Sort(want)
		if got := scanIDs(t, users, org); !slices.Equal(got, want) {
			t.Fatalf("after a deletion and a creation after a deletion: %v, want %v", got, want)
		}

		// Reindex finds the user stored around the index, and only it.
		if added, err := users.Reindex(ctx, []string{org, other}); err != nil || added != 1 {
			t.Fatalf("reindex added %d users (%v), want 1", added, err)
		}
		want = append(want, "outside")
		slices.Sort(want)
		if got := scanIDs(t, users, org); !slices.Equal(got, want) {
			t.Fatalf("after the reindex: %v, want %v", got, want)
		}

		// An error of fn ends the scan and comes back as it is, and fn is
		// not called again by the other readers (the index holds 16 pages).
		stop := errors.New("enough")
		calls := 0
		if err := users.ScanUserIDs(ctx, org, func([]string) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
			t.Fatalf("scan whose fn fails: %v after %d calls, want %v after 1", err, calls, stop)
		}

		// Profiles come from the same index, without the deleted user.
		var profiles []string
		if err := users.ScanProfiles(ctx, org, func(page []membership.StoredProfile) error {
			for _, sp := range page {
				profiles = append(profiles, sp.UserID)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		slices.Sort(profiles)
		wantProfiles := slices.DeleteFunc(slices.Clone(want), func(id string) bool { return id == "u01" })
		if len(wantProfiles) != len(want)-1 {
			t.Fatalf("test setup: u01 not among %v", want)
		}
		if !slices.Equal(slices.Compact(profiles), wantProfiles) {
			t.Fatalf("profiles of %v, want %v", profiles, wantProfiles)
		}
	})
}
