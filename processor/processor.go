package processor

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v4"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// Record is one Kafka record as the processor sees it: one read from the
// profile topic (Topic, Partition and Offset say where), or one to write,
// which names its topic and may carry headers.
type Record struct {
	// Topic is the topic the record was read from, or the one to write it to.
	Topic string
	// Partition is the partition the record was read from; unused for one to
	// write, whose partition the producer picks from Key.
	Partition int
	// Offset is the record's offset in its partition, for one read.
	Offset int64
	// Time is the record's timestamp, for one read; zero for one to write.
	Time time.Time
	// HighWaterMark is, for one read, the end of its partition (the offset
	// of the next record written there) as the fetch saw it; 0 when unknown.
	HighWaterMark int64
	// Key is the record's key: the user id, for profile events and membership
	// changes.
	Key []byte
	// Value is the record's payload.
	Value []byte
	// Headers are the record's headers, nil for none.
	Headers []Header
}

// Header is one header of a Record.
type Header struct {
	// Key is the header's name.
	Key string
	// Value is the header's value.
	Value []byte
}

// ErrFetcherClosed is what a Fetcher's Fetch returns, wrapped, once the
// fetcher is closed: the processor then stops. Any other error, io.EOF of
// a connection that a broker or a proxy closed included, is retried.
var ErrFetcherClosed = errors.New("fetcher closed")

// ErrRecordTooLarge is what a Producer's Produce returns, wrapped, when a
// topic refused a record for its size (a topic's max.message.bytes below
// the broker's default, which the dead letters' cut assumes): the
// processor then writes the batch's dead letters without their values.
var ErrRecordTooLarge = errors.New("record too large for its topic")

// Fetcher is the consumer side of the profile topic, as a member of a
// consumer group.
type Fetcher interface {
	// Fetch returns the next record of the partitions assigned to this
	// member, waiting for one until ctx ends.
	Fetch(ctx context.Context) (Record, error)
	// Commit records that every record up to and including the given ones
	// (per partition) is processed.
	Commit(ctx context.Context, rs []Record) error
}

// EndOffsets is what a Fetcher may also offer: the end of each of a topic's
// partitions now, so that the consumer lag keeps moving while no record
// is fetched (an outage holds the batch in hand).
type EndOffsets interface {
	// EndOffsets returns the end of each of the given partitions of topic
	// (the offset of the next record written there), by partition.
	EndOffsets(ctx context.Context, topic string, partitions []int) (map[int]int64, error)
}

// Producer writes records to Kafka and returns once all are acknowledged.
type Producer interface {
	// Produce writes rs, each to the topic it names, and returns once every
	// one is acknowledged.
	Produce(ctx context.Context, rs []Record) error
}

// UserStore is the Redis side of the processor.
type UserStore interface {
	// Load reads the stored state of each user, in the order of refs.
	Load(ctx context.Context, refs []membership.UserRef) ([]membership.UserState, error)
	// Write applies each update atomically per user and reports, per update,
	// whether it was applied (false: the user's revision had moved, and the
	// caller must reload and recompute).
	Write(ctx context.Context, ws []membership.UserWrite) ([]bool, error)
	// Project mirrors membership changes onto the public per-segment sets,
	// idempotently, and returns the segments it found deleted (see
	// membership.Deletions).
	Project(ctx context.Context, ps []membership.Projection) (membership.Deletions, error)
}

// Scheduler records when a time-relative criterion can next flip for a user.
type Scheduler interface {
	// Schedule records each due instant where it is earlier than the user's
	// timer.
	Schedule(ctx context.Context, due []membership.Due) error
}

// Rules gives the current compiled definitions.
type Rules interface {
	// Current returns the latest snapshot of the compiled definitions, nil
	// before the first load.
	Current() *Snapshot
	// Fresh reads the definitions' revision now and returns the latest
	// snapshot, reloaded when the revision moved.
	Fresh(ctx context.Context) (*Snapshot, error)
}

// Config wires a Processor.
type Config struct {
	// Fetcher reads the profile topic.
	Fetcher Fetcher
	// Producer writes the membership changes and the dead letters.
	Producer Producer
	// Users stores the users' states, and the segment sets they are projected
	// onto.
	Users UserStore
	// Rules gives the compiled definitions each batch is evaluated with.
	Rules Rules
	// Scheduler stores the users' next relative-date flips; nil stores
	// none (no segment of time).
	Scheduler Scheduler
	// MembershipTopic is the topic the membership change events are published
	// to.
	MembershipTopic string
	// DLQTopic is the dead-letter topic, where events that cannot be
	// processed go with the reason in a header.
	DLQTopic string
	// BatchSize is the most records one batch takes (default 1000).
	BatchSize int
	// BatchWait is how long a batch waits for more records after its first
	// one (default 20 ms).
	BatchWait time.Duration
	// UserCacheBytes is the memory the processor may take to keep users'
	// states, to spare reading them before each write: 0 means
	// DefaultUserCacheBytes, a negative number none.
	UserCacheBytes int
	// ShutdownTimeout bounds finishing the last batch after ctx ends.
	ShutdownTimeout time.Duration
	// Metrics records the processor's metrics; nil records none.
	Metrics *Metrics
	// Logger receives the processor's logs (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (nil is time.Now).
	Now func() time.Time
}

// Processor consumes profile events and keeps membership exact.
type Processor struct {
	cfg Config
	// mu orders taking a snapshot for a batch against AppliedRevision, so
	// that no batch runs on definitions older than the revision reported.
	// revs holds the definitions revision of every batch written and not
	// yet published, oldest first.
	mu   sync.Mutex
	revs []seqRev
	// stages track each stage of the pipeline, for Healthy.
	stages [4]stageState
	// carry holds, per user, the outbox entries of batches written but not
	// yet published (finished); cmu guards it. A user written again before
	// an earlier batch has finished keeps those entries in its outbox, so
	// that a crash still finds them to replay. finished is the sequence
	// number of the last finished batch; seq that of the last written one.
	cmu      sync.Mutex
	carry    map[membership.UserRef][]seqEntry
	finished atomic.Uint64
	seq      uint64
	// cache holds the users' states last read or written; only the write
	// stage uses it.
	cache *stateCache
	// fetchFailed is when fetching last failed (unix ns; 0: it works):
	// Kafka unreachable, the group not joined. A quiet topic gives no fetch
	// to clear it, so it counts for fetchFailureWindow only.
	fetchFailed atomic.Int64
	// lag tracks, per partition read, its end and the next record not yet
	// finished, for segmentd_consumer_lag_events.
	lag lagTracker
	// startedOver is set once a topic read is seen to have started over
	// (see lagLoop): the instance is unhealthy until it is restarted.
	startedOver atomic.Bool
	// dlqLog is when the publish stage last logged dead letters, how many
	// it has sent since without a line, and the reason and source of the
	// latest batch of those. The lag loop and the end of Run log the ones
	// held back when no later dead letter comes to do it.
	dlqLog struct {
		sync.Mutex
		at             time.Time
		held           int
		reason, source string
	}
}

// dlqLogEvery spaces the lines about dead letters: a producer that sends
// bad records sends them in every batch, and each record carries its reason.
const dlqLogEvery = 10 * time.Second

type stageState struct {
	failing atomic.Bool
	// start is when the batch in progress started (unix ns), 0 when idle.
	start atomic.Int64
}

// seqRev is the definitions revision a batch was evaluated with, and when
// its evaluation began (its changes are decided at that instant or later).
type seqRev struct {
	seq uint64
	rev int64
	at  time.Time
}

// seqEntry is an outbox entry tagged with the batch that wrote it.
type seqEntry struct {
	seq   uint64
	entry membership.OutboxEntry
}

const (
	stageWrite = iota
	stageProject
	stagePublish
	// stageCommit is the commit of a finished batch's offsets: one that
	// fails, or waits long on a group that cannot rejoin, holds the
	// pipeline behind it.
	stageCommit
)

