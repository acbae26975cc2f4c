package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/segmentd/segmentd/segment"
)

// evaluationJSON is the answer of POST /v1/segments/{id}/evaluate.
type evaluationJSON struct {
	// Member reports whether the user is a member of the segment.
	Member bool `json:"member"`
	// Include is the outcome of each include criterion, in order; empty for a
	// static segment.
	Include []criterionEval `json:"include"`
	// Exclude is the outcome of each exclude criterion, in order; empty for a
	// static segment.
	Exclude []criterionEval `json:"exclude"`
}

// criterionEval is the outcome of one criterion: the criterion, whether it
// matched, whether the field was present (and not null), and the value seen
// there (null when missing).
type criterionEval struct {
	// Criterion is the criterion evaluated.
	Criterion criterionJSON
	// Matched reports whether the criterion matched the profile.
	Matched bool
	// Present reports whether the profile holds the criterion's field with a
	// value other than null.
	Present bool
	// Seen is the value of the field in the profile, nil when it is missing.
	Seen any
}

// MarshalJSON writes {"field", "operator", "value", "matched", "present",
// "seen"}, with "value" only when the criterion has one.
func (c criterionEval) MarshalJSON() ([]byte, error) {
	if !c.Criterion.HasValue {
		return marshal(struct {
			Field    string `json:"field"`
			Operator string `json:"operator"`
			Matched  bool   `json:"matched"`
			Present  bool   `json:"present"`
			Seen     any    `json:"seen"`
		}{c.Criterion.Field, c.Criterion.Operator, c.Matched, c.Present, c.Seen})
	}
	return marshal(struct {
		Field    string `json:"field"`
		Operator string `json:"operator"`
		Value    any    `json:"value"`
		Matched  bool   `json:"matched"`
		Present  bool   `json:"present"`
		Seen     any    `json:"seen"`
	}{c.Criterion.Field, c.Criterion.Operator, c.Criterion.Value, c.Matched, c.Present, c.Seen})
}

func evalsOut(results []segment.CriterionResult) []criterionEval {
	out := make([]criterionEval, len(results))
	for i, cr := range results {
		out[i] = criterionEval{Criterion: criterionOut(cr.Criterion), Matched: cr.Matched, Present: cr.Present, Seen: cr.Value}
	}
	return out
}

// evaluate serves POST /v1/segments/{id}/evaluate with {"userId": "…"} (the
// stored profile) or {"profile": {…}}: whether the user is a member, and the
// outcome of each criterion. A static segment answers from its list, for a
// userId only.
func (s *Server) evaluate(w http.ResponseWriter, r *http.Request) {
	d, err := s.visibleSegment(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	obj, err := s.readObject(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var fe fieldErrors
	checkKeys(&fe, "", obj, map[string]bool{"userId": true, "profile": true}, nil)
	var userID string
	rawUser, hasUser := obj["userId"]
	if hasUser {
		userID, _ = decodeString(&fe, "userId", rawUser, false)
		if userID == "" && len(fe) == 0 {
			fe.add("userId", "userId must not be empty")
		}
	}
	var profile *segment.Profile
	rawProfile, hasProfile := obj["profile"]
	if hasProfile {
		var fields map[string]any
		if err := json.Unmarshal(rawProfile, &fields); string(rawProfile) == "null" || err != nil {
			msg := "profile must be a JSON object"
			if t := bytes.TrimSpace(rawProfile); err != nil && len(t) > 0 && t[0] == '{' {
				// The body parsed: what fails in an object is a number
				// past float64's range.
				msg = "profile holds a number out of range (beyond about ±1.8e308)"
			}
			fe.add("profile", msg)
		}
		profile = segment.NewProfile(fields)
	}
	switch {
	case hasUser && hasProfile:
		fe.add("profile", "give either userId or profile, not both")
	case !hasUser && !hasProfile:
		fe.add("userId", "userId or profile is required")
	case d.Type == segment.TypeStatic && hasProfile:
		fe.add("profile", "a static segment is evaluated by userId: its members are a list of user ids")
	}
	if err := fe.err(); err != nil {
		s.fail(w, r, err)
		return
	}

	if d.Type == segment.TypeStatic {
		member, err := s.sets.IsMember(r.Context(), d.OrgID, d.ID, userID)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, evaluationJSON{Member: member, Include: []criterionEval{}, Exclude: []criterionEval{}})
		return
	}

	if hasUser {
		if s.profiles == nil {
			writeError(w, http.StatusServiceUnavailable, codeUnavailable, "stored profiles are not available; evaluate a profile given in the body", nil)
			return
		}
		p, ok, err := s.profiles.Profile(r.Context(), d.OrgID, userID)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if !ok {
			writeError(w, http.StatusNotFound, codeUserNotFound, fmt.Sprintf("user %s has no stored profile", userID), nil)
			return
		}
		profile = p
	}
	rule, err := segment.Compile(d.Criteria)
	if err != nil {
		s.log.Error("stored criteria do not compile", "org", d.OrgID, "segment", d.ID, "err", err)
		writeError(w, http.StatusInternalServerError, codeInternal, "the segment's stored criteria do not compile", nil)
		return
	}
	e := rule.Explain(profile, s.now())
	writeJSON(w, http.StatusOK, evaluationJSON{Member: e.Member, Include: evalsOut(e.Include), Exclude: evalsOut(e.Exclude)})
}
