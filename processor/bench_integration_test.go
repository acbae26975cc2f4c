package processor_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/loadgen"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// thousandSegments is a catalogue of 1,000 dynamic segments over the fields
// that loadgen's events touch: 5 time-relative ones on updatedAt, then ten
// groups of 100 (points >= 1000, xp >= 5000, coins >= 250, tier gold or
// platinum, and six custom fields >= 50), each segment of a group for one
// of loadgen's 100 user cohorts (customFields.cohort), as campaign
// catalogues cut one audience by region or plan. Every update evaluates the
// hundred-odd segments that read its fields, and a user is in a handful.
func thousandSegments() []segment.Criteria {
	var out []segment.Criteria
	num := func(f, op string, v float64) segment.Criterion {
		return segment.Criterion{Field: f, Operator: op, Value: v, HasValue: true}
	}
	for i := range 1000 {
		var c segment.Criteria
		cohort := num("customFields.cohort", "equals", float64(i%100))
		switch g := i / 100; {
		case i < 5:
			c.Include = []segment.Criterion{{Field: "updatedAt", Operator: "<", Value: fmt.Sprintf("now-%dd", 30+i), HasValue: true}}
		case g == 0:
			c.Include = []segment.Criterion{num("points", ">=", 1000), cohort}
		case g == 1:
			c.Include = []segment.Criterion{num("xp", ">=", 5000), cohort}
		case g == 2:
			c.Include = []segment.Criterion{num("coins", ">=", 250), cohort}
		case g == 3:
			c.Include = []segment.Criterion{{Field: "tier", Operator: "in", Value: []any{"gold", "platinum"}, HasValue: true}, cohort}
		default:
			c.Include = []segment.Criterion{num(fmt.Sprintf("customFields.f%d", g), ">=", 50), cohort}
			c.Exclude = []segment.Criterion{{Field: "customFields.testAccount", Operator: "equals", Value: true, HasValue: true}}
		}
		out = append(out, c)
	}
	return out
}

// benchRig is a processor with its metrics, over real servers.
type benchRig struct {
	*rig
	reg *prometheus.Registry
}

func newBenchRig(b *testing.B) *benchRig {
	// As cmd/segmentd runs the processor.
	old := debug.SetGCPercent(envInt("SEGMENTD_BENCH_GOGC", processor.GCPercent))
	b.Cleanup(func() { debug.SetGCPercent(old) })
	rdb := testenv.RedisClient
	if os.Getenv("SEGMENTD_BENCH_REDIS") == "cluster" {
		rdb = testenv.RedisClusterClient
	}
	// Each benchmark's organisation is dropped when it ends: the instances
	// and benchmarks after it would otherwise work on it too.
	c := rdb(b)
	r := &rig{brokers: testenv.Kafka(b), rdb: c, org: testenv.Org(b, c, "bench")}
	r.profile = testenv.UniqueName(b, "profiles")
	r.membershipT = testenv.UniqueName(b, "membership")
	r.dlq = testenv.UniqueName(b, "dlq")
	r.group = testenv.UniqueName(b, "group")
	testenv.CreateTopic(b, r.brokers, r.profile, 6)
	testenv.CreateTopic(b, r.brokers, r.membershipT, 6)
	testenv.CreateTopic(b, r.brokers, r.dlq, 1)
	r.defs = membership.NewDefinitions(r.rdb)
	r.users = membership.NewUsers(r.rdb)
	return &benchRig{rig: r, reg: prometheus.NewRegistry()}
}

func (r *benchRig) createSegments(b *testing.B, cs []segment.Criteria) {
	for i, c := range cs {
		if _, err := r.defs.Create(context.Background(), segment.Definition{OrgID: r.org, Name: fmt.Sprintf("s%d", i), Type: segment.TypeDynamic, Criteria: c, Status: segment.StatusReady}); err != nil {
			b.Fatal(err)
		}
	}
}

