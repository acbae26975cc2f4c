package processor

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/loadgen"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

func TestStateCacheRoundTrip(t *testing.T) {
	tests := map[string]membership.UserState{
		"empty":   {Version: -1},
		"deleted": {Rev: 9, Version: 4, Deleted: true},
		"full": {Rev: 7, Version: 3, Profile: "\x01binary profile", Segments: []string{"seg_a", "seg_b"},
			Outbox: []membership.OutboxEntry{{EventID: "e3", Version: 3, Rev: 7, CauseType: events.CauseProfile, AtMillis: 12,
				Changes: []membership.OutboxChange{{SegmentID: "seg_b", Entered: true}}}}},
	}
	for name, st := range tests {
		t.Run(name, func(t *testing.T) {
			c := newStateCache(1 << 20)
			ref := membership.UserRef{OrgID: "o", UserID: "u"}
			c.put(ref, st)
			got, ok := c.get(ref)
			if !ok || got.Rev != st.Rev || got.Version != st.Version || got.Deleted != st.Deleted || got.Profile != st.Profile ||
				!slices.Equal(got.Segments, st.Segments) || fmt.Sprint(got.Outbox) != fmt.Sprint(st.Outbox) {
				t.Fatalf("got %+v, %v; want %+v", got, ok, st)
			}
			if _, ok := c.get(membership.UserRef{OrgID: "o", UserID: "v"}); ok {
				t.Fatal("a user never put is found")
			}
			c.drop(ref)
			if _, ok := c.get(ref); ok {
				t.Fatal("a dropped user is still held")
			}
		})
	}
}

func TestStateCacheBound(t *testing.T) {
	tests := map[string]struct {
		bytes, puts int
	}{
		"disabled":        {bytes: 0, puts: 10},
		"under the bound": {bytes: 1 << 20, puts: 100},
		"over the bound":  {bytes: 64 << 10, puts: 10000},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c := newStateCache(tt.bytes)
			st := membership.UserState{Rev: 1, Profile: strings.Repeat("p", 200), Segments: []string{"seg_a"}}
			ref := func(i int) membership.UserRef { return membership.UserRef{OrgID: "o", UserID: fmt.Sprint("u", i)} }
			for i := range tt.puts {
				c.put(ref(i), st)
				if c.bytes() > tt.bytes {
					t.Fatalf("after %d puts the arenas take %d bytes, more than %d", i+1, c.bytes(), tt.bytes)
				}
			}
			_, ok := c.get(ref(tt.puts - 1))
			if ok != (tt.bytes > 0) {
				t.Fatalf("the last user put found: %v", ok)
			}
			if tt.bytes > 0 && tt.puts <= 100 && c.len() != tt.puts {
				t.Fatalf("holds %d users, want all %d", c.len(), tt.puts)
			}
		})
	}
}

// A user's next state, a few numbers apart, takes the slot of the last.
func TestStateCacheWritesInPlace(t *testing.T) {
	c := newStateCache(1 << 20)
	ref := membership.UserRef{OrgID: "o", UserID: "u"}
	for i := range 1000 {
		c.put(ref, membership.UserState{Rev: int64(i), Version: int64(i), Profile: fmt.Sprint("points:", 1000+i)})
	}
	if n := len(c.young.buf); n > 64 {
		t.Fatalf("1,000 states of one user take %d bytes of arena", n)
	}
	if st, ok := c.get(ref); !ok || st.Rev != 999 {
		t.Fatalf("got %+v, %v", st, ok)
	}
}