// GCPercent is the garbage-collection target segmentd runs with when GOGC
// is not set. The processor allocates a lot of short-lived memory (decoded
// events and profiles) over a small live heap, so Go's default of 100
// collects very often; 400 collects a quarter as often and shortened the
// latency tail in the benchmarks, for a heap of up to five times the live
// one (tens of megabytes).
const GCPercent = 400

// stallAfter is how long one batch may take before the processor reports
// itself unhealthy: a batch normally takes milliseconds, so a longer one
// means Redis or Kafka is not answering.
const stallAfter = 10 * time.Second

// New returns a processor; call Run to start it.
func New(cfg Config) *Processor {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1000
	}
	if cfg.BatchWait <= 0 {
		cfg.BatchWait = 20 * time.Millisecond
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 15 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.UserCacheBytes == 0 {
		cfg.UserCacheBytes = DefaultUserCacheBytes
	}
	return &Processor{cfg: cfg, carry: map[membership.UserRef][]seqEntry{}, cache: newStateCache(cfg.UserCacheBytes),
		lag: lagTracker{parts: map[partitionOf]*lagPart{}}}
}

// AppliedRevision returns the oldest definitions revision whose effects
// this processor may still be writing or publishing: that of the oldest
// batch in the pipeline, or the registry's current one when idle. A
// backfill waits for it, so that no change event decided with older
// definitions is published after the backfill's own.
func (p *Processor) AppliedRevision() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.revs) > 0 {
		oldest := p.revs[0].rev
		for _, r := range p.revs[1:] {
			oldest = min(oldest, r.rev)
		}
		return oldest
	}
	if s := p.cfg.Rules.Current(); s != nil {
		return s.Revision
	}
	return 0
}

// UnfinishedSince returns when the evaluation of the oldest batch this
// processor is writing, or has written and not yet published, began: its
// changes may still be unpublished (Kafka failing, the publication being
// retried). The zero time when there is none.
func (p *Processor) UnfinishedSince() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	var oldest time.Time
	for _, r := range p.revs {
		if oldest.IsZero() || r.at.Before(oldest) {
			oldest = r.at
		}
	}
	return oldest
}

// Healthy reports false while a batch is failing and being retried, or has
// been in one stage for longer than stallAfter, and once a topic read has
// started over (see lagLoop).
func (p *Processor) Healthy() bool {
	if p.startedOver.Load() {
		return false
	}
	if t := p.fetchFailed.Load(); t != 0 && time.Since(time.Unix(0, t)) < fetchFailureWindow {
		return false
	}
	for i := range p.stages {
		st := &p.stages[i]
		if st.failing.Load() {
			return false
		}
		if start := st.start.Load(); start != 0 && time.Since(time.Unix(0, start)) > stallAfter {
			return false
		}
	}
	return true
}

// Run fetches and processes batches until ctx ends; then it finishes and
// commits the batches in hand, bounded by the shutdown timeout, and returns.
//
// A batch goes through three stages. The first decodes, evaluates and
// writes each user's state (compare-and-set, with the batch's membership
// diffs in the user's outbox); the second projects the diffs onto the
// segment sets; the third stores timers, publishes the change events and
// dead letters, then hands the batch to the committer. Each stage runs
// on its own goroutine, in batch order, so that one batch's Redis and Kafka
// round trips overlap with the next one's evaluation. Offsets are committed
// in order once a batch has been published: a commit that is late or lost
// (a crash, a rebalance) only makes Kafka redeliver events whose effects
// are written, which the version check and the outbox turn into nothing or
// into the same change events again.
func (p *Processor) Run(ctx context.Context) error {
	// Work outlives ctx by at most the shutdown timeout: fetching stops at
	// once, what is in hand is finished and committed.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	defer func() { p.mu.Lock(); p.revs = nil; p.mu.Unlock() }()
	var bound atomic.Pointer[time.Timer]
	stop := context.AfterFunc(ctx, func() { bound.Store(time.AfterFunc(p.cfg.ShutdownTimeout, cancelWork)) })
	defer func() {
		stop()
		if t := bound.Load(); t != nil {
			t.Stop()
		}
	}()

	commits := make(chan []Record, 1)
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		p.commitLoop(work, commits)
	}()
	// The later stages run on goroutines of their own, each in batch order;
	// a stage that fails for good reports on failed and drains its input so
	// that the stages before it never block.
	failed := make(chan error, 2)
	toPublish := make(chan *written, 1)
	published := make(chan struct{})
	go func() {
		defer close(published)
		defer close(commits)
		p.runStage(work, stagePublish, toPublish, failed, func(wb *written) {
			p.markFinished(wb)
			p.lag.finished(wb.msgs)
			p.cfg.Metrics.SetLag(p.lag.total())
			commits <- wb.msgs
		})
	}()
	toProject := make(chan *written, 1)
	projected := make(chan struct{})
	go func() {
		defer close(projected)
		defer close(toPublish)
		p.runStage(work, stageProject, toProject, failed, func(wb *written) { toPublish <- wb })
	}()
	defer func() {
		// Also when Run returns for an error of its own, with ctx alive.
		t := time.AfterFunc(p.cfg.ShutdownTimeout, cancelWork)
		defer t.Stop()
		close(toProject)
		<-projected
		<-published
		p.flushDLQLog()
		select {
		case <-committed:
		case <-work.Done():
			p.cfg.Logger.Warn("offsets not committed before the shutdown timeout; those events will be redelivered")
		}
	}()
	// The lag is measured on its own too, since an outage holds the batch
	// in hand and no batch finishes to measure it.
	lagDone := make(chan struct{})
	lagCtx, stopLag := context.WithCancel(ctx)
	go func() { defer close(lagDone); p.lagLoop(lagCtx) }()
	defer func() { stopLag(); <-lagDone }()
	// Fetching that fails is retried, with a growing pause, until Kafka
	// answers again: kafka-go reconnects and rejoins the group by itself.
	fetchBackoff := backoff.NewExponentialBackOff()
	fetchBackoff.InitialInterval, fetchBackoff.MaxInterval, fetchBackoff.MaxElapsedTime = 100*time.Millisecond, 5*time.Second, 0
	for {
		batch, err := p.fetch(ctx)
		fetched := time.Now()
		p.lag.fetched(batch, fetched)
		if len(batch) > 0 {
			var wb *written
			werr := p.retry(work, stageWrite, len(batch), func(ctx context.Context) error {
				var err error
				wb, err = p.write(ctx, batch, fetched)
				return err
			})
			p.cfg.Metrics.SetLag(p.lag.total())
			if werr != nil {
				if ctx.Err() != nil {
					return nil
				}
				return werr
			}
			p.cfg.Metrics.observeBatch(len(batch)) // once, however many tries it took
			p.cfg.Metrics.countResults(wb.counts)
			for _, s := range wb.settled {
				p.cfg.Metrics.observeLatency(s.occurred, wb.fetched, s.at)
			}
			select {
			case toProject <- wb:
			case ferr := <-failed:
				if ctx.Err() != nil {
					return nil
				}
				return ferr
			}
		}
		switch {
		case err == nil:
			if p.fetchFailed.Swap(0) != 0 {
				p.cfg.Logger.Info("fetching again")
			}
			fetchBackoff.Reset()
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, ErrFetcherClosed):
			return fmt.Errorf("fetch: %w", err)
		default:
			p.fetchFailed.Store(time.Now().UnixNano())
			p.cfg.Metrics.kafkaError()
			pause := fetchBackoff.NextBackOff()
			p.cfg.Logger.Warn("fetch failed; retrying", "retry_in", pause, "err", err)
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
}

// fetchFailureWindow is how long a failed fetch keeps the processor
// unhealthy: longer than the pause between retries (at most 5 s), so that
// an outage reads as one.
const fetchFailureWindow = 10 * time.Second

// commitTimeout bounds one attempt to commit a batch's offsets.
const commitTimeout = 10 * time.Second

