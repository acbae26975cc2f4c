package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestRepeatLimiter: a warning repeated with the same error and attributes
// passes once a window, the next saying how many were held back; other
// warnings, errors, attributes and levels pass.
func TestRepeatLimiter(t *testing.T) {
	var buf bytes.Buffer
	h := newRepeatLimiter(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}), 10*time.Second)
	log := slog.New(h).With("component", "jobs")
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	emit := func(at time.Duration, level slog.Level, msg string, err error, more ...any) {
		r := slog.NewRecord(t0.Add(at), level, msg, 0)
		r.AddAttrs(slog.Any("err", err))
		r.Add(more...)
		if err := log.Handler().Handle(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	down, other := errors.New("connection refused"), errors.New("WRONGTYPE")
	emit(0, slog.LevelWarn, "fire timers", down)
	emit(2*time.Second, slog.LevelWarn, "fire timers", down)                                        // held
	emit(4*time.Second, slog.LevelWarn, "fire timers", down, "attempt", 3, "retry_in", time.Second) // held: numbers differ only
	emit(5*time.Second, slog.LevelWarn, "fire timers", other)                                       // another error
	emit(5*time.Second, slog.LevelWarn, "fire timers", down, "org", "b")                            // another organisation
	emit(6*time.Second, slog.LevelWarn, "heartbeat", down)                                          // another warning
	emit(7*time.Second, slog.LevelInfo, "fire timers", down)                                        // not a warning
	emit(8*time.Second, slog.LevelError, "fire timers", down)                                       // an error: never held
	// Attributes added with With tell warnings apart too.
	if err := log.With("segment", "s2").Handler().Handle(context.Background(), func() slog.Record {
		r := slog.NewRecord(t0.Add(9*time.Second), slog.LevelWarn, "fire timers", 0)
		r.AddAttrs(slog.Any("err", down))
		return r
	}()); err != nil {
		t.Fatal(err)
	}
	emit(11*time.Second, slog.LevelWarn, "fire timers", down) // a window later
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{
		`level=WARN msg="fire timers" component=jobs err="connection refused"`,
		`level=WARN msg="fire timers" component=jobs err=WRONGTYPE`,
		`level=WARN msg="fire timers" component=jobs err="connection refused" org=b`,
		`level=WARN msg=heartbeat component=jobs err="connection refused"`,
		`level=INFO msg="fire timers" component=jobs err="connection refused"`,
		`level=ERROR msg="fire timers" component=jobs err="connection refused"`,
		`level=WARN msg="fire timers" component=jobs segment=s2 err="connection refused"`,
		`level=WARN msg="fire timers" component=jobs err="connection refused" repeated=2`,
	}
	if len(lines) != len(want) {
		t.Fatalf("logged %d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.HasSuffix(lines[i], w) {
			t.Errorf("line %d = %q, want it to end %q", i, lines[i], w)
		}
	}
}
