package api

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
)

// bodyBudgetBodies is how many bodies at the cap an instance reads and
// decodes at once. A body is held several times over while it is decoded
// (its bytes, its JSON members, their values, a list's ids counted), about
// six times its size for a static list, so a few clients sending bodies at
// the cap could otherwise take gigabytes between them.
const bodyBudgetBodies = 2

// bodyBudget is the bytes of request bodies that handlers may hold at once.
type bodyBudget struct {
	mu   sync.Mutex
	left int64
}

// take reserves n bytes and reports whether they were free.
func (b *bodyBudget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > b.left {
		return false
	}
	b.left -= n
	return true
}

// give returns n bytes that take reserved.
func (b *bodyBudget) give(n int64) {
	b.mu.Lock()
	b.left += n
	b.mu.Unlock()
}

// boundBody reserves the request's body from the instance's budget for as
// long as h runs: its declared length at once (503 when the budget has not
// that much left), or, when it declares none (chunked), what is read of it
// as it is read (readObject answers 503 when the budget runs out). A body
// declared longer than the cap takes nothing: it is refused unread
// (readObject).
func (s *Server) boundBody(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := r.ContentLength
		if n < 0 {
			// No declared length (chunked): reserved as it is read, so that a
			// small streamed body does not take the whole cap.
			bb := &budgetedBody{ReadCloser: r.Body, b: s.bodies, max: s.maxBody}
			r.Body = bb
			defer func() { s.bodies.give(bb.held) }()
			h(w, r)
			return
		}
		if n == 0 || n > s.maxBody {
			h(w, r)
			return
		}
		if !s.bodies.take(n) {
			writeError(w, http.StatusServiceUnavailable, codeUnavailable, s.budgetSpent(), nil)
			return
		}
		defer s.bodies.give(n)
		h(w, r)
	}
}

// errBodyBudget is a body read past what the instance's budget has left.
var errBodyBudget = errors.New("request body budget spent")

// budgetedBody takes from the budget what is read of a body of no declared
// length.
type budgetedBody struct {
	io.ReadCloser
	b    *bodyBudget
	held int64
	// max is the cap: what is read past it is refused (413) by the
	// http.MaxBytesReader around this body, not kept, so it takes nothing.
	max int64
}

func (r *budgetedBody) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if c := min(int64(n), r.max-r.held); c > 0 {
		if !r.b.take(c) {
			return 0, errBodyBudget
		}
		r.held += c
	}
	return n, err
}

// budgetSpent is the message of a 503 for a body the budget has no room for.
func (s *Server) budgetSpent() string {
	size := fmt.Sprintf("%d bytes", bodyBudgetBodies*s.maxBody)
	if s.maxBody%(1<<20) == 0 {
		size = fmt.Sprintf("%d MiB", bodyBudgetBodies*s.maxBody>>20)
	}
	return "request bodies of " + size + " in all are being read on this instance; retry"
}
