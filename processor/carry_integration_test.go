package processor_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// unreachableKafka is a producer for a broker that does not answer.
type unreachableKafka struct{}

func (unreachableKafka) WriteMessages(context.Context, ...kafka.Message) error {
	return errors.New("kafka: broker not reachable")
}

// TestUnfinishedBatchKeepsItsOutbox writes a user in one batch whose change
// events cannot be published, then again in the next batch (which runs
// while the first is still retrying), and stops the processor: nothing is
// committed. The second write must keep the first batch's diff in the
// user's outbox, so that the processor taking over replays it: the user
// enters the segment and the event announcing it is published. Dropping the
// diff would lose both for good, since the redelivered first event is by
// then older than the stored version.
func TestUnfinishedBatchKeepsItsOutbox(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	seg := r.segment(t, "points", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})
	stop := r.startWith(t, func(c *processor.Config) {
		c.Producer = unreachableKafka{}
		c.BatchSize = 1
		c.ShutdownTimeout = time.Second
	})
	o := r.org
	r.produce(t,
		`{"eventId":"e1","type":"profile.created","orgId":"`+o+`","userId":"u1","version":1,"profile":{"tier":"gold","points":1200}}`,
		`{"eventId":"e2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"tier":"silver"}}`,
	)
	ctx := context.Background()
	var st membership.UserState
	for deadline := time.Now().Add(30 * time.Second); ; {
		states, err := r.users.Load(ctx, []membership.UserRef{{OrgID: o, UserID: "u1"}})
		if err != nil {
			t.Fatal(err)
		}
		if st = states[0]; st.Version == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second batch not written within 30 s: stored version %d", st.Version)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var ids []string
	for _, e := range st.Outbox {
		ids = append(ids, e.EventID)
	}
	if !slices.Equal(ids, []string{"e1", "e2"}) {
		t.Fatalf("outbox after the second batch holds %q, want e1 then e2", ids)
	}
	stop()

	r.start(t)
	msgs := readTopic(t, r.brokers, r.membershipT, 1, 60*time.Second)
	if len(msgs) != 1 {
		t.Fatalf("%d change events, want 1", len(msgs))
	}
	d, err := events.DecodeChange(msgs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if d.UserID != "u1" || d.SegmentID != seg || !d.Entered || d.Cause.EventID != "e1" {
		t.Errorf("change event %+v, want u1 entering by e1", d)
	}
	if g := members(t, r.rdb, membership.SegmentMembersKey(o, seg)); g != "u1" {
		t.Errorf("members = %q, want u1", g)
	}
}
