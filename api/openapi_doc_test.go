package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

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

// TestOpenAPIAnswersMatchTheirSchemas: real answers of every operation, in
// success and error cases, have a status the document lists for the
// operation and a body its schema accepts, so that a client generated from
// the document reads them.
func TestOpenAPIAnswersMatchTheirSchemas(t *testing.T) {
	c := newDocChecker(t)
	a := newTestAPI(t, testenv.RedisClient(t))
	v := func(method, tmpl string, r response) { t.Helper(); c.validate(t, method+" "+tmpl, method, tmpl, r) }
	const segs, seg, members, member, user, eval, aud = "/v1/segments", "/v1/segments/{id}", "/v1/segments/{id}/members",
		"/v1/segments/{id}/members/{userId}", "/v1/users/{userId}/segments", "/v1/segments/{id}/evaluate", "/v1/audience/search"

	v("GET", segs, a.as("GET", "/v1/segments", nil))
	r := a.as("POST", "/v1/segments", dynamicBody("dyn"))
	v("POST", segs, r)
	dynID := str(r.body["id"])
	r = a.as("POST", "/v1/segments", map[string]any{"name": "st", "type": "static", "userIds": []string{"u_2", "u_1"}})
	v("POST", segs, r)
	stID := str(r.body["id"])
	r = a.as("POST", "/v1/segments", map[string]any{"name": "ex", "type": "dynamic",
		"criteria": map[string]any{"include": []any{map[string]any{"field": "email", "operator": "exists"}}}})
	v("POST", segs, r)
	exID := str(r.body["id"])
	key := http.Header{"Idempotency-Key": {"k-1"}}
	for _, name := range []string{"idem", "idem", "other"} {
		v("POST", segs, a.doWith("POST", "/v1/segments", a.key, key, dynamicBody(name)))
	}
	v("POST", segs, a.doWith("POST", "/v1/segments", a.key, http.Header{"Idempotency-Key": {"a b"}}, dynamicBody("x")))
	for _, body := range []any{"{", "[]", "null", map[string]any{},
		map[string]any{"name": "x", "type": "static", "userIds": []string{"a{b"}},
		map[string]any{"name": "x", "type": "dynamic", "criteria": map[string]any{"include": slices.Repeat([]any{map[string]any{"field": "a", "operator": "exists"}}, 21)}},
	} {
		v("POST", segs, a.as("POST", "/v1/segments", body))
	}

	for _, id := range []string{dynID, stID, exID, "seg_nope"} {
		v("GET", seg, a.as("GET", "/v1/segments/"+id, nil))
	}
	v("GET", seg, a.do("GET", "/v1/segments/"+dynID, a.otherKey, nil))
	v("GET", seg, a.do("GET", "/v1/segments/"+dynID, "", nil))
	for _, q := range []string{"?limit=1", "?type=static", "?limit=0", "?type=foo", "?cursor=garbage", "?cursor=%zz"} {
		r := a.as("GET", "/v1/segments"+q, nil)
		v("GET", segs, r)
		if nc := str(r.body["nextCursor"]); nc != "" {
			v("GET", segs, a.as("GET", "/v1/segments?limit=1&cursor="+nc, nil))
		}
	}

	for _, body := range []map[string]any{{"name": "dyn2"}, {"description": nil, "url": nil},
		{"criteria": map[string]any{"include": []any{}}}, {"type": "static"}, {}} {
		v("PUT", seg, a.as("PUT", "/v1/segments/"+dynID, body))
	}
	v("PUT", seg, a.as("PUT", "/v1/segments/"+stID, map[string]any{"userIds": []string{"u_3", "u_1"}}))
	v("PUT", seg, a.as("PUT", "/v1/segments/seg_nope", map[string]any{"name": "x"}))

	for _, q := range []string{"", "?limit=1", "?limit=0", "?cursor=garbage"} {
		v("GET", members, a.as("GET", "/v1/segments/"+stID+"/members"+q, nil))
	}
	v("GET", members, a.as("GET", "/v1/segments/seg_nope/members", nil))
	for _, body := range []map[string]any{{"add": []string{"u_9"}}, {"remove": []string{"u_9"}},
		{"add": []string{"x"}, "remove": []string{"x"}}, {}, {"add": []any{1}}} {
		v("POST", members, a.as("POST", "/v1/segments/"+stID+"/members", body))
	}
	v("POST", members, a.as("POST", "/v1/segments/"+dynID+"/members", map[string]any{"add": []string{"x"}}))
	v("POST", members, a.as("POST", "/v1/segments/seg_nope/members", map[string]any{"add": []string{"x"}}))
	for _, p := range []string{stID + "/members/u_1", stID + "/members/zz", "seg_nope/members/zz"} {
		v("GET", member, a.as("GET", "/v1/segments/"+p, nil))
	}
	v("GET", user, a.as("GET", "/v1/users/u_1/segments", nil))
	v("GET", user, a.as("GET", "/v1/users/nobody/segments", nil))

	a.storeProfile("u_5", map[string]any{"tier": "gold", "points": 1200, "email": "a@b.c"})
	for _, body := range []map[string]any{{"profile": map[string]any{"tier": "gold"}}, {"userId": "u_5"},
		{"userId": "u_nobody"}, {"userId": "u_5", "profile": map[string]any{}}, {}} {
		v("POST", eval, a.as("POST", "/v1/segments/"+exID+"/evaluate", body))
	}
	v("POST", eval, a.as("POST", "/v1/segments/"+dynID+"/evaluate", map[string]any{"profile": map[string]any{"tier": "gold"}}))
	v("POST", eval, a.as("POST", "/v1/segments/"+stID+"/evaluate", map[string]any{"userId": "u_1"}))
	v("POST", eval, a.as("POST", "/v1/segments/"+stID+"/evaluate", map[string]any{"profile": map[string]any{}}))
	v("POST", eval, a.as("POST", "/v1/segments/seg_nope/evaluate", map[string]any{"userId": "x"}))

	for _, body := range []map[string]any{{}, {"limit": 0}, {"limit": 5000}, {"cursor": "zz"}, {"cursor": nil},
		{"include": []any{map[string]any{"field": "tier", "operator": "eq"}}}} {
		v("POST", aud, a.as("POST", "/v1/audience/search", body))
	}

	v("GET", "/healthz", a.do("GET", "/healthz", "", nil))
	v("GET", "/readyz", a.do("GET", "/readyz", "", nil))
	a.readyMu.Lock()
	a.ready = errors.New("redis down")
	a.readyMu.Unlock()
	v("GET", "/readyz", a.do("GET", "/readyz", "", nil))
	v("GET", "/v1/openapi.json", a.as("GET", "/v1/openapi.json", nil))
	v("GET", "/v1/openapi.json", a.do("GET", "/v1/openapi.json", "", nil))
	v("GET", "/metrics", a.do("GET", "/metrics", "", nil))

	v("DELETE", seg, a.as("DELETE", "/v1/segments/"+stID, nil))
	v("DELETE", seg, a.as("DELETE", "/v1/segments/"+stID, nil))
	body := map[string]any{"name": "s", "type": "static", "userIds": []string{}}
	r = a.doWith("POST", "/v1/segments", a.key, http.Header{"Idempotency-Key": {"k-st"}}, body)
	a.as("DELETE", "/v1/segments/"+str(r.body["id"]), nil)
	v("POST", segs, a.doWith("POST", "/v1/segments", a.key, http.Header{"Idempotency-Key": {"k-st"}}, body))
}

