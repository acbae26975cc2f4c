package processor_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// TestRedisOutage freezes a real Redis server (SIGSTOP) in the middle of a
// stream: the processor must report itself unhealthy, retry, and once Redis
// is back (SIGCONT) finish the stream with membership equal to a
// from-scratch evaluation.
func TestRedisOutage(t *testing.T) {
	brokers := testenv.Kafka(t)
	srv := testenv.StartPrivateRedis(t)
	rdb := membership.NewClient([]string{srv.Addr}, membership.Auth{})
	t.Cleanup(func() { rdb.Close() })

	r := &rig{brokers: brokers, rdb: rdb, org: testenv.Org(t, rdb, "org")}
	r.profile, r.membershipT, r.dlq, r.group = testenv.UniqueName(t, "profiles"), testenv.UniqueName(t, "membership"), testenv.UniqueName(t, "dlq"), testenv.UniqueName(t, "group")
	testenv.CreateTopic(t, brokers, r.profile, 3)
	testenv.CreateTopic(t, brokers, r.membershipT, 3)
	testenv.CreateTopic(t, brokers, r.dlq, 1)
	r.defs, r.users = membership.NewDefinitions(rdb), membership.NewUsers(rdb)
	r.segment(t, "rich", segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true}}})

	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := processor.NewRegistry(r.defs, 100*time.Millisecond, log)
	ctx, cancel := context.WithCancel(context.Background())
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	reader := kafkaio.NewGroupReader(brokers, r.group, r.profile)
	writer := kafkaio.NewWriter(brokers)
	p := processor.New(processor.Config{
		Fetcher: reader, Producer: kafkaio.NewProducer(writer), Users: r.users, Rules: reg, Scheduler: membership.NewSchedules(rdb),
		MembershipTopic: r.membershipT, DLQTopic: r.dlq, BatchSize: 200, BatchWait: 5 * time.Millisecond,
		Metrics: mustMetrics(t, prometheus.NewRegistry()), Logger: log,
	})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := p.Run(ctx); err != nil {
			t.Errorf("processor: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait(); reader.Close(); writer.Close() })

	points := map[string]int{}
	batch := func(round int) []events.ProfileEvent {
		var out []events.ProfileEvent
		for i := range 1000 {
			u := fmt.Sprintf("u%d", i)
			points[u] = (i*37 + round*600) % 2000
			out = append(out, events.ProfileEvent{EventID: fmt.Sprintf("r%d-%s", round, u), Type: events.ProfileUpdated, OrgID: r.org, UserID: u,
				Version: int64(round + 1), HasVersion: true, Profile: map[string]any{"points": points[u]}})
		}
		return out
	}
	r.produceEvents(t, batch(0))
	r.waitPoints(t, points, time.Minute)

	srv.Freeze(t)
	r.produceEvents(t, batch(1))
	if !testenv.Eventually(30*time.Second, func() bool { return !p.Healthy() }) {
		t.Fatal("processor still healthy 30 s into a Redis outage")
	}
	srv.Thaw(t)
	r.waitPoints(t, points, 2*time.Minute)
	if !testenv.Eventually(30*time.Second, p.Healthy) {
		t.Fatal("processor not healthy 30 s after Redis came back")
	}
	r.verifyClean(t)
}

// TestProfileTopicStartedOver deletes the profile topic under a running
// processor and creates it again. kafka-go goes on reading each partition
// at the old topic's offsets, past the new topic's end, and waits there
// without an error: the processor must notice (a partition's end below
// what it finished) and report itself unhealthy, rather than answer ready
// while no event is read; and once restarted, it reads the new topic from
// its beginning, with no event of it skipped.
func TestProfileTopicStartedOver(t *testing.T) {
	r := newRig(t, testenv.RedisClient(t))
	stop := r.start(t)
	var vals []string
	for i := range 60 {
		vals = append(vals, fmt.Sprintf(`{"eventId":"a%d","type":"profile.created","orgId":"%s","userId":"u%d","version":1,"profile":{"points":1}}`, i, r.org, i))
	}
	r.produce(t, vals...)
	r.waitCommitted(t, 60)

	cl := &kafka.Client{Addr: kafka.TCP(r.brokers...), Timeout: 10 * time.Second}
	if _, err := cl.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: []string{r.profile}}); err != nil {
		t.Fatal(err)
	}
	if !testenv.Eventually(30*time.Second, func() bool {
		_, err := kafkaio.Partitions(context.Background(), r.brokers, r.profile)
		return err != nil
	}) {
		t.Fatal("profile topic still there 30 s after its deletion")
	}
	testenv.CreateTopic(t, r.brokers, r.profile, 3)
	vals = nil
	for i := range 6 {
		vals = append(vals, fmt.Sprintf(`{"eventId":"b%d","type":"profile.updated","orgId":"%s","userId":"u%d","version":2,"changes":{"points":5}}`, i, r.org, i))
	}
	r.produce(t, vals...)
	if !testenv.Eventually(30*time.Second, func() bool { return !r.proc.Healthy() }) {
		t.Fatal("the processor still reports itself healthy 30 s after its topic started over")
	}
	stop()
	r.start(t)
	for i := range 6 {
		r.waitVersion(t, fmt.Sprintf("u%d", i), 2)
	}
}
