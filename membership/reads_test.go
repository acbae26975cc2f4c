package membership_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
)

// fillSegment makes users u0000… members of seg.
func fillTestSegment(t *testing.T, sets *membership.Sets, org, seg string, n int) []string {
	t.Helper()
	ctx := context.Background()
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("u%04d", i)
	}
	changes, err := sets.PlanReplace(ctx, org, seg, users, membership.StaticCause(seg, 1, users, nil), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := sets.Apply(ctx, changes); err != nil {
		t.Fatal(err)
	}
	return users
}

func TestMembersPaging(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		sets := membership.NewSets(rdb)
		tests := map[string]struct {
			size, limit int
		}{
			"empty":                  {0, 10},
			"small set, small pages": {7, 3},      // a listpack: SSCAN answers all at once
			"small set, one page":    {7, 7},      // exactly one page
			"large set":              {1500, 100}, // a hash table
			"large set, odd pages":   {1500, 37},
			"large set, one page":    {300, 1000},
		}
		for name, tt := range tests {
			t.Run(name, func(t *testing.T) {
				seg := "seg_" + testenv.UniqueName(t, "s")
				want := fillTestSegment(t, sets, org, seg, tt.size)
				var seen []string
				cursor := ""
				for pages := 0; ; pages++ {
					if pages > tt.size+2 {
						t.Fatal("paging does not end")
					}
					ids, next, err := sets.Members(ctx, org, seg, tt.limit, cursor)
					if err != nil {
						t.Fatal(err)
					}
					if len(ids) > tt.limit {
						t.Fatalf("page of %d, limit %d", len(ids), tt.limit)
					}
					seen = append(seen, ids...)
					if next == "" {
						break
					}
					cursor = next
				}
				slices.Sort(seen)
				if !slices.Equal(seen, want) {
					t.Errorf("saw %d ids (%d distinct), want each of %d once", len(seen), len(slices.Compact(slices.Clone(seen))), len(want))
				}
			})
		}
		if _, _, err := sets.Members(ctx, org, "seg_x", 10, "bad cursor"); !errors.Is(err, membership.ErrInvalidCursor) {
			t.Errorf("Members with a bad cursor = %v, want ErrInvalidCursor", err)
		}
	})
}

// TestMembersPagingWhileTheSetGrows pages through a set of numeric ids
// (a compact intset, which SSCAN answers whole) that grows into a hash table
// after the first page: every id that was a member throughout must come.
func TestMembersPagingWhileTheSetGrows(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org, seg := testenv.Org(t, rdb, "org"), "seg_grows"
		sets := membership.NewSets(rdb)
		key := membership.SegmentMembersKey(org, seg)
		var first []any
		for i := range 100 {
			first = append(first, fmt.Sprint(1000+i*7))
		}
		if err := rdb.SAdd(ctx, key, first...).Err(); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		ids, cursor, err := sets.Members(ctx, org, seg, 50, "")
		if err != nil || cursor == "" {
			t.Fatalf("first page: %d ids, cursor %q, %v", len(ids), cursor, err)
		}
		for _, id := range ids {
			seen[id] = true
		}
		var more []any
		for i := range 100 {
			more = append(more, fmt.Sprintf("n%03d", i))
		}
		if err := rdb.SAdd(ctx, key, more...).Err(); err != nil {
			t.Fatal(err)
		}
		for pages := 0; cursor != ""; pages++ {
			if pages > 200 {
				t.Fatal("paging does not end")
			}
			ids, cursor, err = sets.Members(ctx, org, seg, 50, cursor)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				seen[id] = true
			}
		}
		for _, id := range first {
			if !seen[id.(string)] {
				t.Errorf("member %s, in the set throughout, was never returned", id)
			}
		}
	})
}

// TestMembersPagingWhileMembersLeave pages through a hash-table set while
// other members leave between pages (a dynamic segment's everyday life):
// every member that stays throughout must come.
func TestMembersPagingWhileMembersLeave(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org, seg := testenv.Org(t, rdb, "org"), "seg_churn"
		sets := membership.NewSets(rdb)
		key := membership.SegmentMembersKey(org, seg)
		var all []any
		for i := range 3000 {
			all = append(all, fmt.Sprintf("k%04d", i))
		}
		if err := rdb.SAdd(ctx, key, all...).Err(); err != nil {
			t.Fatal(err)
		}
		stays := func(id string) bool { n := 0; fmt.Sscanf(id, "k%d", &n); return n%3 == 0 }
		var leaving []any
		for _, id := range all {
			if !stays(id.(string)) {
				leaving = append(leaving, id)
			}
		}
		seen := map[string]bool{}
		cursor := ""
		for pages := 0; ; pages++ {
			if pages > 1000 {
				t.Fatal("paging does not end")
			}
			ids, next, err := sets.Members(ctx, org, seg, 37, cursor)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				seen[id] = true
			}
			if next == "" {
				break
			}
			cursor = next
			// 40 of the others leave before the next page.
			n := min(40, len(leaving))
			if n > 0 {
				if err := rdb.SRem(ctx, key, leaving[:n]...).Err(); err != nil {
					t.Fatal(err)
				}
				leaving = leaving[n:]
			}
		}
		missing := 0
		for _, id := range all {
			if stays(id.(string)) && !seen[id.(string)] {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%d members that stayed throughout were never returned", missing)
		}
	})
}

func TestMembershipReads(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		sets := membership.NewSets(rdb)
		fillTestSegment(t, sets, org, "seg_b", 3)
		fillTestSegment(t, sets, org, "seg_a", 1)

		tests := map[string]struct {
			seg, user string
			want      bool
		}{
			"member":             {"seg_b", "u0002", true},
			"not a member":       {"seg_a", "u0002", false},
			"unknown segment":    {"seg_zz", "u0000", false},
			"another org's user": {"seg_b", "nobody", false},
		}
		for name, tt := range tests {
			t.Run(name, func(t *testing.T) {
				got, err := sets.IsMember(ctx, org, tt.seg, tt.user)
				if err != nil || got != tt.want {
					t.Errorf("IsMember = %v, %v; want %v", got, err, tt.want)
				}
			})
		}
		if got, err := sets.UserSegments(ctx, org, "u0000"); err != nil || !slices.Equal(got, []string{"seg_a", "seg_b"}) {
			t.Errorf("UserSegments = %v, %v; want [seg_a seg_b]", got, err)
		}
		if got, err := sets.UserSegments(ctx, org+"x", "u0000"); err != nil || len(got) != 0 {
			t.Errorf("UserSegments of another org = %v, %v; want none", got, err)
		}
		sizes, err := sets.Sizes(ctx, org, []string{"seg_a", "seg_b", "seg_zz"})
		if err != nil {
			t.Fatal(err)
		}
		if sizes["seg_a"] != 1 || sizes["seg_b"] != 3 || sizes["seg_zz"] != 0 || len(sizes) != 3 {
			t.Errorf("Sizes = %v", sizes)
		}
		all, err := sets.AllMembers(ctx, org, "seg_b")
		if err != nil || !slices.Equal(all, []string{"u0000", "u0001", "u0002"}) {
			t.Errorf("AllMembers = %v, %v", all, err)
		}
	})
}
