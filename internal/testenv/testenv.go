// Package testenv connects integration tests to the real Kafka and Redis
// servers they need.
//
// The servers are named by environment variables, which
// scripts/test-servers.sh sets (`make test` runs the tests through it):
//
//	SEGMENTD_TEST_KAFKA_BROKERS        comma-separated Kafka brokers, host:port
//	SEGMENTD_TEST_REDIS_ADDR           a standalone Redis, host:port
//	SEGMENTD_TEST_REDIS_CLUSTER_ADDRS  comma-separated Redis Cluster nodes, host:port
//	SEGMENTD_TEST_REQUIRE_SERVERS      "1" makes a missing variable fail the test
//	SEGMENTD_TEST_STANDINS             "1" points Kafka and Redis at the embedded stand-ins
//	                                   of `make run` instead (make test-embedded)
//
// OnEachRedis and OnEachKafka also run their function against the embedded
// stand-ins (miniredis and kfake, started in-process once per test binary,
// exactly as segmentd's embedded mode starts them), with or without
// servers: the embedded default is held to the same contract. A test, or a
// part of one, that depends on what only a real server does calls
// RealRedisOnly or RealServersOnly, which skip it there with the reason.
//
// A test that asks for a server whose variable is unset is skipped, so that a
// plain `go test ./...` passes without any server; with
// SEGMENTD_TEST_REQUIRE_SERVERS=1 it fails instead, so that `make test` and CI
// never skip an integration test by accident.
//
// The servers are shared by every test of a run, and by packages that run in
// parallel: tests must name their topics, keys and consumer groups with
// UniqueName and must not flush or delete what they did not create. An
// organisation named with Org has its keys dropped when its test ends, so
// that the segmentd instances of later tests, which work on every
// organisation they find, do not build what it left behind.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/segmentd/segmentd/embedded"
)

// Names of the environment variables that this package reads.
const (
	// EnvKafkaBrokers holds the comma-separated host:port list of Kafka brokers.
	EnvKafkaBrokers = "SEGMENTD_TEST_KAFKA_BROKERS"
	// EnvRedisAddr holds the host:port of a standalone Redis server.
	EnvRedisAddr = "SEGMENTD_TEST_REDIS_ADDR"
	// EnvRedisClusterAddrs holds the comma-separated host:port list of Redis Cluster nodes.
	EnvRedisClusterAddrs = "SEGMENTD_TEST_REDIS_CLUSTER_ADDRS"
	// EnvRequireServers, when set to "1", turns a missing server variable into a test failure instead of a skip.
	EnvRequireServers = "SEGMENTD_TEST_REQUIRE_SERVERS"
	// EnvStandins, when set to "1", makes Kafka, Redis and their clients
	// the embedded stand-ins, and skips every test of a Redis Cluster.
	EnvStandins = "SEGMENTD_TEST_STANDINS"
)

var (
	standinOnce sync.Once
	standinSrv  *embedded.Servers
	standinErr  error
	// standinRedis is the embedded Redis's address once it runs.
	standinRedis atomic.Value
)

// Standins reports whether the whole run is against the embedded stand-ins
// (SEGMENTD_TEST_STANDINS=1).
func Standins() bool { return os.Getenv(EnvStandins) == "1" }

// embeddedServers starts the embedded Kafka and Redis once per test binary,
// on free ports; they stop with the process.
func embeddedServers(t testing.TB) *embedded.Servers {
	t.Helper()
	standinOnce.Do(func() {
		standinSrv, standinErr = embedded.Start(embedded.Options{Kafka: true, Redis: true, Ephemeral: true})
		if standinErr == nil {
			standinRedis.Store(standinSrv.RedisAddr())
		}
	})
	if standinErr != nil {
		t.Fatalf("testenv: embedded stand-ins: %v", standinErr)
	}
	return standinSrv
}

// EmbeddedRedis returns the address of the embedded Redis (miniredis).
func EmbeddedRedis(t testing.TB) string {
	t.Helper()
	return embeddedServers(t).RedisAddr()
}

// EmbeddedKafka returns the address of the embedded broker (kfake).
func EmbeddedKafka(t testing.TB) []string {
	t.Helper()
	return embeddedServers(t).KafkaBrokers()
}

