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

// forgetAllIndexed removes the record that every organisation's index is
// whole (which any segmentd that ran on this Redis left), as on a Redis that
// a build older than the indexes wrote. Like every test that shares the
// servers, it relies on packages running one at a time (make test's -p 1):
// a segmentd of another package would record it again meanwhile.
func forgetAllIndexed(t *testing.T, rdb redis.UniversalClient) {
	t.Helper()
	if err := rdb.Del(context.Background(), membership.AllIndexedKey).Err(); err != nil {
		t.Fatal(err)
	}
}

// storeLegacy stores a profile hash and nothing else, as a build older
// than the organisations' user indexes stored a user.
func storeLegacy(t *testing.T, rdb redis.UniversalClient, org, user string) {
	t.Helper()
	if err := rdb.HSet(context.Background(), membership.ProfileKey(org, user), "r", 1, "v", 1, "p", `{"points":1}`).Err(); err != nil {
		t.Fatal(err)
	}
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
		forgetAllIndexed(t, rdb)
		users := membership.NewUsers(rdb)
		p := []byte(`{"points":1}`)
		write := func(w membership.UserWrite) {
			t.Helper()
			if applied, err := users.Write(ctx, []membership.UserWrite{w}); err != nil || !applied[0] {
				t.Fatalf("write %s: applied %v, %v", w.UserID, applied, err)
			}
		}
		legacy := func(org, user string) { t.Helper(); storeLegacy(t, rdb, org, user) }
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

// TestIndexAll checks the completion of every organisation's index: users
// that a build older than the indexes stored, in two organisations, are in
// their indexes after it; from then on an organisation's first read uses
// its index and does not scan the keyspace (a profile stored outside the
// index proves it), on this instance and on any other; and it runs once.
func TestIndexAll(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		a, b, c := testenv.Org(t, rdb, "a"), testenv.Org(t, rdb, "b"), testenv.Org(t, rdb, "c")
		forgetAllIndexed(t, rdb)
		for _, id := range []string{"u1", "u2", "u3"} {
			storeLegacy(t, rdb, a, id)
		}
		storeLegacy(t, rdb, b, "v1")
		users := membership.NewUsers(rdb)
		// Other organisations' legacy users on this Redis count too.
		if added, err := users.IndexAll(ctx); err != nil || added < 4 {
			t.Fatalf("IndexAll added %d users (%v), want at least 4", added, err)
		}
		if got := scanIDs(t, users, a); !slices.Equal(got, []string{"u1", "u2", "u3"}) {
			t.Fatalf("users of a: %v", got)
		}
		if got := scanIDs(t, users, b); !slices.Equal(got, []string{"v1"}) {
			t.Fatalf("users of b: %v", got)
		}
		storeLegacy(t, rdb, c, "outside")
		for name, u := range map[string]*membership.Users{"this instance": users, "another instance": membership.NewUsers(rdb)} {
			if got := scanIDs(t, u, c); len(got) != 0 {
				t.Fatalf("%s: the first read of c found %v: it scanned the keyspace", name, got)
			}
		}
		if added, err := membership.NewUsers(rdb).IndexAll(ctx); err != nil || added != 0 {
			t.Fatalf("IndexAll again added %d users (%v), want none", added, err)
		}
	})
}
