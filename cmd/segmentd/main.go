// Command segmentd is the segmentation daemon: the HTTP API, the profile
// event processor and the background jobs, in one process. With no Kafka or
// Redis configured it runs on embedded in-process stand-ins.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/segmentd/segmentd/api"
	"github.com/segmentd/segmentd/config"
	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
)

func main() {
	ctx, stop := signalContext()
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "segmentd:", err)
		os.Exit(1)
	}
}

// run wires segmentd and blocks until ctx ends (or a component fails), then
// shuts down in order, each step bounded: the HTTP server stops taking
// calls while the processor stops fetching and finishes and commits the
// batches in hand; then the consumer leaves the group, the calls in
// progress end, the jobs stop, and the clients close.
func run(ctx context.Context, args []string, getenv func(string) string) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Print(usage())
		return nil
	}
	if len(args) > 0 {
		return fmt.Errorf("no arguments are taken; configure segmentd with SEGMENTD_* variables (segmentd -h lists them)")
	}
	cfg, err := config.Load(getenv)
	if err != nil {
		return err
	}
	// Taken first, so that an address in use stops start-up at once, in
	// the words of the configuration, before any server is started.
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return &config.Error{Var: "SEGMENTD_HTTP_ADDR", Value: cfg.HTTPAddr, Reason: "cannot listen there", Err: err}
	}
	defer ln.Close() // served and closed by the HTTP server, unless start-up fails before
	if getenv("GOGC") == "" {
		debug.SetGCPercent(processor.GCPercent)
	}
	// A warning repeated with the same error (every job retrying through an
	// outage) is logged once each 10 s, with how many were held back.
	log := slog.New(newRepeatLimiter(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}), 10*time.Second))
	if getenv("GOMEMLIMIT") == "" {
		if n, ok := containerMemoryLimit(os.ReadFile); ok {
			soft := softMemoryLimit(n)
			debug.SetMemoryLimit(soft)
			log.Info("Go memory limit set below the container's", "container_bytes", n, "limit_bytes", soft)
		}
	}

	if cfg.Embedded() {
		unset := halfEmbedded(cfg)
		srv, err := startEmbedded(&cfg, getenv)
		if err != nil {
			return err
		}
		defer srv.Close()
		if unset != "" {
			// Most often a variable forgotten in a deployment: this
			// instance would join the real group (or read the real
			// Redis) and keep the other half of its work in memory.
			log.Warn("only one of Kafka and Redis is configured: the other runs in-process, in memory, and what this instance writes there is lost on exit; set both for production", "unset", unset)
		}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	rdb := membership.NewClient(cfg.RedisAddrs, membership.Auth{Username: cfg.RedisUsername, Password: cfg.RedisPassword})
	defer rdb.Close()
	// Kafka must answer at start (the topics are ensured): an address that
	// is wrong, or a broker not up, is told by its variable. Redis may come
	// later (README, configuration).
	// A stop signal meanwhile ends start-up quietly: nothing has started.
	if err := reach(ctx, func(ctx context.Context) error { return kafkaio.Ping(ctx, cfg.KafkaBrokers) }); ctx.Err() != nil {
		return nil
	} else if err != nil {
		return &config.Error{Var: "SEGMENTD_KAFKA_BROKERS", Value: strings.Join(cfg.KafkaBrokers, ","), Reason: "Kafka not reachable there", Err: err}
	}
	if err := kafkaio.EnsureTopics(ctx, cfg.KafkaBrokers, cfg.Partitions, cfg.ProfileTopic, cfg.MembershipTopic, cfg.DLQTopic); ctx.Err() != nil {
		return nil
	} else if err != nil {
		var ite *kafkaio.InvalidTopicError
		if errors.As(err, &ite) {
			return &config.Error{Var: topicVar(cfg, ite.Topic), Value: ite.Topic, Reason: "Kafka refused to create the topic", Err: err}
		}
		var aue *kafkaio.AdvertisedUnreachableError
		if errors.As(err, &aue) {
			return &config.Error{Var: "SEGMENTD_KAFKA_BROKERS", Value: strings.Join(cfg.KafkaBrokers, ","), Reason: "Kafka answers there but the controller address it advertises does not", Err: err}
		}
		return err
	}
	defs := membership.NewDefinitions(rdb)
	users := membership.NewUsers(rdb).WithLogger(log)
	scheds := membership.NewSchedules(rdb)
	sets := membership.NewSets(rdb)
	registry := processor.NewRegistry(defs, 250*time.Millisecond, log)

	metrics, err := processor.NewMetrics(reg)
	if err != nil {
		return err
	}
	reader := kafkaio.NewGroupReader(cfg.KafkaBrokers, cfg.GroupID, cfg.ProfileTopic)
	// A writer each for the stream and for the jobs and the API: each
	// writes through its own one call at a time (kafkaio.WriteInOrder), and
	// the stream's batches need not wait for a backfill's pages.
	writer, jobsWriter := kafkaio.NewWriter(cfg.KafkaBrokers), kafkaio.NewWriter(cfg.KafkaBrokers)
	proc := processor.New(processor.Config{
		Fetcher: reader, Producer: kafkaio.NewProducer(writer), Users: users, Rules: registry, Scheduler: scheds,
		MembershipTopic: cfg.MembershipTopic, DLQTopic: cfg.DLQTopic,
		BatchSize: cfg.BatchSize, BatchWait: cfg.BatchWait, ShutdownTimeout: cfg.ShutdownTimeout,
		UserCacheBytes: userCacheBytes(cfg.UserCacheMB), Metrics: metrics, Logger: log,
	})
	// Until the shutdown path owns them, an early return closes the clients.
	var closeReader sync.Once
	leaveGroup := func() {
		closeReader.Do(func() {
			if err := reader.Close(); err != nil {
				log.Warn("close kafka reader", "err", err)
			}
		})
	}
	committed := kafkaio.NewGroupOffsets(cfg.KafkaBrokers, cfg.GroupID, cfg.ProfileTopic)
	closeKafka := func() {
		leaveGroup()
		_ = committed.Close() // closes idle connections only
		if err := errors.Join(kafkaio.CloseWriter(writer), kafkaio.CloseWriter(jobsWriter)); err != nil {
			log.Warn("close kafka writers", "err", err)
		}
	}
	publisher := kafkaio.NewPublisher(jobsWriter, cfg.MembershipTopic)
	coord := membership.NewCoordinator(rdb)
	jobs, err := processor.NewJobs(processor.JobsConfig{
		InstanceID: instanceID(), Definitions: defs, Users: users, Schedules: scheds, Sizes: sets,
		Coordinator: coord, Publisher: publisher, Remover: sets, Registry: registry, Processor: proc,
		Committed: committed, ProfileTopic: cfg.ProfileTopic,
		EstimateInterval: cfg.EstimateInterval, Metrics: metrics, Registerer: reg, Logger: log,
	})
	if err != nil {
		closeKafka()
		return err
	}

	ready := readiness(cfg.KafkaBrokers, rdb, registry.Loaded, proc.Healthy, log)
	handler := api.New(api.Config{
		Definitions:   defs,
		Membership:    sets,
		Profiles:      users,
		Publisher:     processor.NewCountedPublisher(publisher, metrics),
		Audience:      processor.NewAudience(users, nil),
		Keys:          cfg.APIKeys,
		Ready:         ready,
		ReadyFor:      time.Second,
		Metrics:       promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}),
		Registerer:    reg,
		Logger:        log,
		AwaitRevision: processor.NewRevisionGate(coord, nil).Wait,
		Locks:         coord,
	})
	httpSrv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	fmt.Printf("segmentd API on http://%s\n", ln.Addr())
	log.Info("segmentd started", "http", ln.Addr().String(), "kafka", cfg.KafkaBrokers, "redis", cfg.RedisAddrs, "group", cfg.GroupID)

	// Bounded: a Redis not answering yet must not hold /healthz back; the
	// registry loads in the background until it does.
	rctx, cancelReload := context.WithTimeout(ctx, 5*time.Second)
	if err := registry.Reload(rctx); err != nil {
		log.Warn("first definitions load failed; retrying in the background", "err", err)
	}
	cancelReload()
	cctx, cancelCheck := context.WithTimeout(ctx, 2*time.Second)
	if n, ok := membership.HashValueLimit(cctx, rdb); ok && n < membership.RecommendedHashValueLimit {
		log.Info("Redis hash-max-listpack-value is below the recommended value: each stored profile takes ~40% more memory (README, Redis layout)",
			"value", n, "recommended", membership.RecommendedHashValueLimit)
	}
	cancelCheck()

	// Jobs stop when jobCtx ends; the processor stops fetching when ctx ends.
	jobCtx, stopJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer stopJobs()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	goRun := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	goRun("registry", func() error { return registry.Run(jobCtx) })
	goRun("jobs", func() error { return jobs.Run(jobCtx) })
	goRun("http", func() error {
		if err := httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	procDone := make(chan struct{})
	procCtx, stopProc := context.WithCancel(ctx)
	defer stopProc()
	go func() {
		defer close(procDone)
		if err := proc.Run(procCtx); err != nil {
			errc <- fmt.Errorf("processor: %w", err)
		}
	}()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		log.Error("stopping after failure", "err", runErr)
	}
	log.Info("shutting down")
	// The API takes no new call from now on, and the calls in progress
	// (a static list being written and published) get the processor's
	// time to finish, beside it: Kafka closes after both.
	httpDone := make(chan struct{})
	go func() {
		defer close(httpDone)
		shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		if err := httpSrv.Shutdown(shutCtx); err != nil {
			log.Warn("http shutdown: calls still in progress are cut off", "err", err)
			_ = httpSrv.Close() // their connections close
		}
	}()
	stopProc()
	deadline := time.After(cfg.ShutdownTimeout + 2*time.Second) // Run keeps to the timeout itself
	select {
	case <-procDone:
	case <-deadline:
		log.Warn("processor did not stop in time")
	}
	// Leaving the group now hands the partitions over while the rest stops
	// (waited for, with the writer's close, below: a frozen broker must not
	// hold the process).
	go leaveGroup()
	<-httpDone
	stopJobs()
	// Jobs stop at their next Redis call or page; a frozen server must not
	// hold the process past its bound.
	stopped := make(chan struct{})
	go func() { wg.Wait(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(jobsStopTimeout):
		log.Warn("background jobs did not stop in time")
	}
	// kafka-go's own bounds, with Kafka failing, run to tens of seconds:
	// nothing is left to send (every write waited for its acknowledgement),
	// so the process need not wait for them.
	closed := make(chan struct{})
	go func() { defer close(closed); closeKafka() }()
	select {
	case <-closed:
	case <-time.After(kafkaCloseTimeout):
		log.Warn("kafka clients did not close in time")
	}
	log.Info("stopped")
	return runErr
}

// jobsStopTimeout bounds the wait for the background jobs and the HTTP
// server once the processor has stopped; kafkaCloseTimeout the wait for the
// Kafka clients to close after them.
const (
	jobsStopTimeout   = 10 * time.Second
	kafkaCloseTimeout = 5 * time.Second
)

// usage lists the variables segmentd reads.
func usage() string {
	var b strings.Builder
	b.WriteString("segmentd: real-time user segmentation. It takes no arguments; it reads these variables:\n\n")
	for _, v := range config.Vars {
		def := v.Default
		if def == "" {
			def = "(none)"
		}
		fmt.Fprintf(&b, "  %-28s %s\n  %-28s default: %s\n", v.Name, v.Usage, "", def)
	}
	b.WriteString("\nWith neither Kafka nor Redis configured it runs both in-process (make run).\n")
	return b.String()
}

// instanceID names this process in the instance heartbeat.
func instanceID() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// userCacheBytes turns the configured size, where 0 means none, into the
// processor's, where 0 means its default.
func userCacheBytes(mb int) int {
	if mb == 0 {
		return -1
	}
	return mb << 20
}

// reach runs one check of a server at start-up, bounded.
func reach(ctx context.Context, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return check(ctx)
}

// topicVar names the variable that configured topic.
func topicVar(cfg config.Config, topic string) string {
	switch topic {
	case cfg.ProfileTopic:
		return "SEGMENTD_PROFILE_TOPIC"
	case cfg.MembershipTopic:
		return "SEGMENTD_MEMBERSHIP_TOPIC"
	default:
		return "SEGMENTD_DLQ_TOPIC"
	}
}