// EmbeddedRedisClient returns a client of the embedded Redis, closed when
// the test ends. Its read timeout is long: miniredis runs scripts in a Lua
// interpreter written in Go, many times slower than Redis's and slower still
// under the race detector, and the adapters' suites send it calls far
// larger than segmentd's embedded default does (tens of thousands of
// projections in one script call).
func EmbeddedRedisClient(t testing.TB) redis.UniversalClient {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: EmbeddedRedis(t), ReadTimeout: 30 * time.Second})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// IsEmbedded reports whether rdb is a client of the embedded Redis.
func IsEmbedded(rdb redis.UniversalClient) bool {
	c, ok := rdb.(*redis.Client)
	addr, _ := standinRedis.Load().(string)
	return ok && addr != "" && c.Options().Addr == addr
}

// RealRedisOnly skips the test when rdb is the embedded Redis: for what
// only a real server does (CONFIG, ACL, INFO, CLUSTER, SSCAN's guarantees
// under concurrent removals), which segmentd does not rely on there. why
// says what.
func RealRedisOnly(t testing.TB, rdb redis.UniversalClient, why string) {
	t.Helper()
	if IsEmbedded(rdb) {
		t.Skip("real Redis only: " + why)
	}
}

// RealServersOnly skips the test in a run against the stand-ins
// (SEGMENTD_TEST_STANDINS=1), for a test that reaches the servers without
// OnEachRedis.
func RealServersOnly(t testing.TB, why string) {
	t.Helper()
	if Standins() {
		t.Skip("real servers only: " + why)
	}
}

// setupTimeout bounds each network step of the helpers: pinging a server,
// creating a topic, waiting for its partitions to get leaders.
const setupTimeout = 60 * time.Second

// Kafka returns the Kafka brokers named by SEGMENTD_TEST_KAFKA_BROKERS. When
// the variable is unset it skips the test, or fails it if
// SEGMENTD_TEST_REQUIRE_SERVERS is "1".
func Kafka(t testing.TB) []string {
	t.Helper()
	if Standins() {
		return EmbeddedKafka(t)
	}
	return addrs(t, EnvKafkaBrokers)
}

// Redis returns the address of the standalone Redis server named by
// SEGMENTD_TEST_REDIS_ADDR. When the variable is unset it skips the test, or
// fails it if SEGMENTD_TEST_REQUIRE_SERVERS is "1".
func Redis(t testing.TB) string {
	t.Helper()
	if Standins() {
		return EmbeddedRedis(t)
	}
	return addrs(t, EnvRedisAddr)[0]
}

// RedisCluster returns the Redis Cluster nodes named by
// SEGMENTD_TEST_REDIS_CLUSTER_ADDRS. When the variable is unset it skips the
// test, or fails it if SEGMENTD_TEST_REQUIRE_SERVERS is "1".
func RedisCluster(t testing.TB) []string {
	t.Helper()
	if Standins() {
		t.Skip("embedded stand-ins: no Redis Cluster")
	}
	return addrs(t, EnvRedisClusterAddrs)
}

// addrs reads a comma-separated list of addresses from the environment
// variable name, and skips or fails the test when there is none.
func addrs(t testing.TB, name string) []string {
	t.Helper()
	var out []string
	for _, a := range strings.Split(os.Getenv(name), ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	if len(out) > 0 {
		return out
	}
	if os.Getenv(EnvRequireServers) == "1" {
		t.Fatalf("testenv: %s is not set, but %s=1 requires the integration servers: "+
			"run the tests with `make test` or scripts/test-servers.sh run -- go test ...", name, EnvRequireServers)
	}
	t.Skipf("integration test: set %s or run `make test`", name)
	return nil
}

// RedisClient returns a client of the standalone Redis server given by Redis,
// after checking with a PING that the server answers. The client is closed
// when the test ends.
func RedisClient(t testing.TB) redis.UniversalClient {
	t.Helper()
	addr := Redis(t)
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("testenv: Redis at %s (%s) does not answer PING: %v", addr, EnvRedisAddr, err)
	}
	return c
}

