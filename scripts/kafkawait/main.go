// Command kafkawait waits until a Kafka broker serves clients, for
// scripts/test-servers.sh: the broker must list itself in a metadata
// response, and the group coordinator must answer, which makes the broker
// create its __consumer_offsets topic now rather than in the first test that
// uses a consumer group.
//
// Usage:
//
//	kafkawait -brokers 127.0.0.1:19092 -timeout 120s
//
// It exits 0 when the broker is ready, and 1 with the last error when the
// timeout passes first.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"
)

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kafkawait:", err)
		os.Exit(1)
	}
}

// run waits as the flags in args say, and returns the last error when the
// timeout passes first.
func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("kafkawait", flag.ContinueOnError)
	brokers := fs.String("brokers", "127.0.0.1:19092", "comma-separated Kafka brokers, host:port")
	timeout := fs.Duration("timeout", 120*time.Second, "how long to wait in all")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	addrs := strings.Split(*brokers, ",")
	// A broker starting answers within seconds: ask often, and the same
	// every time.
	var last error
	err := backoff.Retry(func() error { last = ready(ctx, addrs); return last }, backoff.WithContext(backoff.NewConstantBackOff(250*time.Millisecond), ctx))
	if err != nil {
		// The retry ends with the timeout's error: the broker's says more.
		return fmt.Errorf("Kafka at %s not ready within %s: %w", *brokers, *timeout, cmp.Or(last, err))
	}
	return nil
}

// ready returns nil when every broker in addrs lists at least one broker in
// its metadata and answers a FindCoordinator request for a consumer group.
func ready(ctx context.Context, addrs []string) error {
	for _, addr := range addrs {
		conn, err := kafka.DialContext(ctx, "tcp", addr)
		if err != nil {
			return err
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		brokers, err := conn.Brokers()
		conn.Close()
		if err != nil {
			return fmt.Errorf("metadata from %s: %w", addr, err)
		}
		if len(brokers) == 0 {
			return fmt.Errorf("metadata from %s lists no broker yet", addr)
		}

		transport := &kafka.Transport{}
		c := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second, Transport: transport}
		res, err := c.FindCoordinator(ctx, &kafka.FindCoordinatorRequest{
			Addr:    kafka.TCP(addr),
			Key:     "segmentd-test-servers-warmup",
			KeyType: kafka.CoordinatorKeyTypeConsumer,
		})
		transport.CloseIdleConnections()
		if err == nil {
			err = res.Error
		}
		if err != nil {
			return fmt.Errorf("group coordinator at %s: %w", addr, err)
		}
		if res.Coordinator == nil || res.Coordinator.Host == "" {
			return errors.New("group coordinator: empty answer")
		}
	}
	return nil
}
