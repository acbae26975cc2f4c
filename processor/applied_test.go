package processor

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
)

var t0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func at(topic string, partition int, offset int64, ts time.Time) position {
	return positionOf(Record{Topic: topic, Partition: partition, Offset: offset, Time: ts})
}

func TestPosition(t *testing.T) {
	stored := at("profiles", 2, 100, t0)
	tests := map[string]struct {
		q      position
		covers bool
	}{
		"earlier offset":    {at("profiles", 2, 99, t0.Add(-time.Second)), true},
		"same offset":       {at("profiles", 2, 100, t0), true},
		"later offset":      {at("profiles", 2, 101, t0), false},
		"another partition": {at("profiles", 1, 5, t0), false},
		"another topic":     {at("profiles-v2", 2, 5, t0), false},
		// The topic deleted and created again: offsets start over.
		"newer record at an old offset": {at("profiles", 2, 5, t0.Add(time.Minute)), false},
		// A producer that sets no timestamp: kafka-go sends 0.
		"record without a timestamp": {at("profiles", 2, 5, time.Unix(0, 0)), false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := stored.covers(tt.q); got != tt.covers {
				t.Errorf("covers = %v, want %v", got, tt.covers)
			}
		})
	}
	back, ok := parsePosition(stored.String())
	if !ok || back != stored {
		t.Errorf("parsePosition(%q) = %+v, %v; want %+v", stored.String(), back, ok, stored)
	}
	for _, s := range []string{"", "x", "x:1:y", "1:2:abc", "1:2:abc:!"} {
		if _, ok := parsePosition(s); ok {
			t.Errorf("parsePosition(%q) accepted", s)
		}
	}
}

// An event whose producer's clock was behind is still covered once a later
// one was applied: the stored time is the latest of all.
func TestPositionAdvanceKeepsLatestTime(t *testing.T) {
	p := at("profiles", 0, 10, t0).advance(at("profiles", 0, 11, t0.Add(-time.Hour)))
	if !p.covers(at("profiles", 0, 10, t0)) {
		t.Errorf("%+v does not cover the event at offset 10 it was advanced from", p)
	}
	if q := (position{}).advance(at("profiles", 0, 3, t0)); q != at("profiles", 0, 3, t0) {
		t.Errorf("advance from nothing = %+v", q)
	}
	// A record without a timestamp is never covered, so a redelivery
	// applies it again: the position must not move back to it.
	p = at("profiles", 0, 13, t0).advance(at("profiles", 0, 10, time.Unix(0, 0)))
	if !p.covers(at("profiles", 0, 12, t0)) {
		t.Errorf("%+v no longer covers the timestamped event at offset 12", p)
	}
	// The topic created again: its offsets start over with newer records.
	p = at("profiles", 0, 13, t0).advance(at("profiles", 0, 2, t0.Add(time.Minute)))
	if p != at("profiles", 0, 2, t0.Add(time.Minute)) {
		t.Errorf("after a newer record at an earlier offset: %+v", p)
	}
}

func TestDeadLetterEntry(t *testing.T) {
	ev := events.ProfileEvent{EventID: "e7", Version: 3, HasVersion: true}
	long := "a" + strings.Repeat("é", maxStoredReason) // two bytes a rune: the cut falls inside one
	tests := map[string]struct {
		reason, want string
	}{
		"short": {"invalid profile event: changes: points.x: points is not an object", "invalid profile event: changes: points.x: points is not an object"},
		"long":  {long, "a" + strings.Repeat("é", maxStoredReason/2-1) + " …"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			stored, err := membership.DecodeOutbox(string(membership.AppendOutbox(nil, []membership.OutboxEntry{deadLetterEntry(ev, tt.reason, t0, 9)})))
			if err != nil || len(stored) != 1 {
				t.Fatalf("outbox read back: %v, %v", stored, err)
			}
			e := stored[0]
			got, ok := deadLetterReason(e)
			if !ok || got != tt.want || !streamEntry(e) || e.EventID != "e7" || e.Rev != 9 || len(e.Changes) != 0 {
				t.Errorf("entry %+v: reason %q (%v), stream entry %v; want reason %q", e, got, ok, streamEntry(e), tt.want)
			}
		})
	}
	for cause, want := range map[string]bool{"": true, events.CauseProfile: true, events.CauseSegment: false, events.CauseTime: false} {
		if got := streamEntry(membership.OutboxEntry{CauseType: cause}); got != want {
			t.Errorf("streamEntry(cause %q) = %v, want %v", cause, got, want)
		}
	}
}