func (r *benchRig) startProcessor(b *testing.B, group string) func() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	reg := processor.NewRegistry(r.defs, 250*time.Millisecond, log)
	ctx, cancel := context.WithCancel(context.Background())
	if err := reg.Reload(ctx); err != nil {
		b.Fatal(err)
	}
	reader := kafkaio.NewGroupReader(r.brokers, group, r.profile)
	writer := kafkaio.NewWriter(r.brokers)
	// SEGMENTD_BENCH_BATCH_SIZE sets the most events per batch (unset:
	// 2,000, segmentd's default). SEGMENTD_BENCH_USER_CACHE sets the
	// processor's cache of users' states, in bytes: unset, its default; -1,
	// none (the baseline without it).
	cache, _ := strconv.Atoi(getenv("SEGMENTD_BENCH_USER_CACHE"))
	p := processor.New(processor.Config{
		Fetcher: reader, Producer: kafkaio.NewProducer(writer), Users: r.users, Rules: reg, Scheduler: membership.NewSchedules(r.rdb),
		MembershipTopic: r.membershipT, DLQTopic: r.dlq, BatchSize: envInt("SEGMENTD_BENCH_BATCH_SIZE", 2000), BatchWait: time.Millisecond,
		UserCacheBytes: cache, Metrics: mustMetrics(b, r.reg), Logger: log,
	})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = reg.Run(ctx) }()
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	return func() { cancel(); wg.Wait(); reader.Close(); writer.Close() }
}

// nextMessages returns the generator's next k events, stamped now, as
// records of topic keyed by user.
func nextMessages(g *loadgen.Generator, topic string, k int, now time.Time) []kafka.Message {
	msgs := make([]kafka.Message, 0, k)
	for range k {
		ev := g.Next(now)
		v, _ := events.EncodeProfileEvent(ev)
		msgs = append(msgs, kafka.Message{Topic: topic, Key: []byte(ev.UserID), Value: v})
	}
	return msgs
}

func (r *benchRig) produceGen(b *testing.B, g *loadgen.Generator, n int) {
	w := kafkaio.NewWriter(r.brokers)
	defer w.Close()
	for sent := 0; sent < n; {
		k := min(5000, n-sent)
		msgs := nextMessages(g, r.profile, k, time.Now())
		if err := w.WriteMessages(context.Background(), msgs...); err != nil {
			b.Fatal(err)
		}
		sent += k
	}
}

func committed(b testing.TB, brokers []string, group, topic string) int64 {
	cl := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	res, err := cl.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: {0, 1, 2, 3, 4, 5}}})
	if err != nil {
		return 0
	}
	var n int64
	for _, p := range res.Topics[topic] {
		n += max(0, p.CommittedOffset)
	}
	return n
}

// drain waits until group has committed want events and returns how long
// that took from start.
func drain(b *testing.B, brokers []string, group, topic string, want int64, start time.Time) time.Duration {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(10 * time.Minute)
	for {
		if committed(b, brokers, group, topic) >= want {
			return time.Since(start)
		}
		select {
		case <-t.C:
		case <-deadline:
			b.Fatalf("group %s did not commit %d events in 10 minutes", group, want)
		}
	}
}