// commitLoop commits each batch's offsets in the order the batches were
// processed. A commit is retried a few times; one that still fails (the
// partitions moved to another instance, the coordinator is away) is kept,
// as each partition's highest offset, and tried again on its own after
// each later batch's commit and every commitIdleRetry while none comes (a
// quiet partition would otherwise leave the processor unhealthy until
// traffic resumed), for at most commitKeep: then it is dropped, which only
// means redelivery of completed work.
func (p *Processor) commitLoop(ctx context.Context, batches <-chan []Record) {
	// Tracked as a stage for Healthy: failing from a failed commit until
	// one succeeds or the kept offsets are dropped.
	st := &p.stages[stageCommit]
	commit := func(batch []Record, tries uint64) error {
		st.start.Store(time.Now().UnixNano())
		defer st.start.Store(0)
		bo := backoff.NewExponentialBackOff()
		bo.InitialInterval = 50 * time.Millisecond
		bo.MaxInterval = time.Second
		return backoff.Retry(func() error {
			// Bounded: a commit waits for a group generation, which a
			// group that cannot rejoin never gives.
			cctx, cancel := context.WithTimeout(ctx, commitTimeout)
			defer cancel()
			err := p.cfg.Fetcher.Commit(cctx, batch)
			if err != nil {
				p.cfg.Metrics.kafkaError()
			}
			st.failing.Store(err != nil)
			return err
		}, backoff.WithContext(backoff.WithMaxRetries(bo, tries), ctx))
	}
	var kept keptOffsets
	idle := time.NewTicker(commitIdleRetry)
	defer idle.Stop()
	for {
		select {
		case batch, ok := <-batches:
			if !ok {
				return
			}
			began := time.Now()
			err := commit(batch, 5)
			p.cfg.Metrics.observeStep("commit", time.Since(began))
			if err != nil {
				kept.add(batch, time.Now())
				p.cfg.Logger.Warn("commit failed; retried later (a redelivery meanwhile is deduplicated)", "size", len(batch), "err", err)
				continue
			}
			kept.passed(batch)
		case <-idle.C:
		}
		if len(kept.offsets) == 0 {
			continue
		}
		if time.Since(kept.since) > commitKeep {
			p.cfg.Logger.Warn("commit given up; those records will be redelivered and deduplicated", "partitions", len(kept.offsets))
			kept = keptOffsets{}
			st.failing.Store(false)
			continue
		}
		if err := commit(kept.records(), 0); err == nil {
			kept = keptOffsets{}
		}
	}
}

// commitIdleRetry is how often kept offsets are committed again while no
// later batch comes; commitKeep is how long they are kept.
const (
	commitIdleRetry = 5 * time.Second
	commitKeep      = 2 * time.Minute
)

// keptOffsets are the offsets of batches whose commit failed: each
// partition's highest record, since when the oldest failed commit is kept.
type keptOffsets struct {
	offsets map[partitionOf]Record
	since   time.Time
}

type partitionOf struct {
	topic     string
	partition int
}

func (k *keptOffsets) add(batch []Record, now time.Time) {
	if k.offsets == nil {
		k.offsets, k.since = map[partitionOf]Record{}, now
	}
	for _, r := range batch {
		key := partitionOf{r.Topic, r.Partition}
		if cur, ok := k.offsets[key]; !ok || r.Offset > cur.Offset {
			k.offsets[key] = Record{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}
		}
	}
}

// passed forgets the partitions that a committed batch moved as far.
func (k *keptOffsets) passed(batch []Record) {
	for _, r := range batch {
		key := partitionOf{r.Topic, r.Partition}
		if cur, ok := k.offsets[key]; ok && r.Offset >= cur.Offset {
			delete(k.offsets, key)
		}
	}
	if len(k.offsets) == 0 {
		*k = keptOffsets{}
	}
}

func (k *keptOffsets) records() []Record {
	out := make([]Record, 0, len(k.offsets))
	for _, r := range k.offsets {
		out = append(out, r)
	}
	return out
}

// MaxBatchBytes bounds the bytes of keys and values a batch collects: of
// records near the broker's 1 MB limit, BatchSize would hold gigabytes in
// each of the pipeline's stages.
const MaxBatchBytes = 16 << 20

// fetch collects up to BatchSize messages, and up to MaxBatchBytes of keys
// and values, waiting at most BatchWait after the first one.
func (p *Processor) fetch(ctx context.Context) ([]Record, error) {
	first, err := p.cfg.Fetcher.Fetch(ctx)
	if err != nil {
		return nil, err
	}
	batch := []Record{first}
	size := len(first.Key) + len(first.Value)
	wctx, cancel := context.WithTimeout(ctx, p.cfg.BatchWait)
	defer cancel()
	for len(batch) < p.cfg.BatchSize && size < MaxBatchBytes {
		m, err := p.cfg.Fetcher.Fetch(wctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
				return batch, nil
			}
			return batch, err
		}
		batch = append(batch, m)
		size += len(m.Key) + len(m.Value)
	}
	return batch, nil
}

// retry runs one stage of a batch until it succeeds: every step is
// idempotent or version-guarded, so a retry after a partial write repeats
// nothing but change events with the same ids. A batch is never skipped;
// only the end of ctx stops the retries (the batch is then redelivered to
// whoever owns the partition next).
func (p *Processor) retry(ctx context.Context, stage, size int, op func(context.Context) error) error {
	st := &p.stages[stage]
	st.start.Store(time.Now().UnixNano())
	defer st.start.Store(0)
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	bo.MaxElapsedTime = 0
	attempt := 0
	return backoff.Retry(func() error {
		attempt++
		err := op(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return backoff.Permanent(err)
			}
			st.failing.Store(true)
			p.cfg.Logger.Warn("batch failed; retrying", "stage", stageNames[stage], "attempt", attempt, "size", size, "err", err)
			return err
		}
		st.failing.Store(false)
		return nil
	}, backoff.WithContext(bo, ctx))
}

var stageNames = [...]string{stageWrite: "write", stageProject: "project", stagePublish: "publish", stageCommit: "commit"}

// runStage runs stage on every batch from in, in order, retrying each until
// it succeeds, and passes it on with next. When a batch cannot be finished
// (work ended), it reports on failed and drains in.
func (p *Processor) runStage(work context.Context, stage int, in <-chan *written, failed chan<- error, next func(*written)) {
	run := p.project
	if stage == stagePublish {
		run = p.publish
	}
	for wb := range in {
		if err := p.retry(work, stage, len(wb.msgs), func(ctx context.Context) error { return run(ctx, wb) }); err != nil {
			failed <- err
			for range in {
			}
			return
		}
		next(wb)
	}
}

type item struct {
	msg Record
	ev  events.ProfileEvent
}

type userWork struct {
	ref   membership.UserRef
	items []item
	// carried are the outbox entries of this user's unfinished batches.
	carried []membership.OutboxEntry
	// deletes is true when one of the items deletes the profile, which
	// reads every membership of the user, static ones too: the user's
	// state is then read from Redis, not from the cache.
	deletes bool
	// cached is true when the user's state of this round came from the
	// cache.
	cached bool
}

// written is a batch whose users' states are written, waiting to be
// finished.
type written struct {
	seq     uint64
	fetched time.Time
	msgs    []Record
	changes []events.Change
	// revs holds the user revision whose write decided each change, until
	// the projection has filtered the changes (see project).
	revs        []int64
	projections []membership.Projection
	due         []membership.Due
	dlq         []Record
	// occurred holds the event time of every applied event whose outcome
	// the projection completes.
	occurred []time.Time
	// counts and settled are the batch's results and the latencies of the
	// events its write settled, recorded once the write stage succeeds.
	counts  userResult
	settled []settledAt
}

// settledAt is an event whose outcome was in Redis at its write.
type settledAt struct{ occurred, at time.Time }

