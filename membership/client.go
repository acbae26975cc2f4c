package membership

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// NewClient returns a standalone client for one address and a Redis Cluster
// client for several. go-redis may resend a command after a network error;
// that is safe here because every write segmentd makes is idempotent (SADD,
// SREM, HSET of the same value) or compare-and-set on a revision.
//
// Timeouts are short: segmentd's commands answer in milliseconds, and a
// server that stops answering should turn into an error (and an unready
// instance) within seconds rather than hold a batch.
func NewClient(addrs []string) redis.UniversalClient {
	if len(addrs) == 1 {
		return redis.NewClient(&redis.Options{
			Addr: addrs[0], MaxRetries: 2, DialTimeout: 3 * time.Second,
			ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second, PoolSize: 32,
		})
	}
	return redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: addrs, MaxRetries: 2, DialTimeout: 3 * time.Second,
		ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second, PoolSize: 32,
	})
}