// BenchmarkEndToEnd measures processing throughput over a backlog: 100,000
// users created (every segment evaluated for each) and then 200,000 updates
// (only the segments a change can affect), with 1,000 dynamic segments in
// one organisation; beside it, a bare kafka-go group consumer reading the
// same topic. Run with -benchtime=1x.
func BenchmarkEndToEnd(b *testing.B) {
	r := newBenchRig(b)
	r.createSegments(b, thousandSegments())
	users, updates := envInt("SEGMENTD_BENCH_USERS", 100000), envInt("SEGMENTD_BENCH_UPDATES", 200000)
	g := loadgen.New(r.org, 1, users, 0.1, 0.1, 1)
	// Seed: one creation per user, so the first phase is exactly the creations.
	seed := make([]kafka.Message, 0, users)
	now := time.Now()
	for i := range users {
		ev := g.Create(i, now)
		v, _ := events.EncodeProfileEvent(ev)
		seed = append(seed, kafka.Message{Topic: r.profile, Key: []byte(ev.UserID), Value: v})
	}
	w := kafkaio.NewWriter(r.brokers)
	for i := 0; i < len(seed); i += 5000 {
		if err := w.WriteMessages(context.Background(), seed[i:min(i+5000, len(seed))]...); err != nil {
			b.Fatal(err)
		}
	}
	w.Close()
	r.produceGen(b, g, updates)
	total := int64(users + updates)

	b.ResetTimer()
	// Baseline: a bare consumer that only reads and commits.
	bare := testenv.UniqueName(b, "bare")
	start := time.Now()
	rd := kafkaio.NewReader(r.brokers, bare, r.profile)
	var batch []kafka.Message
	for n := int64(0); n < total; n++ {
		m, err := rd.FetchMessage(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		batch = append(batch, m)
		if len(batch) == 2000 || n == total-1 {
			if err := rd.CommitMessages(context.Background(), batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	bareDur := time.Since(start)
	rd.Close()

	start = time.Now()
	stop := r.startProcessor(b, r.group)
	created := drain(b, r.brokers, r.group, r.profile, int64(users), start)
	cpu0 := redisCPU(b, r.rdb)
	all := drain(b, r.brokers, r.group, r.profile, total, start)
	cpu1 := redisCPU(b, r.rdb)
	stop()
	b.StopTimer()
	b.ReportMetric((cpu1-cpu0)/float64(updates)*1e6, "redis-cpu-us/update")
	b.ReportMetric(float64(total)/bareDur.Seconds(), "bare-consumer-events/s")
	b.ReportMetric(float64(users)/created.Seconds(), "creations/s")
	b.ReportMetric(float64(updates)/(all-created).Seconds(), "updates/s")
	b.ReportMetric(float64(total)/all.Seconds(), "events/s")
	b.ReportMetric(counterSum(b, r.reg, "segmentd_membership_changes_total")/float64(total), "changes/event")
	h := snapshotHistogram(b, r.reg, "segmentd_batch_events")
	b.ReportMetric(h.GetSampleSum()/float64(max(1, h.GetSampleCount())), "events/batch")
	logSteps(b, r.reg)
}

// logSteps logs the mean time per batch of each step of the processor.
func logSteps(b *testing.B, reg *prometheus.Registry) {
	for step, h := range stepHistograms(b, reg) {
		b.Logf("step %-9s %8.1f ms/batch", step, 1000*h.GetSampleSum()/float64(max(1, h.GetSampleCount())))
	}
	h := snapshotHistogram(b, reg, "segmentd_batch_events")
	b.Logf("%.0f events per batch", h.GetSampleSum()/float64(max(1, h.GetSampleCount())))
	b.Logf("user cache: %.0f hits, %.0f misses", cacheLookups(b, reg, "hit"), cacheLookups(b, reg, "miss"))
}

func counterSum(b testing.TB, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// BenchmarkLatencyAtHalfRate produces loadgen events at the given rate
// (SEGMENTD_BENCH_RATE, default 23,100/s: half the measured maximum of
// updates) for 20 s, after seeding every user, and reports p50 and p99 of
// the time from occurredAt until each event's outcome is in Redis, and of
// the part of it from the Kafka fetch on. The events come from a producer
// process of their own (see produce). Its baseline, first: the same load
// on a topic of its own, read by a bare kafka-go group consumer, the time
// from occurredAt to the fetch. SEGMENTD_BENCH_CPUPROFILE names a file for
// a CPU profile of the measured load alone.
func BenchmarkLatencyAtHalfRate(b *testing.B) {
	r := newBenchRig(b)
	r.createSegments(b, thousandSegments())
	rate := 23100 // half of the end-to-end maximum, ~46,200 updates/s
	if v, err := strconv.Atoi(getenv("SEGMENTD_BENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	users := envInt("SEGMENTD_BENCH_USERS", 100000)
	w := producerWriter(r.brokers)
	defer w.Close()
	bareP50, bareP99 := r.bareLatency(b, w, producerSpec{Org: r.org, Users: users, Seed: 3, Rate: rate})

	g := loadgen.New(r.org, 1, users, 0.1, 0.1, 2)
	stop := r.startProcessor(b, r.group)
	defer stop()
	// Seed every user before the clock starts, so that the measured events
	// are updates.
	now := time.Now()
	for i := 0; i < users; i += 5000 {
		msgs := make([]kafka.Message, 0, 5000)
		for u := i; u < min(i+5000, users); u++ {
			ev := g.Create(u, now)
			v, _ := events.EncodeProfileEvent(ev)
			msgs = append(msgs, kafka.Message{Topic: r.profile, Key: []byte(ev.UserID), Value: v})
		}
		if err := w.WriteMessages(context.Background(), msgs...); err != nil {
			b.Fatal(err)
		}
	}
	drain(b, r.brokers, r.group, r.profile, int64(users), time.Now())
	runtime.GC() // the seeding's garbage, not the measured load's
	reset := snapshotHistogram(b, r.reg, "segmentd_event_latency_seconds")
	resetProc := snapshotHistogram(b, r.reg, "segmentd_event_processing_seconds")
	resetSteps := stepHistograms(b, r.reg)
	if path := getenv("SEGMENTD_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	sent := users + r.produce(b, w, producerSpec{Topic: r.profile, Org: r.org, Users: users, Seed: 2, Seeded: true, Rate: rate})
	drain(b, r.brokers, r.group, r.profile, int64(sent), time.Now())
	b.StopTimer()
	pprof.StopCPUProfile()
	h := snapshotHistogram(b, r.reg, "segmentd_event_latency_seconds")
	p50, p99 := quantile(h, reset, 0.5), quantile(h, reset, 0.99)
	b.ReportMetric(float64(rate), "events/s-offered")
	b.ReportMetric(p50*1000, "p50-ms")
	b.ReportMetric(p99*1000, "p99-ms")
	hp := snapshotHistogram(b, r.reg, "segmentd_event_processing_seconds")
	b.ReportMetric(quantile(hp, resetProc, 0.5)*1000, "in-segmentd-p50-ms")
	b.ReportMetric(quantile(hp, resetProc, 0.99)*1000, "in-segmentd-p99-ms")
	b.ReportMetric(bareP50*1000, "bare-consumer-p50-ms")
	b.ReportMetric(bareP99*1000, "bare-consumer-p99-ms")
	for step, h := range stepHistograms(b, r.reg) {
		base := resetSteps[step]
		if base == nil {
			base = &dto.Histogram{}
		}
		b.Logf("step %-9s p50 %6.1f ms, p99 %6.1f ms per batch", step, 1000*quantile(h, base, 0.5), 1000*quantile(h, base, 0.99))
	}
}

// stepHistograms returns the processor's time per batch in each step.
func stepHistograms(b *testing.B, reg *prometheus.Registry) map[string]*dto.Histogram {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]*dto.Histogram{}
	for _, mf := range mfs {
		if mf.GetName() == "segmentd_batch_step_seconds" {
			for _, m := range mf.GetMetric() {
				out[m.GetLabel()[0].GetValue()] = m.GetHistogram()
			}
		}
	}
	return out
}

// producerEnv carries a producerSpec to the latency benchmark's producer:
// the test binary run again, as TestMain's first step reads.
const producerEnv = "SEGMENTD_BENCH_PRODUCER"

// producerSpec is what the latency benchmark's producer does: Rate loadgen
// events a second for 20 s to Topic, from a generator of Users users of
// Org and Seed, which first creates every user (without producing them)
// when Seeded, as the benchmark has produced those creations itself.
type producerSpec struct {
	Brokers    []string
	Topic, Org string
	Users      int
	Seed       uint64
	Seeded     bool
	Rate       int
}

// TestMain runs the latency benchmark's producer when the test binary is
// started as one (see produce), and the tests otherwise.
func TestMain(m *testing.M) {
	if v := os.Getenv(producerEnv); v != "" {
		os.Exit(runProducer(v))
	}
	os.Exit(m.Run())
}

// produce runs the producer in a process of its own, as the profile service
// would be, so that neither its garbage nor its goroutines share segmentd's
// heap and scheduler; SEGMENTD_BENCH_PRODUCER_IN_PROCESS=1 runs it in this
// process instead (the benchmark's earlier shape). It returns how many
// events were produced.
func (r *benchRig) produce(b *testing.B, w *kafka.Writer, spec producerSpec) int {
	spec.Brokers = r.brokers
	if getenv("SEGMENTD_BENCH_PRODUCER_IN_PROCESS") == "1" {
		return produceAtRate(w, spec.generator(), spec.Topic, spec.Rate, producerRun)
	}
	js, err := json.Marshal(spec)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), producerEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("producer process: %v", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		b.Fatalf("producer process printed %q: %v", out, err)
	}
	return n
}

// producerRun is how long the latency benchmark offers its load.
const producerRun = 20 * time.Second

// generator returns the spec's load generator, its users created when
// Seeded.
func (s producerSpec) generator() *loadgen.Generator {
	g := loadgen.New(s.Org, 1, s.Users, 0.1, 0.1, s.Seed)
	if s.Seeded {
		now := time.Now()
		for u := range s.Users {
			g.Create(u, now)
		}
	}
	return g
}

// runProducer is the producer process: it produces what the spec in js
// asks and prints how many events it produced.
func runProducer(js string) int {
	var spec producerSpec
	if err := json.Unmarshal([]byte(js), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "producer:", err)
		return 2
	}
	g := spec.generator()
	w := producerWriter(spec.Brokers)
	n := produceAtRate(w, g, spec.Topic, spec.Rate, producerRun)
	if err := w.Close(); err != nil { // flushes what is still in flight
		fmt.Fprintln(os.Stderr, "producer:", err)
		return 1
	}
	fmt.Println(n)
	return 0
}

// producerWriter is the profile service's producer, which writes events as
// they come and lets them gather for 2 ms, with kafka-go's default batch
// size (kafka-go allocates room for a full batch per partition and write).
func producerWriter(brokers []string) *kafka.Writer {
	w := kafkaio.NewWriter(brokers)
	w.BatchTimeout = 2 * time.Millisecond
	w.BatchSize = 100
	return w
}

// produceAtRate produces g's events to topic at rate per second for d, in
// bursts every 10 ms, each stamped when generated, and returns how many it
// produced once all are acknowledged.
func produceAtRate(w *kafka.Writer, g *loadgen.Generator, topic string, rate int, d time.Duration) int {
	const every = 10 * time.Millisecond
	per := rate * int(every) / int(time.Second)
	tick := time.NewTicker(every)
	defer tick.Stop()
	var wg sync.WaitGroup
	sent := 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		<-tick.C
		msgs := nextMessages(g, topic, per, time.Now())
		// Async so that one slow acknowledgement does not hold the rate back.
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.WriteMessages(context.Background(), msgs...) }()
		sent += per
	}
	wg.Wait()
	return sent
}

// bareLatency offers rate events per second for 20 s to a topic of its own,
// read by a bare kafka-go group consumer (segmentd's reader settings) that
// decodes only occurredAt and commits every 2,000 records, and returns p50
// and p99 of the time from occurredAt to the fetch, from a histogram with
// the buckets of segmentd's latency histogram.
func (r *benchRig) bareLatency(b *testing.B, w *kafka.Writer, spec producerSpec) (p50, p99 float64) {
	topic := testenv.UniqueName(b, "bare")
	spec.Topic = topic
	testenv.CreateTopic(b, r.brokers, topic, 6)
	reg := prometheus.NewRegistry()
	hist := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "bare_latency_seconds", Buckets: prometheus.ExponentialBucketsRange(0.0005, 60, 64)})
	reg.MustRegister(hist)
	rd := kafkaio.NewReader(r.brokers, testenv.UniqueName(b, "bare"), topic)
	defer rd.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var fetched atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		var batch []kafka.Message
		for {
			m, err := rd.FetchMessage(ctx)
			if err != nil {
				return
			}
			var ev struct {
				OccurredAt time.Time `json:"occurredAt"`
			}
			if fetched.Add(1) > 1 && json.Unmarshal(m.Value, &ev) == nil {
				hist.Observe(time.Since(ev.OccurredAt).Seconds())
			}
			if batch = append(batch, m); len(batch) == 2000 {
				_ = rd.CommitMessages(ctx, batch...)
				batch = batch[:0]
			}
		}
	}()
	defer func() { cancel(); <-done }()
	// One record first, not measured: the clock starts once the consumer
	// has joined its group and reads.
	first := nextMessages(loadgen.New(r.org, 1, 1, 0, 0, 1), topic, 1, time.Now())[0]
	if err := w.WriteMessages(context.Background(), first); err != nil {
		b.Fatal(err)
	}
	waitFor(b, func() bool { return fetched.Load() >= 1 })
	sent := int64(1 + r.produce(b, w, spec))
	waitFor(b, func() bool { return fetched.Load() >= sent })
	h := snapshotHistogram(b, reg, "bare_latency_seconds")
	return quantile(h, &dto.Histogram{}, 0.5), quantile(h, &dto.Histogram{}, 0.99)
}

