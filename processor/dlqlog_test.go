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
