package processor

import (
	"slices"
	"testing"
	"time"

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

// TestRacedChanges: the changes of recent entries of other writers, of the
// segments asked for, in the order of their writes; not those skipped, nor
// older than racedWindow, nor those marked published.
func TestRacedChanges(t *testing.T) {
	now := t0
	entry := func(id string, rev int64, ago time.Duration, seg string, published bool) membership.OutboxEntry {
		return membership.OutboxEntry{EventID: id, Rev: rev, CauseType: events.CauseTime, AtMillis: now.Add(-ago).UnixMilli(),
			Changes: []membership.OutboxChange{{SegmentID: seg}}, Published: published}
	}
	outbox := []membership.OutboxEntry{
		entry("later", 7, time.Second, "s", false),
		entry("earlier", 5, 2*time.Second, "s", false),
		entry("old", 4, racedWindow+time.Second, "s", false),
		entry("marked", 6, time.Second, "s", true),
		entry("skipped", 8, time.Second, "s", false),
		entry("other segment", 9, time.Second, "t", false),
	}
	var got []string
	for _, p := range racedChanges(membership.UserRef{OrgID: "o", UserID: "u"}, outbox,
		func(e membership.OutboxEntry) bool { return e.EventID == "skipped" }, func(seg string) bool { return seg == "s" }, now) {
		got = append(got, p.Change.Cause.EventID)
	}
	if want := []string{"earlier", "later"}; !slices.Equal(got, want) {
		t.Errorf("raced changes %v, want %v", got, want)
	}
}
