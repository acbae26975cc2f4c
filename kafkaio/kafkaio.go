// Package kafkaio adapts segmentio/kafka-go to segmentd: the group reader of
// the profile topic, the writer of change events and dead letters, topic
// creation, a reachability check, and the partition and offset reads of
// segmentctl.
package kafkaio

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/processor"
)

// NewReader returns a consumer-group reader of topic. Offsets are committed
// only by explicit CommitMessages calls (CommitInterval 0 makes them synchronous).
func NewReader(brokers []string, group, topic string) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:     brokers,
		GroupID:     group,
		GroupTopics: []string{topic},
		MinBytes:    1,
		MaxBytes:    16 << 20,
		MaxWait:     100 * time.Millisecond,
		// Records fetched ahead of the processor: at 1 MB each (the
		// broker's default limit), a larger queue would hold gigabytes.
		QueueCapacity:     512,
		CommitInterval:    0,
		StartOffset:       kafka.FirstOffset,
		HeartbeatInterval: time.Second,
		SessionTimeout:    10 * time.Second,
		RebalanceTimeout:  10 * time.Second,
		JoinGroupBackoff:  500 * time.Millisecond,
		ReadBackoffMin:    50 * time.Millisecond,
		ReadBackoffMax:    500 * time.Millisecond,
		MaxAttempts:       3,
	})
}

// GroupReader is the processor's Fetcher: a consumer-group reader of the
// profile topic.
type GroupReader struct {
	r       *kafka.Reader
	brokers []string
	// closed tells a fetch that fails because the reader was closed
	// (kafka-go's io.EOF) from one whose connection was (the same io.EOF).
	closed atomic.Bool
}

// NewGroupReader returns a GroupReader of topic in group, with NewReader's
// settings.
func NewGroupReader(brokers []string, group, topic string) *GroupReader {
	return &GroupReader{r: NewReader(brokers, group, topic), brokers: brokers}
}

// Fetch returns the next record of the partitions assigned to this member.
func (g *GroupReader) Fetch(ctx context.Context) (processor.Record, error) {
	m, err := g.r.FetchMessage(ctx)
	if err != nil {
		if g.closed.Load() {
			err = fmt.Errorf("%w: %w", processor.ErrFetcherClosed, err)
		}
		return processor.Record{}, fmt.Errorf("group %s: %w", g.r.Config().GroupID, err)
	}
	return processor.Record{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Time: m.Time, Key: m.Key, Value: m.Value,
		HighWaterMark: m.HighWaterMark}, nil
}

// Commit commits, for each partition, the offset after the last of rs.
func (g *GroupReader) Commit(ctx context.Context, rs []processor.Record) error {
	// kafka-go commits each partition's highest offset: one message a
	// partition says as much as all of them.
	type tp struct {
		topic string
		part  int
	}
	last := map[tp]int{}
	var msgs []kafka.Message
	for _, r := range rs {
		k := tp{r.Topic, r.Partition}
		if i, ok := last[k]; !ok {
			last[k] = len(msgs)
			msgs = append(msgs, kafka.Message{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset})
		} else if r.Offset > msgs[i].Offset {
			msgs[i].Offset = r.Offset
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := g.r.CommitMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("commit offsets of %d partitions: %w", len(msgs), err)
	}
	return nil
}

// EndOffsets returns the end of each of topic's partitions given (the
// offset of the next record written there), for the processor's lag.
func (g *GroupReader) EndOffsets(ctx context.Context, topic string, partitions []int) (map[int]int64, error) {
	spans, err := Spans(ctx, g.brokers, topic, partitions)
	if err != nil {
		return nil, err
	}
	out := make(map[int]int64, len(spans))
	for p, s := range spans {
		out[p] = s.End
	}
	return out, nil
}

// Close leaves the group and closes the reader.
func (g *GroupReader) Close() error {
	g.closed.Store(true)
	return g.r.Close()
}

// GroupOffsets reads a consumer group's committed offsets of a topic
// without joining the group: the jobs' CommittedOffsets. Its connections
// stay open between reads, which come several times a second while
// timers fire; Close closes them.
type GroupOffsets struct {
	client       *kafka.Client
	transport    *kafka.Transport
	group, topic string
}

// NewGroupOffsets returns the reader of group's committed offsets of topic.
func NewGroupOffsets(brokers []string, group, topic string) *GroupOffsets {
	tr := &kafka.Transport{DialTimeout: 5 * time.Second, MetadataTopics: []string{topic}}
	return &GroupOffsets{client: &kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}, transport: tr, group: group, topic: topic}
}

