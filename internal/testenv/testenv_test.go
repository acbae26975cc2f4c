package testenv_test

import (
	"context"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/internal/testenv"
)

var validName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,99}$`)

func TestUniqueName(t *testing.T) {
	seen := map[string]bool{}
	for _, prefix := range []string{"", "topic", "org.with spaces/and:colons", strings.Repeat("p", 300)} {
		for range 3 {
			n := testenv.UniqueName(t, prefix)
			if !validName.MatchString(n) {
				t.Errorf("UniqueName(%q) = %q: not [a-zA-Z0-9_-]{1,99}", prefix, n)
			}
			if seen[n] {
				t.Errorf("UniqueName(%q) = %q twice", prefix, n)
			}
			seen[n] = true
		}
	}
	t.Run(strings.Repeat("a very long subtest name ", 10), func(t *testing.T) {
		n := testenv.UniqueName(t, "p")
		if !validName.MatchString(n) || !strings.HasPrefix(n, "p-TestUniqueName_a_very_long") {
			t.Errorf("UniqueName in subtest = %q", n)
		}
	})
}

func TestRedis(t *testing.T) {
	c := testenv.RedisClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := testenv.UniqueName(t, "key")
	if err := c.Set(ctx, key, "v", time.Minute).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	if got, err := c.Get(ctx, key).Result(); err != nil || got != "v" {
		t.Fatalf("GET = %q, %v; want \"v\"", got, err)
	}
	if err := c.Del(ctx, key).Err(); err != nil {
		t.Fatalf("DEL: %v", err)
	}
}

func TestRedisCluster(t *testing.T) {
	c := testenv.RedisClusterClient(t)
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("RedisClusterClient returned %T, want *redis.ClusterClient", c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Keys in many hash slots: with 3 masters they cannot all be on one node.
	prefix := testenv.UniqueName(t, "ck")
	const n = 24
	slots := map[int64]bool{}
	for i := range n {
		key := prefix + ":" + string(rune('a'+i))
		if err := cc.Set(ctx, key, i, time.Minute).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		slot, err := cc.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
		}
		slots[slot] = true
	}
	if len(slots) < 2 {
		t.Fatalf("all %d keys hashed to one slot", n)
	}

	var mu sync.Mutex
	perMaster := map[string]int{}
	err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		keys, err := m.Keys(ctx, prefix+":*").Result()
		mu.Lock()
		perMaster[m.Options().Addr] = len(keys)
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatalf("KEYS on each master: %v", err)
	}
	total, used := 0, 0
	for _, k := range perMaster {
		total += k
		if k > 0 {
			used++
		}
	}
	if len(perMaster) < 3 || total != n || used < 2 {
		t.Fatalf("keys per master = %v; want %d keys over at least 2 of 3 or more masters", perMaster, n)
	}
	for i := range n {
		key := prefix + ":" + string(rune('a'+i))
		if got, err := cc.Get(ctx, key).Int(); err != nil || got != i {
			t.Fatalf("GET %s = %d, %v; want %d", key, got, err, i)
		}
		cc.Del(ctx, key)
	}
}

func TestKafka(t *testing.T) {
	brokers := testenv.Kafka(t)
	topic := testenv.UniqueName(t, "topic")
	testenv.CreateTopic(t, brokers, topic, 3)
	// Creating it again is fine.
	testenv.CreateTopic(t, brokers, topic, 3)

	conn, err := kafka.Dial("tcp", brokers[0])
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil || len(parts) != 3 {
		t.Fatalf("ReadPartitions(%s) = %d partitions, %v; want 3", topic, len(parts), err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	transport := &kafka.Transport{}
	defer transport.CloseIdleConnections()
	w := &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Topic:        topic,
		RequiredAcks: kafka.RequireAll,
		Balancer:     &kafka.Hash{},
		BatchTimeout: 10 * time.Millisecond,
		Transport:    transport,
	}
	want := kafka.Message{Key: []byte("k1"), Value: []byte("hello " + topic)}
	if err := w.WriteMessages(ctx, want); err != nil {
		t.Fatalf("WriteMessages: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Writer.Close: %v", err)
	}

	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:     brokers,
		Topic:       topic,
		GroupID:     testenv.UniqueName(t, "group"),
		StartOffset: kafka.FirstOffset,
		MaxWait:     100 * time.Millisecond,
	})
	defer r.Close()
	got, err := r.ReadMessage(ctx)
	if err != nil {
		t.Fatalf("ReadMessage: %v", err)
	}
	if string(got.Key) != string(want.Key) || string(got.Value) != string(want.Value) {
		t.Fatalf("read key %q value %q; want key %q value %q", got.Key, got.Value, want.Key, want.Value)
	}
}

// recorder is a testing.TB whose Fatalf and Skipf only record the call and
// end the goroutine, as the real ones do.
type recorder struct {
	testing.TB
	fatal, skip bool
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(string, ...any) { r.fatal = true; runtime.Goexit() }

func (r *recorder) Skipf(string, ...any) { r.skip = true; runtime.Goexit() }

func call(t *testing.T, f func(testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() { defer close(done); f(r) }()
	<-done
	return r
}

func TestMissingEnvSkipsOrFails(t *testing.T) {
	helpers := map[string]func(testing.TB){
		testenv.EnvKafkaBrokers:      func(tb testing.TB) { testenv.Kafka(tb) },
		testenv.EnvRedisAddr:         func(tb testing.TB) { testenv.Redis(tb) },
		testenv.EnvRedisClusterAddrs: func(tb testing.TB) { testenv.RedisCluster(tb) },
	}
	for env, f := range helpers {
		t.Setenv(env, " , ")
		t.Setenv(testenv.EnvRequireServers, "")
		if r := call(t, f); !r.skip || r.fatal {
			t.Errorf("%s unset: skip=%v fatal=%v; want a skip", env, r.skip, r.fatal)
		}
		t.Setenv(testenv.EnvRequireServers, "1")
		if r := call(t, f); r.skip || !r.fatal {
			t.Errorf("%s unset, %s=1: skip=%v fatal=%v; want a failure", env, testenv.EnvRequireServers, r.skip, r.fatal)
		}
		t.Setenv(env, "127.0.0.1:1, 127.0.0.1:2")
		if r := call(t, f); r.skip || r.fatal {
			t.Errorf("%s set: skip=%v fatal=%v; want neither", env, r.skip, r.fatal)
		}
	}
}