// waitFor polls cond until it holds, failing the benchmark after a minute.
func waitFor(b *testing.B, cond func() bool) {
	if !testenv.EventuallyEvery(time.Minute, 10*time.Millisecond, cond) {
		b.Fatal("timed out")
	}
}

// snapshotHistogram returns the named histogram's observations so far.
func snapshotHistogram(tb testing.TB, reg *prometheus.Registry, name string) *dto.Histogram {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	return &dto.Histogram{}
}

// quantile interpolates the q-quantile of the observations made between
// two snapshots of a histogram.
func quantile(h, base *dto.Histogram, q float64) float64 {
	baseCount := map[float64]uint64{}
	for _, bk := range base.GetBucket() {
		baseCount[bk.GetUpperBound()] = bk.GetCumulativeCount()
	}
	total := h.GetSampleCount() - base.GetSampleCount()
	if total == 0 {
		return math.NaN()
	}
	rank := q * float64(total)
	prevUpper, prevCount := 0.0, 0.0
	for _, bk := range h.GetBucket() {
		c := float64(bk.GetCumulativeCount() - baseCount[bk.GetUpperBound()])
		if c >= rank {
			if c == prevCount {
				return bk.GetUpperBound()
			}
			return prevUpper + (bk.GetUpperBound()-prevUpper)*(rank-prevCount)/(c-prevCount)
		}
		prevUpper, prevCount = bk.GetUpperBound(), c
	}
	return prevUpper
}

