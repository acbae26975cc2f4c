package membership

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// NewClient returns a standalone client for one address and a Redis Cluster
// client for several. go-redis may resend a command after a network error;
// that is safe here because every write segmentd makes is idempotent (SADD,
// SREM, HSET of the same value) or compare-and-set on a revision.
func NewClient(addrs []string) redis.UniversalClient {
	if len(addrs) == 1 {
		return redis.NewClient(&redis.Options{
			Addr: addrs[0], MaxRetries: 3, DialTimeout: 5 * time.Second,
			ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, PoolSize: 32,
		})
	}
	return redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: addrs, MaxRetries: 3, DialTimeout: 5 * time.Second,
		ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, PoolSize: 32,
	})
}
