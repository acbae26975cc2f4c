// Package api is segmentd's HTTP API: the /v1 segment, membership and
// evaluation calls of the contract, their authentication by API key, JSON
// errors, Prometheus request metrics, the operational endpoints (/healthz,
// /readyz, /metrics) and the OpenAPI document served at /v1/openapi.json.
//
// The package is thin: it translates HTTP into calls of the segment and
// membership packages, which decide.
package api

import (
	"cmp"
	"context"
	"crypto/sha256"
	"log/slog"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// DefaultMaxBodyBytes bounds request bodies when Config.MaxBodyBytes is zero:
// 32 MiB, room for a static list of 100,000 user ids of the longest kind
// (256 bytes, ~26 MB as JSON).
const DefaultMaxBodyBytes = 32 << 20

// DefaultMaxAudienceSearches is how many audience searches an instance runs
// at once when Config does not say: each holds the ids it has counted, up
// to ~70 bytes a matching user.
const DefaultMaxAudienceSearches = 4

// DefinitionStore keeps segment definitions. *membership.Definitions
// satisfies it.
type DefinitionStore interface {
	// Create stores a new definition, assigning its id; it fails with
	// membership.ErrLimitExceeded at the per-organisation limit.
	Create(ctx context.Context, d segment.Definition) (segment.Definition, error)
	// CreateIdempotent is Create for a request with an Idempotency-Key: a
	// retry gets the segment the key created instead of a second one.
	CreateIdempotent(ctx context.Context, d segment.Definition, ic membership.IdempotentCreate) (membership.CreateOutcome, error)
	// FinishCreate records that a pending idempotent create is complete.
	FinishCreate(ctx context.Context, c *membership.Claim) error
	// ForgetCreate removes the record of a pending idempotent create
	// rolled back.
	ForgetCreate(ctx context.Context, c *membership.Claim) error
	// Get returns one definition or membership.ErrNotFound.
	Get(ctx context.Context, org, id string) (segment.Definition, error)
	// GetMany returns the definitions of ids that exist, by id.
	GetMany(ctx context.Context, org string, ids []string) (map[string]segment.Definition, error)
	// List returns a page of an organisation's definitions and the next cursor.
	List(ctx context.Context, org string, opts membership.ListOptions) ([]segment.Definition, string, error)
	// Update changes a definition with compare-and-set.
	Update(ctx context.Context, org, id string, fn func(*segment.Definition) error) (segment.Definition, error)
	// MarkDeleting hides a definition while its membership is removed.
	MarkDeleting(ctx context.Context, org, id string) (segment.Definition, error)
	// Delete removes a definition.
	Delete(ctx context.Context, org, id string) error
	// Revision returns the definitions' change counter.
	Revision(ctx context.Context) (int64, error)
}

// MembershipStore reads and writes the public membership sets: what the
// membership reads, the static lists and deletions each need.
// *membership.Sets satisfies it.
type MembershipStore interface {
	MemberReader
	StaticLists
	SegmentRemover
}

// MemberReader reads the public membership sets, for the membership calls
// and a segment's size.
type MemberReader interface {
	// Members returns a page of a segment's user ids and the next cursor.
	Members(ctx context.Context, org, seg string, limit int, cursor string) ([]string, string, error)
	// AllMembers returns every user id of a (static) segment, sorted.
	AllMembers(ctx context.Context, org, seg string) ([]string, error)
	// IsMember reports whether a user is in a segment.
	IsMember(ctx context.Context, org, seg, user string) (bool, error)
	// UserSegments returns the ids of the segments a user is in.
	UserSegments(ctx context.Context, org, user string) ([]string, error)
	// Sizes returns the exact size of each segment.
	Sizes(ctx context.Context, org string, ids []string) (map[string]int64, error)
}

// StaticLists plans and writes the changes of static segments' lists.
type StaticLists interface {
	// PlanReplace computes the changes that make a static list userIDs.
	PlanReplace(ctx context.Context, org, seg string, userIDs []string, cause events.Cause, at time.Time) ([]events.Change, error)
	// PlanEdit computes the changes of adding and removing user ids, and
	// returns the size before them.
	PlanEdit(ctx context.Context, org, seg string, add, remove []string, cause events.Cause, at time.Time) ([]events.Change, int64, error)
	// ApplyList writes a change of one static segment's list and moves the
	// list's version with its last write.
	ApplyList(ctx context.Context, org, seg string, changes []events.Change) error
	// ListVersion returns a static segment's list version, which static
	// change events' ids derive from.
	ListVersion(ctx context.Context, org, seg string) (int64, error)
	// Enlist adds users to a segment's member set alone, for DeleteSegment
	// to remove them from.
	Enlist(ctx context.Context, org, seg string, userIDs []string) error
	// RestoreUserSets puts a segment into the own sets of users its member
	// set already holds, publishing nothing.
	RestoreUserSets(ctx context.Context, org, seg string, userIDs []string) error
}

// SegmentRemover removes a deleted segment's membership.
type SegmentRemover interface {
	// ForgetSegment takes a segment out of every stored user's segment
	// set, member or not.
	ForgetSegment(ctx context.Context, org, seg string) (int64, error)
	// DeleteSegment removes a segment's membership, publishing the exits
	// chunk by chunk before writing them.
	DeleteSegment(ctx context.Context, org, seg string, at time.Time, publish func(context.Context, []events.Change) error) (int, error)
}

// ProfileSource reads stored user profiles, for evaluation by user id.
type ProfileSource interface {
	// Profile returns a user's profile; false when the user has none.
	Profile(ctx context.Context, orgID, userID string) (*segment.Profile, bool, error)
}

// Publisher publishes membership changes to the change topic. Publishing the
// same change twice must be harmless: events carry deterministic ids.
type Publisher interface {
	// Publish returns once every change is durably published.
	Publish(ctx context.Context, changes []events.Change) error
}

// Locker takes named leases shared by every instance.
// *membership.Coordinator satisfies it.
type Locker interface {
	// TryLock takes the lease, or extends it when owner holds it; false
	// when another owner holds it.
	TryLock(ctx context.Context, name, owner string, ttl time.Duration) (bool, error)
	// Extend extends the lease while owner holds it; false when it has
	// lapsed or another owner holds it.
	Extend(ctx context.Context, name, owner string, ttl time.Duration) (bool, error)
	// Unlock gives the lease up if owner holds it.
	Unlock(ctx context.Context, name, owner string) error
}

// Config configures a Server. Definitions and Membership are required; the
// rest has defaults.
type Config struct {
	// Definitions stores segment definitions.
	Definitions DefinitionStore
	// Membership reads and writes the membership sets.
	Membership MembershipStore
	// Profiles reads stored profiles for POST /v1/segments/{id}/evaluate
	// with a userId; nil answers such calls with 503.
	Profiles ProfileSource
	// Audience answers POST /v1/audience/search; nil answers it with 503.
	Audience AudienceSearcher
	// Publisher publishes the membership changes of static lists and of
	// deletions before they are written; nil publishes nothing.
	Publisher Publisher
	// Keys maps each API key to the organisation it authenticates (the
	// orgId:key pairs of SEGMENTD_API_KEYS). Only their SHA-256 hashes are
	// kept; empty keys are ignored.
	Keys map[string]string
	// Ready reports whether the service can serve (Kafka and Redis reachable,
	// definitions loaded); nil is always ready.
	Ready func(ctx context.Context) error
	// ReadyFor is how long an answer of Ready is reused: /readyz answers
	// anyone, and each check reaches Redis and dials Kafka, so probes that
	// come faster share one check (those that come during it wait for it).
	// Zero checks on every probe.
	ReadyFor time.Duration
	// Metrics serves /metrics; nil serves Registerer when it is also a
	// Gatherer (a *prometheus.Registry), and 404 otherwise.
	Metrics http.Handler
	// Registerer receives the HTTP request metrics; nil registers them
	// nowhere.
	Registerer prometheus.Registerer
	// Logger logs server errors; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// MaxBodyBytes bounds request bodies (413 past it); zero is
	// DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// MaxAudienceSearches bounds the audience searches one instance runs
	// at once (503 past it); zero is DefaultMaxAudienceSearches.
	MaxAudienceSearches int
	// AudienceTimeout bounds one audience search (503 past it); zero is
	// DefaultAudienceTimeout. The search moves its response's write
	// deadline past it.
	AudienceTimeout time.Duration
	// Locks serialise the changes of a static segment's list and its
	// deletion across instances; nil does not (one instance, in tests).
	Locks Locker
	// AwaitRevision returns once no instance has work in flight that was
	// evaluated with definitions older than rev; a delete waits for it
	// before removing the members, so that no late write of the stream
	// puts one back. nil does not wait.
	AwaitRevision func(ctx context.Context, rev int64) error
}

// Server is the HTTP API. It is an http.Handler, safe for concurrent use.
type Server struct {
	defs     DefinitionStore
	sets     MembershipStore
	profiles ProfileSource
	pub      Publisher
	audience AudienceSearcher
	keys     []keyEntry
	ready    func(ctx context.Context) error
	readyFor time.Duration
	// readyMu guards the last check of ready (readyAt, readyErr) and
	// holds back probes while one runs.
	readyMu  sync.Mutex
	readyAt  time.Time
	readyErr error
	metricsH http.Handler
	log      *slog.Logger
	now      func() time.Time
	maxBody  int64
	await    func(ctx context.Context, rev int64) error
	locks    Locker
	searches chan struct{}
	bodies   *bodyBudget
	// searchFor bounds one audience search.
	searchFor time.Duration
	metrics   *httpMetrics
	mux       *http.ServeMux
}

// keyEntry is one API key, kept as its SHA-256 hash.
type keyEntry struct {
	hash [sha256.Size]byte
	org  string
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	s := &Server{
		defs:      cfg.Definitions,
		sets:      cfg.Membership,
		profiles:  cfg.Profiles,
		pub:       cfg.Publisher,
		audience:  cfg.Audience,
		ready:     cfg.Ready,
		readyFor:  max(cfg.ReadyFor, 0),
		metricsH:  cfg.Metrics,
		log:       cfg.Logger,
		now:       cfg.Now,
		maxBody:   cfg.MaxBodyBytes,
		await:     cfg.AwaitRevision,
		locks:     cfg.Locks,
		searches:  make(chan struct{}, cmp.Or(max(cfg.MaxAudienceSearches, 0), DefaultMaxAudienceSearches)),
		searchFor: cmp.Or(max(cfg.AudienceTimeout, 0), DefaultAudienceTimeout),
		mux:       http.NewServeMux(),
	}
	for key, org := range cfg.Keys {
		if key == "" || org == "" {
			continue
		}
		s.keys = append(s.keys, keyEntry{hash: sha256.Sum256([]byte(key)), org: org})
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	s.bodies = &bodyBudget{left: bodyBudgetBodies * s.maxBody}
	if s.metricsH == nil {
		// The injected registry when it can be read; never the global one.
		if g, ok := cfg.Registerer.(prometheus.Gatherer); ok {
			s.metricsH = promhttp.HandlerFor(g, promhttp.HandlerOpts{})
		} else {
			s.metricsH = http.NotFoundHandler()
		}
	}
	s.metrics = newHTTPMetrics(cfg.Registerer, s.log)
	for _, rt := range s.routes() {
		h := rt.handler
		if rt.method == http.MethodPost || rt.method == http.MethodPut {
			h = s.boundBody(h)
		}
		if rt.auth {
			h = s.authenticate(h)
		}
		s.mux.Handle(rt.method+" "+rt.path, s.instrument(rt.path, s.recoverPanics(h)))
	}
	return s
}

// route is one registered call. The OpenAPI test checks that the document
// describes exactly these.
type route struct {
	method  string
	path    string
	auth    bool
	handler http.HandlerFunc
}

// routes lists every call of the API. Each new call is one row here, a
// handler, and its description in openapi.json.
func (s *Server) routes() []route {
	return []route{
		// Segments.
		{http.MethodGet, "/v1/segments", true, s.listSegments},
		{http.MethodPost, "/v1/segments", true, s.createSegment},
		{http.MethodGet, "/v1/segments/{id}", true, s.getSegment},
		{http.MethodPut, "/v1/segments/{id}", true, s.replaceSegment},
		{http.MethodDelete, "/v1/segments/{id}", true, s.deleteSegment},

		// Membership and explanation.
		{http.MethodGet, "/v1/segments/{id}/members", true, s.listMembers},
		{http.MethodPost, "/v1/segments/{id}/members", true, s.editMembers},
		{http.MethodGet, "/v1/segments/{id}/members/{userId}", true, s.isMember},
		{http.MethodGet, "/v1/users/{userId}/segments", true, s.userSegments},
		{http.MethodPost, "/v1/segments/{id}/evaluate", true, s.evaluate},

		// Audience.
		{http.MethodPost, "/v1/audience/search", true, s.audienceSearch},

		// The description, like every /v1 call, needs a key.
		{http.MethodGet, "/v1/openapi.json", true, s.openAPI},

		// Without authentication.
		{http.MethodGet, "/healthz", false, s.healthz},
		{http.MethodGet, "/readyz", false, s.readyz},
		{http.MethodGet, "/metrics", false, s.serveMetrics},
	}
}

// ServeHTTP serves the API. Calls that match no route are answered with a
// JSON 404, or 405 when the path exists for other methods.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// A path not in its clean form matches a route only through the mux's
	// redirect, which would answer before the key is checked, and in HTML.
	// The mux cleans the escaped path: an id holding an encoded slash
	// ("%2F") is no empty element.
	if _, pattern := s.mux.Handler(r); pattern != "" && clean(r.URL.EscapedPath()) {
		s.mux.ServeHTTP(w, r)
		return
	}
	start := time.Now()
	if strings.HasPrefix(r.URL.Path, "/v1/") {
		// Every /v1 call needs a key, even one that matches no route: what
		// exists under /v1 is not told to callers without one.
		if _, ok := s.lookupKey(r.Header.Get("Authorization")); !ok {
			unauthorized(w)
			s.metrics.observe("unmatched", r.Method, http.StatusUnauthorized, time.Since(start))
			return
		}
	}
	// Let the mux decide between 404 and 405, then answer in JSON. A path
	// that is not clean is no route: an API call is not redirected.
	rec := &recordingWriter{header: http.Header{}}
	s.mux.ServeHTTP(rec, r)
	code := rec.code
	if code >= 300 && code < 400 {
		code = http.StatusNotFound
	}
	switch code {
	case http.StatusNotFound:
		writeError(w, http.StatusNotFound, codeNotFound, "no such route", nil)
	case http.StatusMethodNotAllowed:
		if allow := rec.header.Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
		}
		writeError(w, http.StatusMethodNotAllowed, codeMethodNotAllowed, "method "+r.Method+" is not allowed here", nil)
	default:
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(code)
		_, _ = w.Write(rec.body)
	}
	s.metrics.observe("unmatched", r.Method, code, time.Since(start))
}

