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
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:19092", "comma-separated Kafka brokers, host:port")
	timeout := flag.Duration("timeout", 120*time.Second, "how long to wait in all")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	addrs := strings.Split(*brokers, ",")
	var last error
	for {
		if last = ready(ctx, addrs); last == nil {
			return
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(os.Stderr, "kafkawait: Kafka at %s not ready within %s: %v\n", *brokers, *timeout, last)
			os.Exit(1)
		case <-time.After(250 * time.Millisecond):
		}
	}
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
