package kafkaio_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/processor"
)

// TestProduceFetchCommit writes records with headers through the Producer,
// reads them back through a GroupReader, commits them out of order, and
// checks that each partition's committed offset is the one after its
// highest record, which is what a restarted member resumes from.
func TestProduceFetchCommit(t *testing.T) { testenv.OnEachKafka(t, testProduceFetchCommit) }

func testProduceFetchCommit(t *testing.T, brokers []string) {
	topic, group := testenv.UniqueName(t, "in"), testenv.UniqueName(t, "group")
	const partitions = 2
	testenv.CreateTopic(t, brokers, topic, partitions)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	w := kafkaio.NewWriter(brokers)
	defer w.Close()
	var sent []processor.Record
	for _, k := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		sent = append(sent, processor.Record{Topic: topic, Key: []byte(k), Value: []byte("v-" + k),
			Headers: []processor.Header{{Key: "h1", Value: []byte(k)}, {Key: "h2", Value: nil}}})
	}
	if err := kafkaio.NewProducer(w).Produce(ctx, sent); err != nil {
		t.Fatal(err)
	}

	rd := kafkaio.NewGroupReader(brokers, group, topic)
	var got []processor.Record
	for len(got) < len(sent) {
		rec, err := rd.Fetch(ctx)
		if err != nil {
			t.Fatalf("fetch after %d records: %v", len(got), err)
		}
		got = append(got, rec)
	}
	high := map[int]int64{}
	for _, r := range got {
		if r.Topic != topic || string(r.Value) != "v-"+string(r.Key) {
			t.Errorf("record %s/%d@%d: key %q value %q", r.Topic, r.Partition, r.Offset, r.Key, r.Value)
		}
		high[r.Partition] = max(high[r.Partition], r.Offset)
	}
	// The processor commits batches in order; a commit that names a lower
	// offset after a higher one of the same partition must not win.
	slices.Reverse(got)
	if err := rd.Commit(ctx, got); err != nil {
		t.Fatal(err)
	}
	if err := rd.Commit(ctx, nil); err != nil {
		t.Fatalf("empty commit: %v", err)
	}
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}

	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	res, err := cl.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0, 1}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Topics[topic] {
		want := int64(0)
		if h, ok := high[p.Partition]; ok {
			want = h + 1
		}
		if p.CommittedOffset != want {
			t.Errorf("partition %d: committed %d, want %d", p.Partition, p.CommittedOffset, want)
		}
	}
	// The jobs read the same, from outside the group.
	offsets := kafkaio.NewGroupOffsets(brokers, group, topic)
	defer offsets.Close()
	committed, err := offsets.Committed(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Topics[topic] {
		if p.CommittedOffset >= 0 && committed[p.Partition] != p.CommittedOffset {
			t.Errorf("Committed: partition %d at %d, want %d", p.Partition, committed[p.Partition], p.CommittedOffset)
		}
	}

	// The headers went out as given: read the records without a group.
	var headers int
	for p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p, MaxWait: 100 * time.Millisecond})
		for range high[p] + 1 {
			m, err := r.ReadMessage(ctx)
			if err != nil {
				t.Fatalf("partition %d: %v", p, err)
			}
			if len(m.Headers) != 2 || m.Headers[0].Key != "h1" || string(m.Headers[0].Value) != string(m.Key) || m.Headers[1].Key != "h2" {
				t.Errorf("record %q: headers %v", m.Key, m.Headers)
			}
			headers++
		}
		r.Close()
	}
	if headers != len(sent) {
		t.Errorf("read %d records without a group, want %d", headers, len(sent))
	}
}

// TestKeysPartitionAsJavaClients: the writer puts a key on the partition
// where the Java client's default partitioner (murmur2), which franz-go
// reproduces, puts it, so that one user's events written by segmentctl and
// by a profile service on another client stay in one partition.
func TestKeysPartitionAsJavaClients(t *testing.T) {
	w := kafkaio.NewWriter([]string{"127.0.0.1:1"})
	defer w.Close()
	const n = 12
	parts := make([]int, n)
	for i := range parts {
		parts[i] = i
	}
	java := kgo.StickyKeyPartitioner(nil).ForTopic("profiles")
	for i := range 200 {
		key := fmt.Sprintf("u_%d", i)
		want := java.Partition(&kgo.Record{Key: []byte(key)}, n)
		if got := w.Balancer.Balance(kafka.Message{Key: []byte(key)}, parts...); got != want {
			t.Fatalf("key %s on partition %d, want %d as the Java client puts it", key, got, want)
		}
	}
}

