package processor_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// TestDamagedSegmentSetHoldsNothingUp: a segment's public member set
// written by hand as another type must not hold up the stream (every
// partition, every organisation) for good, as a user's damaged state does
// not: the other events are processed and committed.
func TestDamagedSegmentSetHoldsNothingUp(t *testing.T) {
	rdb := testenv.RedisClient(t)
	r := newRig(t, rdb)
	ctx := context.Background()
	a := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	b := r.segment(t, "tier", segment.Criteria{Include: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "gold", HasValue: true}}})
	if err := rdb.Set(ctx, membership.SegmentMembersKey(r.org, a), "written by hand", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.start(t)
	o := r.org
	r.produce(t, `{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"points":2000}}`)
	r.waitVersion(t, "u1", 1) // written: its projection is what meets the damaged set
	r.produce(t, `{"eventId":"e2","type":"profile.created","orgId":"`+o+`","userId":"u2","version":1,"profile":{"tier":"gold"}}`)
	if !testenv.Eventually(20*time.Second, func() bool { return members(t, rdb, membership.SegmentMembersKey(o, b)) == "u2" }) {
		t.Fatalf("u2 not in segment %s 20 s after its event: the stream is held up by segment %s's damaged set (committed %d)",
			b, a, committed(t, r.brokers, r.group, r.profile))
	}
}
