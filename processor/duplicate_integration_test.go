package processor_test

import (
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/segment"
)

// TestLateDuplicateIsNotReplayed: a producer's retry of an event that
// reaches the topic after the user's next event (in a later batch, with
// nothing crashed) is a duplicate (the contract: it changes nothing), not
// a redelivery: its change events are not published again after the
// newer ones, which would leave a consumer with the older decision.
func TestLateDuplicateIsNotReplayed(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		r := newRig(t, rdb)
		r.segment(t, "gold", segment.Criteria{Include: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "gold", HasValue: true}}})
		r.start(t)
		o := r.org
		e1 := `{"eventId":"x1","type":"profile.created","orgId":"` + o + `","userId":"u1","version":1,"profile":{"tier":"gold"}}`
		r.produce(t, e1, `{"eventId":"x2","type":"profile.updated","orgId":"`+o+`","userId":"u1","version":2,"changes":{"tier":"bronze"}}`)
		r.waitCommitted(t, 2)
		r.produce(t, e1) // the producer's retry of x1, late
		r.waitCommitted(t, 3)
		var got []string
		for _, m := range readAll(t, r.brokers, r.membershipT) {
			d, err := events.DecodeChange(m.Value)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, d.Direction()+":"+d.Cause.EventID)
		}
		if want := "entered:x1 exited:x2"; strings.Join(got, " ") != want {
			t.Fatalf("change events %q, want %q", strings.Join(got, " "), want)
		}
	})
}