// BenchmarkBackfillMillion stores 1,000,000 profiles, then backfills one new
// segment (points >= 1000, about half of them; SEGMENTD_BENCH_MIN_POINTS
// changes the threshold) and searches an audience
// over all of them; it reports Redis memory per profile and per membership
// from INFO memory, and the Redis servers' CPU time per profile from INFO
// cpu. Run with -benchtime=1x on a Redis of its own. SEGMENTD_BENCH_REDIS=cluster
// runs it on the Redis Cluster; SEGMENTD_BENCH_COMMANDSTATS=1 prints INFO
// commandstats of the backfill alone (of a standalone Redis).
func BenchmarkBackfillMillion(b *testing.B) {
	r := newBenchRig(b)
	ctx := context.Background()
	n := 1000000
	if v, err := strconv.Atoi(getenv("SEGMENTD_BENCH_PROFILES")); err == nil && v > 0 {
		n = v
	}
	mem0 := usedMemory(b, r.rdb)
	r.seedProfiles(b, r.org, n)
	mem1 := usedMemory(b, r.rdb)

	writer := kafkaio.NewWriter(r.brokers)
	defer writer.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	jobs, err := processor.NewJobs(processor.JobsConfig{
		InstanceID: "bench", Definitions: r.defs, Users: r.users, Schedules: membership.NewSchedules(r.rdb),
		Sizes: membership.NewSets(r.rdb), Coordinator: membership.NewCoordinator(r.rdb),
		Publisher: kafkaio.NewPublisher(writer, r.membershipT), Logger: log,
	})
	if err != nil {
		b.Fatal(err)
	}
	// Stored points are 0-999 for half of the users and 1000-5999 for the
	// other half: 1000 makes about half of them members,
	// SEGMENTD_BENCH_MIN_POINTS=5500 about one in twenty.
	minPoints := envInt("SEGMENTD_BENCH_MIN_POINTS", 1000)
	crit := segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: float64(minPoints), HasValue: true}}}
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: r.org, Name: "rich", Type: segment.TypeDynamic, Criteria: crit, Status: segment.StatusBuilding})
	if err != nil {
		b.Fatal(err)
	}
	rule, _ := segment.Compile(crit)
	if os.Getenv("SEGMENTD_BENCH_COMMANDSTATS") != "" {
		r.rdb.ConfigResetStat(ctx)
	}
	// A deployment completes its organisations' indexes once (the jobs do,
	// at start): the backfill measured is any after that.
	start := time.Now()
	if _, err := r.users.IndexAll(ctx); err != nil {
		b.Fatal(err)
	}
	indexAll := time.Since(start)
	// The seeding's garbage is collected now, not on the backfill's clock.
	runtime.GC()
	cpu0, self0 := redisCPU(b, r.rdb), processCPU()
	b.ResetTimer()
	start = time.Now()
	if err := jobs.Backfill(ctx, r.org, &processor.CompiledSegment{Def: d, Rule: rule}, 0); err != nil {
		b.Fatal(err)
	}
	backfill := time.Since(start)
	cpu1, self1 := redisCPU(b, r.rdb), processCPU()
	if os.Getenv("SEGMENTD_BENCH_COMMANDSTATS") != "" {
		stats, _ := r.rdb.Info(ctx, "commandstats").Result()
		fmt.Fprintln(os.Stderr, stats)
	}
	members, _ := r.rdb.SCard(ctx, membership.SegmentMembersKey(r.org, d.ID)).Result()
	mem2 := usedMemory(b, r.rdb)
	start = time.Now()
	res, err := processor.NewAudience(r.users, nil).Search(ctx, r.org, segment.Criteria{
		Include: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "gold", HasValue: true}, {Field: "xp", Operator: ">=", Value: 5000.0, HasValue: true}}}, 100, "")
	if err != nil {
		b.Fatal(err)
	}
	count := res.Count
	audience := time.Since(start)
	// Then the segment's deletion, as the API makes it: an exit published
	// for each member (and the entries it may repeat first), then the sets;
	// SEGMENTD_BENCH_DELETE_AFTER (a duration) dates it that much after the
	// backfill.
	later, _ := time.ParseDuration(getenv("SEGMENTD_BENCH_DELETE_AFTER"))
	start = time.Now()
	deleted, err := membership.NewSets(r.rdb).DeleteSegment(ctx, r.org, d.ID, time.Now().Add(later), kafkaio.NewPublisher(writer, r.membershipT).Publish)
	if err != nil {
		b.Fatal(err)
	}
	deletion := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(n)/backfill.Seconds(), "backfill-profiles/s")
	b.ReportMetric(indexAll.Seconds(), "index-all-s")
	b.ReportMetric((cpu1-cpu0)*1e6/float64(n), "redis-cpu-µs/profile")
	b.ReportMetric((self1-self0)*1e6/float64(n), "go-cpu-µs/profile")
	b.ReportMetric(float64(members), "members")
	b.ReportMetric(audience.Seconds(), "audience-s")
	b.ReportMetric(float64(count), "audience-count")
	b.ReportMetric(float64(mem1-mem0)/float64(n), "bytes/profile")
	b.ReportMetric(float64(mem2-mem1)/float64(max(members, 1)), "bytes/membership")
	b.ReportMetric(float64(deleted)/deletion.Seconds(), "deleted-members/s")
}

