package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

func TestTenantIsolation(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		a := newTestAPI(t, rdb)
		dyn := str(a.as("POST", "/v1/segments", dynamicBody("mine")).mustStatus(t, 201).body["id"])
		stat := str(a.as("POST", "/v1/segments", map[string]any{"name": "list", "type": "static", "userIds": []string{"u1", "u2"}}).mustStatus(t, 201).body["id"])
		a.pub.take()

		// What the other organisation gets for a segment id that exists
		// nowhere: the answer for ours must be the same.
		unknown := a.do("GET", "/v1/segments/seg_000000000000aaaaaaaaaa", a.otherKey, nil).mustStatus(t, 404)
		calls := []struct {
			method, path string
			body         any
		}{
			{"GET", "/v1/segments/%s", nil},
			{"PUT", "/v1/segments/%s", map[string]any{"name": "stolen"}},
			{"DELETE", "/v1/segments/%s", nil},
			{"GET", "/v1/segments/%s/members", nil},
			{"POST", "/v1/segments/%s/members", map[string]any{"add": []string{"intruder"}}},
			{"GET", "/v1/segments/%s/members/u1", nil},
			{"POST", "/v1/segments/%s/evaluate", map[string]any{"userId": "u1"}},
		}
		for _, id := range []string{dyn, stat} {
			for _, c := range calls {
				path := strings.Replace(c.path, "%s", id, 1)
				r := a.do(c.method, path, a.otherKey, c.body)
				if r.status != 404 || string(r.raw) != string(unknown.raw) {
					t.Errorf("%s %s as another org: %d %s, want the 404 of an unknown id %s", c.method, path, r.status, r.raw, unknown.raw)
				}
			}
		}
		if r := a.do("GET", "/v1/segments", a.otherKey, nil).mustStatus(t, 200); len(r.body["data"].([]any)) != 0 {
			t.Errorf("another org lists %s", r.raw)
		}
		if r := a.do("GET", "/v1/segments?type=static", a.otherKey, nil).mustStatus(t, 200); len(r.body["data"].([]any)) != 0 {
			t.Errorf("another org lists %s", r.raw)
		}
		if r := a.do("GET", "/v1/users/u1/segments", a.otherKey, nil).mustStatus(t, 200); len(r.body["data"].([]any)) != 0 {
			t.Errorf("another org sees u1's segments: %s", r.raw)
		}
		// Nothing changed for the owner.
		got := a.as("GET", "/v1/segments/"+stat, nil).mustStatus(t, 200)
		if got.body["name"] != "list" || !slices.Equal(strList(got.body["userIds"]), []string{"u1", "u2"}) {
			t.Errorf("the owner's segment changed: %s", got.raw)
		}
		a.as("GET", "/v1/segments/"+dyn, nil).mustStatus(t, 200)
		if pub := a.pub.take(); len(pub) != 0 {
			t.Errorf("another org's calls published %v", pub)
		}
		if n, _ := rdb.Exists(context.Background(), membership.SegmentMembersKey(a.otherOrg, stat)).Result(); n != 0 {
			t.Error("another org's call wrote a members key")
		}
	})
}