// Committed returns the group's committed offset (the next record to
// process) of each partition of the topic that has one. ctx is bounded
// by requestTimeout unless it has a deadline.
func (g *GroupOffsets) Committed(ctx context.Context) (map[int]int64, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	meta, err := g.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{g.topic}})
	if err != nil {
		return nil, fmt.Errorf("partitions of %s: %w", g.topic, err)
	}
	ps, err := partitionsIn(meta, g.topic)
	if err != nil {
		return nil, err
	}
	partitions := make([]int, len(ps))
	for i, p := range ps {
		partitions[i] = p.ID
	}
	req := &kafka.OffsetFetchRequest{GroupID: g.group, Topics: map[string][]int{g.topic: partitions}}
	resp, err := g.client.OffsetFetch(ctx, req)
	if err == nil && resp.Error != nil {
		err = resp.Error
	}
	if err != nil {
		return nil, fmt.Errorf("committed offsets of group %s: %w", g.group, err)
	}
	out := make(map[int]int64, len(partitions))
	for _, p := range resp.Topics[g.topic] {
		// A partition's error, or none committed (-1), tells nothing.
		if p.Error == nil && p.CommittedOffset >= 0 {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out, nil
}

// Close closes the connections kept open.
func (g *GroupOffsets) Close() error {
	g.transport.CloseIdleConnections()
	return nil
}

// Producer is the processor's Producer: it writes records through a
// kafka-go writer (see NewWriter).
type Producer struct {
	out inOrder
}

// NewProducer returns a Producer writing through w, which nothing else may
// write through (see WriteInOrder).
func NewProducer(w *kafka.Writer) *Producer { return &Producer{out: newInOrder(w)} }

// Produce writes rs and returns once all are acknowledged. Records carry
// the time they are written (kafka-go sends none otherwise).
func (p *Producer) Produce(ctx context.Context, rs []processor.Record) error {
	msgs := make([]kafka.Message, len(rs))
	now := time.Now()
	for i, r := range rs {
		msgs[i] = kafka.Message{Topic: r.Topic, Key: r.Key, Value: r.Value, Time: now}
		if len(r.Headers) > 0 {
			msgs[i].Headers = make([]kafka.Header, len(r.Headers))
			for j, h := range r.Headers {
				msgs[i].Headers[j] = kafka.Header{Key: h.Key, Value: h.Value}
			}
		}
	}
	err := p.out.write(ctx, msgs)
	if errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge) {
		err = fmt.Errorf("%w: %w", processor.ErrRecordTooLarge, err)
	}
	return err
}

// NewWriter returns a synchronous writer for messages that name their
// topic, keyed by user, acknowledged by all in-sync replicas. Keys go to
// partitions by murmur2, as the Java client's default partitioner and
// franz-go's put them: one user's events written by segmentctl and by a
// profile service on another client land on the same partition, in order.
func NewWriter(brokers []string) *kafka.Writer {
	return &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		// kafka-go allocates room for BatchSize messages (~150 bytes each)
		// for every partition batch it starts, however few it holds: a
		// large value costs megabytes of allocation per small write.
		BatchSize: 512,
		// Under the broker's default message.max.bytes (1 MiB), which
		// bounds one record batch.
		BatchBytes: 1_000_000,
		// Callers write many messages per call (segmentd a batch's change
		// events, segmentctl a chunk of its input), which kafka-go groups
		// by partition as one call; waiting for more only delays them.
		// (Zero would mean kafka-go's default of a second.)
		BatchTimeout:           100 * time.Microsecond,
		MaxAttempts:            3,
		WriteBackoffMin:        50 * time.Millisecond,
		WriteBackoffMax:        time.Second,
		AllowAutoTopicCreation: false,
		// A transport of its own: the shared default caches topic metadata
		// across writers, so a topic created after another writer's first
		// write could stay unknown for a while.
		Transport: &kafka.Transport{MetadataTTL: 10 * time.Second},
	}
}

