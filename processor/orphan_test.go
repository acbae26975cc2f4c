package processor

import (
	"slices"
	"testing"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
)

// TestOrphanTimerChanges: a claim's change of a segment that is no longer
// time-relative is published again, after the decision it flips from when
// that may be unpublished (a job's of any age, the stream's within
// membership.ReplayWindow), and only for flips the claim was made for, of
// segments still in force.
func TestOrphanTimerChanges(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	flip := now.Add(-time.Hour)
	earlier := now.Add(-2 * time.Hour)
	timer := func(seg string, at time.Time, rev int64, entered bool) membership.OutboxEntry {
		return membership.OutboxEntry{EventID: timeCause(seg, at).EventID, Rev: rev, CauseType: events.CauseTime,
			AtMillis: at.UnixMilli(), Changes: []membership.OutboxChange{{SegmentID: seg, Entered: entered}}}
	}
	backfill := membership.OutboxEntry{EventID: "segment:s:1", Rev: 3, CauseType: events.CauseSegment,
		AtMillis: now.Add(-24 * time.Hour).UnixMilli(), Changes: []membership.OutboxChange{{SegmentID: "s", Entered: true}}}
	stream := func(age time.Duration) membership.OutboxEntry {
		return membership.OutboxEntry{EventID: "evt-1", Rev: 3, CauseType: events.CauseProfile,
			AtMillis: now.Add(-age).UnixMilli(), Changes: []membership.OutboxChange{{SegmentID: "s", Entered: true}}}
	}
	org := &OrgRules{Segments: map[string]*CompiledSegment{"s": nil, "timed": nil}, TimeIDs: []string{"timed"}}
	tests := map[string]struct {
		outbox      []membership.OutboxEntry
		claimedAt   time.Time
		earlier     []time.Time
		want        []string // eventIds, in publication order
		wantRetried []int
	}{
		"a claim's change alone": {
			outbox: []membership.OutboxEntry{timer("s", flip, 4, false)}, claimedAt: flip,
			want: []string{timeCause("s", flip).EventID}, wantRetried: []int{0},
		},
		"after the backfill's entry it flips from, whatever its age": {
			outbox: []membership.OutboxEntry{backfill, timer("s", flip, 4, false)}, claimedAt: flip,
			want: []string{"segment:s:1", timeCause("s", flip).EventID}, wantRetried: []int{1},
		},
		"after a recent stream entry it flips from": {
			outbox: []membership.OutboxEntry{stream(time.Minute), timer("s", flip, 4, false)}, claimedAt: flip,
			want: []string{"evt-1", timeCause("s", flip).EventID}, wantRetried: []int{1},
		},
		"not after a stream entry older than the replay window": {
			outbox: []membership.OutboxEntry{stream(membership.ReplayWindow + time.Minute), timer("s", flip, 4, false)}, claimedAt: flip,
			want: []string{timeCause("s", flip).EventID}, wantRetried: []int{0},
		},
		"not after an entry in the same direction": {
			outbox: []membership.OutboxEntry{backfill, timer("s", flip, 4, true)}, claimedAt: flip,
			want: []string{timeCause("s", flip).EventID}, wantRetried: []int{0},
		},
		"an earlier claim's flip": {
			outbox: []membership.OutboxEntry{timer("s", earlier, 4, false)}, claimedAt: flip, earlier: []time.Time{earlier},
			want: []string{timeCause("s", earlier).EventID}, wantRetried: []int{0},
		},
		"not a flip the claim was not made for": {
			outbox: []membership.OutboxEntry{timer("s", earlier, 4, false)}, claimedAt: flip,
		},
		"not a segment still time-relative (a round's pass finds it)": {
			outbox: []membership.OutboxEntry{timer("timed", flip, 4, false)}, claimedAt: flip,
		},
		"not a deleted segment": {
			outbox: []membership.OutboxEntry{timer("gone", flip, 4, false)}, claimedAt: flip,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			claims := map[string]membership.Claimed{"u": {Due: membership.Due{OrgID: "o", UserID: "u", At: tc.claimedAt}, Earlier: tc.earlier}}
			views := []membership.SegmentView{{UserID: "u", Rev: 4, Outbox: tc.outbox}}
			changes, projections, retried := orphanTimerChanges("o", org, claims, views, now, unpublishedStream{from: now.Add(-membership.ReplayWindow)})
			var got []string
			for i, c := range changes {
				got = append(got, c.Cause.EventID)
				if projections[i].Change != c {
					t.Errorf("projection %d is %+v, want the change %+v", i, projections[i].Change, c)
				}
			}
			if !slices.Equal(got, tc.want) || !slices.Equal(retried, tc.wantRetried) {
				t.Errorf("changes %v, retried %v; want %v, %v", got, retried, tc.want, tc.wantRetried)
			}
		})
	}
}