// maxConflicts bounds recomputation when another writer moved a user's
// revision under us (a rebalance hands a partition over mid-batch).
const maxConflicts = 5

// write runs the first stage of a batch: decode, load, evaluate and write
// each user's state (compare-and-set per user). A crash after it is
// repaired by redelivery: written users carry the batch's diffs in their
// outbox and replay them.
func (p *Processor) write(ctx context.Context, batch []Record, fetched time.Time) (*written, error) {
	m := p.cfg.Metrics
	step := m.stepTimer()
	p.seq++
	wb := &written{seq: p.seq, msgs: batch, fetched: fetched}
	order := []*userWork{}
	byUser := map[membership.UserRef]*userWork{}
	decoded := decodeAll(batch)
	for i, msg := range batch {
		ev, err := decoded[i].ev, decoded[i].err
		if err != nil {
			wb.dlq = append(wb.dlq, p.deadLetter(msg, err.Error()))
			continue
		}
		ref := membership.UserRef{OrgID: ev.OrgID, UserID: ev.UserID}
		w := byUser[ref]
		if w == nil {
			w = &userWork{ref: ref}
			byUser[ref] = w
			order = append(order, w)
		}
		w.items = append(w.items, item{msg: msg, ev: ev})
		w.deletes = w.deletes || ev.Type == events.ProfileDeleted
	}
	p.takeCarried(order)

	p.mu.Lock()
	snap := p.cfg.Rules.Current()
	if snap != nil {
		// Dropped once this batch, or a later one, has been published.
		p.revs = append(p.revs, seqRev{seq: wb.seq, rev: snap.Revision, at: p.cfg.Now()})
	}
	p.mu.Unlock()
	if snap == nil {
		return nil, errors.New("segment definitions not loaded yet")
	}
	pending := order
	for round := 0; len(pending) > 0; round++ {
		if round == maxConflicts {
			return nil, fmt.Errorf("%d users kept changing under this batch", len(pending))
		}
		// Each step once a round (a round more for users another writer
		// moved meanwhile): decoding happens before the first.
		if round == 0 {
			step("decode")
		}
		states, err := p.states(ctx, pending, round > 0)
		if err != nil {
			m.redisError()
			return nil, err
		}
		step("load")
		// The definitions again, after the read: an instance paused (or
		// cut off from Redis) for longer than the revision gate waits, 3 s,
		// is taken for gone by the others, which then carry out a
		// definition change (a backfill) without it; resumed, it must not
		// write what its older definitions decide. The batch stays counted
		// under the revision it started with (the gate waits for that one).
		fresh, err := p.cfg.Rules.Fresh(ctx)
		if err != nil {
			m.redisError()
			return nil, err
		}
		if fresh != nil && fresh.Revision != snap.Revision {
			snap = fresh
		}
		// Rules apply at an instant after the read: a timer may have
		// written a user's flip before it (see Jobs.amendPage).
		results := p.evaluateAll(snap, pending, states, p.cfg.Now())
		writes := make([]membership.UserWrite, 0, len(pending))
		writeOf := make([]int, len(pending))
		for i, r := range results {
			writeOf[i] = -1
			if r.write != nil {
				writeOf[i] = len(writes)
				writes = append(writes, *r.write)
			}
		}
		step("evaluate")
		applied, err := p.cfg.Users.Write(ctx, writes)
		if err != nil {
			// Some writes may have landed: their users are read again.
			for _, w := range pending {
				p.cache.drop(w.ref)
			}
			m.redisError()
			return nil, err
		}
		wroteAt := time.Now()
		var conflicted []*userWork
		for i, w := range pending {
			r := results[i]
			// A cached state that a redelivery was judged by, with no write
			// whose compare-and-set would have checked it, may be stale
			// (the user's partition was away, and another instance wrote
			// the user since): replayed from it, an old change event would
			// be published after newer ones. Such users are read again.
			stale := w.cached && r.write == nil && (r.replayed > 0 || len(r.dlq) > 0)
			if stale || writeOf[i] >= 0 && !applied[writeOf[i]] {
				p.cache.drop(w.ref)
				conflicted = append(conflicted, w)
				continue
			}
			if r.write != nil {
				p.cache.put(w.ref, writtenState(states[i], r.write))
			} else if !w.cached && states[i].Unreadable == nil {
				p.cache.put(w.ref, states[i])
			}
			wb.changes = append(wb.changes, r.changes...)
			wb.revs = append(wb.revs, r.revs...)
			wb.projections = append(wb.projections, r.projections...)
			wb.due = append(wb.due, r.due...)
			wb.dlq = append(wb.dlq, r.dlq...)
			// Counted once the whole batch is written: an attempt that
			// fails in a later round is made again, and its users then
			// count again (as replays).
			wb.counts.applied += r.applied
			wb.counts.duplicate += r.duplicate
			wb.counts.replayed += r.replayed
			if r.write == nil && len(r.heldEntries) > 0 {
				// Replays, and dead letters of a user without a profile,
				// write nothing, but their entries stay in the outbox until
				// this batch is published, as written ones do: a later
				// batch's write of the user must keep them.
				p.keepCarried(wb.seq, w.ref, r.heldEntries)
			}
			if r.write != nil {
				p.keepCarried(wb.seq, w.ref, r.write.Outbox[r.firstNew:])
				// The outcome of events that change no membership, of a user
				// with none waiting to be projected from an earlier batch, is
				// readable now; the others' once the segment sets have it.
				if len(r.projections) == 0 && len(w.carried) == 0 {
					for _, at := range r.occurred {
						wb.settled = append(wb.settled, settledAt{occurred: at, at: wroteAt})
					}
				} else {
					wb.occurred = append(wb.occurred, r.occurred...)
				}
			}
		}
		pending = conflicted
		step("write") // the write and what it settles
	}
	return wb, nil
}

// states returns the stored state of each user: from the cache when it
// holds the user (unless reload), from Redis in one round trip for the
// others.
func (p *Processor) states(ctx context.Context, ws []*userWork, reload bool) ([]membership.UserState, error) {
	states := make([]membership.UserState, len(ws))
	var refs []membership.UserRef
	var at []int
	for i, w := range ws {
		if !reload && !w.deletes {
			// A deleted user's is read again too: a replay may project its
			// deletion's exits, which standing checks against the user's
			// set as Redis holds it (a static list may have put it back).
			if st, ok := p.cache.get(w.ref); ok && !st.Deleted {
				states[i], w.cached = st, true
				continue
			}
		}
		w.cached = false
		refs = append(refs, w.ref)
		at = append(at, i)
	}
	p.cfg.Metrics.countCache(len(ws)-len(refs), len(refs), p.cache.len(), p.cache.bytes())
	if len(refs) == 0 {
		return states, nil
	}
	loaded, err := p.cfg.Users.Load(ctx, refs)
	if err != nil {
		return nil, err
	}
	for j, i := range at {
		states[i] = loaded[j]
	}
	return states, nil
}

// takeCarried gives each user the outbox entries of its batches that are
// written but not finished.
func (p *Processor) takeCarried(ws []*userWork) {
	done := p.finished.Load()
	p.cmu.Lock()
	defer p.cmu.Unlock()
	for _, w := range ws {
		for _, e := range p.carry[w.ref] {
			if e.seq > done {
				w.carried = append(w.carried, e.entry)
			}
		}
	}
}

// keepCarried records the outbox entries batch seq wrote for ref.
func (p *Processor) keepCarried(seq uint64, ref membership.UserRef, entries []membership.OutboxEntry) {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	for _, e := range entries {
		p.carry[ref] = append(p.carry[ref], seqEntry{seq: seq, entry: e})
	}
}