// CloseWriter closes a writer of NewWriter and its transport's connections,
// which kafka-go's Close leaves open (it closes only a transport of its
// own making).
func CloseWriter(w *kafka.Writer) error {
	err := w.Close()
	if t, ok := w.Transport.(*kafka.Transport); ok {
		t.CloseIdleConnections()
	}
	return err
}

// Publisher publishes membership changes to the membership topic. Its
// methods may be called concurrently.
type Publisher struct {
	out   inOrder
	topic string
}

// NewPublisher returns a publisher writing through w, which nothing else
// may write through (see WriteInOrder).
func NewPublisher(w *kafka.Writer, topic string) *Publisher {
	return &Publisher{out: newInOrder(w), topic: topic}
}

// Publish writes one change event per change and returns once all are acknowledged.
func (p *Publisher) Publish(ctx context.Context, changes []events.Change) error {
	if len(changes) == 0 {
		return nil
	}
	msgs := AppendChangeMessages(nil, p.topic, changes)
	if err := p.out.write(ctx, msgs); err != nil {
		return fmt.Errorf("publish %d changes: %w", len(msgs), err)
	}
	return nil
}

// AppendChangeMessages appends one membership-change record per change to
// dst, keyed by user so that one user's changes stay in order.
func AppendChangeMessages(dst []kafka.Message, topic string, changes []events.Change) []kafka.Message {
	for _, c := range changes {
		dst = append(dst, kafka.Message{Topic: topic, Key: []byte(c.UserID), Value: events.EncodeChange(c)})
	}
	return dst
}

// InvalidTopicError is EnsureTopics' error for a topic whose name Kafka
// refuses: characters it does not take, or a name that collides with an
// existing topic's (Kafka takes '.' and '_' for the same character).
type InvalidTopicError struct {
	// Topic is the name refused.
	Topic string
	// Err is Kafka's answer.
	Err error
}

// Error names the topic and says why Kafka may have refused it.
func (e *InvalidTopicError) Error() string {
	return fmt.Sprintf("Kafka refused to create topic %s (a name it does not take, or one that collides with an existing topic's: '.' and '_' count as the same): %v", e.Topic, e.Err)
}

// Unwrap returns Kafka's answer.
func (e *InvalidTopicError) Unwrap() error { return e.Err }

// EnsureTopics creates each missing topic with the given partition count and
// a replication factor of 3, capped to the number of brokers, then waits
// (up to leadersTimeout) until every partition of each topic has a leader.
func EnsureTopics(ctx context.Context, brokers []string, partitions int, topics ...string) error {
	conn, err := dial(ctx, brokers)
	if err != nil {
		return err
	}
	defer conn.Close()
	bs, err := conn.Brokers()
	if err != nil {
		return fmt.Errorf("list brokers: %w", err)
	}
	rf := min(3, len(bs))
	ctrl, err := conn.Controller()
	if err != nil {
		return fmt.Errorf("find controller: %w", err)
	}
	ctrlAddr := net.JoinHostPort(ctrl.Host, strconv.Itoa(ctrl.Port))
	ctrlConn, err := (&kafka.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", ctrlAddr)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("dial controller: %w", err)
		}
		return &AdvertisedUnreachableError{Addr: ctrlAddr, Err: err}
	}
	cc := closeOnDone(ctx, ctrlConn)
	defer cc.Close()
	if err := setDeadline(ctx, ctrlConn); err != nil {
		return err
	}
	for _, t := range topics {
		err := cc.CreateTopics(kafka.TopicConfig{Topic: t, NumPartitions: partitions, ReplicationFactor: rf})
		if errors.Is(err, kafka.TopicAuthorizationFailed) || errors.Is(err, kafka.ClusterAuthorizationFailed) {
			// A cluster whose administrators create the topics may refuse
			// the creation of one that exists: it is then used as it is.
			if _, perr := readPartitions(ctx, brokers, t); perr == nil {
				err = nil
			}
		}
		if errors.Is(err, kafka.InvalidTopic) {
			return &InvalidTopicError{Topic: t, Err: err}
		}
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("create topic %s: %w", t, err)
		}
	}
	// A topic just created has no partition leaders for a moment, and a
	// write then fails with Unknown Topic Or Partition: the first static
	// list or change event must not meet that.
	wctx, cancel := context.WithTimeout(ctx, leadersTimeout)
	defer cancel()
	for _, t := range topics {
		ready := func() error {
			ps, err := readPartitions(wctx, brokers, t)
			if err != nil {
				return err
			}
			for _, p := range ps {
				if p.Leader.Host == "" {
					return fmt.Errorf("partition %d of %s has no leader yet", p.ID, t)
				}
			}
			return nil
		}
		if err := backoff.Retry(ready, backoff.WithContext(backoff.NewConstantBackOff(100*time.Millisecond), wctx)); err != nil {
			return fmt.Errorf("topic %s not ready within %s: %w", t, leadersTimeout, err)
		}
	}
	return nil
}