func TestEvaluate(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	dyn := str(a.as("POST", "/v1/segments", dynamicBody("vip")).mustStatus(t, 201).body["id"])
	stat := str(a.as("POST", "/v1/segments", map[string]any{"name": "list", "type": "static", "userIds": []string{"u1"}}).mustStatus(t, 201).body["id"])
	a.storeProfile("gold", map[string]any{"tier": "gold", "points": 1500.0, "customFields": map[string]any{"testAccount": false}})

	tests := map[string]struct {
		seg    string
		body   any
		status int
		want   string // the JSON answer, or the error code
	}{
		"member by profile": {
			seg: dyn, body: map[string]any{"profile": map[string]any{"tier": "platinum", "points": 1000}}, status: 200,
			want: `{"member":true,"include":[{"field":"tier","operator":"in","value":["gold","platinum"],"matched":true,"present":true,"seen":"platinum"},{"field":"points","operator":">=","value":1000,"matched":true,"present":true,"seen":1000}],"exclude":[{"field":"customFields.testAccount","operator":"equals","value":true,"matched":false,"present":false,"seen":null}]}`,
		},
		"excluded by profile": {
			seg: dyn, body: map[string]any{"profile": map[string]any{"tier": "gold", "points": 5000, "customFields": map[string]any{"testAccount": true}}}, status: 200,
			want: `{"member":false,"include":[{"field":"tier","operator":"in","value":["gold","platinum"],"matched":true,"present":true,"seen":"gold"},{"field":"points","operator":">=","value":1000,"matched":true,"present":true,"seen":5000}],"exclude":[{"field":"customFields.testAccount","operator":"equals","value":true,"matched":true,"present":true,"seen":true}]}`,
		},
		"stored profile": {
			seg: dyn, body: map[string]any{"userId": "gold"}, status: 200,
			want: `{"member":true,"include":[{"field":"tier","operator":"in","value":["gold","platinum"],"matched":true,"present":true,"seen":"gold"},{"field":"points","operator":">=","value":1000,"matched":true,"present":true,"seen":1500}],"exclude":[{"field":"customFields.testAccount","operator":"equals","value":true,"matched":false,"present":true,"seen":false}]}`,
		},
		"unknown user":       {seg: dyn, body: map[string]any{"userId": "nobody"}, status: 404, want: "user_not_found"},
		"static member":      {seg: stat, body: map[string]any{"userId": "u1"}, status: 200, want: `{"member":true,"include":[],"exclude":[]}`},
		"static non-member":  {seg: stat, body: map[string]any{"userId": "u2"}, status: 200, want: `{"member":false,"include":[],"exclude":[]}`},
		"static by profile":  {seg: stat, body: map[string]any{"profile": map[string]any{}}, status: 400, want: "validation_failed"},
		"both":               {seg: dyn, body: map[string]any{"userId": "gold", "profile": map[string]any{}}, status: 400, want: "validation_failed"},
		"neither":            {seg: dyn, body: map[string]any{}, status: 400, want: "validation_failed"},
		"profile not object": {seg: dyn, body: map[string]any{"profile": []any{}}, status: 400, want: "validation_failed"},
		"unknown field":      {seg: dyn, body: map[string]any{"userId": "gold", "debug": true}, status: 400, want: "validation_failed"},
		"unknown segment":    {seg: "seg_nope", body: map[string]any{"userId": "gold"}, status: 404, want: "not_found"},
		"invalid JSON":       {seg: dyn, body: `{`, status: 400, want: "invalid_json"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			r := a.as("POST", "/v1/segments/"+tt.seg+"/evaluate", tt.body)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.raw)
			}
			if tt.status != 200 {
				if code := r.errorCode(t); code != tt.want {
					t.Errorf("code %q, want %q", code, tt.want)
				}
				return
			}
			if got := strings.TrimSpace(string(r.raw)); got != tt.want {
				t.Errorf("answer\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestOperationalEndpoints(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	if r := a.do("GET", "/healthz", "", nil).mustStatus(t, 200); r.body["status"] != "ok" {
		t.Errorf("healthz = %s", r.raw)
	}
	a.do("GET", "/readyz", "", nil).mustStatus(t, 200)
	a.readyMu.Lock()
	a.ready = context.DeadlineExceeded
	a.readyMu.Unlock()
	r := a.do("GET", "/readyz", "", nil)
	r.wantError(t, 503, "unavailable")
	if msg := r.body["error"].(map[string]any)["message"]; !strings.Contains(str(msg), "deadline") {
		t.Errorf("readyz gives no reason: %s", r.raw)
	}
	// /healthz stays 200 while not ready.
	a.do("GET", "/healthz", "", nil).mustStatus(t, 200)

	// Unknown routes and methods answer JSON errors.
	a.as("GET", "/v1/nothing", nil).wantError(t, 404, "not_found")
	r = a.as("PATCH", "/v1/segments/seg_x", map[string]any{})
	r.wantError(t, 405, "method_not_allowed")
	if allow := r.header.Get("Allow"); !strings.Contains(allow, "GET") || !strings.Contains(allow, "PUT") {
		t.Errorf("Allow = %q", allow)
	}

	// Metrics label routes by pattern, never by id.
	id := str(a.as("POST", "/v1/segments", dynamicBody("m")).mustStatus(t, 201).body["id"])
	a.as("GET", "/v1/segments/"+id, nil).mustStatus(t, 200)
	metrics := string(a.do("GET", "/metrics", "", nil).mustStatus(t, 200).raw)
	for _, want := range []string{
		`segmentd_http_requests_total{code="200",method="GET",route="/v1/segments/{id}"} 1`,
		`segmentd_http_requests_total{code="201",method="POST",route="/v1/segments"} 1`,
		`segmentd_http_request_duration_seconds_count{route="/v1/segments/{id}"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(metrics, id) {
		t.Error("a segment id appears in the metrics")
	}
	// A method the API does not know is one series, whatever its name.
	for _, m := range []string{"FOO1", "FOO2"} {
		a.do(m, "/v1/segments", "", nil)
	}
	metrics = string(a.do("GET", "/metrics", "", nil).mustStatus(t, 200).raw)
	if strings.Contains(metrics, "FOO1") || !strings.Contains(metrics, `method="OTHER"`) {
		t.Error("an unknown method is a label value of its own")
	}
}

func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.0") {
		t.Errorf("openapi = %q, want 3.0.x", doc.OpenAPI)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths {
		for method := range item {
			switch method {
			case "get", "put", "post", "delete", "patch", "head", "options", "trace":
				documented[strings.ToUpper(method)+" "+path] = true
			}
		}
	}
	registered := map[string]bool{}
	for _, rt := range New(Config{}).routes() {
		registered[rt.method+" "+rt.path] = true
	}
	for r := range registered {
		if !documented[r] {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
	for d := range documented {
		if !registered[d] {
			t.Errorf("openapi.json describes %s, which is not registered", d)
		}
	}
	// Routes behind authentication say so; the others opt out.
	for _, rt := range New(Config{}).routes() {
		var op struct {
			Security *[]any `json:"security"`
		}
		if err := json.Unmarshal(doc.Paths[rt.path][strings.ToLower(rt.method)], &op); err != nil {
			t.Fatal(err)
		}
		if open := op.Security != nil && len(*op.Security) == 0; open == rt.auth {
			sec := op.Security
			t.Errorf("%s %s: auth %v but security %v", rt.method, rt.path, rt.auth, sec)
		}
	}

	served := newTestAPI(t, testenv.RedisClient(t)).as("GET", "/v1/openapi.json", nil).mustStatus(t, http.StatusOK)
	if string(served.raw) != string(openAPIDocument) {
		t.Error("/v1/openapi.json does not serve the embedded document")
	}
	// Served to a key's holder: no shared cache may keep it for others.
	if cc := served.header.Get("Cache-Control"); !strings.HasPrefix(cc, "private") {
		t.Errorf("Cache-Control %q, want private", cc)
	}
}

// TestAudienceSearch checks POST /v1/audience/search over real stored
// profiles: the exact count, the first ids in order, the limit's rules, and
// nothing of another organisation.
func TestAudienceSearch(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	for i, pts := range []float64{500, 1000, 1500, 2500} {
		a.storeProfile(fmt.Sprintf("u%d", i), map[string]any{"points": pts, "tier": []string{"gold", "silver"}[i%2]})
	}
	rich := []any{map[string]any{"field": "points", "operator": ">=", "value": 1000}}
	tests := map[string]struct {
		body any
		want string // the JSON answer
	}{
		"count and ids":   {map[string]any{"include": rich}, `{"count":3,"userIds":["u1","u2","u3"],"nextCursor":null}`},
		"with exclude":    {map[string]any{"include": rich, "exclude": []any{map[string]any{"field": "tier", "operator": "equals", "value": "gold"}}}, `{"count":2,"userIds":["u1","u3"],"nextCursor":null}`},
		"limit 0":         {map[string]any{"include": rich, "limit": 0}, `{"count":3,"userIds":[],"nextCursor":null}`},
		"limit null":      {`{"include":[{"field":"points","operator":">=","value":1000}],"limit":null}`, `{"count":3,"userIds":["u1","u2","u3"],"nextCursor":null}`},
		"everyone":        {map[string]any{}, `{"count":4,"userIds":["u0","u1","u2","u3"],"nextCursor":null}`},
		"no one matching": {map[string]any{"include": []any{map[string]any{"field": "points", "operator": ">", "value": 9000}}}, `{"count":0,"userIds":[],"nextCursor":null}`},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got := a.as("POST", "/v1/audience/search", tt.body).mustStatus(t, 200)
			if strings.TrimSpace(string(got.raw)) != tt.want {
				t.Errorf("answer %s, want %s", got.raw, tt.want)
			}
		})
	}
	t.Run("pages", func(t *testing.T) {
		var all []string
		var cursor any
		for pages := 0; ; pages++ {
			if pages > 3 {
				t.Fatal("paging does not end")
			}
			got := a.as("POST", "/v1/audience/search", map[string]any{"include": rich, "limit": 2, "cursor": cursor}).mustStatus(t, 200)
			if num(got.body["count"]) != 3 {
				t.Errorf("count on page %d: %s", pages, got.raw)
			}
			all = append(all, strList(got.body["userIds"])...)
			if got.body["nextCursor"] == nil {
				break
			}
			cursor = got.body["nextCursor"]
		}
		if !slices.Equal(all, []string{"u1", "u2", "u3"}) {
			t.Errorf("pages gave %v", all)
		}
	})
	t.Run("limit written as a float", func(t *testing.T) {
		got := a.as("POST", "/v1/audience/search", json.RawMessage(`{"include": [{"field": "points", "operator": ">=", "value": 1000}], "limit": 2e0}`)).mustStatus(t, 200)
		if ids := strList(got.body["userIds"]); len(ids) != 2 || got.body["nextCursor"] == nil {
			t.Errorf("limit 2e0 gave %s, want a page of 2 and a cursor", got.raw)
		}
	})
	t.Run("a cursor of other criteria", func(t *testing.T) {
		got := a.as("POST", "/v1/audience/search", map[string]any{"include": rich, "limit": 1}).mustStatus(t, 200)
		a.as("POST", "/v1/audience/search", map[string]any{"limit": 1, "cursor": got.body["nextCursor"]}).wantError(t, 400, "validation_failed", "cursor")
	})
	errs := map[string]struct {
		body  any
		field string
	}{
		"limit too large": {map[string]any{"limit": 1001}, "limit"},
		"limit negative":  {map[string]any{"limit": -1}, "limit"},
		"limit fraction":  {map[string]any{"limit": 1.5}, "limit"},
		"unknown field":   {map[string]any{"segment": "x"}, "segment"},
		"bad cursor":      {map[string]any{"cursor": "not base64!"}, "cursor"},
		"cursor a number": {map[string]any{"cursor": 3}, "cursor"},
		"bad operator":    {map[string]any{"include": []any{map[string]any{"field": "points", "operator": "~", "value": 1}}}, "include[0].operator"},
	}
	for name, tt := range errs {
		t.Run(name, func(t *testing.T) {
			a.as("POST", "/v1/audience/search", tt.body).wantError(t, 400, "validation_failed", tt.field)
		})
	}
	t.Run("criteria over 256 KiB", func(t *testing.T) {
		values := make([]string, 30_000)
		for i := range values {
			values[i] = fmt.Sprint("user-", i)
		}
		a.as("POST", "/v1/audience/search", map[string]any{"include": []any{
			map[string]any{"field": "customFields.x", "operator": "in", "value": values}}}).wantError(t, 400, "limit_exceeded", "include")
	})
	t.Run("another organisation sees none of them", func(t *testing.T) {
		got := a.do("POST", "/v1/audience/search", a.otherKey, map[string]any{}).mustStatus(t, 200)
		if strings.TrimSpace(string(got.raw)) != `{"count":0,"userIds":[],"nextCursor":null}` {
			t.Errorf("answer %s", got.raw)
		}
	})
}

// heldSearch holds every search until release is closed.
type heldSearch struct {
	AudienceSearcher
	started chan struct{}
	release chan struct{}
}

func (h *heldSearch) Search(ctx context.Context, org string, c segment.Criteria, limit int, after string) (processor.AudiencePage, error) {
	h.started <- struct{}{}
	<-h.release
	return h.AudienceSearcher.Search(ctx, org, c, limit, after)
}

// TestAudienceSearchesAreBounded: past the instance's bound, a search is
// refused with a 503 rather than queued, and the running one finishes.
func TestAudienceSearchesAreBounded(t *testing.T) {
	held := &heldSearch{started: make(chan struct{}, 2), release: make(chan struct{})}
	a := newTestAPI(t, testenv.RedisClient(t), testOptions{maxSearches: 1,
		audience: func(s AudienceSearcher) AudienceSearcher { held.AudienceSearcher = s; return held }})
	body := map[string]any{"include": []any{map[string]any{"field": "points", "operator": ">=", "value": 1}}}
	first := make(chan response, 1)
	go func() { first <- a.as("POST", "/v1/audience/search", body) }()
	<-held.started
	a.as("POST", "/v1/audience/search", body).wantError(t, http.StatusServiceUnavailable, "unavailable")
	close(held.release)
	(<-first).mustStatus(t, http.StatusOK)
	a.as("POST", "/v1/audience/search", body).mustStatus(t, http.StatusOK)
}

// slowSearch takes until its ctx ends, or answers an empty page after 10 s
// so that a search left unbounded fails its test instead of hanging it.
type slowSearch struct{ AudienceSearcher }

func (slowSearch) Search(ctx context.Context, org string, c segment.Criteria, limit int, after string) (processor.AudiencePage, error) {
	select {
	case <-ctx.Done():
		return processor.AudiencePage{}, fmt.Errorf("scan: %w", ctx.Err())
	case <-time.After(10 * time.Second):
		return processor.AudiencePage{}, nil
	}
}

// blockingSearch holds a search of no criteria until release closes.
type blockingSearch struct {
	AudienceSearcher
	started chan struct{}
	release chan struct{}
}

func (b blockingSearch) Search(ctx context.Context, org string, c segment.Criteria, limit int, after string) (processor.AudiencePage, error) {
	if len(c.Include)+len(c.Exclude) == 0 {
		b.started <- struct{}{}
		<-b.release
	}
	return b.AudienceSearcher.Search(ctx, org, c, limit, after)
}

// TestAudienceSearchInvalidWhileBusy: criteria that cannot be valid are a
// 400 even while every search slot is taken, not a 503 to retry.
func TestAudienceSearchInvalidWhileBusy(t *testing.T) {
	bs := blockingSearch{started: make(chan struct{}, 1), release: make(chan struct{})}
	a := newTestAPI(t, testenv.RedisClient(t), testOptions{maxSearches: 1,
		audience: func(s AudienceSearcher) AudienceSearcher { bs.AudienceSearcher = s; return bs }})
	busy := make(chan int, 1)
	go func() { // a plain request: no test's Fatal off its goroutine
		req, _ := http.NewRequest("POST", a.srv.URL+"/v1/audience/search", strings.NewReader("{}"))
		req.Header.Set("Authorization", "Bearer "+a.key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			busy <- 0
			return
		}
		resp.Body.Close()
		busy <- resp.StatusCode
	}()
	select {
	case <-bs.started:
	case status := <-busy:
		t.Fatalf("the first search answered %d before it searched", status)
	}
	r := a.as("POST", "/v1/audience/search", `{"include":[{"field":"tier","operator":"bogus","value":1}]}`)
	close(bs.release)
	if status := <-busy; status != http.StatusOK {
		t.Errorf("the search holding the slot answered %d", status)
	}
	r.wantError(t, http.StatusBadRequest, "validation_failed", "include[0].operator")
}

// TestAudienceSearchIsBounded: a search longer than its bound answers a
// 503 that says so, before the server's write timeout would close the
// connection unanswered.
func TestAudienceSearchIsBounded(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t), testOptions{searchFor: 100 * time.Millisecond,
		audience: func(s AudienceSearcher) AudienceSearcher { return slowSearch{s} }})
	body := map[string]any{"include": []any{map[string]any{"field": "points", "operator": ">=", "value": 1}}}
	r := a.as("POST", "/v1/audience/search", body)
	r.wantError(t, http.StatusServiceUnavailable, "unavailable")
	if msg := str(r.body["error"].(map[string]any)["message"]); !strings.Contains(msg, "took longer than 100ms") {
		t.Errorf("message %q does not say the search took too long", msg)
	}
}

// TestReadyzSharesChecks: /readyz answers anyone, and each check reaches
// Redis and dials Kafka; probes within ReadyFor of a check share it, and
// a probe that goes away does not leave the others its cancellation.
func TestReadyzSharesChecks(t *testing.T) {
	var mu sync.Mutex
	var checks int
	state := error(nil)
	now := time.Unix(1_700_000_000, 0)
	s := New(Config{
		// Never reached by /readyz.
		Definitions: membership.NewDefinitions(nil),
		Membership:  membership.NewSets(nil),
		Ready: func(ctx context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			checks++
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return state
		},
		ReadyFor: time.Second,
		Now: func() time.Time {
			mu.Lock()
			defer mu.Unlock()
			return now
		},
	})
	probe := func(ctx context.Context) int {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequestWithContext(ctx, "GET", "/readyz", nil))
		return w.Code
	}
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	if code := probe(gone); code != 200 {
		t.Fatalf("first probe (its client gone) = %d, want 200", code)
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if code := probe(context.Background()); code != 200 {
				t.Errorf("probe = %d, want 200", code)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	if checks != 1 {
		t.Errorf("51 probes within a second made %d checks, want 1", checks)
	}
	state = errors.New("redis does not answer")
	now = now.Add(999 * time.Millisecond)
	mu.Unlock()
	if code := probe(context.Background()); code != 200 {
		t.Errorf("probe within ReadyFor of the check = %d, want its answer, 200", code)
	}
	mu.Lock()
	now = now.Add(time.Millisecond)
	mu.Unlock()
	if code := probe(context.Background()); code != 503 {
		t.Errorf("probe ReadyFor after the check = %d, want a new check's 503", code)
	}
}

// TestLongListsOfBadElementsAreAnsweredBriefly: a body of many elements
// that are not what a list takes (numbers where criteria or user ids
// belong) is answered with a bounded list of details, the criteria with
// their limit, rather than with a detail for each element.
func TestLongListsOfBadElementsAreAnsweredBriefly(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	zeros := "[" + strings.Repeat("0,", 200_000) + "0]"
	for name, tc := range map[string]struct {
		path, body, code, field string
	}{
		"search criteria":   {"/v1/audience/search", `{"include": ` + zeros + `}`, "limit_exceeded", "include"},
		"segment criteria":  {"/v1/segments", `{"name": "x", "type": "dynamic", "criteria": {"exclude": ` + zeros + `}}`, "limit_exceeded", "criteria.exclude"},
		"static list":       {"/v1/segments", `{"name": "x", "type": "static", "userIds": ` + zeros + `}`, "validation_failed", "userIds[0]"},
		"members of a body": {"/v1/segments", `{"name": "x"` + strings.Repeat(`, "k": 0`, 200_000) + `}`, "limit_exceeded", ""},
	} {
		t.Run(name, func(t *testing.T) {
			r := a.as("POST", tc.path, tc.body)
			if tc.field == "" {
				r.wantError(t, http.StatusBadRequest, tc.code)
			} else {
				r.wantError(t, http.StatusBadRequest, tc.code, tc.field)
			}
			if n := len(r.errorFields(t)); n > 101 {
				t.Errorf("%s: %d details in an answer of %d bytes", tc.path, n, len(r.raw))
			}
		})
	}
	r := a.as("POST", "/v1/audience/search", `{"include": `+zeros+`}`)
	if msg := fmt.Sprint(r.body["error"]); !strings.Contains(msg, "got 200001") {
		t.Errorf("the limit's detail does not give the count: %s", msg)
	}
}