func TestRepeated(t *testing.T) {
	itemsOf := func(ids ...string) []item {
		out := make([]item, len(ids))
		for i, id := range ids {
			out[i].ev.EventID = id
		}
		return out
	}
	many := make([]string, manyItems+2)
	for i := range many {
		many[i] = fmt.Sprintf("e%d", i)
	}
	many[len(many)-1] = "e3"
	tests := map[string]struct {
		ids  []string
		want []bool
	}{
		"one":         {[]string{"a"}, []bool{false}},
		"distinct":    {[]string{"a", "b", "c"}, []bool{false, false, false}},
		"a retry":     {[]string{"a", "b", "a"}, []bool{false, false, true}},
		"three times": {[]string{"a", "a", "a"}, []bool{false, true, true}},
	}
	want := make([]bool, len(many))
	want[len(many)-1] = true
	tests["more than manyItems"] = struct {
		ids  []string
		want []bool
	}{many, want}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			items := itemsOf(tt.ids...)
			var seen map[string]bool
			if len(items) > manyItems {
				seen = map[string]bool{}
			}
			for i := range items {
				if got := repeated(items, i, seen); got != tt.want[i] {
					t.Errorf("repeated(%d) = %v, want %v", i, got, tt.want[i])
				}
			}
		})
	}
}

// TestUnpublishedStream: a job takes a stream entry for possibly
// unpublished while it is recent, unless the user's last applied event is
// below its partition's committed offset; a job's entry whatever its age;
// and what it owns never.
func TestUnpublishedStream(t *testing.T) {
	now := t0
	u := unpublishedStream{from: now.Add(-membership.ReplayWindow), topic: topicHash("profiles"), committed: map[int]int64{2: 101, 3: 50}}
	recent := membership.OutboxEntry{EventID: "e1", AtMillis: now.Add(-time.Minute).UnixMilli()}
	old := membership.OutboxEntry{EventID: "e0", AtMillis: now.Add(-3 * time.Minute).UnixMilli()}
	job := membership.OutboxEntry{EventID: "time:s:1", CauseType: events.CauseTime, AtMillis: old.AtMillis}
	none := func(membership.OutboxEntry) bool { return false }
	for name, tc := range map[string]struct {
		applied string
		own     func(membership.OutboxEntry) bool
		unread  bool    // no committed offsets read
		want    [3]bool // recent, old, job
	}{
		"below the committed offset":   {at("profiles", 2, 100, t0).String(), none, false, [3]bool{false, false, true}},
		"at the committed offset":      {at("profiles", 2, 101, t0).String(), none, false, [3]bool{true, false, true}},
		"another partition, not below": {at("profiles", 3, 60, t0).String(), none, false, [3]bool{true, false, true}},
		"a partition never committed":  {at("profiles", 7, 0, t0).String(), none, false, [3]bool{true, false, true}},
		"another topic":                {at("other", 2, 1, t0).String(), none, false, [3]bool{true, false, true}},
		"no stored position":           {"", none, false, [3]bool{true, false, true}},
		"own entries are never taken":  {"", func(e membership.OutboxEntry) bool { return true }, false, [3]bool{false, false, false}},
		"offsets unknown (never read)": {at("profiles", 2, 1, t0).String(), none, true, [3]bool{true, false, true}},
	} {
		t.Run(name, func(t *testing.T) {
			v := u
			if tc.unread {
				v.committed = nil
			}
			take := v.take(tc.applied, tc.own)
			if got := [3]bool{take(recent), take(old), take(job)}; got != tc.want {
				t.Errorf("takes recent, old, job entry: %v, want %v", got, tc.want)
			}
		})
	}
}