// AdvertisedUnreachableError is a broker that answered at the configured
// address but advertises, for the cluster's controller, one (Kafka's
// advertised.listeners) that does not answer from here: a container's host
// name, most often, or a broker of a larger cluster that is down.
type AdvertisedUnreachableError struct {
	// Addr is the address the cluster advertises, and Err why it failed.
	Addr string
	Err  error
}

// Error names the address and the two likely causes.
func (e *AdvertisedUnreachableError) Error() string {
	return fmt.Sprintf("the controller's advertised address %s does not answer from here (check the brokers' advertised.listeners, or whether that broker is down): %v", e.Addr, e.Err)
}

// Unwrap returns the dial error.
func (e *AdvertisedUnreachableError) Unwrap() error { return e.Err }

// leadersTimeout bounds the wait for new topics' partitions to get leaders.
const leadersTimeout = 30 * time.Second

// Ping checks that one of the brokers answers a metadata request. The
// brokers are tried in turn, each with its share of ctx's time: a host that
// drops packets, or a broker that accepts connections and never answers,
// must not use it all while the next one would answer.
func Ping(ctx context.Context, brokers []string) error {
	var last error
	for i, b := range brokers {
		bctx, cancel := ctx, context.CancelFunc(func() {})
		if d, ok := ctx.Deadline(); ok {
			bctx, cancel = context.WithTimeout(ctx, time.Until(d)/time.Duration(len(brokers)-i))
		}
		last = pingOne(bctx, b)
		cancel()
		if last == nil || ctx.Err() != nil {
			break
		}
	}
	if last != nil {
		return fmt.Errorf("kafka %v: %w", brokers, last)
	}
	return nil
}

func pingOne(ctx context.Context, broker string) error {
	conn, err := dial(ctx, []string{broker})
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Brokers(); err != nil {
		// The connection's deadline passed, or it was closed because the
		// time ran out (or the caller stopped): that, not the closed
		// connection, is what to say.
		if cerr := ctx.Err(); cerr != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%s accepted the connection and did not answer a metadata request in time: %w", broker, cmp.Or(cerr, err))
		}
		return fmt.Errorf("metadata from %s: %w", broker, err)
	}
	return nil
}

func dial(ctx context.Context, brokers []string) (*closingConn, error) {
	var last error
	for _, b := range brokers {
		conn, err := (&kafka.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", b)
		if err == nil {
			if err = setDeadline(ctx, conn); err == nil {
				return closeOnDone(ctx, conn), nil
			}
			conn.Close()
		}
		last = err
	}
	return nil, fmt.Errorf("dial kafka %v: %w", brokers, last)
}

// closingConn is a connection that closes when its context ends: kafka-go's
// Conn methods take no context, and a caller stopped (a signal during
// start-up) must not wait for a broker that does not answer.
type closingConn struct {
	// Conn is the connection, closed when the context ends.
	*kafka.Conn
	stop func() bool
}

func closeOnDone(ctx context.Context, conn *kafka.Conn) *closingConn {
	return &closingConn{Conn: conn, stop: context.AfterFunc(ctx, func() { conn.Close() })}
}

// Close closes the connection, once.
func (c *closingConn) Close() error {
	if !c.stop() {
		return nil // closed when the context ended
	}
	return c.Conn.Close()
}

// requestTimeout bounds the requests on a connection whose context has no
// deadline.
const requestTimeout = 10 * time.Second

// setDeadline bounds every request on conn by ctx's deadline (or
// requestTimeout): kafka-go's Conn methods take no context, and a broker
// that accepts connections but never answers must not hang the caller.
func setDeadline(ctx context.Context, conn *kafka.Conn) error {
	d, ok := ctx.Deadline()
	if !ok {
		d = time.Now().Add(requestTimeout)
	}
	if err := conn.SetDeadline(d); err != nil {
		return fmt.Errorf("kafka connection deadline: %w", err)
	}
	return nil
}

// Partitions returns the partition ids of topic.
func Partitions(ctx context.Context, brokers []string, topic string) ([]int, error) {
	ps, err := readPartitions(ctx, brokers, topic)
	if err != nil {
		return nil, err
	}
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.ID
	}
	return out, nil
}

