package membership

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
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
// instance) within seconds rather than hold a batch. A context's deadline,
// when sooner, bounds a command too (a readiness probe's 2 s).
func NewClient(addrs []string, auth Auth) redis.UniversalClient {
	if len(addrs) == 1 {
		return redis.NewClient(&redis.Options{
			Addr: addrs[0], Username: auth.Username, Password: auth.Password,
			MaxRetries: 2, DialTimeout: 3 * time.Second,
			ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second, PoolSize: 32,
			ContextTimeoutEnabled: true,
		})
	}
	return redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: addrs, Username: auth.Username, Password: auth.Password,
		MaxRetries: 2, DialTimeout: 3 * time.Second,
		ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second, PoolSize: 32,
		ContextTimeoutEnabled: true,
	})
}

// Auth is how a client authenticates to Redis; the zero Auth sends no AUTH.
type Auth struct {
	// Username is the ACL user; empty is the default user.
	Username string
	// Password is sent with AUTH when not empty.
	Password string
}

// RecommendedHashValueLimit is the Redis setting hash-max-listpack-value at
// which a user's hash with a profile of up to ~1 KB stays in Redis's compact
// encoding: about 30 % less memory a stored user than at Redis's default of
// 64, and cheaper to read.
const RecommendedHashValueLimit = 1024

// HashValueLimit returns the server's hash-max-listpack-value (named
// hash-max-ziplist-value before Redis 7), or false when the server does not
// say (CONFIG may be disabled, as on some managed services, or unknown, as
// in the embedded Redis).
func HashValueLimit(ctx context.Context, rdb redis.UniversalClient) (int, bool) {
	for _, name := range []string{"hash-max-listpack-value", "hash-max-ziplist-value"} {
		m, err := rdb.ConfigGet(ctx, name).Result()
		if err != nil {
			return 0, false
		}
		if v, ok := m[name]; ok {
			n, err := strconv.Atoi(v)
			return n, err == nil
		}
	}
	return 0, false
}

// Ping reports whether Redis can serve segmentd: a standalone server
// answers PING; every master of a cluster answers and reports the cluster's
// state ok (a master answers PING also while the cluster, a node down,
// refuses every command on keys).
func Ping(ctx context.Context, rdb redis.UniversalClient) error {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		// A node of a cluster answers PING, and then every command on a
		// key of another node's slots with MOVED.
		if err := rdb.Ping(ctx).Err(); err != nil {
			return err
		}
		// A server that does not answer INFO (the embedded Redis, some
		// managed services) is taken as it is.
		if info, err := rdb.Info(ctx, "cluster").Result(); err == nil && strings.Contains(info, "cluster_enabled:1") {
			return fmt.Errorf("%w: one address names a standalone Redis, and the server is a node of a Redis Cluster (give two or more of its nodes)", ErrIsCluster)
		}
		return nil
	}
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		info, err := c.ClusterInfo(ctx).Result()
		if err != nil {
			return err
		}
		if state := clusterState(info); state != "ok" {
			return fmt.Errorf("redis cluster state %q at %s", state, c.Options().Addr)
		}
		return nil
	})
	// The cluster's first command (CLUSTER SLOTS) meets it, or a master's.
	if redis.HasErrorPrefix(err, "This instance has cluster support disabled") {
		return fmt.Errorf("%w: several addresses name a Redis Cluster, and a server has no cluster support (give a standalone Redis one address): %w", ErrNotCluster, err)
	}
	return err
}

// AuthRefused reports whether err is Redis refusing the client's
// credentials (WRONGPASS, NOAUTH) or the user's permissions (NOPERM): a
// configuration to correct, where other errors are a server to reach.
func AuthRefused(err error) bool {
	return redis.HasErrorPrefix(err, "WRONGPASS") || redis.HasErrorPrefix(err, "NOAUTH") || redis.HasErrorPrefix(err, "NOPERM")
}

// wrongType reports Redis's answer that a key holds another type than the
// command takes. Redis gives a script's failed call as the call's own error
// (WRONGTYPE first); the embedded Redis of make run (miniredis) wraps it
// ("ERR Error compiling script ...: WRONGTYPE Operation against a key ..."),
// so that the prefix alone would not find it there.
func wrongType(err error) bool {
	return redis.HasErrorPrefix(err, "WRONGTYPE") ||
		err != nil && strings.Contains(err.Error(), "WRONGTYPE Operation against a key holding the wrong kind of value")
}

// ErrIsCluster reports a node of a Redis Cluster that was taken for a
// standalone Redis (one address was given).
var ErrIsCluster = errors.New("a redis cluster node")

// ErrNotCluster reports a server that was taken for a node of a Redis
// Cluster (several addresses were given) and has no cluster support.
var ErrNotCluster = errors.New("not a redis cluster")

// clusterState returns the cluster_state field of CLUSTER INFO's reply.
func clusterState(info string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "cluster_state:"); ok {
			return v
		}
	}
	return ""
}