// docChecker validates JSON values against the subset of JSON Schema that
// openapi.json uses.
type docChecker struct {
	doc map[string]any
}

func newDocChecker(t *testing.T) *docChecker {
	t.Helper()
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(openAPIDocument))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	return &docChecker{doc: doc}
}

func (c *docChecker) ref(ref string) map[string]any {
	var cur any = c.doc
	for _, p := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		cur = cur.(map[string]any)[p]
	}
	return cur.(map[string]any)
}

func (c *docChecker) deref(s map[string]any) map[string]any {
	for {
		r, ok := s["$ref"].(string)
		if !ok {
			return s
		}
		s = c.ref(r)
	}
}

func (c *docChecker) check(at string, s map[string]any, v any) []string {
	s = c.deref(s)
	var errs []string
	bad := func(f string, a ...any) { errs = append(errs, at+": "+fmt.Sprintf(f, a...)) }
	if v == nil {
		if s["nullable"] != true && s["type"] != nil {
			bad("null but not nullable")
		}
		return errs
	}
	if e, ok := s["enum"].([]any); ok {
		found := false
		for _, x := range e {
			if fmt.Sprint(x) == fmt.Sprint(v) {
				found = true
			}
		}
		if !found {
			bad("%v not in enum %v", v, e)
		}
	}
	switch s["type"] {
	case "object":
		o, ok := v.(map[string]any)
		if !ok {
			bad("not an object: %v", v)
			return errs
		}
		props, _ := s["properties"].(map[string]any)
		for _, r := range asList(s["required"]) {
			if _, ok := o[r.(string)]; !ok {
				bad("required %q missing", r)
			}
		}
		for k, pv := range o {
			ps, ok := props[k].(map[string]any)
			if !ok {
				if s["additionalProperties"] == false {
					bad("property %q not in the schema", k)
				}
				continue
			}
			errs = append(errs, c.check(at+"."+k, ps, pv)...)
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			bad("not an array: %v", v)
			return errs
		}
		if n, ok := s["maxItems"].(json.Number); ok {
			if m, _ := n.Int64(); int64(len(arr)) > m {
				bad("%d items > maxItems %d", len(arr), m)
			}
		}
		if is, ok := s["items"].(map[string]any); ok {
			for i, e := range arr {
				errs = append(errs, c.check(fmt.Sprintf("%s[%d]", at, i), is, e)...)
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			bad("not a string: %v", v)
			return errs
		}
		if n, ok := s["minLength"].(json.Number); ok {
			if m, _ := n.Int64(); int64(utf8.RuneCountInString(str)) < m {
				bad("shorter than %d", m)
			}
		}
		if n, ok := s["maxLength"].(json.Number); ok {
			if m, _ := n.Int64(); int64(utf8.RuneCountInString(str)) > m {
				bad("longer than %d", m)
			}
		}
		if p, ok := s["pattern"].(string); ok {
			if !regexp.MustCompile(ecmaToGo(p)).MatchString(str) {
				bad("%q does not match %s", str, p)
			}
		}
		if s["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
				bad("not a date-time: %q", str)
			}
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			bad("not a number: %v", v)
			return errs
		}
		f, _ := n.Float64()
		if s["type"] == "integer" {
			if _, err := strconv.ParseInt(n.String(), 10, 64); err != nil {
				bad("not an integer: %s", n)
			}
		}
		if m, ok := s["minimum"].(json.Number); ok {
			if mf, _ := m.Float64(); f < mf {
				bad("%v < minimum %v", f, mf)
			}
		}
		if m, ok := s["maximum"].(json.Number); ok {
			if mf, _ := m.Float64(); f > mf {
				bad("%v > maximum %v", f, mf)
			}
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			bad("not a boolean: %v", v)
		}
	case nil:
	default:
		bad("schema type %v unknown to the checker", s["type"])
	}
	return errs
}