// Span is the offsets a partition holds: from First up to End, the offset
// its next record will take.
type Span struct {
	// First is the offset of the partition's oldest record, and End the
	// offset its next record will take; First == End when it holds none.
	First, End int64
}

// Spans returns the span of each of topic's partitions now. A partition
// whose leader is moving (or just elected, on a topic just created) answers
// with an error Kafka calls temporary: the read is retried for up to
// spansRetry, then fails with it.
func Spans(ctx context.Context, brokers []string, topic string, partitions []int) (map[int]Span, error) {
	var out map[int]Span
	read := func() (err error) {
		out, err = spans(ctx, brokers, topic, partitions)
		var ke kafka.Error
		if err != nil && !(errors.As(err, &ke) && ke.Temporary()) {
			return backoff.Permanent(err)
		}
		return err
	}
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(50*time.Millisecond),
		backoff.WithMaxInterval(time.Second), backoff.WithMaxElapsedTime(spansRetry))
	if err := backoff.Retry(read, backoff.WithContext(bo, ctx)); err != nil {
		return nil, err
	}
	return out, nil
}

// spansRetry bounds the retries of Spans: a leader is elected within
// seconds, and a topic deleted meanwhile must not hold its caller long.
const spansRetry = 5 * time.Second

func spans(ctx context.Context, brokers []string, topic string, partitions []int) (map[int]Span, error) {
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for _, p := range partitions {
		req.Topics[topic] = append(req.Topics[topic], kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	var resp *kafka.ListOffsetsResponse
	err := withTopicTransport(ctx, brokers, topic, func(ctx context.Context, tr *kafka.Transport) (err error) {
		resp, err = (&kafka.Client{Addr: kafka.TCP(brokers...), Transport: tr}).ListOffsets(ctx, req)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("offsets of %s: %w", topic, err)
	}
	out := make(map[int]Span, len(partitions))
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("offsets of %s partition %d: %w", topic, po.Partition, po.Error)
		}
		if po.FirstOffset < 0 || po.LastOffset < po.FirstOffset {
			return nil, fmt.Errorf("offsets of %s partition %d: %d to %d is no span", topic, po.Partition, po.FirstOffset, po.LastOffset)
		}
		out[po.Partition] = Span{First: po.FirstOffset, End: po.LastOffset}
	}
	return out, nil
}

// withTopicTransport runs f on a transport of its own, closed after: no
// metadata cache shared with other clients, and its cache holds topic only,
// not the whole cluster's. ctx is bounded by requestTimeout unless it has a
// deadline.
func withTopicTransport(ctx context.Context, brokers []string, topic string, f func(context.Context, *kafka.Transport) error) error {
	if len(brokers) == 0 {
		return errors.New("no brokers")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	tr := &kafka.Transport{DialTimeout: 5 * time.Second, MetadataTopics: []string{topic}}
	defer tr.CloseIdleConnections()
	return f(ctx, tr)
}

// readPartitions reads topic's partitions, on a transport of its own so
// that no metadata cache is involved, and without asking the broker to
// create the topic (a Conn's metadata request does: a broker that allows
// it would create a missing topic with its own defaults, which EnsureTopics
// then finds and keeps).
func readPartitions(ctx context.Context, brokers []string, topic string) ([]kafka.Partition, error) {
	var resp *kafka.MetadataResponse
	err := withTopicTransport(ctx, brokers, topic, func(ctx context.Context, tr *kafka.Transport) (err error) {
		for _, b := range brokers {
			c := &kafka.Client{Addr: kafka.TCP(b), Transport: tr}
			if resp, err = c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}}); err == nil || ctx.Err() != nil {
				break
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("partitions of %s: %w", topic, err)
	}
	return partitionsIn(resp, topic)
}

// partitionsIn returns topic's partitions in a metadata answer.
func partitionsIn(resp *kafka.MetadataResponse, topic string) ([]kafka.Partition, error) {
	var ps []kafka.Partition
	for _, t := range resp.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, fmt.Errorf("partitions of %s: %w", topic, t.Error)
		}
		ps = t.Partitions
	}
	if len(ps) == 0 {
		return nil, fmt.Errorf("topic %s has no partitions", topic)
	}
	return ps, nil
}

