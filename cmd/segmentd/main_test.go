package main

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/segmentd/segmentd/config"
	"github.com/segmentd/segmentd/embedded"
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
	if !errors.As(err, &ce) || ce.Var != "SEGMENTD_HTTP_ADDR" {
		t.Fatalf("run = %v, want a configuration error naming SEGMENTD_HTTP_ADDR", err)
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
