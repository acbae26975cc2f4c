package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/kafkaio"
)

// maxRecordBytes is the largest line produce sends: the writer's batch
// limit, less room for the record's key and framing.
const maxRecordBytes = 1_000_000 - 4096

// produce sends JSON lines to the profile topic keyed by userId. A line that
// is not valid JSON is still sent (unkeyed): segmentd dead-letters it with
// the reason, which is what a producer's bad record would meet. A line too
// large for a Kafka record is not sent: it is named, the rest go on, and
// the command fails at the end.
func produce(ctx context.Context, e env, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := newFlags("produce", " [FILE]", "Sends JSON lines (FILE, or stdin) to the profile topic, keyed by userId.", stdout)
	file := fs.String("f", "-", "file of JSON lines, - for stdin (or give the file as the argument)")
	topic := fs.String("topic", e.profileTopic, "topic to produce to")
	args, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(args) == 1 && *file == "-":
		*file = args[0]
	case len(args) > 0:
		extra := args[0]
		if *file == "-" {
			extra = args[1] // args[0] is the file
		}
		return fmt.Errorf("produce: unexpected argument %q (one file, as the argument or with -f)", extra)
	}
	in := stdin
	if *file != "-" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	w := kafkaio.NewWriter(e.brokers)
	defer kafkaio.CloseWriter(w)
	var batch []kafka.Message
	batchBytes := 0
	n, unkeyed, lineNo := 0, 0, 0
	var tooLarge []string
	// A write once begun is finished, also after an interrupt (a second
	// one ends segmentctl at once): the writer's own attempts bound it.
	wctx := context.WithoutCancel(ctx)
	// Lines typed by hand, or piped from a live source, go out within
	// produceIdle of being read, not only when 1,000 have come or the
	// input ends.
	idle := time.NewTimer(time.Hour)
	idle.Stop()
	defer idle.Stop()
	flush := func() error {
		idle.Stop()
		if len(batch) == 0 {
			return nil
		}
		// In order: a user's lines that a failed write leaves sent are
		// its first ones.
		if sent, err := kafkaio.WriteInOrder(wctx, w, batch); err != nil {
			return fmt.Errorf("produce: after %s sent, lines up to %d not sent, or sent in part: %w", plural(n+sent, "event"), lineNo, err)
		}
		n += len(batch)
		batch, batchBytes = batch[:0], 0
		return nil
	}
	take := func(in inputLine) error {
		lineNo++
		line := in.text
		switch {
		case in.size > maxRecordBytes:
			tooLarge = append(tooLarge, fmt.Sprintf("line %d (%d bytes)", lineNo, in.size))
			return nil
		case len(bytes.TrimSpace(line)) == 0:
			return nil
		}
		key := userIDOf(line)
		if len(line)+len(key) > maxRecordBytes {
			// The key counts against the broker's limit as much.
			tooLarge = append(tooLarge, fmt.Sprintf("line %d (%d bytes with its key)", lineNo, len(line)+len(key)))
			return nil
		}
		if key == "" {
			unkeyed++ // segmentd dead-letters it
		}
		batch = append(batch, kafka.Message{Topic: *topic, Key: []byte(key), Value: line, Time: time.Now()})
		batchBytes += len(line)
		switch {
		case len(batch) == 1000 || batchBytes >= produceBatchBytes:
			return flush()
		case len(batch) == 1:
			idle.Reset(produceIdle)
		}
		return nil
	}
	lines, readErr, stop := readLines(in)
	defer stop()
read:
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				if err := <-readErr; err != nil {
					// What was read before goes out; the rest is not read.
					if ferr := flush(); ferr != nil {
						return ferr
					}
					if errors.Is(err, bufio.ErrTooLong) {
						err = fmt.Errorf("produce: line %d is longer than %d MiB: stopped there (%s sent)", lineNo+1, maxLineBytes>>20, plural(n, "event"))
						if len(tooLarge) > 0 {
							err = fmt.Errorf("%w; before it, not sent, larger than a record may be: %s", err, strings.Join(tooLarge, ", "))
						}
						return err
					}
					return fmt.Errorf("read input after line %d (%s sent): %w", lineNo, plural(n, "event"), err)
				}
				if err := flush(); err != nil {
					return err
				}
				break read
			}
			if err := take(line); err != nil {
				return err
			}
		case <-idle.C:
			if err := flush(); err != nil {
				return err
			}
		case <-ctx.Done():
			// Interrupted: the lines read so far go out, and no more are read.
			stop()
			for more := true; more; {
				select {
				case line, ok := <-lines:
					if more = ok; ok {
						if err := take(line); err != nil {
							return err
						}
					}
				default:
					more = false
				}
			}
			if err := flush(); err != nil {
				return err
			}
			return fmt.Errorf("produce: interrupted after %s sent: %w", plural(n, "event"), ctx.Err())
		}
	}
	fmt.Fprintf(stdout, "produced %s to %s\n", plural(n, "event"), *topic)
	if unkeyed > 0 {
		fmt.Fprintf(stdout, "%d of them not JSON objects with a userId (sent unkeyed; segmentd dead-letters them)\n", unkeyed)
	}
	if len(tooLarge) > 0 {
		return fmt.Errorf("produce: %s not sent, larger than a record may be (%d bytes): %s",
			plural(len(tooLarge), "line"), maxRecordBytes, strings.Join(tooLarge, ", "))
	}
	return nil
}

// maxLineBytes is the longest line produce reads: a longer one ends it.
const maxLineBytes = 16 << 20

// produceIdle is how long produce holds a line it has read for more to send
// with it.
const produceIdle = 50 * time.Millisecond

// produceBatchBytes bounds the lines held for one write, with the 1,000
// lines of a batch: lines near the record limit would otherwise hold a
// gigabyte.
const produceBatchBytes = 16 << 20

// inputLine is one line of input: its text, or only its size when it is
// larger than a record may be (such a line is reported, not sent, and not
// held).
type inputLine struct {
	text []byte
	size int
}

// readLines reads in's lines, each a copy, on a goroutine of its own: the
// channel closes at the end of the input, and readErr then holds the read
// error or nil. stop, which may be called again, ends the goroutine once
// its current read returns (a read from a terminal cannot be interrupted).
func readLines(in io.Reader) (lines <-chan inputLine, readErr <-chan error, stop func()) {
	out, errc, done := make(chan inputLine, 64), make(chan error, 1), make(chan struct{})
	go func() {
		defer close(out)
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 1<<20), maxLineBytes+1) // the line and its newline
		for sc.Scan() {
			l := inputLine{size: len(sc.Bytes())}
			if l.size <= maxRecordBytes {
				l.text = bytes.Clone(sc.Bytes())
			}
			select {
			case out <- l:
			case <-done:
				errc <- nil
				return
			}
		}
		errc <- sc.Err()
	}()
	var once sync.Once
	return out, errc, func() { once.Do(func() { close(done) }) }
}

// userIDOf returns the line's userId, the key of its record: "" when the
// line is not a JSON object with one. Field names match exactly, as
// segmentd reads them (encoding/json would also take "UserID"), and a
// repeated field counts the last time.
func userIDOf(line []byte) string {
	var fields map[string]json.RawMessage
	if json.Unmarshal(line, &fields) != nil {
		return ""
	}
	var id string
	if json.Unmarshal(fields["userId"], &id) != nil {
		return ""
	}
	return id
}