// RedisClusterClient returns a cluster client of the Redis Cluster given by
// RedisCluster, after checking with a PING that every master answers. The
// client is closed when the test ends.
func RedisClusterClient(t testing.TB) redis.UniversalClient {
	t.Helper()
	nodes := RedisCluster(t)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: nodes})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		if err := m.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("%s: %w", m.Options().Addr, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testenv: Redis Cluster at %s (%s) does not answer PING: %v",
			strings.Join(nodes, ","), EnvRedisClusterAddrs, err)
	}
	return c
}

// CreateTopic creates the Kafka topic name with the given number of
// partitions and a replication factor of 1, and waits until every partition
// has a leader, so that the test can produce to it right away. An existing
// topic with that many partitions is accepted. It fails the test on any
// error.
//
// A kafka.Writer whose Transport already served another topic may not see the
// new topic for a few seconds, because the Transport caches metadata: give
// each test's Writer its own &kafka.Transport{}.
func CreateTopic(t testing.TB, brokers []string, name string, partitions int) {
	t.Helper()
	if partitions < 1 {
		t.Fatalf("testenv: CreateTopic(%q): partitions must be at least 1, got %d", name, partitions)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()

	conn, err := dialAny(ctx, brokers)
	if err != nil {
		t.Fatalf("testenv: CreateTopic(%q): %v", name, err)
	}
	defer conn.Close()
	controller, err := conn.Controller()
	if err != nil {
		t.Fatalf("testenv: CreateTopic(%q): find the controller: %v", name, err)
	}
	cconn := conn
	if controller.Host != "" {
		addr := net.JoinHostPort(controller.Host, strconv.Itoa(controller.Port))
		c, err := kafka.DialContext(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("testenv: CreateTopic(%q): dial the controller %s: %v", name, addr, err)
		}
		defer c.Close()
		cconn = c
	}
	deadline, _ := ctx.Deadline()
	_ = cconn.SetDeadline(deadline)
	// CreateTopics takes an already existing topic as a success.
	err = cconn.CreateTopics(kafka.TopicConfig{
		Topic:             name,
		NumPartitions:     partitions,
		ReplicationFactor: 1,
	})
	if err != nil {
		t.Fatalf("testenv: CreateTopic(%q, %d partitions): %v", name, partitions, err)
	}

	// Wait until the metadata shows every partition with a leader.
	var last string
	for {
		got, err := readPartitions(ctx, brokers, name)
		switch {
		case err != nil:
			last = err.Error()
		case len(got) > partitions:
			t.Fatalf("testenv: CreateTopic(%q): the topic already exists with %d partitions, not %d",
				name, len(got), partitions)
		default:
			led := 0
			for _, p := range got {
				if p.Leader.Host != "" {
					led++
				}
			}
			if len(got) == partitions && led == partitions {
				return
			}
			last = fmt.Sprintf("%d of %d partitions visible, %d with a leader", len(got), partitions, led)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("testenv: CreateTopic(%q): partitions not ready within %s: %s", name, setupTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// readPartitions asks a broker for the metadata of topic, on a connection of
// its own so that no metadata cache is involved.
func readPartitions(ctx context.Context, brokers []string, topic string) ([]kafka.Partition, error) {
	conn, err := dialAny(ctx, brokers)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn.ReadPartitions(topic)
}

// dialAny connects to the first of brokers that accepts a connection.
func dialAny(ctx context.Context, brokers []string) (*kafka.Conn, error) {
	if len(brokers) == 0 {
		return nil, errors.New("no Kafka broker given")
	}
	var errs []error
	for _, b := range brokers {
		c, err := kafka.DialContext(ctx, "tcp", b)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("dial Kafka brokers %s: %w", strings.Join(brokers, ","), errors.Join(errs...))
}

// maxNameLen keeps the names from UniqueName under 100 characters.
const maxNameLen = 99

// UniqueName returns a name that no other test, and no other run of the same
// test, gets: prefix, the test's name and a random suffix, joined by "-". It
// holds only the characters [a-zA-Z0-9_-] (any other character of prefix or
// of the test's name becomes "_") and is at most 99 characters long, so that
// it is valid as a Kafka topic, a consumer group, a Redis key and an orgId.
func UniqueName(t testing.TB, prefix string) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("testenv: UniqueName: %v", err)
	}
	suffix := hex.EncodeToString(b[:])

	prefix = sanitize(prefix)
	if room := maxNameLen - len(suffix) - 2; len(prefix) > room/2 {
		prefix = prefix[:room/2]
	}
	head := prefix
	name := sanitize(t.Name())
	if room := maxNameLen - len(suffix) - 1 - len(head) - 1; room > 0 && name != "" {
		if len(name) > room {
			name = name[:room]
		}
		if head != "" {
			head += "-"
		}
		head += name
	}
	if head == "" {
		return suffix
	}
	return head + "-" + suffix
}

// sanitize replaces every character outside [a-zA-Z0-9_-] with "_".
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			return r
		default:
			return '_'
		}
	}, s)
}

