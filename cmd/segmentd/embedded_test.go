package main

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
)

// TestEmbeddedMode runs segmentd as `make run` does (in-process Kafka and
// Redis, on free ports here), and with only one of them configured, where
// the other is embedded and the configured one is used: each time it must
// serve /healthz and /readyz and answer the API with the key it was given.
func TestEmbeddedMode(t *testing.T) {
	tests := []struct {
		name string
		// env adds to the variables; check looks at the configured server.
		env   func(t *testing.T, org string) map[string]string
		check func(t *testing.T, env map[string]string, org string)
	}{
		{name: "both embedded", env: func(*testing.T, string) map[string]string { return nil }},
		{
			name: "redis configured",
			env: func(t *testing.T, _ string) map[string]string {
				return map[string]string{"SEGMENTD_REDIS_ADDRS": testenv.Redis(t)}
			},
			check: func(t *testing.T, _ map[string]string, org string) {
				n, err := testenv.RedisClient(t).HLen(context.Background(), membership.DefinitionsKey(org)).Result()
				if err != nil || n != 1 {
					t.Errorf("definitions in the configured Redis: %d (%v), want the one created", n, err)
				}
			},
		},
		{
			name: "kafka configured",
			env: func(t *testing.T, _ string) map[string]string {
				return map[string]string{
					"SEGMENTD_KAFKA_BROKERS":    strings.Join(testenv.Kafka(t), ","),
					"SEGMENTD_PROFILE_TOPIC":    testenv.UniqueName(t, "profiles"),
					"SEGMENTD_MEMBERSHIP_TOPIC": testenv.UniqueName(t, "membership"),
					"SEGMENTD_DLQ_TOPIC":        testenv.UniqueName(t, "dlq"),
					"SEGMENTD_GROUP_ID":         testenv.UniqueName(t, "group"),
				}
			},
			check: func(t *testing.T, env map[string]string, _ string) {
				conn, err := kafka.Dial("tcp", strings.Split(env["SEGMENTD_KAFKA_BROKERS"], ",")[0])
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if parts, err := conn.ReadPartitions(env["SEGMENTD_PROFILE_TOPIC"]); err != nil || len(parts) == 0 {
					t.Errorf("profile topic in the configured Kafka: %d partitions (%v)", len(parts), err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			org := testenv.UniqueName(t, "org")
			env := map[string]string{
				"SEGMENTD_HTTP_ADDR":          freeAddr(t),
				"SEGMENTD_EMBEDDED_EPHEMERAL": "1",
				"SEGMENTD_API_KEYS":           org + ":sk_test_0123456789abcdef",
			}
			for k, v := range tc.env(t, org) {
				env[k] = v
			}
			runEmbedded(t, env)
			call := func(method, path, body string) int {
				req, _ := http.NewRequest(method, "http://"+env["SEGMENTD_HTTP_ADDR"]+path, strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer sk_test_0123456789abcdef")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return 0
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			if !testenv.Eventually(15*time.Second, func() bool { return call(http.MethodGet, "/readyz", "") == http.StatusOK }) {
				t.Fatal("segmentd not ready within 15 s")
			}
			if code := call(http.MethodGet, "/healthz", ""); code != http.StatusOK {
				t.Fatalf("/healthz = %d", code)
			}
			if code := call(http.MethodPost, "/v1/segments", `{"name":"vip","type":"static","userIds":["u1"]}`); code != http.StatusCreated {
				t.Fatalf("POST /v1/segments with the key = %d", code)
			}
			if tc.check != nil {
				tc.check(t, env, org)
			}
		})
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// runEmbedded runs segmentd with env until the test ends.
func runEmbedded(t *testing.T, env map[string]string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("segmentd did not stop within 30 s")
		}
	})
}
