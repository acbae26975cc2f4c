package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/segmentd/segmentd/config"
	"github.com/segmentd/segmentd/embedded"
	"github.com/segmentd/segmentd/internal/testenv"
)

// TestArguments checks that -h lists every variable segmentd reads and that
// any other argument is refused with a pointer to -h.
func TestArguments(t *testing.T) {
	u := usage()
	for _, v := range config.Vars {
		if !strings.Contains(u, v.Name) {
			t.Errorf("usage lacks %s", v.Name)
		}
	}
	noEnv := func(string) string { return "" }
	if err := run(context.Background(), []string{"-h"}, noEnv); err != nil {
		t.Errorf("segmentd -h: %v", err)
	}
	if err := run(context.Background(), []string{"serve"}, noEnv); err == nil || !strings.Contains(err.Error(), "-h") {
		t.Errorf("segmentd serve: %v, want an error that points to -h", err)
	}
}

// TestAddressInUse: an HTTP address another process holds stops start-up
// with a configuration error naming SEGMENTD_HTTP_ADDR, before any server
// starts.
func TestAddressInUse(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	env := map[string]string{"SEGMENTD_HTTP_ADDR": held.Addr().String()}
	err = run(context.Background(), nil, func(k string) string { return env[k] })
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Var != "SEGMENTD_HTTP_ADDR" || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("run = %v, want a configuration error naming SEGMENTD_HTTP_ADDR, wrapping the refused listen", err)
	}
}

// TestEmbeddedPortsInUse: an embedded server's fixed port held by another
// process (a second make run) stops start-up with a configuration error
// that points to SEGMENTD_EMBEDDED_EPHEMERAL.
func TestEmbeddedPortsInUse(t *testing.T) {
	// Held by this test, or already by something else: held either way.
	if held, err := net.Listen("tcp", embedded.RedisAddr); err == nil {
		defer held.Close()
	}
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()
	env := map[string]string{"SEGMENTD_HTTP_ADDR": addr}
	// Bounded: were the port free after all, segmentd would start and serve.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = run(ctx, nil, func(k string) string { return env[k] })
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Var != "SEGMENTD_EMBEDDED_EPHEMERAL" || !strings.Contains(ce.Reason, "another segmentd") {
		t.Fatalf("run = %v, want a configuration error naming SEGMENTD_EMBEDDED_EPHEMERAL", err)
	}
}

