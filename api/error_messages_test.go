package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/segmentd/segmentd/internal/testenv"
)

// TestErrorMessagesNameTheRealProblem: a 400 says what is wrong with the
// field it names.
func TestErrorMessagesNameTheRealProblem(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	seg := a.as("POST", "/v1/segments", map[string]any{"name": "n", "type": "dynamic",
		"criteria": map[string]any{"include": []any{map[string]any{"field": "points", "operator": ">", "value": 1}}}}).
		mustStatus(t, http.StatusCreated).body["id"].(string)

	// A profile that is a JSON object holding a number beyond float64.
	r := a.as("POST", "/v1/segments/"+seg+"/evaluate", `{"profile": {"points": 1e400}}`).mustStatus(t, http.StatusBadRequest)
	if strings.Contains(string(r.raw), "profile must be a JSON object") {
		t.Errorf("evaluate of an object holding 1e400 is told it is no object: %s", r.raw)
	}

	// An audience search has no "criteria" member: its messages must not name one.
	r = a.as("POST", "/v1/audience/search", `{"include": null}`).mustStatus(t, http.StatusBadRequest)
	if strings.Contains(string(r.raw), "criteria.include") {
		t.Errorf("audience search error names a field the body has not: %s", r.raw)
	}
}