// seedProfiles stores n loadgen profiles of org as the processor stores
// them, 5,000 users a round trip.
func (r *benchRig) seedProfiles(b *testing.B, org string, n int) {
	ctx := context.Background()
	g := loadgen.New(org, 1, n, 0, 0, 3)
	now := time.Now()
	const chunk = 5000
	var ws []membership.UserWrite
	for i := range n {
		ev := g.Next(now)
		for ev.Profile == nil { // every user's first event is its creation
			ev = g.Next(now)
		}
		ev.UserID = fmt.Sprintf("u%d", i)
		prof := segment.NewProfile(ev.Profile)
		prof.Set("userId", ev.UserID)
		p := segment.AppendProfile(nil, prof) // as the processor stores it
		ws = append(ws, membership.UserWrite{OrgID: org, UserID: ev.UserID, Version: 1, Profile: p,
			Outbox: []membership.OutboxEntry{{EventID: ev.EventID, Version: 1, AtMillis: now.UnixMilli()}}})
		if len(ws) == chunk || i == n-1 {
			if _, err := r.users.Write(ctx, ws); err != nil {
				b.Fatal(err)
			}
			ws = ws[:0]
		}
	}
}

// BenchmarkSmallOrganisation stores 1,000,000 profiles of one organisation
// (SEGMENTD_BENCH_PROFILES changes it) and 10,000 of each of two others
// (SEGMENTD_BENCH_SMALL), then measures a small organisation's first
// audience search as a deployment whose indexes are not yet completed makes
// it (a scan of the whole keyspace for its users, as every search and
// backfill made it before the organisations' user indexes), the completion
// of every index (Users.IndexAll, once per deployment), the other small
// organisation's first search after it (its index), and a backfill of a new
// segment of that organisation. Run with -benchtime=1x.
func BenchmarkSmallOrganisation(b *testing.B) {
	r := newBenchRig(b)
	ctx := context.Background()
	big, small := envInt("SEGMENTD_BENCH_PROFILES", 1000000), envInt("SEGMENTD_BENCH_SMALL", 10000)
	before, org := testenv.Org(b, r.rdb, "before"), testenv.Org(b, r.rdb, "small")
	r.seedProfiles(b, r.org, big)
	r.seedProfiles(b, before, small)
	r.seedProfiles(b, org, small)
	crit := segment.Criteria{Include: []segment.Criterion{{Field: "tier", Operator: "equals", Value: "gold", HasValue: true}}}
	// Each search is an instance's first read of its organisation.
	search := func(org string) (time.Duration, int64) {
		start := time.Now()
		res, err := processor.NewAudience(membership.NewUsers(r.rdb), nil).Search(ctx, org, crit, 100, "")
		if err != nil {
			b.Fatal(err)
		}
		if res.Count == 0 {
			b.Fatalf("no user of %s in the audience", org)
		}
		return time.Since(start), res.Count
	}
	if err := r.rdb.Del(ctx, membership.AllIndexedKey).Err(); err != nil {
		b.Fatal(err)
	}
	runtime.GC()
	b.ResetTimer()
	keyspace, _ := search(before)
	start := time.Now()
	if _, err := membership.NewUsers(r.rdb).IndexAll(ctx); err != nil {
		b.Fatal(err)
	}
	indexAll := time.Since(start)
	first, n := search(org)
	writer := kafkaio.NewWriter(r.brokers)
	defer writer.Close()
	jobs, err := processor.NewJobs(processor.JobsConfig{
		InstanceID: "bench", Definitions: r.defs, Users: r.users, Schedules: membership.NewSchedules(r.rdb),
		Sizes: membership.NewSets(r.rdb), Coordinator: membership.NewCoordinator(r.rdb),
		Publisher: kafkaio.NewPublisher(writer, r.membershipT), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	d, err := r.defs.Create(ctx, segment.Definition{OrgID: org, Name: "gold", Type: segment.TypeDynamic, Criteria: crit, Status: segment.StatusBuilding})
	if err != nil {
		b.Fatal(err)
	}
	rule, _ := segment.Compile(crit)
	start = time.Now()
	if err := jobs.Backfill(ctx, org, &processor.CompiledSegment{Def: d, Rule: rule}, 0); err != nil {
		b.Fatal(err)
	}
	backfill := time.Since(start)
	b.StopTimer()
	if members, _ := r.rdb.SCard(ctx, membership.SegmentMembersKey(org, d.ID)).Result(); members != n {
		b.Fatalf("%d members, audience count %d", members, n)
	}
	b.ReportMetric(keyspace.Seconds()*1000, "keyspace-first-search-ms")
	b.ReportMetric(indexAll.Seconds(), "index-all-s")
	b.ReportMetric(first.Seconds()*1000, "indexed-first-search-ms")
	b.ReportMetric(backfill.Seconds()*1000, "indexed-backfill-ms")
	b.ReportMetric(float64(n), "audience-count")
}

// usedMemory is the Redis used_memory, summed over the masters of a cluster.
func usedMemory(b *testing.B, rdb redis.UniversalClient) int64 {
	return int64(redisInfoSum(b, rdb, "memory", "used_memory:"))
}

// redisCPU is the Redis servers' CPU time so far, user and system, in seconds.
func redisCPU(b *testing.B, rdb redis.UniversalClient) float64 {
	return redisInfoSum(b, rdb, "cpu", "used_cpu_user:", "used_cpu_sys:")
}

// processCPU is this process's CPU time so far, user and system, in seconds.
func processCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// redisInfoSum sums the named fields of an INFO section over every master.
func redisInfoSum(b *testing.B, rdb redis.UniversalClient, section string, fields ...string) float64 {
	var mu sync.Mutex
	var sum float64
	read := func(ctx context.Context, c redis.UniversalClient) error {
		info, err := c.Info(ctx, section).Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, line := range strings.Split(info, "\n") {
			for _, f := range fields {
				if v, ok := strings.CutPrefix(strings.TrimSpace(line), f); ok {
					n, _ := strconv.ParseFloat(v, 64)
					sum += n
				}
			}
		}
		return nil
	}
	if err := eachMaster(rdb, read); err != nil {
		b.Fatal(err)
	}
	return sum
}

// eachMaster calls fn with every master of a cluster, or with rdb itself.
func eachMaster(rdb redis.UniversalClient, fn func(ctx context.Context, c redis.UniversalClient) error) error {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error { return fn(ctx, c) })
	}
	return fn(context.Background(), rdb)
}

func getenv(k string) string { return os.Getenv(k) }

func envInt(k string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(k)); err == nil && n > 0 {
		return n
	}
	return def
}
