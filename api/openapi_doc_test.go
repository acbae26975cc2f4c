package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// TestOpenAPIHasNoDuplicateKeys: a JSON object with a key twice keeps only
// the last one in most readers (encoding/json included), so the first is
// silently lost from the document clients read.
func TestOpenAPIHasNoDuplicateKeys(t *testing.T) {
	dec := json.NewDecoder(bytes.NewReader(openAPIDocument))
	var walk func(path string) error
	walk = func(path string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				k := kt.(string)
				if seen[k] {
					t.Errorf("openapi.json: key %q twice in %s", k, path)
				}
				seen[k] = true
				if err := walk(path + "/" + k); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := walk(path + "/[]"); err != nil {
					return err
				}
			}
			_, err = dec.Token()
			return err
		}
		return nil
	}
	if err := walk(""); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
}

// TestOpenAPIUserIDSchema: the user id item schemas refuse what the API
// refuses (segment.CheckUserID) for ids a schema can judge.
func TestOpenAPIUserIDSchema(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Items struct {
						MaxLength *int   `json:"maxLength"`
						Pattern   string `json:"pattern"`
					} `json:"items"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatal(err)
	}
	for _, at := range [][2]string{{"SegmentCreate", "userIds"}, {"SegmentUpdate", "userIds"}, {"MembersEdit", "add"}, {"MembersEdit", "remove"}} {
		items := doc.Components.Schemas[at[0]].Properties[at[1]].Items
		if items.MaxLength == nil || *items.MaxLength != segment.MaxUserIDLength {
			t.Errorf("%s.%s items: maxLength %v, want %d", at[0], at[1], items.MaxLength, segment.MaxUserIDLength)
		}
		re, err := regexp.Compile(items.Pattern)
		if items.Pattern == "" || err != nil {
			t.Errorf("%s.%s items: pattern %q (%v)", at[0], at[1], items.Pattern, err)
			continue
		}
		for _, id := range []string{"u_1", "a b", "ü-42", "a{b", "a}b", "a\x01b", "a\x7fb", "   ", strings.Repeat("x", 3)} {
			if got, want := re.MatchString(id), segment.CheckUserID(id) == ""; got != want {
				t.Errorf("%s.%s items: pattern matches %q = %v, the API accepts it = %v", at[0], at[1], id, got, want)
			}
		}
	}
}

// TestOpenAPIStatusesOfRealAnswers: answers the API gives in states the
// README describes are in the document, so that a client generated from it
// (or a validating proxy) does not reject them. A stored criterion that no
// longer compiles (an offset of 24 hours, taken by earlier builds) makes
// evaluate answer 500; an audience search takes "limit": null as the
// default, as the property's description says.
func TestOpenAPIStatusesOfRealAnswers(t *testing.T) {
	var doc struct {
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Schemas map[string]struct {
				Properties map[string]struct {
					Nullable bool `json:"nullable"`
				} `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatal(err)
	}
	a := newTestAPI(t, testenv.RedisClient(t))

	// As an earlier build stored it.
	d, err := membership.NewDefinitions(a.rdb).Create(context.Background(), segment.Definition{OrgID: a.org, Name: "old", Type: segment.TypeDynamic,
		Status: segment.StatusReady, Criteria: segment.Criteria{Include: []segment.Criterion{
			{Field: "createdAt", Operator: segment.OpGreater, Value: "2024-01-15T10:30:00+24:00", HasValue: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	var evaluate struct {
		Responses map[string]json.RawMessage `json:"responses"`
	}
	if err := json.Unmarshal(doc.Paths["/v1/segments/{id}/evaluate"]["post"], &evaluate); err != nil {
		t.Fatal(err)
	}
	r := a.as("POST", "/v1/segments/"+d.ID+"/evaluate", map[string]any{"profile": map[string]any{"createdAt": "2025-01-01T00:00:00Z"}})
	if _, ok := evaluate.Responses[strconv.Itoa(r.status)]; !ok {
		t.Errorf("evaluate answered %d, which openapi.json does not list: %s", r.status, r.raw)
	}

	a.as("POST", "/v1/audience/search", `{"limit": null}`).mustStatus(t, http.StatusOK)
	if !doc.Components.Schemas["AudienceSearch"].Properties["limit"].Nullable {
		t.Error(`POST /v1/audience/search takes "limit": null, but AudienceSearch.limit is not nullable in openapi.json`)
	}
}

// TestOpenAPIServersPointAtTheServingInstance: the document served at
// /v1/openapi.json names, as its server, the instance that serves it (a
// relative URL, resolved against the document's own), whatever address it
// listens on: a client generated from it, or an explorer's "try it out",
// must not send the calls to another host or port.
func TestOpenAPIServersPointAtTheServingInstance(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	r := a.as("GET", "/v1/openapi.json", nil).mustStatus(t, http.StatusOK)
	var doc struct {
		Servers []struct {
			URL string `json:"url"`
		} `json:"servers"`
	}
	if err := json.Unmarshal(r.raw, &doc); err != nil {
		t.Fatal(err)
	}
	base, err := url.Parse(a.srv.URL + "/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range doc.Servers {
		u, err := url.Parse(s.URL)
		if err != nil {
			t.Errorf("server url %q: %v", s.URL, err)
			continue
		}
		if got := base.ResolveReference(u); got.Host != base.Host {
			t.Errorf("the document served by %s sends calls to %s (server url %q)", base.Host, got.Host, s.URL)
		}
	}
}