// frozenBroker returns a listener that accepts connections and never
// answers on them, as a stopped broker's host does.
func frozenBroker(t *testing.T) net.Listener {
	frozen, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { frozen.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := frozen.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // read nothing, answer nothing
		}
	}()
	return frozen
}

// TestPingStopsWithItsContext: a check waiting on a broker that does not
// answer ends when its context is cancelled (a stop signal during
// segmentd's start-up), not at its deadline.
func TestPingStopsWithItsContext(t *testing.T) {
	frozen := frozenBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- kafkaio.Ping(ctx, []string{frozen.Addr().String()}) }()
	time.AfterFunc(200*time.Millisecond, cancel)
	select {
	case err := <-done:
		if err == nil {
			t.Error("ping of a frozen broker succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ping did not end with its cancelled context")
	}
}

// TestPingOfAFrozenBrokerSaysSo: a broker that accepts the connection and
// never answers fails the check with its time out named, not with the
// closed connection the check's own close leaves.
func TestPingOfAFrozenBrokerSaysSo(t *testing.T) {
	frozen := frozenBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := kafkaio.Ping(ctx, []string{frozen.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "did not answer a metadata request in time") || strings.Contains(err.Error(), "closed network connection") {
		t.Errorf("ping of a frozen broker = %v, want it named as not answering in time", err)
	}
}

// TestPingTriesEveryBroker: a first broker that accepts connections and
// never answers must not make the check fail while the next one answers.
func TestPingTriesEveryBroker(t *testing.T) { testenv.OnEachKafka(t, testPingTriesEveryBroker) }

func testPingTriesEveryBroker(t *testing.T, brokers []string) {
	frozen := frozenBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := kafkaio.Ping(ctx, append([]string{frozen.Addr().String()}, brokers...)); err != nil {
		t.Errorf("ping with a frozen first broker: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := kafkaio.Ping(ctx, []string{frozen.Addr().String()}); err == nil {
		t.Error("ping of a frozen broker alone succeeded")
	}
}

// TestPartitionsCreatesNoTopic: reading the partitions of a topic that does
// not exist (segmentctl tail before segmentd's first start, a mistyped
// topic) must not create it on a broker that allows auto-creation, as
// Kafka's default does: EnsureTopics would then keep the broker's defaults.
// The repo's test broker refuses auto-creation, so an in-process one that
// allows it stands in.
func TestPartitionsCreatesNoTopic(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if ps, err := kafkaio.Partitions(ctx, brokers, "segment-membership"); err == nil {
		t.Errorf("partitions of a missing topic: %v, want an error", ps)
	}
	if ps, err := kafkaio.Partitions(ctx, nil, "segment-membership"); err == nil {
		t.Errorf("partitions with no brokers: %v, want an error", ps)
	}
	if err := kafkaio.EnsureTopics(ctx, brokers, 12, "segment-membership"); err != nil {
		t.Fatal(err)
	}
	if ps, err := kafkaio.Partitions(ctx, brokers, "segment-membership"); len(ps) != 12 {
		t.Errorf("segment-membership has %d partitions after EnsureTopics(12) (%v)", len(ps), err)
	}
}

// TestCloseWriterLeavesNothing: a writer closed with CloseWriter leaves no
// goroutine of its transport behind (segmentctl and tests make many).
func TestCloseWriterLeavesNothing(t *testing.T) { testenv.OnEachKafka(t, testCloseWriterLeavesNothing) }

func testCloseWriterLeavesNothing(t *testing.T, brokers []string) {
	topic := testenv.UniqueName(t, "topic")
	testenv.CreateTopic(t, brokers, topic, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := runtime.NumGoroutine()
	for range 5 {
		w := kafkaio.NewWriter(brokers)
		if err := w.WriteMessages(ctx, kafka.Message{Topic: topic, Value: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if err := kafkaio.CloseWriter(w); err != nil {
			t.Fatal(err)
		}
	}
	// Connections end as their goroutines notice the close.
	if !testenv.Eventually(10*time.Second, func() bool { return runtime.NumGoroutine() <= before+1 }) {
		t.Fatalf("%d goroutines after 5 writers closed, %d before", runtime.NumGoroutine(), before)
	}
}

// TestSpansWaitForALeader: a partition that answers with an error Kafka
// calls temporary (here: a topic that is created while the offsets are
// asked for; right after a creation or a leader's move the partition's
// leader answers Not Leader For Partition for a moment) is asked again,
// so that segmentctl tail and the lag metric do not fail on it.
func TestSpansWaitForALeader(t *testing.T) { testenv.OnEachKafka(t, testSpansWaitForALeader) }

func testSpansWaitForALeader(t *testing.T, brokers []string) {
	topic := testenv.UniqueName(t, "topic")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	created := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond) // the first ask finds no topic
		created <- kafkaio.EnsureTopics(ctx, brokers, 2, topic)
	}()
	spans, err := kafkaio.Spans(ctx, brokers, topic, []int{0, 1})
	if cerr := <-created; cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatalf("spans of a topic created meanwhile: %v", err)
	}
	if want := (kafkaio.Span{}); len(spans) != 2 || spans[0] != want || spans[1] != want {
		t.Errorf("spans %v, want two empty partitions", spans)
	}
}

// TestFailedPublishLeavesAPrefixOfEachPartition: a Publish that fails must
// not have written a later record of a partition without the earlier ones.
// The processor publishes a batch's changes again, all of them and in
// order, after a failure; a consumer that drops repeated eventIds keeps the
// first copy of each. Were a later record of a user's partition written by
// the failed attempt while an earlier one was not, that consumer would see
// the user's changes the other way round (an exit before the entry it
// follows) and end on a membership the Redis sets do not hold.
func TestFailedPublishLeavesAPrefixOfEachPartition(t *testing.T) {
	const topic = "changes"
	c := testenv.OneTopicBroker(t, topic)
	brokers := c.ListenAddrs()
	// The broker times out the first produce requests, as a broker does
	// while a partition's leader moves, then takes them again.
	failed := 0
	c.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		if failed == 3 { // kafka-go's attempts of one record batch
			c.DropControl()
			return nil, nil, false
		}
		c.KeepControl()
		failed++
		req := kreq.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.RequestTimedOut.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})

	w := kafkaio.NewWriter(brokers)
	defer kafkaio.CloseWriter(w)
	pub := kafkaio.NewPublisher(w, topic)
	// One user's changes, more than one record batch of the writer holds.
	var changes []events.Change
	for i := range 1000 {
		changes = append(changes, events.Change{OrgID: "acme", SegmentID: fmt.Sprintf("seg_%04d", i), UserID: "u_1",
			Entered: true, At: time.UnixMilli(0), Cause: events.Cause{Type: events.CauseProfile, EventID: "e1"}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, changes); err == nil {
		t.Fatal("the publish succeeded although the broker timed out its first writes")
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var got []string
	for {
		fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
		fs := cl.PollFetches(fctx)
		fcancel()
		if fctx.Err() != nil && fs.NumRecords() == 0 {
			break
		}
		fs.EachRecord(func(r *kgo.Record) {
			d, err := events.DecodeChange(r.Value)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, d.SegmentID)
		})
	}
	for i, seg := range got {
		if want := changes[i].SegmentID; seg != want {
			t.Fatalf("after a failed publish the partition holds %d of its %d records, the first %s: not the first ones published (%s first); a later record was written without those before it",
				len(got), len(changes), got[0], changes[0].SegmentID)
		}
	}
}

// TestPublisherWaitHonoursContext: a publication waits for the one in
// progress on its writer (their records must not share a record batch), but
// no longer than its context allows: an API call or a timer round behind a
// slow publication gives up at its deadline.
func TestPublisherWaitHonoursContext(t *testing.T) {
	const topic = "changes"
	c := testenv.OneTopicBroker(t, topic)
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		once.Do(func() { close(entered) })
		<-release // the broker holds the first publication's write
		return nil, nil, false
	})
	w := kafkaio.NewWriter(c.ListenAddrs())
	defer kafkaio.CloseWriter(w)
	pub := kafkaio.NewPublisher(w, topic)
	change := []events.Change{{OrgID: "acme", SegmentID: "seg_1", UserID: "u_1", Entered: true,
		At: time.UnixMilli(0), Cause: events.Cause{Type: events.CauseProfile, EventID: "e1"}}}
	first := make(chan error, 1)
	go func() { first <- pub.Publish(context.Background(), change) }()
	<-entered
	// Released after a while in any case, so that a wait that ignores its
	// context ends too, and fails below.
	timer := time.AfterFunc(10*time.Second, func() { close(release) })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := pub.Publish(ctx, change)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for the Kafka writer") {
		t.Errorf("a publication behind a held one = %v, want it to give up waiting at its deadline", err)
	}
	if timer.Stop() {
		close(release)
	}
	if err := <-first; err != nil {
		t.Errorf("the first publication: %v", err)
	}
}
