package processor

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/loadgen"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

func TestStateCacheBound(t *testing.T) {
	tests := map[string]struct {
		size, puts int
		wantHeld   int
	}{
		"disabled":        {size: 0, puts: 10, wantHeld: 0},
		"under the bound": {size: 100, puts: 40, wantHeld: 40},
		"over the bound":  {size: 100, puts: 1000, wantHeld: 100},
		"size one":        {size: 1, puts: 5, wantHeld: 1},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c := newStateCache(tt.size)
			for i := range tt.puts {
				c.put(membership.UserRef{OrgID: "o", UserID: fmt.Sprint(i)}, membership.UserState{Rev: int64(i)})
				if c.len() > max(tt.size, 0) {
					t.Fatalf("after %d puts the cache holds %d, more than its size %d", i+1, c.len(), tt.size)
				}
			}
			if c.len() > tt.wantHeld || (tt.wantHeld > 0 && c.len() < tt.wantHeld/2) {
				t.Fatalf("holds %d, want up to %d and at least half", c.len(), tt.wantHeld)
			}
			last := membership.UserRef{OrgID: "o", UserID: fmt.Sprint(tt.puts - 1)}
			st, ok := c.get(last)
			if ok != (tt.size > 0) || (ok && st.Rev != int64(tt.puts-1)) {
				t.Fatalf("get(last) = %+v, %v", st, ok)
			}
			c.drop(last)
			if _, ok := c.get(last); ok {
				t.Fatal("a dropped user is still held")
			}
		})
	}
}

// A user used again survives the turn of a generation; one not used since
// the generation before does not.
func TestStateCacheKeepsRecentlyUsed(t *testing.T) {
	c := newStateCache(4)
	ref := func(i int) membership.UserRef { return membership.UserRef{OrgID: "o", UserID: fmt.Sprint(i)} }
	c.put(ref(0), membership.UserState{Rev: 1})
	c.put(ref(1), membership.UserState{Rev: 1})
	c.put(ref(2), membership.UserState{Rev: 1}) // young {2}, old {0, 1}
	if _, ok := c.get(ref(0)); !ok {           // moves 0 to young
		t.Fatal("user 0 lost one generation after its put")
	}
	c.put(ref(3), membership.UserState{Rev: 1}) // young full: old {0, 2}, young {3}
	if _, ok := c.get(ref(0)); !ok {
		t.Fatal("user 0, used in the last generation, was dropped")
	}
	if _, ok := c.get(ref(1)); ok {
		t.Fatal("user 1, unused for two generations, is still held")
	}
}

func TestWrittenState(t *testing.T) {
	loaded := membership.UserState{Rev: 7, Version: 3, Profile: "old", Segments: []string{"a", "b", "static"}}
	tests := map[string]struct {
		write membership.UserWrite
		want  membership.UserState
	}{
		"membership changes": {
			write: membership.UserWrite{ExpectRev: 7, Version: 4, Profile: []byte("new"), Add: []string{"c"}, Remove: []string{"a"},
				Outbox: []membership.OutboxEntry{{EventID: "e4"}}},
			want: membership.UserState{Rev: 8, Version: 4, Profile: "new", Segments: []string{"b", "static", "c"},
				Outbox: []membership.OutboxEntry{{EventID: "e4"}}},
		},
		"deletion": {
			write: membership.UserWrite{ExpectRev: 7, Version: 5, Remove: []string{"a", "b", "static"}},
			want:  membership.UserState{Rev: 8, Version: 5, Deleted: true},
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got := writtenState(loaded, &tt.write)
			if got.Rev != tt.want.Rev || got.Version != tt.want.Version || got.Deleted != tt.want.Deleted || got.Profile != tt.want.Profile ||
				!slices.Equal(got.Segments, tt.want.Segments) || len(got.Outbox) != len(tt.want.Outbox) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			if !slices.Equal(loaded.Segments, []string{"a", "b", "static"}) {
				t.Fatalf("the state written from was changed: %q", loaded.Segments)
			}
		})
	}
}

// BenchmarkStateCacheMemory reports the heap a cached user takes: a
// loadgen profile as stored, eight memberships (their ids shared with the
// definitions, as the processor keeps them) and an outbox of one entry. A cache of
// SEGMENTD_USER_CACHE_SIZE users takes about that many times this.
func BenchmarkStateCacheMemory(b *testing.B) {
	const users = 100000
	g := loadgen.New("org", 1, users, 0.1, 0.1, 1)
	now := time.Now()
	evs := make([]events.ProfileEvent, users)
	stored := make([][]byte, users)
	for i := range users {
		evs[i] = g.Create(i, now)
		stored[i] = segment.AppendProfile(nil, segment.NewProfile(evs[i].Profile))
	}
	ids := make([]string, 8)
	for j := range ids {
		ids[j] = fmt.Sprintf("seg_%016x", j)
	}
	c := newStateCache(users)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i, ev := range evs {
		segs := slices.Clone(ids)
		c.put(membership.UserRef{OrgID: ev.OrgID, UserID: strings.Clone(ev.UserID)}, membership.UserState{
			Rev: 2, Version: 1, Profile: string(stored[i]), Segments: segs,
			Outbox: []membership.OutboxEntry{{EventID: strings.Clone(ev.EventID), Version: 1, Rev: 2, CauseType: events.CauseProfile, AtMillis: now.UnixMilli(),
				Changes: []membership.OutboxChange{{SegmentID: segs[0], Entered: true}}}},
		})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(c.len()), "B/user")
	b.ReportMetric(float64(len(stored[0])), "profile-B")
	runtime.KeepAlive(evs)
	runtime.KeepAlive(stored)
	runtime.KeepAlive(c)
}