// A user used again survives the turn of a generation; one not used since
// the generation before does not.
func TestStateCacheKeepsRecentlyUsed(t *testing.T) {
	st := membership.UserState{Rev: 1, Profile: strings.Repeat("p", 100)}
	ref := func(i int) membership.UserRef { return membership.UserRef{OrgID: "o", UserID: fmt.Sprint("u", i)} }
	c := newStateCache(2 * 1000) // room for a few users per generation
	c.put(ref(0), st)
	for i := 1; len(c.old.at) == 0; i++ {
		c.put(ref(i), st) // until user 0 is in the old generation
	}
	if _, ok := c.get(ref(0)); !ok { // moves it to the young one
		t.Fatal("user 0 lost one generation after its put")
	}
	for i := 100; len(c.young.at) > 1; i++ {
		c.put(ref(i), st) // until the next turn
	}
	if _, ok := c.get(ref(0)); !ok {
		t.Fatal("user 0, used in the last generation, was dropped")
	}
	if _, ok := c.get(ref(1)); ok {
		t.Fatal("user 1, unused for two generations, is still held")
	}
}

// Users whose hashes meet are told apart by the ids in the entry.
func TestStateCacheHashCollision(t *testing.T) {
	c := newStateCache(1 << 20)
	a, b := membership.UserRef{OrgID: "o", UserID: "a"}, membership.UserRef{OrgID: "o", UserID: "b"}
	c.put(a, membership.UserState{Rev: 1})
	c.young.at[c.hash(b)] = c.young.at[c.hash(a)] // b's hash leads to a's slot
	if st, ok := c.get(b); ok {
		t.Fatalf("b found a's state %+v", st)
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
// loadgen profile as stored, eight memberships and an outbox of one entry:
// the arena's bytes, and the heap with the index and the arena's room to
// grow. A cache of
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
	c := newStateCache(1 << 30)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i, ev := range evs {
		c.put(membership.UserRef{OrgID: ev.OrgID, UserID: ev.UserID}, membership.UserState{
			Rev: 2, Version: 1, Profile: string(stored[i]), Segments: ids,
			Outbox: []membership.OutboxEntry{{EventID: ev.EventID, Version: 1, Rev: 2, CauseType: events.CauseProfile, AtMillis: now.UnixMilli(),
				Changes: []membership.OutboxChange{{SegmentID: ids[0], Entered: true}}}},
		})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(len(c.young.buf)+len(c.old.buf))/float64(c.len()), "arena-B/user")
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(c.len()), "heap-B/user")
	b.ReportMetric(float64(len(stored[0])), "profile-B")
	runtime.KeepAlive(evs)
	runtime.KeepAlive(stored)
	runtime.KeepAlive(c)
}

// SEGMENTD_USER_CACHE_MB takes up to 1 TiB, so a generation may hold more
// than 4 GiB of slots: a user stored past the first 4 GiB must be found
// again, and must not be confused with, or written over, the slot of a
// user stored 4 GiB earlier.
func TestStateCacheGenerationOver4GiB(t *testing.T) {
	if strconv.IntSize < 64 {
		t.Skip("a 64-bit address space is needed")
	}
	c := newStateCache(10 << 30) // generations of 5 GiB
	z := membership.UserRef{OrgID: "o", UserID: "z"}
	c.put(z, membership.UserState{Rev: 3, Profile: strings.Repeat("z", 100)})
	// The arena as 4 GiB of other users' slots leave it, without writing
	// them: the pages of a fresh allocation are never touched, so this takes
	// next to no memory.
	const fourGiB = 1 << 32
	buf := make([]byte, fourGiB, fourGiB+1<<20)
	copy(buf, c.young.buf)
	c.young.buf = buf
	a := membership.UserRef{OrgID: "o", UserID: "a"}
	c.put(a, membership.UserState{Rev: 7, Profile: "a"})
	if st, ok := c.get(a); !ok || st.Rev != 7 || st.Profile != "a" {
		t.Fatalf("a user stored past 4 GiB of the arena: got %+v, %v", st, ok)
	}
	c.put(a, membership.UserState{Rev: 8, Profile: "a"}) // written over its own slot, not another's
	if st, ok := c.get(z); !ok || st.Rev != 3 {
		t.Fatalf("the user stored 4 GiB earlier: got %+v, %v", st, ok)
	}
	if st, ok := c.get(a); !ok || st.Rev != 8 {
		t.Fatalf("a user stored past 4 GiB of the arena, written again: got %+v, %v", st, ok)
	}
}
