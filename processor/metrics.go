package processor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segmentd/segmentd/events"
)

// Metrics are the processor's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	events      *prometheus.CounterVec
	dlq         prometheus.Counter
	changes     *prometheus.CounterVec
	batchSize   prometheus.Histogram
	latency     prometheus.Histogram
	processing  prometheus.Histogram
	lag         prometheus.Gauge
	steps       *prometheus.HistogramVec
	redisErrors prometheus.Counter
	kafkaErrors prometheus.Counter
	cache       *prometheus.CounterVec
	cacheUsers  prometheus.Gauge
	cacheBytes  prometheus.Gauge
}

// NewMetrics registers the processor's metrics on reg. It fails when reg
// already holds metrics of the same names (two processors on one registry).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segmentd_profile_events_total",
			Help: "Profile events processed, by result (applied, duplicate, replayed, dlq).",
		}, []string{"result"}),
		dlq: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "segmentd_dlq_records_total",
			Help: "Records written to the dead-letter topic.",
		}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segmentd_membership_changes_total",
			Help: "Membership changes published, by direction (entered, exited) and cause.",
		}, []string{"direction", "cause"}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "segmentd_batch_events",
			Help:    "Profile events per processed batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "segmentd_event_latency_seconds",
			Help: "Time from a profile event's occurredAt until its outcome is in Redis: the user's state and, when its memberships changed, the segment sets.",
			// Fine buckets (about 20% apart) so that p50 and p99 read off
			// the histogram are close to the truth.
			Buckets: prometheus.ExponentialBucketsRange(0.0005, 60, 64),
		}),
		processing: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "segmentd_event_processing_seconds",
			Help:    "Time from fetching a profile event from Kafka until its outcome is in Redis: the part of segmentd_event_latency_seconds spent in segmentd.",
			Buckets: prometheus.ExponentialBucketsRange(0.0005, 60, 64),
		}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "segmentd_consumer_lag_events",
			Help: "Profile events not yet processed in the partitions this instance reads: fetched and not finished, or not fetched yet.",
		}),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "segmentd_batch_step_seconds",
			Help:    "Time a processed batch spent in each step (decode, load, evaluate, write, project, schedule, publish, commit): each once a try of a batch, load, evaluate and write again for each round of users that another writer moved meanwhile.",
			Buckets: prometheus.ExponentialBucketsRange(0.0001, 10, 24),
		}, []string{"step"}),
		redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "segmentd_redis_errors_total",
			Help: "Failed Redis operations of the processor.",
		}),
		kafkaErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "segmentd_kafka_errors_total",
			Help: "Failed Kafka fetch, produce or commit operations of the processor.",
		}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "segmentd_user_cache_lookups_total",
			Help: "Users' states looked up in the processor's cache before a write, by result (hit, miss); a miss reads the user from Redis.",
		}, []string{"result"}),
		cacheUsers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "segmentd_user_cache_users",
			Help: "Users whose state the processor's cache holds.",
		}),
		cacheBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "segmentd_user_cache_bytes",
			Help: "Memory of the processor's cache of users' states.",
		}),
	}
	if err := registerAll(reg, m.events, m.dlq, m.changes, m.batchSize, m.latency, m.processing, m.lag, m.steps, m.redisErrors, m.kafkaErrors, m.cache, m.cacheUsers, m.cacheBytes); err != nil {
		return nil, err
	}
	// Every series whose labels are known is there at 0 from the start: a
	// series that appears with its first increment hides that increment
	// from rate() and increase().
	for _, r := range []string{"applied", "duplicate", "replayed", "dlq"} {
		m.events.WithLabelValues(r)
	}
	for _, d := range []string{events.Entered, events.Exited} {
		for _, c := range []string{events.CauseProfile, events.CauseSegment, events.CauseStatic, events.CauseTime} {
			m.changes.WithLabelValues(d, c)
		}
	}
	for _, s := range []string{"decode", "load", "evaluate", "write", "project", "schedule", "publish", "commit"} {
		m.steps.WithLabelValues(s)
	}
	for _, r := range []string{"hit", "miss"} {
		m.cache.WithLabelValues(r)
	}
	return m, nil
}