// OnEachRedis runs f against the standalone Redis, against the Redis
// Cluster and against the embedded Redis of `make run` (which needs no
// server), each in its own parallel subtest.
func OnEachRedis(t *testing.T, f func(t *testing.T, rdb redis.UniversalClient)) {
	t.Helper()
	for name, connect := range map[string]func(testing.TB) redis.UniversalClient{
		"standalone": RedisClient,
		"cluster":    RedisClusterClient,
		"embedded":   EmbeddedRedisClient,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if name == "standalone" && Standins() {
				t.Skip("embedded stand-ins: the embedded subtest runs instead")
			}
			f(t, connect(t))
		})
	}
}

// OnEachKafka runs f against the Kafka of SEGMENTD_TEST_KAFKA_BROKERS and
// against the embedded broker of `make run` (which needs no server), one
// after the other.
func OnEachKafka(t *testing.T, f func(t *testing.T, brokers []string)) {
	t.Helper()
	for _, leg := range []struct {
		name    string
		brokers func(testing.TB) []string
	}{{"kafka", Kafka}, {"embedded", EmbeddedKafka}} {
		t.Run(leg.name, func(t *testing.T) {
			if leg.name == "kafka" && Standins() {
				t.Skip("embedded stand-ins: the embedded subtest runs instead")
			}
			f(t, leg.brokers(t))
		})
	}
}

// EachNode runs fn on every master of a Redis Cluster, or on the server of a
// standalone client, one at a time (so fn may gather into shared state).
func EachNode(ctx context.Context, rdb redis.UniversalClient, fn func(ctx context.Context, node redis.UniversalClient) error) error {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return fn(ctx, rdb)
	}
	var mu sync.Mutex
	return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		mu.Lock()
		defer mu.Unlock()
		return fn(ctx, m)
	})
}

// SMembers returns the members of a Redis set, sorted; it fails the test on
// an error.
func SMembers(t testing.TB, rdb redis.UniversalClient, key string) []string {
	t.Helper()
	ids, err := rdb.SMembers(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	return ids
}

// Org returns a UniqueName for an organisation whose keys are dropped when
// the test ends (DropOrgWhenDone).
func Org(t testing.TB, rdb redis.UniversalClient, prefix string) string {
	t.Helper()
	org := UniqueName(t, prefix)
	DropOrgWhenDone(t, rdb, org)
	return org
}

// DropOrgWhenDone deletes, when the test ends, every key whose hash tag
// starts with the organisation org (profiles, sets, definitions: all of
// segmentd's per-organisation keys), so that what a test leaves behind
// does not load the tests after it: every segmentd instance works on every
// organisation it finds, building segments left "building" and reading
// their users. org must be a UniqueName.
func DropOrgWhenDone(t testing.TB, rdb redis.UniversalClient, org string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		drop := func(ctx context.Context, node redis.UniversalClient) error {
			var cursor uint64
			for {
				keys, next, err := node.Scan(ctx, cursor, "*{"+org+"*", 1000).Result()
				if err != nil {
					return err
				}
				pipe := node.Pipeline()
				for _, k := range keys {
					pipe.Unlink(ctx, k) // one key a call: the keys' slots differ
				}
				if len(keys) > 0 {
					if _, err := pipe.Exec(ctx); err != nil {
						return err
					}
				}
				if next == 0 {
					return nil
				}
				cursor = next
			}
		}
		if err := EachNode(ctx, rdb, drop); err != nil {
			t.Logf("testenv: dropping the keys of %s: %v", org, err)
		}
	})
}

// OneTopicBroker starts an in-process broker (kfake) of its own holding
// topic, with one partition, closed when the test ends: for a test that
// controls what the broker answers.
func OneTopicBroker(t testing.TB, topic string) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, topic))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}
