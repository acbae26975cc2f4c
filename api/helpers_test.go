package api

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// recordingPublisher records what it publishes; while failing is set it
// fails instead.
type recordingPublisher struct {
	mu      sync.Mutex
	changes []events.Change
	failing bool
}

func (p *recordingPublisher) Publish(_ context.Context, changes []events.Change) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failing {
		return errors.New("publisher down")
	}
	p.changes = append(p.changes, changes...)
	return nil
}

func (p *recordingPublisher) setFailing(v bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failing = v
}

// take returns and forgets the changes published so far.
func (p *recordingPublisher) take() []events.Change {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.changes
	p.changes = nil
	return out
}

// storeProfile stores a user's profile as the processor does.
func (a *testAPI) storeProfile(user string, fields map[string]any) {
	a.t.Helper()
	p := segment.AppendProfile(nil, segment.NewProfile(fields))
	if _, err := membership.NewUsers(a.rdb).Write(context.Background(), []membership.UserWrite{{OrgID: a.org, UserID: user, Version: 1, Profile: p}}); err != nil {
		a.t.Fatal(err)
	}
}

// testAPI is a server over real Redis with two organisations.
type testAPI struct {
	t        *testing.T
	rdb      redis.UniversalClient
	srv      *httptest.Server
	pub      *recordingPublisher
	org      string
	key      string
	otherOrg string
	otherKey string
	ready    error
	readyMu  sync.Mutex
}

type testOptions struct {
	maxBody int64
	await   func(ctx context.Context, rev int64) error
	// audience wraps the audience searcher; maxSearches bounds searches.
	audience    func(AudienceSearcher) AudienceSearcher
	maxSearches int
	// searchFor bounds one audience search (zero: the default).
	searchFor time.Duration
	// membership wraps the membership store.
	membership func(MembershipStore) MembershipStore
	// locks wraps the list locks.
	locks func(Locker) Locker
	// publisher, when set, publishes instead of the recording publisher.
	publisher Publisher
}

func newTestAPI(t *testing.T, rdb redis.UniversalClient, opts ...testOptions) *testAPI {
	t.Helper()
	var o testOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	a := &testAPI{
		t: t, rdb: rdb, pub: &recordingPublisher{},
		org: testenv.Org(t, rdb, "org"), otherOrg: testenv.Org(t, rdb, "other"),
	}
	a.key, a.otherKey = "key-"+a.org, "key-"+a.otherOrg
	reg := prometheus.NewRegistry()
	users := membership.NewUsers(rdb)
	var audience AudienceSearcher = processor.NewAudience(users, nil)
	if o.audience != nil {
		audience = o.audience(audience)
	}
	var sets MembershipStore = membership.NewSets(rdb)
	if o.membership != nil {
		sets = o.membership(sets)
	}
	var locks Locker = membership.NewCoordinator(rdb)
	if o.locks != nil {
		locks = o.locks(locks)
	}
	s := New(Config{
		Definitions: membership.NewDefinitions(rdb),
		Membership:  sets,
		Profiles:    users,
		Audience:    audience,
		Publisher:   cmp.Or[Publisher](o.publisher, a.pub),
		Keys:        map[string]string{a.key: a.org, a.otherKey: a.otherOrg},
		Ready: func(context.Context) error {
			a.readyMu.Lock()
			defer a.readyMu.Unlock()
			return a.ready
		},
		Metrics:       promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Registerer:    reg,
		MaxBodyBytes:  o.maxBody,
		AwaitRevision: o.await,
		Locks:         locks,

		MaxAudienceSearches: o.maxSearches,
		AudienceTimeout:     o.searchFor,
	})
	a.srv = httptest.NewServer(s)
	t.Cleanup(a.srv.Close)
	return a
}

// response is an answer, decoded when it is JSON.
type response struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

// do sends a request with the API key key ("" for none); body is sent as is
// when it is a string or []byte, and as JSON otherwise.
func (a *testAPI) do(method, path, key string, body any) response {
	a.t.Helper()
	return a.doWith(method, path, key, nil, body)
}

// doWith is do with extra request headers.
func (a *testAPI) doWith(method, path, key string, header http.Header, body any) response {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = bytes.NewReader([]byte(b))
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			a.t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, a.srv.URL+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// A redirect is an answer to check, not to follow.
	c := *a.srv.Client()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	res, err := c.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	out := response{status: res.StatusCode, header: res.Header, raw: raw}
	if len(raw) > 0 && res.Header.Get("Content-Type") == "application/json" {
		if err := json.Unmarshal(raw, &out.body); err != nil {
			a.t.Fatalf("%s %s: answer is not a JSON object: %v: %s", method, path, err, raw)
		}
	}
	return out
}

// as sends a request as the test's organisation.
func (a *testAPI) as(method, path string, body any) response {
	a.t.Helper()
	return a.do(method, path, a.key, body)
}

// mustStatus fails the test unless r has the status.
func (r response) mustStatus(t *testing.T, status int) response {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.raw)
	}
	return r
}

// errorCode returns the error code of an error answer, and checks its shape.
func (r response) errorCode(t *testing.T) string {
	t.Helper()
	e, ok := r.body["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object in %s", r.raw)
	}
	if _, ok := e["message"].(string); !ok {
		t.Errorf("error without message: %s", r.raw)
	}
	if _, ok := e["details"].([]any); !ok {
		t.Errorf("error without details list: %s", r.raw)
	}
	code, _ := e["code"].(string)
	return code
}

// errorFields returns the fields named by an error answer's details.
func (r response) errorFields(t *testing.T) []string {
	t.Helper()
	e, _ := r.body["error"].(map[string]any)
	details, _ := e["details"].([]any)
	var out []string
	for _, d := range details {
		m, _ := d.(map[string]any)
		f, _ := m["field"].(string)
		out = append(out, f)
	}
	return out
}

// wantError checks status, code and that every field in fields is named.
func (r response) wantError(t *testing.T, status int, code string, fields ...string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.raw)
	}
	if got := r.errorCode(t); got != code {
		t.Errorf("code %q, want %q: %s", got, code, r.raw)
	}
	named := r.errorFields(t)
	for _, f := range fields {
		if !slices.Contains(named, f) {
			t.Errorf("field %q not named in %s", f, r.raw)
		}
	}
}

func str(v any) string { s, _ := v.(string); return s }

func num(v any) float64 { f, _ := v.(float64); return f }

func strList(v any) []string {
	arr, _ := v.([]any)
	out := []string{}
	for _, e := range arr {
		out = append(out, str(e))
	}
	return out
}

// dynamicBody is a valid body of a dynamic segment.
func dynamicBody(name string) map[string]any {
	return map[string]any{
		"name": name, "description": "engaged", "type": "dynamic", "url": "https://example.com/vip",
		"criteria": map[string]any{
			"include": []any{
				map[string]any{"field": "tier", "operator": "in", "value": []any{"gold", "platinum"}},
				map[string]any{"field": "points", "operator": ">=", "value": 1000},
			},
			"exclude": []any{
				map[string]any{"field": "customFields.testAccount", "operator": "equals", "value": true},
			},
		},
	}
}

// changeSigns renders changes as "+user" and "-user", sorted.
func changeSigns(changes []events.Change) []string {
	out := make([]string, len(changes))
	for i, c := range changes {
		out[i] = map[bool]string{true: "+", false: "-"}[c.Entered] + c.UserID
	}
	slices.Sort(out)
	return out
}
