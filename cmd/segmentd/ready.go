package main

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/membership"
)

// readyTimeout bounds a readiness check's reach to Redis and Kafka.
const readyTimeout = time.Second

// readiness returns /readyz's check: Redis and Kafka answer, the
// definitions are loaded (loaded) and the processor is not stuck retrying
// a batch (healthy). /readyz answers anyone: the reasons name no address,
// the log has the errors (at most one line each 10 s: probes come often).
func readiness(brokers []string, rdb redis.UniversalClient, loaded, healthy func() bool, log *slog.Logger) func(context.Context) error {
	var notReady rateLimitedWarning
	return func(ctx context.Context) error {
		// Both at once, within a second: a probe's own timeout is often a
		// second, and a hung server should give it a 503, not a timeout.
		ctx, cancel := context.WithTimeout(ctx, readyTimeout)
		defer cancel()
		kafkaErr := make(chan error, 1)
		go func() { kafkaErr <- kafkaio.Ping(ctx, brokers) }()
		if err := membership.Ping(ctx, rdb); err != nil {
			notReady.warn(log, "redis", err)
			switch {
			case errors.Is(err, membership.ErrNotCluster):
				return errors.New("SEGMENTD_REDIS_ADDRS names a Redis Cluster (several addresses), and a server there has no cluster support: give a standalone Redis one address")
			case errors.Is(err, membership.ErrIsCluster):
				return errors.New("SEGMENTD_REDIS_ADDRS names a standalone Redis (one address), and it is a node of a Redis Cluster: give two or more of its nodes")
			case membership.AuthRefused(err):
				return errors.New("redis refuses the credentials or the user's permissions (SEGMENTD_REDIS_USERNAME, SEGMENTD_REDIS_PASSWORD)")
			}
			return errors.New("redis does not answer")
		}
		if err := <-kafkaErr; err != nil {
			notReady.warn(log, "kafka", err)
			return errors.New("kafka does not answer")
		}
		if !loaded() {
			return errors.New("definitions not loaded")
		}
		if !healthy() {
			return errors.New("processor is retrying a failing batch")
		}
		return nil
	}
}

// rateLimitedWarning logs at most one warning each 10 s.
type rateLimitedWarning struct{ last atomic.Int64 }

func (r *rateLimitedWarning) warn(log *slog.Logger, what string, err error) {
	now := time.Now().UnixNano()
	if last := r.last.Load(); now-last >= int64(10*time.Second) && r.last.CompareAndSwap(last, now) {
		log.Warn("not ready", "dependency", what, "err", err)
	}
}
