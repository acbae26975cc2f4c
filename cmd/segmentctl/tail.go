package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// tail prints the membership topic as JSON lines, one reader per partition,
// from the beginning or from now.
func tail(ctx context.Context, e env, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("tail", flag.ContinueOnError)
	topic := fs.String("topic", e.membershipTopic, "topic to read")
	fromStart := fs.Bool("from-beginning", false, "start at the oldest event instead of now")
	max := fs.Int("n", 0, "stop after n events (0: run until interrupted)")
	idle := fs.Duration("idle", 0, "stop when no event arrived for this long (0: never)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	parts, err := partitions(ctx, e.brokers, *topic)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lines := make(chan []byte, 1024)
	var wg sync.WaitGroup
	for _, p := range parts {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: e.brokers, Topic: *topic, Partition: p, MinBytes: 1, MaxBytes: 8 << 20, MaxWait: 200 * time.Millisecond})
		if *fromStart {
			_ = r.SetOffset(kafka.FirstOffset)
		} else {
			_ = r.SetOffset(kafka.LastOffset)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				select {
				case lines <- m.Value:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	defer wg.Wait()
	defer cancel()
	n := 0
	var timer <-chan time.Time
	for {
		if *idle > 0 {
			timer = time.After(*idle)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-timer:
			return nil
		case l := <-lines:
			fmt.Fprintf(stdout, "%s\n", l)
			n++
			if *max > 0 && n >= *max {
				return nil
			}
		}
	}
}

func partitions(ctx context.Context, brokers []string, topic string) ([]int, error) {
	var last error
	for _, b := range brokers {
		conn, err := (&kafka.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", b)
		if err != nil {
			last = err
			continue
		}
		ps, err := conn.ReadPartitions(topic)
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("partitions of %s: %w", topic, err)
		}
		out := make([]int, len(ps))
		for i, p := range ps {
			out[i] = p.ID
		}
		if len(out) == 0 {
			return nil, errors.New("topic " + topic + " has no partitions")
		}
		return out, nil
	}
	return nil, fmt.Errorf("dial kafka %v: %w", brokers, last)
}
