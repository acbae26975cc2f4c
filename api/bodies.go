package api

import (
	"fmt"
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

// boundBody reserves the request's body (its declared length, or the cap
// when it declares none) from the instance's budget for as long as h runs,
// and answers 503 when the budget is spent. A body declared longer than the
// cap takes nothing: it is refused unread (readObject).
func (s *Server) boundBody(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		n := r.ContentLength
		if n < 0 {
			n = s.maxBody
		}
		if n == 0 || n > s.maxBody {
			h(w, r)
			return
		}
		if !s.bodies.take(n) {
			writeError(w, http.StatusServiceUnavailable, codeUnavailable,
				fmt.Sprintf("request bodies of %d MiB in all are being read on this instance; retry", bodyBudgetBodies*s.maxBody>>20), nil)
			return
		}
		defer s.bodies.give(n)
		h(w, r)
	}
}
