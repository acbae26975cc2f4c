package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
	"unicode/utf8"

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
	max := fs.Int("n", 0, "stop after n events (0: no limit)")
	idle := fs.Duration("idle", 0, "stop when no event arrived for this long (0: never)")
	toEnd := fs.Bool("to-end", false, "with -from-beginning: stop at the end of what the topic holds when tail starts (records written after are not read: piped back into produce, still-invalid dead letters cannot come round again)")
	headers := fs.Bool("headers", false, `print each record as {"headers", "key", "value", "partition", "offset"} (the DLQ's reasons are headers; a key or value that is not UTF-8 is "keyBase64" or "valueBase64")`)
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
	if *toEnd && !*fromStart {
		return fmt.Errorf("tail: -to-end needs -from-beginning (from now, there is nothing before the end)")
	}
	parts, err := kafkaio.Partitions(ctx, e.brokers, *topic)
	if err != nil {
		return err
	}
	var spans map[int]kafkaio.Span
	if *toEnd {
		if spans, err = kafkaio.Spans(ctx, e.brokers, *topic, parts); err != nil {
			return err
		}
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
	lines := make(chan tailLine, 1024)
	// A reader that fails ends the command with its error, rather than
	// leaving its partition silently unread.
	failed := make(chan error, len(readers))
	// With -to-end, each reader says when it has read its partition's end.
	ended := make(chan struct{}, len(readers))
	var wg sync.WaitGroup
	for _, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			p := r.Config().Partition
			span, bounded := spans[p]
			if bounded && span.First >= span.End {
				ended <- struct{}{} // nothing to read before the end
				return
			}
			var unreadSince time.Time // offsets unreadable since
			for {
				m, err := fetch(ctx, r, bounded)
				if bounded && errors.Is(err, errFetchIdle) {
					// Records before the end deleted since (retention) leave
					// the reader waiting past them: look again.
					now, serr := kafkaio.Spans(ctx, e.brokers, *topic, []int{p})
					if serr != nil {
						// Kafka gone or stalled, or the topic deleted: the
						// reader retries for ever in silence; -to-end must end.
						if unreadSince.IsZero() {
							unreadSince = time.Now()
						} else if time.Since(unreadSince) >= tailUnreachable {
							failed <- fmt.Errorf("tail %s partition %d: no record for %s and its offsets unreadable: %w", *topic, p, tailUnreachable+fetchIdle, serr)
							return
						}
						continue
					}
					unreadSince = time.Time{}
					if now[p].First >= span.End {
						ended <- struct{}{}
						return
					}
					continue
				}
				if err != nil {
					if ctx.Err() == nil {
						failed <- fmt.Errorf("tail %s partition %d: %w", *topic, p, err)
					}
					return
				}
				if bounded && m.Offset >= span.End {
					ended <- struct{}{} // written after tail started
					return
				}
				line := tailLine{text: m.Value, partition: p, offset: m.Offset}
				switch {
				case *headers:
					line.text = recordJSON(m)
				case bytes.ContainsAny(line.text, "\r\n"):
					// One record, one line: a value written over several
					// lines would be as many records to produce. JSON is
					// compacted; anything else cannot be made one line and
					// stay the record it was.
					var b bytes.Buffer
					if json.Compact(&b, line.text) == nil {
						line.text = b.Bytes()
					} else {
						line.text, line.unprintable = nil, true
					}
				}
				select {
				case lines <- line:
				case <-ctx.Done():
					return
				}
				if bounded && m.Offset+1 >= span.End {
					ended <- struct{}{}
					return
				}
			}
		}()
	}
	defer wg.Wait()
	defer cancel()
	n, done := 0, 0
	skipped, firstSkipped := 0, tailLine{}
	var timer <-chan time.Time
	emit := func(l tailLine) bool {
		if l.unprintable {
			if skipped++; skipped == 1 {
				firstSkipped = l
			}
			return false
		}
		fmt.Fprintf(stdout, "%s\n", l.text)
		n++
		return *max > 0 && n >= *max
	}
	var idleTimer *time.Timer
	if *idle > 0 {
		idleTimer = time.NewTimer(*idle)
		defer idleTimer.Stop()
		timer = idleTimer.C
	}
	read := func() error {
		for {
			if idleTimer != nil {
				idleTimer.Reset(*idle) // a stale tick is dropped (Go 1.23 timers)
			}
			select {
			case <-ctx.Done():
				if *toEnd {
					// Not the end it was asked for: a pipe into produce must
					// not take it for a whole replay.
					return fmt.Errorf("tail: interrupted after %s, before the end of %s", plural(n, "record"), *topic)
				}
				return nil
			case err := <-failed:
				return err
			case <-timer:
				return nil
			case <-ended:
				if done++; done < len(readers) {
					continue
				}
				// Every reader has sent its last line.
				for {
					select {
					case l := <-lines:
						if emit(l) {
							return nil
						}
					default:
						return nil
					}
				}
			case l := <-lines:
				if emit(l) {
					return nil
				}
			}
		}
	}
	err = read()
	if skipped > 0 {
		// Printed, they would come back from produce as other records.
		err = errors.Join(err, fmt.Errorf("tail: %s not printed (the first at partition %d offset %d): a value that is not JSON and spans several lines cannot be one line of the output; -headers prints it",
			plural(skipped, "record"), firstSkipped.partition, firstSkipped.offset))
	}
	return err
}