// clean reports whether p is in the form the mux matches without a
// redirect: no empty, "." or ".." element.
func clean(p string) bool {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// recordingWriter keeps what the mux answers to an unmatched call.
type recordingWriter struct {
	header http.Header
	code   int
	body   []byte
}

func (w *recordingWriter) Header() http.Header { return w.header }

func (w *recordingWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}

func (w *recordingWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.body = append(w.body, b...)
	return len(b), nil
}

// recoverPanics answers a panicking handler with a JSON 500 instead of a
// dropped connection, and logs it.
func (s *Server) recoverPanics(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("handler panicked", "method", r.Method, "route", r.Pattern, "panic", v)
				writeError(w, http.StatusInternalServerError, codeInternal, "internal error", nil)
			}
		}()
		h(w, r)
	}
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if err := s.checkReady(r.Context()); err != nil {
		writeError(w, http.StatusServiceUnavailable, codeUnavailable, "not ready: "+err.Error(), nil)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// checkReady runs ready, or gives the answer of a check made less than
// readyFor ago.
func (s *Server) checkReady(ctx context.Context) error {
	if s.ready == nil {
		return nil
	}
	if s.readyFor == 0 {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return s.ready(ctx)
	}
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	if !s.readyAt.IsZero() && s.now().Sub(s.readyAt) < s.readyFor {
		return s.readyErr
	}
	// Shared by the probes waiting: one that went away must not leave
	// them a cancellation to read as not ready.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	s.readyErr, s.readyAt = s.ready(ctx), s.now()
	return s.readyErr
}

func (s *Server) serveMetrics(w http.ResponseWriter, r *http.Request) {
	s.metricsH.ServeHTTP(w, r)
}

// The Redis stores satisfy the interfaces.
var (
	_ DefinitionStore = (*membership.Definitions)(nil)
	_ MembershipStore = (*membership.Sets)(nil)
)
