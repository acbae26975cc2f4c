package processor

import (
	"slices"
	"testing"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
)

// TestPublishFirstKeepsTheWritesOrder: a job's change raced by this write
// goes after the replayed changes of the user's earlier writes and before
// this write's, each write's changes in their own order.
func TestPublishFirstKeepsTheWritesOrder(t *testing.T) {
	change := func(id string) events.Change {
		return events.Change{SegmentID: "s", UserID: "u", Cause: events.Cause{EventID: id}}
	}
	var r userResult
	r.record([]events.Change{change("replayed-a"), change("replayed-b")}, 3) // a redelivered batch's write
	r.record([]events.Change{change("new")}, 7)                              // this write
	r.publishFirst([]membership.Projection{{Change: change("timer-1"), Rev: 5}, {Change: change("timer-2"), Rev: 5}, {Change: change("backfill"), Rev: 4}})
	var got []string
	for _, c := range r.changes {
		got = append(got, c.Cause.EventID)
	}
	want := []string{"replayed-a", "replayed-b", "backfill", "timer-1", "timer-2", "new"}
	if !slices.Equal(got, want) || !slices.Equal(r.revs, []int64{3, 3, 4, 5, 5, 7}) {
		t.Errorf("published %v with revisions %v, want %v", got, r.revs, want)
	}
}
