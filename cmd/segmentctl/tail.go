package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/kafkaio"
)

// tail prints the membership topic (or another) as JSON lines, one reader
// per partition, from the beginning or from now; with -headers each record
// as an object with its headers, key and value, which shows the reason
// of each dead letter.
func tail(ctx context.Context, e env, args []string, stdout io.Writer) error {
	fs := newFlags("tail", "", "Prints the membership-change events (or another topic's records) as JSON lines.", stdout)
	topic := fs.String("topic", e.membershipTopic, "topic to read")
	fromStart := fs.Bool("from-beginning", false, "start at the oldest event instead of now")
	max := fs.Int("n", 0, "stop after n events (0: run until interrupted)")
	idle := fs.Duration("idle", 0, "stop when no event arrived for this long (0: never)")
	headers := fs.Bool("headers", false, `print each record as {"partition", "offset", "headers", "key", "value"} (the DLQ's reasons are headers)`)
	args, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *max < 0 || *idle < 0 {
		return fmt.Errorf("tail: -n and -idle must not be negative")
	}
	if len(args) > 0 {
		return fmt.Errorf("tail: unexpected argument %q", args[0])
	}
	parts, err := kafkaio.Partitions(ctx, e.brokers, *topic)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := kafka.LastOffset
	if *fromStart {
		start = kafka.FirstOffset
	}
	// Every reader is placed before any starts, so that a failure leaves
	// no goroutine behind.
	readers := make([]*kafka.Reader, 0, len(parts))
	for _, p := range parts {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: e.brokers, Topic: *topic, Partition: p, MinBytes: 1, MaxBytes: 8 << 20, MaxWait: 200 * time.Millisecond})
		readers = append(readers, r)
		if err := r.SetOffset(start); err != nil {
			for _, r := range readers {
				r.Close()
			}
			return fmt.Errorf("tail %s partition %d: %w", *topic, p, err)
		}
	}
	lines := make(chan []byte, 1024)
	// A reader that fails ends the command with its error, rather than
	// leaving its partition silently unread.
	failed := make(chan error, len(readers))
	var wg sync.WaitGroup
	for _, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			for {
				m, err := r.FetchMessage(ctx) // no group: nothing to commit
				if err != nil {
					if ctx.Err() == nil {
						failed <- fmt.Errorf("tail %s partition %d: %w", *topic, r.Config().Partition, err)
					}
					return
				}
				line := m.Value
				if *headers {
					line = recordJSON(m)
				}
				select {
				case lines <- line:
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
		case err := <-failed:
			return err
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

// recordJSON is a record as tail -headers prints it.
func recordJSON(m kafka.Message) []byte {
	hs := make(map[string]string, len(m.Headers))
	for _, h := range m.Headers {
		hs[h.Key] = string(h.Value)
	}
	b, _ := json.Marshal(struct {
		Headers   map[string]string `json:"headers"`
		Key       string            `json:"key"`
		Value     string            `json:"value"`
		Partition int               `json:"partition"`
		Offset    int64             `json:"offset"`
	}{hs, string(m.Key), string(m.Value), m.Partition, m.Offset})
	return b
}