// markFinished forgets the carried entries of a finished batch and of any
// earlier one (including attempts of a batch that failed part way). The map
// holds the users of the few batches in flight, so a full pass is cheap.
func (p *Processor) markFinished(wb *written) {
	p.finished.Store(wb.seq)
	p.mu.Lock()
	p.revs = slices.DeleteFunc(p.revs, func(r seqRev) bool { return r.seq <= wb.seq })
	p.mu.Unlock()
	p.cmu.Lock()
	defer p.cmu.Unlock()
	for ref, es := range p.carry {
		es = slices.DeleteFunc(es, func(e seqEntry) bool { return e.seq <= wb.seq })
		if len(es) == 0 {
			delete(p.carry, ref)
		} else {
			p.carry[ref] = es
		}
	}
}

// project runs the second stage of a written batch: project its changes
// onto the segment sets, where campaign services read them. It is
// idempotent, so a retry changes nothing twice.
func (p *Processor) project(ctx context.Context, wb *written) error {
	m := p.cfg.Metrics
	step := m.stepTimer()
	deleted, err := p.cfg.Users.Project(ctx, wb.projections)
	if err != nil {
		m.redisError()
		return err
	}
	if len(deleted) > 0 {
		// Written before a deletion and projected after it: the deletion
		// published the exits of what had not reached the member sets.
		// Filtered once: a failed Project is retried before this point.
		wb.changes = deleted.Published(wb.changes, func(i int) int64 { return wb.revs[i] })
		wb.revs = nil
	}
	step("project")
	projected := time.Now() // a latency is real time, whatever clock evaluates the rules
	for _, t := range wb.occurred {
		m.observeLatency(t, wb.fetched, projected)
	}
	return nil
}

// publish runs the last stage of a batch: store its timers and publish its
// change events and dead letters, at once (Redis and Kafka, and neither
// needs the other). The timers need only be stored before the commit, so
// they wait here rather than hold the projection of the next batch. A retry
// writes the timers again (ZADD is idempotent) and repeats change events
// with the same ids.
func (p *Processor) publish(ctx context.Context, wb *written) error {
	m := p.cfg.Metrics
	var scheduled chan error
	if p.cfg.Scheduler != nil && len(wb.due) > 0 {
		scheduled = make(chan error, 1)
		go func() {
			step := m.stepTimer()
			err := p.cfg.Scheduler.Schedule(ctx, wb.due)
			step("schedule")
			scheduled <- err
		}()
	}
	step := m.stepTimer()
	out := make([]Record, 0, len(wb.changes)+len(wb.dlq))
	for _, c := range wb.changes {
		// Keyed by user, so that one user's changes stay in order.
		out = append(out, Record{Topic: p.cfg.MembershipTopic, Key: []byte(c.UserID), Value: events.EncodeChange(c)})
	}
	out = append(out, wb.dlq...)
	var err error
	if len(out) > 0 {
		if err = p.cfg.Producer.Produce(ctx, out); err != nil {
			m.kafkaError()
			err = fmt.Errorf("publish %d records: %w", len(out), err)
		}
	}
	step("publish")
	if scheduled != nil {
		if serr := <-scheduled; serr != nil {
			m.redisError()
			err = errors.Join(err, fmt.Errorf("store %d timers: %w", len(wb.due), serr))
		}
	}
	if err != nil {
		if errors.Is(err, ErrRecordTooLarge) && p.dropDeadLetterValues(wb) {
			p.cfg.Logger.Warn("the DLQ topic refused a dead letter for its size; the batch's dead letters go without their values", "topic", p.cfg.DLQTopic)
		}
		return err
	}
	m.countChanges(wb.changes)
	m.countDLQ(len(wb.dlq))
	p.logDLQ(wb.dlq)
	return nil
}

// logDLQ logs the dead letters of a batch, at most one line each
// dlqLogEvery: the count since the last line, and the first reason and
// source of this batch's. Called with none (a batch without dead letters,
// the lag loop's tick), it logs those held back once dlqLogEvery has
// passed since the last line, so that a dead letter sent within
// dlqLogEvery of a line, with none after it, is still logged.
func (p *Processor) logDLQ(dlq []Record) {
	l := &p.dlqLog
	l.Lock()
	defer l.Unlock()
	if len(dlq) > 0 {
		h := map[string]string{}
		for _, x := range dlq[0].Headers {
			h[x.Key] = string(x.Value)
		}
		l.held += len(dlq)
		l.reason = h["segmentd-error"]
		l.source = h["segmentd-source-topic"] + "/" + h["segmentd-source-partition"] + "@" + h["segmentd-source-offset"]
	}
	if l.held == 0 {
		return
	}
	now := p.cfg.Now()
	if !l.at.IsZero() && now.Sub(l.at) < dlqLogEvery {
		return
	}
	p.writeDLQLine(now)
}

// flushDLQLog logs the dead letters held back, whenever the last line was
// (at the end of Run: the process may be about to exit).
func (p *Processor) flushDLQLog() {
	l := &p.dlqLog
	l.Lock()
	defer l.Unlock()
	if l.held > 0 {
		p.writeDLQLine(p.cfg.Now())
	}
}

// writeDLQLine writes the line of the dead letters held; dlqLog is locked.
func (p *Processor) writeDLQLine(now time.Time) {
	l := &p.dlqLog
	p.cfg.Logger.Warn("events sent to the DLQ", "count", l.held, "topic", p.cfg.DLQTopic, "first_reason", l.reason,
		"first_source", l.source)
	l.at, l.held = now, 0
}

// dlqMaxValue bounds the value of a dead letter: a record near the broker's
// size limit would not fit again with the headers added, and a dead letter
// that cannot be written would hold its partition up for good. The source
// headers say where the whole record is.
const dlqMaxValue = 900_000

// dlqMaxKey bounds a dead letter's key likewise (a key is a user id, at most
// 256 bytes when valid).
const dlqMaxKey = 10_000

// dlqMaxReason bounds the reason header: a reason may quote the record
// (a bad type, a path of changes), and the three bounds together must stay
// under the writer's limit of a record.
const dlqMaxReason = 2_000

func (p *Processor) deadLetter(msg Record, reason string) Record {
	if len(reason) > dlqMaxReason {
		cut := dlqMaxReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut] + "… (reason truncated)"
	}
	dl := Record{
		Topic: p.cfg.DLQTopic,
		Key:   msg.Key,
		Value: msg.Value,
		Headers: []Header{
			{Key: "segmentd-error", Value: []byte(reason)},
			{Key: "segmentd-source-topic", Value: []byte(msg.Topic)},
			{Key: "segmentd-source-partition", Value: []byte(strconv.Itoa(msg.Partition))},
			{Key: "segmentd-source-offset", Value: []byte(strconv.FormatInt(msg.Offset, 10))},
		},
	}
	if len(dl.Key) > dlqMaxKey {
		dl.Headers = append(dl.Headers, Header{Key: "segmentd-key-truncated-from", Value: []byte(strconv.Itoa(len(dl.Key)))})
		dl.Key = dl.Key[:dlqMaxKey]
	}
	if len(dl.Value) > dlqMaxValue {
		dl.Headers = append(dl.Headers, Header{Key: "segmentd-truncated-from", Value: []byte(strconv.Itoa(len(dl.Value)))})
		dl.Value = dl.Value[:dlqMaxValue]
	}
	return dl
}

// dropDeadLetterValues empties the value of every dead letter of wb that
// has one, saying its length in segmentd-truncated-from (the source headers
// still say where the record is), and reports whether it changed any: a
// DLQ topic that takes no record of the size cut to by deadLetter would
// otherwise hold the partition for ever.
func (p *Processor) dropDeadLetterValues(wb *written) bool {
	changed := false
	for i := range wb.dlq {
		dl := &wb.dlq[i]
		if len(dl.Value) == 0 {
			continue
		}
		if !slices.ContainsFunc(dl.Headers, func(h Header) bool { return h.Key == "segmentd-truncated-from" }) {
			dl.Headers = append(dl.Headers, Header{Key: "segmentd-truncated-from", Value: []byte(strconv.Itoa(len(dl.Value)))})
		}
		dl.Value, changed = nil, true
	}
	return changed
}

