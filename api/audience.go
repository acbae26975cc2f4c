package api

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// AudienceSearcher counts the stored profiles that criteria match.
type AudienceSearcher interface {
	// Search returns the exact count and the first limit matching user ids
	// above after, in ascending order.
	Search(ctx context.Context, org string, c segment.Criteria, limit int, after string) (processor.AudiencePage, error)
}

// Audience search page sizes.
const (
	defaultAudienceLimit = 100
	maxAudienceLimit     = 1000
)

type audienceJSON struct {
	// Count is the exact number of stored users the criteria match.
	Count int64 `json:"count"`
	// UserIDs are the first matching user ids after the cursor, in ascending
	// order; empty, never null, when none match.
	UserIDs []string `json:"userIds"`
	// NextCursor is the cursor of the next page, nil (null) after the last
	// page.
	NextCursor *string `json:"nextCursor"`
}

// DefaultAudienceTimeout bounds one audience search unless
// Config.AudienceTimeout says otherwise.
const DefaultAudienceTimeout = 50 * time.Second

// audienceSearch serves POST /v1/audience/search: {"include": [...],
// "exclude": [...], "limit": n, "cursor": c} answers the exact count over
// the stored profiles and the first n matching user ids after the cursor,
// with the cursor of the next page. It previews a segment before
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
	checkKeys(&fe, "", obj, map[string]bool{"include": true, "exclude": true, "limit": true, "cursor": true}, nil)
	limit := defaultAudienceLimit
	if raw, ok := obj["limit"]; ok && string(raw) != "null" { // null: not given
		// A number, however written (1000, 1e3, 1000.0), as versions are.
		var f float64
		if json.Unmarshal(raw, &f) != nil || f != math.Trunc(f) || f < 0 || f > maxAudienceLimit {
			fe.add("limit", "limit must be an integer from 0 to 1000")
		}
		limit = int(f)
	}
	var cursor []byte
	if raw, ok := obj["cursor"]; ok && string(raw) != "null" {
		var c string
		if json.Unmarshal(raw, &c) != nil {
			fe.add("cursor", "cursor must be a string: the nextCursor of an earlier answer")
		} else if b, err := base64.RawURLEncoding.DecodeString(c); err != nil || len(b) == 0 {
			fe.add("cursor", "cursor is not one this API issued")
		} else {
			cursor = b
		}
	}
	crit := map[string]json.RawMessage{}
	for _, k := range []string{"include", "exclude"} {
		if raw, ok := obj[k]; ok {
			crit[k] = raw
		}
	}
	raw, _ := json.Marshal(crit)
	var inner fieldErrors
	var over []segment.FieldError
	c, _ := decodeCriteria(&inner, &over, "criteria", raw)
	for _, d := range inner {
		field := strings.TrimPrefix(d.Field, "criteria.")
		fe.add(field, strings.ReplaceAll(d.Message, d.Field, field))
	}
	tag := audienceTag(c)
	after := ""
	if cursor != nil {
		var ok bool
		if after, ok = strings.CutPrefix(string(cursor), "a1:"+tag+":"); !ok || after == "" {
			fe.add("cursor", "cursor is not one this API issued for these criteria")
		}
	}
	if err := fe.err(); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := overLimits(over); err != nil {
		s.fail(w, r, unwrapCriteria(err))
		return
	}
	// Checked before a search slot is taken: criteria that cannot be valid
	// are a 400 however busy the instance is, never a 503 to retry.
	err = checkCriteriaSize(c)
	if err == nil {
		_, err = segment.Compile(c)
	}
	if err != nil {
		s.fail(w, r, unwrapCriteria(err))
		return
	}
	// A search holds the ids it has counted (to count each user once): a
	// few at a time bound the memory that searches of large organisations
	// take together.
	select {
	case s.searches <- struct{}{}:
		defer func() { <-s.searches }()
	default:
		writeError(w, http.StatusServiceUnavailable, codeUnavailable,
			fmt.Sprintf("%d audience searches are in progress on this instance; retry", cap(s.searches)), nil)
		return
	}
	// Bounded, with the response's write deadline moved past the bound (the
	// server's runs from the request's headers, before a slow body), so
	// that a search of a very large organisation ends in a 503, not in a
	// connection closed with no answer.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.searchFor + 10*time.Second))
	ctx, cancel := context.WithTimeout(r.Context(), s.searchFor)
	defer cancel()
	res, err := s.audience.Search(ctx, orgOf(r.Context()), c, limit, after)
	if err != nil && errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil {
		writeError(w, http.StatusServiceUnavailable, codeUnavailable,
			fmt.Sprintf("the search took longer than %s; the organisation's profiles are too many for one search", s.searchFor), nil)
		return
	}
	if err != nil {
		s.fail(w, r, unwrapCriteria(err))
		return
	}
	out := audienceJSON{Count: res.Count, UserIDs: res.UserIDs}
	if out.UserIDs == nil {
		out.UserIDs = []string{}
	}
	if res.More {
		next := base64.RawURLEncoding.EncodeToString([]byte("a1:" + tag + ":" + res.UserIDs[len(res.UserIDs)-1]))
		out.NextCursor = &next
	}
	writeJSON(w, http.StatusOK, out)
}

// unwrapCriteria names the fields of a criteria ValidationError in err as
// a search's body has them, with no "criteria" wrapper.
func unwrapCriteria(err error) error {
	var ve *segment.ValidationError
	if errors.As(err, &ve) {
		for i := range ve.Errors {
			ve.Errors[i].Field = strings.TrimPrefix(ve.Errors[i].Field, "criteria.")
		}
	}
	return err
}

// audienceTag ties a search's cursor to its criteria, so that a cursor
// passed to a search of other criteria is refused rather than resumed
// there (it would skip ids that search never gave).
func audienceTag(c segment.Criteria) string {
	b, _ := json.Marshal(criteriaOut(c))
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}