// registerAll registers every collector on reg and reports each that failed.
func registerAll(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	var errs []error
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("register metrics: %w", errors.Join(errs...))
	}
	return nil
}

// SetLag records the consumer lag.
func (m *Metrics) SetLag(n int64) {
	if m != nil {
		m.lag.Set(float64(n))
	}
}

// stepTimer returns a function that records the time since its last call
// under the step it names; the first call measures from stepTimer.
func (m *Metrics) stepTimer() func(step string) {
	last := time.Now()
	return func(step string) {
		if m == nil {
			return
		}
		now := time.Now()
		m.steps.WithLabelValues(step).Observe(now.Sub(last).Seconds())
		last = now
	}
}

// observeStep records d under step, for a step timed on its own.
func (m *Metrics) observeStep(step string, d time.Duration) {
	if m != nil {
		m.steps.WithLabelValues(step).Observe(d.Seconds())
	}
}

func (m *Metrics) observeBatch(n int) {
	if m != nil {
		m.batchSize.Observe(float64(n))
	}
}

// observeLatency records, for one event that changed a user, the time
// since it occurred and since it was fetched, at the instant its outcome
// is in Redis.
func (m *Metrics) observeLatency(occurred, fetched, now time.Time) {
	if m == nil {
		return
	}
	if !occurred.IsZero() {
		// A producer's clock ahead of this one's gives a negative time,
		// which would take the histogram's sum down (read as a reset).
		m.latency.Observe(max(0, now.Sub(occurred).Seconds()))
	}
	m.processing.Observe(now.Sub(fetched).Seconds())
}

func (m *Metrics) countResults(r userResult) {
	if m == nil {
		return
	}
	m.events.WithLabelValues("applied").Add(float64(r.applied))
	m.events.WithLabelValues("duplicate").Add(float64(r.duplicate))
	m.events.WithLabelValues("replayed").Add(float64(r.replayed))
}

func (m *Metrics) countChanges(cs []events.Change) {
	if m == nil {
		return
	}
	for _, c := range cs {
		m.changes.WithLabelValues(c.Direction(), c.Cause.Type).Inc()
	}
}

func (m *Metrics) countDLQ(n int) {
	if m != nil && n > 0 {
		m.dlq.Add(float64(n))
		m.events.WithLabelValues("dlq").Add(float64(n))
	}
}

func (m *Metrics) countCache(hits, misses, held, bytes int) {
	if m == nil {
		return
	}
	m.cache.WithLabelValues("hit").Add(float64(hits))
	m.cache.WithLabelValues("miss").Add(float64(misses))
	m.cacheUsers.Set(float64(held))
	m.cacheBytes.Set(float64(bytes))
}

func (m *Metrics) redisError() {
	if m != nil {
		m.redisErrors.Inc()
	}
}

func (m *Metrics) kafkaError() {
	if m != nil {
		m.kafkaErrors.Inc()
	}
}

// CountedPublisher publishes changes and counts those published in
// segmentd_membership_changes_total, as the processor and the jobs count
// their own: for the changes published elsewhere (the API's static lists
// and deletions).
type CountedPublisher struct {
	pub ChangePublisher
	m   *Metrics
}

// NewCountedPublisher returns a CountedPublisher that publishes through
// pub and counts in m.
func NewCountedPublisher(pub ChangePublisher, m *Metrics) *CountedPublisher {
	return &CountedPublisher{pub: pub, m: m}
}

// Publish publishes cs and, once they are published, counts them.
func (p *CountedPublisher) Publish(ctx context.Context, cs []events.Change) error {
	if err := p.pub.Publish(ctx, cs); err != nil {
		return err
	}
	p.m.countChanges(cs)
	return nil
}
