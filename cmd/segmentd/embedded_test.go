package main

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestEmbeddedMode runs segmentd as `make run` does (in-process Kafka and
// Redis, on free ports here) and checks that it serves /healthz and /readyz
// and answers the API with the key it was given.
func TestEmbeddedMode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	env := map[string]string{
		"SEGMENTD_HTTP_ADDR":          addr,
		"SEGMENTD_EMBEDDED_EPHEMERAL": "1",
		"SEGMENTD_API_KEYS":           "dev:sk_test_0123456789abcdef",
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("segmentd did not stop within 30 s")
		}
	}()
	get := func(path string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		req.Header.Set("Authorization", "Bearer sk_test_0123456789abcdef")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if code := get("/readyz"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("embedded segmentd not ready within 15 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz = %d", code)
	}
	if code := get("/v1/segments"); code != http.StatusOK {
		t.Fatalf("GET /v1/segments with the key = %d", code)
	}
}
