package membership_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
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

		// A cursor walks its own segment only, and gives only members.
		fillTestSegment(t, sets, org, "seg_a", 1500)
		fillTestSegment(t, sets, org, "seg_b", 10)
		_, next, err := sets.Members(ctx, org, "seg_a", 37, "")
		if err != nil || next == "" {
			t.Fatalf("first page: %q, %v", next, err)
		}
		if _, _, err := sets.Members(ctx, org, "seg_b", 37, next); !errors.Is(err, membership.ErrInvalidCursor) {
			t.Errorf("another segment's cursor = %v, want ErrInvalidCursor", err)
		}
		forged := base64.RawURLEncoding.EncodeToString([]byte("m3:0:lu0001\x00secret\x00u0002"))
		if ids, _, err := sets.Members(ctx, org, "seg_b", 10, forged); err != nil || !slices.Equal(ids, []string{"u0001", "u0002"}) {
			t.Errorf("a cursor naming ids gave %v, %v; want only the members among them", ids, err)
		}
	})
}

// TestMembersPagingWhileTheSetChanges pages through a segment's set while it
// changes between pages: every member present for the whole walk must come.
func TestMembersPagingWhileTheSetChanges(t *testing.T) {
	ids := func(n int, format string, from, step int) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = fmt.Sprintf(format, from+i*step)
		}
		return out
	}
	tests := map[string]struct {
		initial []any
		limit   int
		// between changes the set after page number page (from 0).
		between func(t *testing.T, add, rem func(ids []any), page int)
		stays   func(i int) bool // by index in initial
		// once: members present throughout come exactly once (SSCAN may
		// repeat members of a hash table that shrinks, not of one that
		// grows from a compact set).
		once bool
	}{
		// A compact intset, which SSCAN answers whole, grows into a hash
		// table after the first page.
		"grows into a hash table": {
			initial: ids(100, "%d", 1000, 7), limit: 50,
			between: func(t *testing.T, add, _ func([]any), page int) {
				if page == 0 {
					add(ids(100, "n%03d", 0, 1))
				}
			},
			stays: func(int) bool { return true },
			once:  true,
		},
		// The same with more pages of the hash table after it.
		"grows into a hash table, many pages after": {
			initial: ids(300, "%d", 1000, 1), limit: 100,
			between: func(t *testing.T, add, _ func([]any), page int) {
				if page == 0 {
					add([]any{"new-member"})
				}
			},
			stays: func(int) bool { return true },
			once:  true,
		},
		// A hash table that others leave between pages (a dynamic
		// segment's everyday life); one member in three stays.
		"members leave": {
			initial: ids(3000, "k%04d", 0, 1), limit: 37,
			between: func(t *testing.T, _, rem func([]any), page int) {
				var leaving []any
				for i := page * 60; i < min(page*60+60, 3000); i++ {
					if i%3 != 0 {
						leaving = append(leaving, fmt.Sprintf("k%04d", i))
					}
				}
				rem(leaving)
			},
			stays: func(i int) bool { return i%3 == 0 },
		},
		// Nearly every member leaves at once (a criteria change, a mass
		// deletion): the hash table shrinks under the walk. Members that
		// stay all come; SSCAN may give one of them twice (README,
		// Members), so repeats are allowed here.
		"most members leave at once": {
			initial: ids(5000, "m%05d", 0, 1), limit: 100,
			between: func(t *testing.T, _, rem func([]any), page int) {
				if page == 9 {
					var leaving []any
					for i := range 5000 {
						if i%13 != 0 {
							leaving = append(leaving, fmt.Sprintf("m%05d", i))
						}
					}
					rem(leaving)
				}
			},
			stays: func(i int) bool { return i%13 == 0 },
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
				ctx := context.Background()
				org, seg := testenv.Org(t, rdb, "org"), "seg_changes"
				sets := membership.NewSets(rdb)
				key := membership.SegmentMembersKey(org, seg)
				change := func(f func(context.Context, string, ...any) *redis.IntCmd) func([]any) {
					return func(ids []any) {
						if len(ids) > 0 {
							if err := f(ctx, key, ids...).Err(); err != nil {
								t.Fatal(err)
							}
						}
					}
				}
				add, rem := change(rdb.SAdd), change(rdb.SRem)
				add(tt.initial)
				seen := map[string]int{}
				cursor := ""
				for page := 0; ; page++ {
					if page > 1000 {
						t.Fatal("paging does not end")
					}
					got, next, err := sets.Members(ctx, org, seg, tt.limit, cursor)
					if err != nil {
						t.Fatal(err)
					}
					for _, id := range got {
						seen[id]++
					}
					if next == "" {
						break
					}
					cursor = next
					tt.between(t, add, rem, page)
				}
				missing, repeated := 0, 0
				if name == "members leave" || name == "most members leave at once" {
					// README, Known limits: miniredis pages SSCAN by position.
					testenv.RealRedisOnly(t, rdb, "SSCAN returns every member that stays while others leave")
				}
				for i, id := range tt.initial {
					switch n := seen[id.(string)]; {
					case !tt.stays(i):
					case n == 0:
						missing++
					case n > 1:
						repeated++
					}
				}
				if missing > 0 {
					t.Errorf("%d members present throughout were never returned", missing)
				}
				if tt.once && repeated > 0 {
					t.Errorf("%d members present throughout were returned more than once", repeated)
				}
			})
		})
	}
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

// sscanCounter counts the SSCAN commands a client sends.
type sscanCounter struct{ n atomic.Int64 }

func (h *sscanCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *sscanCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "sscan" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}
func (h *sscanCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestMembersPageIsBounded: a cursor whose "after" sorts above every id (a
// client forges one easily: the legacy form carries no tag) filters out
// every id the walk meets. One page must not walk the whole set to find
// that out; it ends short, and the cursors it gives end the walk.
func TestMembersPageIsBounded(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		sets := membership.NewSets(rdb)
		fillTestSegment(t, sets, org, "seg_big", 5000)
		h := &sscanCounter{}
		rdb.AddHook(h)
		cursor := base64.RawURLEncoding.EncodeToString([]byte("m3:0:a\xff"))
		for pages := 0; cursor != ""; pages++ {
			if pages > 200 {
				t.Fatal("the walk does not end")
			}
			before := h.n.Load()
			ids, next, err := sets.Members(ctx, org, "seg_big", 1, cursor)
			if err != nil {
				t.Fatal(err)
			}
			if len(ids) > 0 {
				t.Errorf("page %d gave %v: every id sorts below the cursor's", pages, ids)
			}
			if n := h.n.Load() - before; n > 100 {
				t.Fatalf("page %d sent %d SSCAN commands", pages, n)
			}
			cursor = next
		}
	})
}
