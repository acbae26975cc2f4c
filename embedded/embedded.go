// Package embedded runs the in-process stand-ins that segmentd's default
// mode uses when no Kafka or Redis is configured: a kfake Kafka cluster and
// a miniredis server, both listening on loopback so that other clients can
// look in. They hold data in memory only and are for trying segmentd out,
// not for production.
package embedded

import (
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/twmb/franz-go/pkg/kfake"
)

// Default loopback addresses of the embedded servers; segmentctl uses them
// when no address is configured.
const (
	KafkaAddr = "127.0.0.1:19192"
	RedisAddr = "127.0.0.1:16399"
)

// Servers are the running embedded Kafka and Redis.
type Servers struct {
	kafka *kfake.Cluster
	redis *miniredis.Miniredis
}

// Start starts both servers on their default addresses, or on free ports
// when ephemeral is true (tests).
func Start(ephemeral bool) (*Servers, error) {
	kport, raddr := 19192, RedisAddr
	if ephemeral {
		kport, raddr = 0, "127.0.0.1:0"
	}
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(kport),
		kfake.BrokerConfigs(map[string]string{"group.initial.rebalance.delay.ms": "0"}))
	if err != nil {
		return nil, fmt.Errorf("embedded kafka on port %d: %w", kport, err)
	}
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr(raddr); err != nil {
		kc.Close()
		return nil, fmt.Errorf("embedded redis on %s: %w", raddr, err)
	}
	return &Servers{kafka: kc, redis: mr}, nil
}

// KafkaBrokers returns the embedded broker addresses.
func (s *Servers) KafkaBrokers() []string { return s.kafka.ListenAddrs() }

// RedisAddr returns the embedded Redis address.
func (s *Servers) RedisAddr() string { return s.redis.Addr() }

// Close stops both servers.
func (s *Servers) Close() {
	s.redis.Close()
	s.kafka.Close()
}
