package main

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// repeatLimiter is a slog.Handler that passes a warning at most once each
// window for each message and attributes (the error's text among them;
// numbers, such as an attempt's count or a backoff's pause, left out), and
// tells in the next it passes how many it held back: an outage makes every
// job retry, and each retry's warning would say the same thing again every
// second or two. Other levels, errors among them, pass as they come; a
// warning about another segment or organisation is another warning.
type repeatLimiter struct {
	// Handler is the handler that the records passed on go to.
	slog.Handler
	window time.Duration
	state  *repeatState // shared by the handlers WithAttrs and WithGroup make
	// with is what WithAttrs and WithGroup added, part of every key.
	with string
}

type repeatState struct {
	mu   sync.Mutex
	seen map[string]*repeated
}

type repeated struct {
	last time.Time
	held int
}

// maxRepeatKeys bounds the warnings remembered; past it they start over.
const maxRepeatKeys = 1024

func newRepeatLimiter(h slog.Handler, window time.Duration) repeatLimiter {
	return repeatLimiter{Handler: h, window: window, state: &repeatState{seen: map[string]*repeated{}}}
}

func (h repeatLimiter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level != slog.LevelWarn {
		return h.Handler.Handle(ctx, r)
	}
	key := h.with + "\x00" + r.Message
	r.Attrs(func(a slog.Attr) bool {
		switch a.Value.Kind() {
		case slog.KindInt64, slog.KindUint64, slog.KindFloat64, slog.KindDuration, slog.KindTime:
			// A retry's attempt or pause changes each time: not another warning.
		default:
			key += "\x00" + a.String()
		}
		return true
	})
	s := h.state
	s.mu.Lock()
	rep, ok := s.seen[key]
	if ok && r.Time.Sub(rep.last) < h.window {
		rep.held++
		s.mu.Unlock()
		return nil
	}
	if !ok {
		if len(s.seen) >= maxRepeatKeys {
			clear(s.seen)
		}
		rep = &repeated{}
		s.seen[key] = rep
	}
	held := rep.held
	rep.last, rep.held = r.Time, 0
	s.mu.Unlock()
	if held > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("repeated", held))
	}
	return h.Handler.Handle(ctx, r)
}

func (h repeatLimiter) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	for _, a := range as {
		h.with += "\x00" + a.String()
	}
	return h
}

func (h repeatLimiter) WithGroup(name string) slog.Handler {
	h.Handler = h.Handler.WithGroup(name)
	h.with += "\x00group:" + name
	return h
}