func asList(v any) []any { l, _ := v.([]any); return l }

// operation returns the operation object of method on the path template.
func (c *docChecker) operation(method, tmpl string) map[string]any {
	paths := c.doc["paths"].(map[string]any)
	item, ok := paths[tmpl].(map[string]any)
	if !ok {
		return nil
	}
	op, _ := item[strings.ToLower(method)].(map[string]any)
	return op
}

// validate checks a real answer against the document: its status is
// listed for the operation and its body matches the listed schema.
func (c *docChecker) validate(t *testing.T, what, method, tmpl string, r response) {
	t.Helper()
	op := c.operation(method, tmpl)
	if op == nil {
		t.Errorf("%s: %s %s not documented", what, method, tmpl)
		return
	}
	resps := op["responses"].(map[string]any)
	ro, ok := resps[strconv.Itoa(r.status)].(map[string]any)
	if !ok {
		keys := make([]string, 0)
		for k := range resps {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		t.Errorf("%s: %s %s answered %d, documented only %v: %s", what, method, tmpl, r.status, keys, r.raw)
		return
	}
	ro = c.deref(ro)
	content, _ := ro["content"].(map[string]any)
	if content == nil {
		if len(bytes.TrimSpace(r.raw)) != 0 {
			t.Errorf("%s: %d documents no body but got %s", what, r.status, r.raw)
		}
		return
	}
	for ct, m := range content {
		if !strings.HasPrefix(r.header.Get("Content-Type"), ct) {
			t.Errorf("%s: Content-Type %q, documented %q", what, r.header.Get("Content-Type"), ct)
			continue
		}
		if ct != "application/json" {
			continue
		}
		var v any
		dec := json.NewDecoder(bytes.NewReader(r.raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Errorf("%s: body not JSON: %v", what, err)
			continue
		}
		sch := m.(map[string]any)["schema"].(map[string]any)
		for _, e := range c.check("body", sch, v) {
			t.Errorf("%s: %s %s %d: %s\n  body: %.400s", what, method, tmpl, r.status, e, r.raw)
		}
	}
	if hs, ok := ro["headers"].(map[string]any); ok {
		for h, hv := range hs {
			got := r.header.Get(h)
			if got == "" {
				continue
			}
			if sch, ok := hv.(map[string]any)["schema"].(map[string]any); ok {
				for _, e := range c.check("header "+h, sch, got) {
					t.Errorf("%s: %s", what, e)
				}
			}
		}
	}
}

// ecmaToGo turns the ECMA-262 \uXXXX escapes of a pattern into Go's.
func ecmaToGo(p string) string {
	return regexp.MustCompile(`\\u([0-9a-fA-F]{4})`).ReplaceAllString(p, `\x{$1}`)
}
