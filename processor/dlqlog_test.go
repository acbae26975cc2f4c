package processor

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestDLQLogSpaced: dead letters of batch after batch give one line each
// dlqLogEvery, counting every dead letter sent since the line before.
func TestDLQLogSpaced(t *testing.T) {
	var out bytes.Buffer
	now := time.Unix(1_700_000_000, 0)
	p := &Processor{cfg: Config{
		Logger: slog.New(slog.NewTextHandler(&out, nil)), DLQTopic: "dlq",
		Now: func() time.Time { return now },
	}}
	letter := func(reason string) Record {
		return Record{Headers: []Header{{Key: "segmentd-error", Value: []byte(reason)}, {Key: "segmentd-source-offset", Value: []byte("7")}}}
	}
	// One clock moving on from step to step: the steps run in order.
	steps := []struct {
		name    string
		after   time.Duration
		letters int
		want    string // the line's count and reason, "" for no line
	}{
		{"the first dead letters", 0, 2, "count=2 topic=dlq first_reason=r0"},
		{"a second later", time.Second, 3, ""},
		{"a batch with none", time.Second, 0, ""},
		{"9 s after the line", 7 * time.Second, 1, ""},
		{"10 s after it: all since", time.Second, 4, "count=8 topic=dlq first_reason=r4"},
		{"9 s after the second line", 9 * time.Second, 1, ""},
		{"11 s after it", 2 * time.Second, 1, "count=2 topic=dlq first_reason=r6"},
	}
	for i, s := range steps {
		now = now.Add(s.after)
		out.Reset()
		var dlq []Record
		for range s.letters {
			dlq = append(dlq, letter("r"+string(rune('0'+i))))
		}
		p.logDLQ(dlq)
		got := out.String()
		switch {
		case s.want == "" && got != "":
			t.Errorf("%s: logged %q, want nothing", s.name, got)
		case s.want != "" && !strings.Contains(got, s.want):
			t.Errorf("%s: logged %q, want a line with %q", s.name, got, s.want)
		}
	}
}

// TestDLQLogHeldBackWithoutLaterLetters: dead letters sent within
// dlqLogEvery of a line, with none after them, are still logged once
// dlqLogEvery has passed, by the next call without dead letters (a batch
// with none, or the lag loop's tick on a quiet topic), rather than never.
func TestDLQLogHeldBackWithoutLaterLetters(t *testing.T) {
	var out bytes.Buffer
	now := time.Unix(1_700_000_000, 0)
	p := &Processor{cfg: Config{
		Logger: slog.New(slog.NewTextHandler(&out, nil)), DLQTopic: "dlq",
		Now: func() time.Time { return now },
	}}
	letter := func(reason, offset string) Record {
		return Record{Headers: []Header{
			{Key: "segmentd-error", Value: []byte(reason)},
			{Key: "segmentd-source-topic", Value: []byte("profiles")},
			{Key: "segmentd-source-partition", Value: []byte("1")},
			{Key: "segmentd-source-offset", Value: []byte(offset)},
		}}
	}
	p.logDLQ([]Record{letter("first", "0")})
	if !strings.Contains(out.String(), "count=1") {
		t.Fatalf("first dead letter: logged %q", out.String())
	}
	out.Reset()
	now = now.Add(2 * time.Second)
	p.logDLQ([]Record{letter("second", "1"), letter("third", "2")})
	now = now.Add(5 * time.Second)
	p.logDLQ(nil)
	if out.Len() != 0 {
		t.Fatalf("within dlqLogEvery of the line: logged %q, want nothing yet", out.String())
	}
	now = now.Add(4 * time.Second)
	p.logDLQ(nil)
	if got := out.String(); !strings.Contains(got, "count=2") || !strings.Contains(got, "first_reason=second") || !strings.Contains(got, "first_source=profiles/1@1") {
		t.Fatalf("dlqLogEvery after the line, no dead letter since: logged %q, want count=2 with the held reason and source", got)
	}
	out.Reset()
	now = now.Add(time.Minute)
	p.logDLQ(nil)
	if out.Len() != 0 {
		t.Fatalf("nothing held: logged %q", out.String())
	}
}