// inOrder is WriteInOrder through one writer for concurrent callers.
type inOrder struct {
	// turn is held by the call in progress: no record batch mixes two
	// calls. A channel, so that a caller waiting for its turn still
	// honours its context.
	turn chan struct{}
	w    *kafka.Writer
}

func newInOrder(w *kafka.Writer) inOrder { return inOrder{turn: make(chan struct{}, 1), w: w} }

func (o *inOrder) write(ctx context.Context, msgs []kafka.Message) error {
	select {
	case o.turn <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting for the Kafka writer: %w", context.Cause(ctx))
	}
	defer func() { <-o.turn }()
	_, err := WriteInOrder(ctx, o.w, msgs)
	return err
}

// WriteInOrder writes msgs through w so that a failure never leaves a
// later message of a partition written without an earlier one. kafka-go
// splits a partition's messages into record batches (w.BatchSize messages,
// w.BatchBytes bytes) and, when one batch fails, still writes the batches
// after it: a caller that writes the messages again after an error would
// then give a reader that drops repeats a user's later changes before its
// earlier ones. So each call to kafka-go holds at most one record batch's
// worth (one batch a partition), and a call is made only once the one
// before it succeeded: what a failure leaves written is a first part of
// each partition's messages. Calls must not overlap on w (kafka-go would
// put two calls' messages in one batch), and nothing else may write
// through it meanwhile. It returns how many of msgs, from the first, were
// acknowledged; after an error, some of the rest may be written too.
func WriteInOrder(ctx context.Context, w *kafka.Writer, msgs []kafka.Message) (int, error) {
	maxN, maxBytes := w.BatchSize, w.BatchBytes
	if maxN <= 0 {
		maxN = 100 // kafka-go's default
	}
	if maxBytes <= 0 {
		maxBytes = 1 << 20 // kafka-go's default
	}
	done := 0
	for len(msgs) > 0 {
		n, size := 0, int64(0)
		for n < len(msgs) && n < maxN {
			sz := messageBytes(&msgs[n])
			if n > 0 && size+sz > maxBytes {
				break
			}
			n, size = n+1, size+sz
		}
		if err := WriteError(w.WriteMessages(ctx, msgs[:n]...)); err != nil {
			return done, err
		}
		msgs, done = msgs[n:], done+n
	}
	return done, nil
}

// messageBytes bounds what kafka-go counts of m against BatchBytes: its key,
// value and headers, and the record's framing (at most 64 bytes).
func messageBytes(m *kafka.Message) int64 {
	n := int64(len(m.Key) + len(m.Value) + 64)
	for _, h := range m.Headers {
		n += int64(len(h.Key) + len(h.Value) + 10)
	}
	return n
}

// WriteError shortens an error of kafka-go's WriteMessages: its WriteErrors
// holds one error per message, and its text repeats each of them (a failed
// write of thousands of records made a log line of hundreds of kilobytes).
// It says how many messages failed and wraps the first error.
func WriteError(err error) error {
	var we kafka.WriteErrors
	if !errors.As(err, &we) {
		return err
	}
	var first error
	failed := 0
	distinct := map[string]bool{}
	for _, e := range we {
		if e == nil {
			continue
		}
		failed++
		if first == nil {
			first = e
		}
		if len(distinct) < 100 {
			distinct[e.Error()] = true
		}
	}
	if first == nil {
		return err
	}
	if len(distinct) > 1 {
		return fmt.Errorf("%d of %d messages not written (%d different errors, the first): %w", failed, len(we), len(distinct), first)
	}
	return fmt.Errorf("%d of %d messages not written: %w", failed, len(we), first)
}
