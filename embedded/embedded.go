// Package embedded runs the in-process stand-ins that segmentd's default
// mode uses for Kafka and Redis when they are not configured: a kfake Kafka cluster and
// a miniredis server, both listening on loopback so that other clients can
// look in. They hold data in memory only and are for trying segmentd out,
// not for production.
package embedded

import (
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/twmb/franz-go/pkg/kfake"
)

// Default loopback addresses of the embedded servers; segmentctl uses them
// when no address is configured.
const (
	KafkaAddr = "127.0.0.1:19192"
	RedisAddr = "127.0.0.1:16399"
)

// Options chooses which servers Start runs.
type Options struct {
	// Kafka and Redis start the embedded broker and Redis.
	Kafka, Redis bool
	// Ephemeral puts them on free ports instead of the default ones (tests).
	Ephemeral bool
}

// Servers are the running embedded Kafka and Redis, either of them absent
// when not asked for.
type Servers struct {
	kafka *kfake.Cluster
	redis *miniredis.Miniredis
	// stopClock and clockDone stop the embedded Redis's clock.
	stopClock, clockDone chan struct{}
}

// clockTick is how often the embedded Redis's keys age, at the most.
const clockTick = 100 * time.Millisecond

// clockShare bounds the clock's share of the embedded Redis's time to one
// part in clockShare.
const clockShare = 20

// clockWait is how long the clock waits after aging the keys took cost.
// miniredis ages them by sorting and walking every key under its lock: at a
// fixed tick, with a few hundred thousand keys, the clock would hold the
// lock nearly all the time and no command would be answered within the
// clients' timeouts. Keys expire late by as much (leases of 30 s,
// idempotency records of a day).
func clockWait(cost time.Duration) time.Duration {
	return max(clockTick, clockShare*cost)
}

// runClock ages the embedded Redis's keys with the wall clock: miniredis
// expires keys only when told that time has passed, and segmentd's job
// leases and idempotency records rely on expiry. wait says how long to wait
// after each aging (clockWait).
func (s *Servers) runClock(wait func(cost time.Duration) time.Duration) {
	defer close(s.clockDone)
	t := time.NewTimer(clockTick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-s.stopClock:
			return
		case now := <-t.C:
			s.redis.FastForward(now.Sub(last))
			last = now
			t.Reset(wait(time.Since(now)))
		}
	}
}

// Start starts the servers that opts asks for.
func Start(opts Options) (*Servers, error) {
	kport, raddr := 19192, RedisAddr
	if opts.Ephemeral {
		kport, raddr = 0, "127.0.0.1:0"
	}
	s := &Servers{}
	if opts.Kafka {
		kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(kport),
			kfake.BrokerConfigs(map[string]string{"group.initial.rebalance.delay.ms": "0"}))
		if err != nil {
			return nil, fmt.Errorf("embedded kafka on port %d: %w", kport, err)
		}
		s.kafka = kc
	}
	if opts.Redis {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr(raddr); err != nil {
			s.Close()
			return nil, fmt.Errorf("embedded redis on %s: %w", raddr, err)
		}
		s.redis = mr
		s.stopClock, s.clockDone = make(chan struct{}), make(chan struct{})
		go s.runClock(clockWait)
	}
	return s, nil
}

// KafkaBrokers returns the embedded broker addresses, none when it was not
// started.
func (s *Servers) KafkaBrokers() []string {
	if s.kafka == nil {
		return nil
	}
	return s.kafka.ListenAddrs()
}

// RedisAddr returns the embedded Redis address, "" when it was not started.
func (s *Servers) RedisAddr() string {
	if s.redis == nil {
		return ""
	}
	return s.redis.Addr()
}

// Close stops the servers.
func (s *Servers) Close() {
	if s.stopClock != nil {
		close(s.stopClock)
		<-s.clockDone
		s.stopClock = nil
	}
	if s.redis != nil {
		s.redis.Close()
	}
	if s.kafka != nil {
		s.kafka.Close()
	}
}