// tailLine is one record as tail prints it: its value (or, with -headers,
// the record as JSON) on one line; unprintable when that cannot be.
type tailLine struct {
	text        []byte
	partition   int
	offset      int64
	unprintable bool
}

// errFetchIdle is a bounded fetch that met no record for fetchIdle.
var errFetchIdle = errors.New("no record")

// fetchIdle is how long a bounded fetch waits before tail -to-end looks
// again at where its partition starts.
const fetchIdle = 2 * time.Second

// tailUnreachable is how long tail -to-end goes on when a partition gives
// no record and its offsets cannot be read (a variable: the tests shorten
// it).
var tailUnreachable = 30 * time.Second

// fetch returns r's next record; bounded, it gives up with errFetchIdle
// after fetchIdle without one.
func fetch(ctx context.Context, r *kafka.Reader, bounded bool) (kafka.Message, error) {
	if !bounded {
		return r.FetchMessage(ctx) // no group: nothing to commit
	}
	fctx, cancel := context.WithTimeout(ctx, fetchIdle)
	defer cancel()
	m, err := r.FetchMessage(fctx)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return m, errFetchIdle
	}
	return m, err
}

// recordJSON is a record as tail -headers prints it. A key or value that
// is not UTF-8 is printed in base64 (keyBase64, valueBase64): as JSON text
// its invalid bytes would turn into U+FFFD, another key (another user).
func recordJSON(m kafka.Message) []byte {
	hs := make(map[string]string, len(m.Headers))
	for _, h := range m.Headers {
		hs[h.Key] = string(h.Value)
	}
	rec := struct {
		Headers     map[string]string `json:"headers"`
		Key         *string           `json:"key,omitempty"`
		KeyBase64   []byte            `json:"keyBase64,omitempty"`
		Value       *string           `json:"value,omitempty"`
		ValueBase64 []byte            `json:"valueBase64,omitempty"`
		Partition   int               `json:"partition"`
		Offset      int64             `json:"offset"`
	}{Headers: hs, Partition: m.Partition, Offset: m.Offset}
	if k := string(m.Key); utf8.ValidString(k) {
		rec.Key = &k
	} else {
		rec.KeyBase64 = m.Key
	}
	if v := string(m.Value); utf8.ValidString(v) {
		rec.Value = &v
	} else {
		rec.ValueBase64 = m.Value
	}
	b, _ := json.Marshal(rec)
	return b
}