type decodedEvent struct {
	ev  events.ProfileEvent
	err error
}

// decodeAll decodes a batch on every core: JSON decoding is the second
// largest share of a batch's CPU.
func decodeAll(batch []Record) []decodedEvent {
	out := make([]decodedEvent, len(batch))
	parallel(len(batch), func(i int) {
		m := &batch[i]
		out[i].ev, out[i].err = events.DecodeProfileEvent(m.Value)
		out[i].ev.DeriveID(m.Topic, m.Partition, m.Offset, m.Time)
	})
	return out
}

// parallel calls f(0..n-1) on up to GOMAXPROCS goroutines.
func parallel(n int, f func(i int)) {
	workers := min(runtime.GOMAXPROCS(0), max(1, n/64))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// evaluateAll evaluates the users of a batch on every core: users are
// independent, and evaluation is most of a batch's CPU.
func (p *Processor) evaluateAll(snap *Snapshot, ws []*userWork, states []membership.UserState, now time.Time) []userResult {
	out := make([]userResult, len(ws))
	parallel(len(ws), func(i int) { out[i] = p.evaluate(snap, ws[i], states[i], now) })
	return out
}

// userResult is what one user's events in a batch come to.
type userResult struct {
	write   *membership.UserWrite
	changes []events.Change
	// revs holds the user revision whose write decided each change.
	revs                         []int64
	projections                  []membership.Projection
	due                          []membership.Due
	dlq                          []Record
	applied, duplicate, replayed int
	// occurred holds the occurredAt of each applied event.
	occurred []time.Time
	// firstNew is where this batch's entries start in write.Outbox, after
	// those kept from earlier writes.
	firstNew int
	// heldEntries are the entries that, when no write of the user's
	// holds them, are carried until this batch finishes: the stored entries
	// it replays (not carried already), and its dead letters of a user
	// without a profile.
	heldEntries []membership.OutboxEntry
}

func (r *userResult) add(cs []events.Change, rev int64) {
	r.record(cs, rev)
	r.project(cs, rev)
}

// record adds changes to publish, decided by the write of revision rev.
func (r *userResult) record(cs []events.Change, rev int64) {
	r.changes = append(r.changes, cs...)
	for range cs {
		r.revs = append(r.revs, rev)
	}
}

// publishFirst puts raced (see racedChanges) among the changes to publish
// in the order of their writes: before this write's, and after the
// replayed changes of earlier writes of the user (a batch redelivered
// after a crash) that came before them.
func (r *userResult) publishFirst(raced []membership.Projection) {
	if len(raced) == 0 {
		return
	}
	all := make([]membership.Projection, 0, len(raced)+len(r.changes))
	all = append(all, raced...)
	for i, c := range r.changes {
		all = append(all, membership.Projection{Change: c, Rev: r.revs[i]})
	}
	// Stable: a write's own changes, and raced ones of one write, keep
	// their order.
	slices.SortStableFunc(all, func(a, b membership.Projection) int { return cmp.Compare(a.Rev, b.Rev) })
	r.changes, r.revs = r.changes[:0], r.revs[:0]
	for _, rc := range all {
		r.changes, r.revs = append(r.changes, rc.Change), append(r.revs, rc.Rev)
	}
}

// racedChanges returns the changes that the entries of a user's stored
// outbox written within racedWindow of now decide, of the entries other
// than skip and those marked published (on the topic before the mark),
// and the segments changes, each with the revision of its write, in the
// order of the writes. Another writer (the stream, a backfill, a
// timer) publishes after its write: should it publish after the caller's
// later change of the same segment, a consumer following the topic would
// end with its change, the older one. Published by the caller first
// (again, with the same eventIds, when it did publish), they come before
// its own on the topic whichever publishes first.
func racedChanges(ref membership.UserRef, outbox []membership.OutboxEntry, skip func(membership.OutboxEntry) bool, segment func(string) bool, now time.Time) []membership.Projection {
	since := now.Add(-racedWindow).UnixMilli()
	var out []membership.Projection
	for _, e := range outbox {
		if e.AtMillis < since || e.Published || skip(e) {
			continue
		}
		for _, c := range e.Events(ref) {
			if segment(c.SegmentID) {
				out = append(out, membership.Projection{Change: c, Rev: e.Rev})
			}
		}
	}
	slices.SortStableFunc(out, func(a, b membership.Projection) int { return cmp.Compare(a.Rev, b.Rev) })
	return out
}

// decidedBefore reports whether changes (decided by the writes of revs,
// index by index) hold a change of seg that the write of revision rev
// decided: a later change of that write does not flip from what came
// before the write.
func decidedBefore(changes []events.Change, revs []int64, seg string, rev int64) bool {
	for j, c := range changes {
		if revs[j] == rev && c.SegmentID == seg {
			return true
		}
	}
	return false
}

// jobEntry reports whether e is a backfill's or a timer's entry.
func jobEntry(e membership.OutboxEntry) bool { return !streamEntry(e) }

// unpublishedJob reports whether e is a backfill's or a timer's entry whose
// change may be unpublished: any but those of a backfill that has
// published all it wrote (see backfillPublished).
func (o *OrgRules) unpublishedJob(e membership.OutboxEntry) bool {
	return jobEntry(e) && !o.backfillPublished(e)
}

// racedWindow is how long after a backfill's or timer's write of a user
// the stream takes its changes for possibly unpublished (see
// racedChanges): the writer publishes within milliseconds of its write,
// and within seconds when Kafka or Redis is slow.
const racedWindow = 10 * time.Second

// project adds projections only: changes published by their own events.
func (r *userResult) project(cs []events.Change, rev int64) {
	for _, c := range cs {
		r.projections = append(r.projections, membership.Projection{Change: c, Rev: rev})
	}
}

// markDead records in dead the value of it, dead-lettered (dead made
// when nil).
func markDead(dead map[string][]byte, it item) map[string][]byte {
	if dead == nil {
		dead = map[string][]byte{}
	}
	dead[it.ev.EventID] = it.msg.Value
	return dead
}

// manyItems is how many events of one user in a batch repeated looks
// through one by one; past it, it keeps a set.
const manyItems = 32

// repeated reports whether the i-th item's eventId came earlier among the
// user's items. A user rarely has more than a few events in a batch, whose
// ids it compares without allocating; seen, for a user with more than
// manyItems, holds the ids of the items before i.
func repeated(items []item, i int, seen map[string]bool) bool {
	id := items[i].ev.EventID
	if seen != nil {
		if seen[id] {
			return true
		}
		seen[id] = true
		return false
	}
	for _, it := range items[:i] {
		if it.ev.EventID == id {
			return true
		}
	}
	return false
}

// standing returns the projections of replayed changes, decided by the
// user's write of revision rev: those that the user's segment set (st, as
// loaded) still agrees with, or all of them once the user has been written
// since, and probes for the others. A static list's write moves neither the
// revision nor the outbox, so a deletion's exit from a static segment that
// a list has put the user back in since must not take the user out of that
// segment's set again. The probes let Project tell whether the segments of
// the changes not projected were deleted, as the changes are published all
// the same. (A deleted user's state is always read from Redis, never from
// the cache.)
func standing(cs []events.Change, rev int64, st membership.UserState) []membership.Projection {
	out := make([]membership.Projection, len(cs))
	for i, c := range cs {
		out[i] = membership.Projection{Change: c, Rev: rev,
			Probe: rev == st.Rev && slices.Contains(st.Segments, c.SegmentID) != c.Entered}
	}
	return out
}

// evaluate applies one user's events of the batch, in order, to the loaded
// state. Events already in the outbox were written by an earlier attempt whose
// effects may not have been projected or published: they are replayed.
func (p *Processor) evaluate(snap *Snapshot, w *userWork, st membership.UserState, now time.Time) userResult {
	var res userResult
	if st.Unreadable != nil {
		// Applying events to a state that cannot be read could only guess
		// the user's memberships: they wait in the DLQ for the repair.
		for _, it := range w.items {
			res.dlq = append(res.dlq, p.deadLetter(it.msg, st.Unreadable.Error()))
		}
		return res
	}
	org := snap.Org(w.ref.OrgID)
	// Only the stream's own entries replay profile events; entries of
	// backfills and timers stay in the outbox for a while (see keepAmends).
	inOutbox := make(map[string]membership.OutboxEntry, len(st.Outbox))
	for _, e := range st.Outbox {
		if streamEntry(e) {
			inOutbox[e.EventID] = e
		}
	}
	cur := make(map[string]bool, len(st.Segments))
	for _, s := range st.Segments {
		cur[s] = true
	}
	// in mirrors cur for the organisation's dynamic segments, by index
	// number: the evaluation loop reads it once per affected segment.
	var in []bool
	var buf []int32 // reused across the user's events; never aliases org.All
	var lk *segment.Lookup
	var guardKeys []any // the profile's guard keys, by org.GuardSlots index
	var guardOK []bool
	if org != nil {
		lk = org.NewLookup()
		guardKeys, guardOK = make([]any, len(org.GuardSlots)), make([]bool, len(org.GuardSlots))
		in = make([]bool, len(org.ByNumber))
		for _, s := range st.Segments {
			if n, ok := org.Index.Number(s); ok {
				in[n] = true
			}
		}
	}
	var profile *segment.Profile
	// corrupt is why the stored profile cannot be read, until a full
	// profile or a deletion replaces it: a patch to it is dead-lettered
	// rather than made the whole profile.
	var corrupt error
	if len(st.Profile) > 0 {
		p, err := segment.DecodeUserProfile(st.Profile, nil, w.ref.UserID)
		if err != nil {
			corrupt = err
		} else {
			profile = p
		}
	}
	deleted := st.Deleted
	version := st.Version
	stored, hasStored := parsePosition(st.Applied)
	mark, moved := stored, false // where the user's stored position moves to
	// Entries of this user's unfinished batches stay until those finish,
	// and recent entries of backfills and timers until they are surely
	// published.
	outbox := keepAmends(slices.Clone(w.carried), st.Outbox, org, now)
	res.firstNew = len(outbox)
	wrote := false
	timed := false // a time-relative segment was evaluated: the user's timer may move
	// flipFrom is the instant the user's next flip is looked for from: the
	// earliest evaluation of the events applied, a replay's being its first
	// attempt's, so that a flip that passed between that attempt and this
	// one is scheduled (past, it fires at once) rather than skipped.
	flipFrom := now
	var seen map[string]bool
	if len(w.items) > manyItems {
		seen = make(map[string]bool, len(w.items))
	}
	// replayedLast holds, by revision, the last replayed entry of each
	// earlier write whose events this batch replays.
	var replayedLast map[int64]string
	// before holds the jobs' changes that the changes published here
	// follow (see precedingChanges).
	var before []membership.Projection
	// deadHere holds, by eventId, the values of the events this batch
	// dead-lettered: a later copy in the batch that differs (the dead
	// letter repaired and produced again, read with its original on a
	// redelivery) is judged as a new event, not as a producer's retry.
	var deadHere map[string][]byte
	for i, it := range w.items {
		ev := it.ev
		if repeated(w.items, i, seen) {
			if v, dead := deadHere[ev.EventID]; !dead || bytes.Equal(v, it.msg.Value) {
				res.duplicate++ // the same event twice in the batch: a producer's retry
				continue
			}
		}
		e, ok := inOutbox[ev.EventID]
		if _, dead := deadLetterReason(e); ok && dead && after(stored, hasStored, positionOf(it.msg)) {
			// A later copy of an event that was dead-lettered (repaired and
			// produced again, as README says): judged as a new event, as it
			// is once the entry has left the outbox.
			ok = false
		}
		if ok {
			if after(stored, hasStored, positionOf(it.msg)) {
				res.duplicate++ // another copy, not a redelivery: nothing to replay
				continue
			}
			if !slices.ContainsFunc(w.carried, func(c membership.OutboxEntry) bool { return c.EventID == e.EventID }) {
				outbox = append(outbox, e)
				res.heldEntries = append(res.heldEntries, e)
			}
			if reason, ok := deadLetterReason(e); ok {
				// Dead-lettered by the first attempt, whatever the state
				// would say now.
				res.dlq = append(res.dlq, p.deadLetter(it.msg, reason))
				deadHere = markDead(deadHere, it)
				continue
			}
			replayed := e.Events(w.ref)
			for _, c := range replayed {
				// A replayed write's first change of each segment (most
				// batches replay none, and a user has a few changes).
				if decidedBefore(res.changes, res.revs, c.SegmentID, e.Rev) {
					continue
				}
				before = append(before, precedingChanges(w.ref, st.Outbox, c.SegmentID, e.Rev, c.Entered, org.unpublishedJob)...)
			}
			res.record(replayed, e.Rev)
			res.projections = append(res.projections, standing(replayed, e.Rev, st)...)
			res.replayed++
			// The first attempt may have stopped before storing the user's
			// timer: this one stores it again.
			timed = true
			if at := time.UnixMilli(e.AtMillis); at.Before(flipFrom) {
				flipFrom = at
			}
			// The entries of one write share its revision, and projections of
			// equal revisions apply in order: a replay whose batch ends before
			// the write's later events must project their decisions after
			// its own, or it would leave an earlier decision in the segment
			// sets (until those events are replayed, which a conflict with
			// another instance can prevent for good). They are projected
			// once, after the items (see replayedLast): after each replayed
			// event, the projections would grow with the square of a
			// write's events.
			if replayedLast == nil {
				replayedLast = map[int64]string{}
			}
			replayedLast[e.Rev] = e.EventID
			continue
		}
		if ev.HasVersion && ev.Version <= version {
			res.duplicate++
			continue
		}
		pos := positionOf(it.msg)
		// A record time ahead of this clock (a producer's clock ahead) is
		// kept at most a minute ahead: stored, it would cover the records
		// of a topic that starts over until the producers' clocks passed
		// it. Within the minute it is kept as it is, so that a redelivery,
		// later, computes the same time.
		pos.at = min(pos.at, now.Add(time.Minute).UnixMilli())
		if !ev.HasVersion && hasStored && stored.covers(pos) {
			res.duplicate++ // applied, and its outbox entry gone since
			continue
		}
		entry := membership.OutboxEntry{EventID: ev.EventID, Version: ev.Version, CauseType: events.CauseProfile, AtMillis: now.UnixMilli(), Rev: st.Rev + 1}
		var next *segment.Profile
		var paths []string
		evaluateAll := profile == nil || deleted
		switch {
		case ev.Type == events.ProfileDeleted:
			for s, member := range cur {
				if member {
					entry.Changes = append(entry.Changes, membership.OutboxChange{SegmentID: s})
					cur[s] = false
				}
			}
			clear(in)
			next, deleted = nil, true
		case ev.Profile != nil:
			next = segment.NewProfile(ev.Profile)
			next.Set("userId", w.ref.UserID)
			paths = segment.ChangedPaths(profile, next)
		default:
			base := profile
			if deleted {
				base = nil
			}
			np, ch, err := segment.ApplyChanges(base, ev.Changes)
			if err == nil && corrupt != nil && !deleted {
				base, err = nil, fmt.Errorf("the stored profile cannot be read (%w); a full profile replaces it", corrupt)
			}
			if err != nil {
				reason := "invalid profile event: changes: " + err.Error()
				res.dlq = append(res.dlq, p.deadLetter(it.msg, reason))
				deadHere = markDead(deadHere, it)
				// Whether a patch applies to a profile depends on the
				// profile: the decision is written with the user, so that a
				// redelivery dead-letters the event again (see
				// deadLetterEntry) rather than judge it against another
				// state, or take it for applied.
				dl := deadLetterEntry(ev, reason, now, st.Rev+1)
				// A retried write of this batch carries it already.
				carried := slices.ContainsFunc(w.carried, func(c membership.OutboxEntry) bool { return c.EventID == dl.EventID })
				if !carried {
					outbox = append(outbox, dl)
				}
				if _, _, err := segment.ApplyChanges(nil, ev.Changes); base == nil || err != nil {
					// A patch that fails on any profile is dead-lettered
					// whatever the state, and so takes no version and does
					// not move the position (a redelivery meeting another
					// state must decide the same). A user without a profile
					// is not stored for it: the entry goes with the user's
					// next write, if one comes before this batch finishes,
					// as a replay's does.
					if !carried {
						res.heldEntries = append(res.heldEntries, dl)
					}
					continue
				}
				mark, moved = mark.advance(pos), true
				if ev.HasVersion {
					version = ev.Version // taken, as an applied event's is
				}
				wrote = true
				continue
			}
			next, paths = np, keyedBy(np, w.ref.UserID, ch)
		}
		if next != nil {
			deleted = false
			if org != nil {
				affected := org.All
				if !evaluateAll {
					buf = org.Index.AppendAffectedIndex(buf[:0], paths)
					affected = buf
				}
				lk.Reset(next)
				for i, slot := range org.GuardSlots {
					guardKeys[i], guardOK[i] = lk.GuardKey(slot)
				}
				for _, n := range affected {
					cs := org.ByNumber[n]
					match := !org.Guarded(n, guardKeys, guardOK) && cs.Rule.MatchLookup(lk, now)
					if match != in[n] {
						entry.Changes = append(entry.Changes, membership.OutboxChange{SegmentID: cs.Def.ID, Entered: match})
						in[n] = match
						cur[cs.Def.ID] = match
					}
					if cs.Rule.TimeDependent() {
						timed = true
					}
				}
			}
		}
		profile, corrupt = next, nil
		if ev.HasVersion {
			version = ev.Version
		}
		outbox = append(outbox, entry)
		res.add(entry.Events(w.ref), entry.Rev)
		res.applied++
		mark, moved = mark.advance(pos), true
		res.occurred = append(res.occurred, ev.OccurredAt)
		wrote = true
	}
	for _, rev := range slices.Sorted(maps.Keys(replayedLast)) {
		last := replayedLast[rev]
		later := false
		for _, o := range st.Outbox {
			if later && o.Rev == rev {
				// Not published here: probes are not needed.
				for _, pr := range standing(o.Events(w.ref), o.Rev, st) {
					if !pr.Probe {
						res.projections = append(res.projections, pr)
					}
				}
			}
			later = later || o.EventID == last && o.Rev == rev
		}
	}
	if org != nil && profile != nil && !deleted && timed {
		if at, ok := org.NextFlip(profile, flipFrom); ok {
			res.due = append(res.due, membership.Due{OrgID: w.ref.OrgID, UserID: w.ref.UserID, At: at})
		}
	}
	if !wrote {
		res.publishFirst(withoutRepeats(before))
		return res
	}
	// A cached state holds the job entries the stream's own last write
	// kept (keepAmends): they race all the same. The stream's own entries
	// are published in order by its batches.
	before = append(before, racedChanges(w.ref, st.Outbox, func(e membership.OutboxEntry) bool {
		return streamEntry(e) || org.backfillPublished(e)
	}, func(seg string) bool {
		return slices.ContainsFunc(res.changes, func(c events.Change) bool { return c.SegmentID == seg })
	}, now)...)
	// The new write's first change of each segment flips from what came
	// before the write (a user has a few changes a batch: no set needed).
	for i, c := range res.changes {
		if res.revs[i] != st.Rev+1 || decidedBefore(res.changes[:i], res.revs[:i], c.SegmentID, res.revs[i]) {
			continue
		}
		before = append(before, precedingChanges(w.ref, st.Outbox, c.SegmentID, res.revs[i], c.Entered, org.unpublishedJob)...)
	}
	res.publishFirst(withoutRepeats(before))
	uw := &membership.UserWrite{OrgID: w.ref.OrgID, UserID: w.ref.UserID, ExpectRev: st.Rev, Version: version, Outbox: outbox}
	if moved {
		uw.Applied = mark.String()
	}
	if !deleted && profile != nil {
		uw.Profile = segment.AppendProfile(nil, profile)
	}
	was := make(map[string]bool, len(st.Segments))
	for _, s := range st.Segments {
		was[s] = true
	}
	for s, member := range cur {
		if member && !was[s] {
			uw.Add = append(uw.Add, s)
		} else if !member && was[s] {
			uw.Remove = append(uw.Remove, s)
		}
	}
	res.write = uw
	return res
}

// amendGrace is how long an entry a backfill appended to a user's outbox is
// kept through the user's stream writes once its segment is no longer seen
// building (see keepAmends): a ready segment's backfill has published
// everything, and the grace covers instances whose definitions lag.
const amendGrace = 10 * time.Minute

// timerGrace is how long an entry a timer appended to a user's outbox is
// kept through the user's stream writes. A timer that dies between its
// write and its publishing is claimed again by any instance running, 3 s
// after that instance saw its heartbeat stop, or after its 30 s lease; after an outage of
// every instance, as soon as one starts, when the stream may already be
// writing the user: the day covers such an outage.
const timerGrace = 24 * time.Hour

// keepAmends appends to outbox the entries of loaded made by backfills and
// timers that may not be published yet, or that their job's retry must find
// (one marked published is kept all the same: a claim retried, or a replay's
// timer at an instant already fired, decides under the same cause): a
// backfill's while its segment is
// still being built, at that generation or a later one, in org (its retry,
// or the new generation's backfill, publishes from them, however late it
// comes) and for amendGrace, a timer's for timerGrace and only under the
// user's latest keptTimerFlips flips.
func keepAmends(outbox, loaded []membership.OutboxEntry, org *OrgRules, now time.Time) []membership.OutboxEntry {
	recent, day := now.Add(-amendGrace).UnixMilli(), now.Add(-timerGrace).UnixMilli()
	// A timer's retry looks for entries under the flips of its claim and of
	// the unfinished claims before it, at most keptTimerFlips of them, all
	// written after any finished claim published its own: entries under
	// older flips than the newest keptTimerFlips are never looked for, and
	// kept for a day they would pile up with each flip of an active user.
	flips := make(map[string]bool, keptTimerFlips)
	for i := len(loaded) - 1; i >= 0 && len(flips) < keptTimerFlips; i-- {
		if e := loaded[i]; e.CauseType == events.CauseTime {
			flips[timerFlip(e.EventID)] = true
		}
	}
	for _, e := range loaded {
		var keep bool
		switch {
		case streamEntry(e):
		case e.CauseType == events.CauseTime:
			keep = e.AtMillis >= day && flips[timerFlip(e.EventID)]
		default:
			keep = e.AtMillis >= recent || e.CauseType == events.CauseSegment && org.building(e.EventID)
		}
		if keep {
			outbox = append(outbox, e)
		}
	}
	return outbox
}

// keptTimerFlips is how many of a user's latest timer flips keep their
// outbox entries: a claim's own and the earlier unfinished ones it
// remembers.
const keptTimerFlips = 1 + membership.MaxEarlierClaims

// timerFlip returns the flip of a timer's entry, from its cause
// (time:<segmentId>:<unix ms of the flip>).
func timerFlip(eventID string) string {
	return eventID[strings.LastIndexByte(eventID, ':')+1:]
}

// keyedBy makes a patched profile's userId the user's own (README,
// Criteria), whatever the patch said. The profile it was patched from held
// the user's id already (see segment.DecodeUserProfile), so userId is no
// changed path.
func keyedBy(next *segment.Profile, user string, paths []string) []string {
	next.Set("userId", user)
	return slices.DeleteFunc(paths, func(p string) bool { return p == "userId" })
}
