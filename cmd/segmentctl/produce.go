package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
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
	fs := newFlags("produce", " [FILE]", "Sends JSON lines (FILE, or stdin) to the profile topic, keyed by userId.")
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
		return fmt.Errorf("produce: unexpected argument %q (one file, as the argument or with -f)", args[0])
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
	defer w.Close()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	var batch []kafka.Message
	n, unkeyed, lineNo := 0, 0, 0
	var tooLarge []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := w.WriteMessages(ctx, batch...); err != nil {
			return fmt.Errorf("produce: after %d events sent, lines up to %d not sent: %w", n, lineNo, err)
		}
		n += len(batch)
		batch = batch[:0]
		return nil
	}
	for sc.Scan() {
		lineNo++
		line := sc.Bytes()
		if len(line) == 0 {
			continue
		}
		if len(line) > maxRecordBytes {
			tooLarge = append(tooLarge, fmt.Sprintf("line %d (%d bytes)", lineNo, len(line)))
			continue
		}
		key := userIDOf(line)
		if key == "" {
			unkeyed++ // segmentd dead-letters it
		}
		batch = append(batch, kafka.Message{Topic: *topic, Key: []byte(key), Value: append([]byte(nil), line...), Time: time.Now()})
		if len(batch) == 1000 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		// What was read before goes out; the rest is not read.
		if ferr := flush(); ferr != nil {
			return ferr
		}
		return fmt.Errorf("read input after line %d (%d events sent): %w", lineNo, n, err)
	}
	if err := flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "produced %s to %s\n", plural(n, "event"), *topic)
	if unkeyed > 0 {
		fmt.Fprintf(stdout, "%d of them not JSON objects with a userId (sent unkeyed; segmentd dead-letters them)\n", unkeyed)
	}
	if len(tooLarge) > 0 {
		return fmt.Errorf("produce: %d lines not sent, larger than a record may be (%d bytes): %s",
			len(tooLarge), maxRecordBytes, strings.Join(tooLarge, ", "))
	}
	return nil
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
