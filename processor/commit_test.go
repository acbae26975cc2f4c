package processor

import (
	"slices"
	"testing"
	"time"
)

// TestKeptOffsets: a failed commit is kept as each partition's highest
// offset; a later commit that moved a partition as far forgets it, and
// the time kept runs from the oldest failure still kept.
func TestKeptOffsets(t *testing.T) {
	rec := func(part int, off int64) Record {
		return Record{Topic: "t", Partition: part, Offset: off, Value: []byte("v")}
	}
	t0 := time.Unix(1000, 0)
	var k keptOffsets
	k.add([]Record{rec(0, 5), rec(0, 7), rec(1, 3)}, t0)
	k.add([]Record{rec(0, 6), rec(2, 9)}, t0.Add(time.Second))
	offsets := func() []int64 {
		var out []int64
		for _, r := range k.records() {
			if r.Value != nil {
				t.Errorf("kept record %+v holds its value", r)
			}
			out = append(out, int64(r.Partition)*100+r.Offset)
		}
		slices.Sort(out)
		return out
	}
	if got, want := offsets(), []int64{7, 103, 209}; !slices.Equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
	if !k.since.Equal(t0) {
		t.Errorf("kept since %v, want the first failure's %v", k.since, t0)
	}
	k.passed([]Record{rec(0, 6), rec(1, 4)}) // partition 0 not as far
	if got, want := offsets(), []int64{7, 209}; !slices.Equal(got, want) {
		t.Fatalf("kept after a commit %v, want %v", got, want)
	}
	k.passed([]Record{rec(0, 8), rec(2, 9)})
	if len(k.offsets) != 0 || !k.since.IsZero() {
		t.Fatalf("kept after commits past all: %+v, want nothing", k)
	}
	k.add([]Record{rec(3, 1)}, t0.Add(time.Hour))
	if !k.since.Equal(t0.Add(time.Hour)) {
		t.Errorf("a new failure kept since %v, want its own time", k.since)
	}
}
