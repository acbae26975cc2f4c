package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/segmentd/segmentd/segment"
)

// AudienceSearcher counts the stored profiles that criteria match.
type AudienceSearcher interface {
	// Search returns the exact count and the first limit matching user ids
	// in ascending order.
	Search(ctx context.Context, org string, c segment.Criteria, limit int) (int64, []string, error)
}

// Audience search page sizes.
const (
	defaultAudienceLimit = 100
	maxAudienceLimit     = 1000
)

type audienceJSON struct {
	Count   int64    `json:"count"`
	UserIDs []string `json:"userIds"`
}

// audienceSearch serves POST /v1/audience/search: {"include": [...],
// "exclude": [...], "limit": n} answers the exact count over the stored
// profiles and the first n matching user ids. It previews a segment before
// it is saved: the same criteria give the same members.
func (s *Server) audienceSearch(w http.ResponseWriter, r *http.Request) {
	if s.audience == nil {
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "audience search is not available", nil)
		return
	}
	obj, err := s.readObject(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var fe fieldErrors
	checkKeys(&fe, "", obj, map[string]bool{"include": true, "exclude": true, "limit": true}, nil)
	limit := defaultAudienceLimit
	if raw, ok := obj["limit"]; ok && string(raw) != "null" { // null: not given
		var n int
		if json.Unmarshal(raw, &n) != nil || n < 0 || n > maxAudienceLimit {
			fe.add("limit", "limit must be an integer from 0 to 1000")
		}
		limit = n
	}
	crit := map[string]json.RawMessage{}
	for _, k := range []string{"include", "exclude"} {
		if raw, ok := obj[k]; ok {
			crit[k] = raw
		}
	}
	raw, _ := json.Marshal(crit)
	var inner fieldErrors
	c, _ := decodeCriteria(&inner, "criteria", raw)
	for _, d := range inner {
		fe.add(strings.TrimPrefix(d.Field, "criteria."), d.Message)
	}
	if err := fe.err(); err != nil {
		s.fail(w, r, err)
		return
	}
	count, ids, err := s.audience.Search(r.Context(), orgOf(r.Context()), c, limit)
	var ve *segment.ValidationError
	if errors.As(err, &ve) {
		// The body has no "criteria" wrapper: name fields as the client wrote them.
		for i := range ve.Errors {
			ve.Errors[i].Field = strings.TrimPrefix(ve.Errors[i].Field, "criteria.")
		}
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if ids == nil {
		ids = []string{}
	}
	writeJSON(w, http.StatusOK, audienceJSON{Count: count, UserIDs: ids})
}