// TestKafkaUnreachable: brokers that do not answer (a wrong address, or
// none up) stop start-up with a configuration error naming
// SEGMENTD_KAFKA_BROKERS.
func TestKafkaUnreachable(t *testing.T) {
	free := func() string { // an address nothing listens on now
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	env := map[string]string{"SEGMENTD_HTTP_ADDR": free(), "SEGMENTD_KAFKA_BROKERS": free(),
		"SEGMENTD_REDIS_ADDRS": "127.0.0.1:1", "SEGMENTD_API_KEYS": "acme:0123456789abcdef"}
	err := run(context.Background(), nil, func(k string) string { return env[k] })
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Var != "SEGMENTD_KAFKA_BROKERS" {
		t.Fatalf("run = %v, want a configuration error naming SEGMENTD_KAFKA_BROKERS", err)
	}
}

// TestKafkaAdvertisesUnreachableAddress: a broker that answers at
// SEGMENTD_KAFKA_BROKERS but advertises an address that does not answer from
// here (Kafka's advertised.listeners naming a container's host name, say)
// stops start-up with a configuration error naming SEGMENTD_KAFKA_BROKERS
// and saying that the advertised address is the one that does not answer,
// rather than with a bare dial error about an address the user never gave.
func TestKafkaAdvertisesUnreachableAddress(t *testing.T) {
	gone, err := net.Listen("tcp", "127.0.0.1:0") // an address nothing listens on once closed
	if err != nil {
		t.Fatal(err)
	}
	advertised := gone.Addr().String()
	gone.Close()
	var real string
	kc, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.ListenFn(func(network, address string) (net.Listener, error) {
		ln, err := net.Listen(network, "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		real = ln.Addr().String()
		return advertisedAs{ln, advertised}, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	env := map[string]string{"SEGMENTD_HTTP_ADDR": addr, "SEGMENTD_KAFKA_BROKERS": real,
		"SEGMENTD_REDIS_ADDRS": "127.0.0.1:1", "SEGMENTD_API_KEYS": "acme:0123456789abcdef"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = run(ctx, nil, func(k string) string { return env[k] })
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Var != "SEGMENTD_KAFKA_BROKERS" || !strings.Contains(err.Error(), "advertised") {
		t.Fatalf("run = %v, want a configuration error naming SEGMENTD_KAFKA_BROKERS that says the advertised address does not answer", err)
	}
}

// advertisedAs is a listener that reports another address than its own,
// as a broker behind a wrong advertised.listeners does.
type advertisedAs struct {
	net.Listener
	addr string
}

func (a advertisedAs) Addr() net.Addr { return fakeAddr(a.addr) }

type fakeAddr string

func (fakeAddr) Network() string  { return "tcp" }
func (a fakeAddr) String() string { return string(a) }

// TestTopicRefused: a topic name Kafka refuses to create (here one that
// collides with an existing topic's, '.' against '_') stops start-up with a
// configuration error naming the variable of that topic.
func TestTopicRefused(t *testing.T) {
	brokers := testenv.Kafka(t)
	existing := testenv.UniqueName(t, "dlq_x")
	testenv.CreateTopic(t, brokers, existing, 1)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	env := map[string]string{"SEGMENTD_HTTP_ADDR": addr, "SEGMENTD_KAFKA_BROKERS": strings.Join(brokers, ","),
		"SEGMENTD_REDIS_ADDRS": "127.0.0.1:1", "SEGMENTD_API_KEYS": "acme:0123456789abcdef",
		"SEGMENTD_PROFILE_TOPIC":    testenv.UniqueName(t, "in"),
		"SEGMENTD_MEMBERSHIP_TOPIC": testenv.UniqueName(t, "out"),
		"SEGMENTD_DLQ_TOPIC":        strings.Replace(existing, "_", ".", 1)}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = run(ctx, nil, func(k string) string { return env[k] })
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Var != "SEGMENTD_DLQ_TOPIC" || ce.Value != env["SEGMENTD_DLQ_TOPIC"] {
		t.Fatalf("run = %v, want a configuration error naming SEGMENTD_DLQ_TOPIC", err)
	}
}

// TestAPIChangesCounted: the changes the API publishes (a static list's,
// a deletion's exits) are counted in segmentd_membership_changes_total as
// the processor's and the jobs' are.
func TestAPIChangesCounted(t *testing.T) {
	env := serverEnv(t, testenv.Redis(t))
	runEmbedded(t, env)
	call := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, "http://"+env["SEGMENTD_HTTP_ADDR"]+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer sk_test_0123456789abcdef")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	ready := func() bool { code, _ := call(http.MethodGet, "/readyz", ""); return code == http.StatusOK }
	if !testenv.Eventually(30*time.Second, ready) {
		t.Fatal("segmentd not ready within 30 s")
	}
	code, body := call(http.MethodPost, "/v1/segments", `{"name":"vip","type":"static","userIds":["u1","u2","u3"]}`)
	if code != http.StatusCreated {
		t.Fatalf("create = %d %s", code, body)
	}
	var seg struct{ ID string }
	if err := json.Unmarshal([]byte(body), &seg); err != nil {
		t.Fatal(err)
	}
	if code, body := call(http.MethodPost, "/v1/segments/"+seg.ID+"/members", `{"add":["u4"],"remove":["u1"]}`); code != http.StatusOK {
		t.Fatalf("members = %d %s", code, body)
	}
	if code, body := call(http.MethodDelete, "/v1/segments/"+seg.ID, ""); code != http.StatusNoContent {
		t.Fatalf("delete = %d %s", code, body)
	}
	_, metrics := call(http.MethodGet, "/metrics", "")
	for series, want := range map[string]string{
		`{cause="static",direction="entered"}`:  "4",
		`{cause="static",direction="exited"}`:   "1",
		`{cause="segment",direction="exited"}`:  "3",
		`{cause="segment",direction="entered"}`: "0",
	} {
		line := "segmentd_membership_changes_total" + series + " "
		got := ""
		for l := range strings.Lines(metrics) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), line); ok {
				got = v
			}
		}
		if got != want {
			t.Errorf("%s = %q, want %q", line, got, want)
		}
	}
}

// TestReadinessFollowsRedis: a Redis that hangs (its process stopped)
// turns /readyz to a 503 that names Redis, and its return turns it back to
// 200, with no restart.
func TestReadinessFollowsRedis(t *testing.T) {
	srv := testenv.StartPrivateRedis(t)
	env := serverEnv(t, srv.Addr)
	runEmbedded(t, env)
	// Before segmentd's shutdown, which needs Redis, whatever the outcome.
	t.Cleanup(func() { srv.Thaw(t) })
	client := &http.Client{Timeout: 10 * time.Second}
	readyz := func() (int, string) {
		resp, err := client.Get("http://" + env["SEGMENTD_HTTP_ADDR"] + "/readyz")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if !testenv.Eventually(30*time.Second, func() bool { code, _ := readyz(); return code == http.StatusOK }) {
		t.Fatal("segmentd not ready within 30 s")
	}

	srv.Freeze(t)
	var body string
	if !testenv.Eventually(30*time.Second, func() bool {
		var code int
		start := time.Now()
		code, body = readyz()
		if code != http.StatusOK {
			t.Logf("/readyz with Redis frozen: %d after %v", code, time.Since(start).Round(time.Millisecond))
		}
		return code == http.StatusServiceUnavailable
	}) {
		t.Fatalf("/readyz still not 503 30 s into a Redis outage: %s", body)
	}
	if !strings.Contains(body, "redis does not answer") {
		t.Errorf("/readyz = %s, want the reason to name Redis", body)
	}

	srv.Thaw(t)
	if !testenv.Eventually(30*time.Second, func() bool { code, _ := readyz(); return code == http.StatusOK }) {
		code, body := readyz()
		t.Fatalf("/readyz = %d %s 30 s after Redis came back, want 200", code, body)
	}
}

// serverEnv configures a segmentd on the Redis at redisAddr and the test
// Kafka, with topics, group and organisation of its own (key
// sk_test_0123456789abcdef) and a free HTTP address.
func serverEnv(t *testing.T, redisAddr string) map[string]string {
	return map[string]string{
		"SEGMENTD_HTTP_ADDR":        freeAddr(t),
		"SEGMENTD_API_KEYS":         testenv.UniqueName(t, "org") + ":sk_test_0123456789abcdef",
		"SEGMENTD_REDIS_ADDRS":      redisAddr,
		"SEGMENTD_KAFKA_BROKERS":    strings.Join(testenv.Kafka(t), ","),
		"SEGMENTD_PROFILE_TOPIC":    testenv.UniqueName(t, "profiles"),
		"SEGMENTD_MEMBERSHIP_TOPIC": testenv.UniqueName(t, "membership"),
		"SEGMENTD_DLQ_TOPIC":        testenv.UniqueName(t, "dlq"),
		"SEGMENTD_GROUP_ID":         testenv.UniqueName(t, "group"),
	}
}

// TestHalfEmbedded checks which variable the start-up warning names when
// only one of Kafka and Redis is configured, and that a whole embedded or
// a whole configured deployment gets none.
func TestHalfEmbedded(t *testing.T) {
	for name, tc := range map[string]struct {
		kafka, redis []string
		want         string
	}{
		"both configured": {[]string{"k:9092"}, []string{"r:6379"}, ""},
		"neither":         {nil, nil, ""},
		"only Kafka":      {[]string{"k:9092"}, nil, "SEGMENTD_REDIS_ADDRS"},
		"only Redis":      {nil, []string{"r:6379"}, "SEGMENTD_KAFKA_BROKERS"},
	} {
		t.Run(name, func(t *testing.T) {
			if got := halfEmbedded(config.Config{KafkaBrokers: tc.kafka, RedisAddrs: tc.redis}); got != tc.want {
				t.Errorf("halfEmbedded = %q, want %q", got, tc.want)
			}
		})
	}
}
