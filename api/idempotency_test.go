package api

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

func TestCreateWithIdempotencyKey(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		a := newTestAPI(t, rdb)
		withKey := func(k string) http.Header { return http.Header{"Idempotency-Key": {k}} }
		count := func(key string) int {
			t.Helper()
			list := a.do("GET", "/v1/segments", key, nil).mustStatus(t, http.StatusOK)
			return len(list.body["data"].([]any))
		}

		first := a.doWith("POST", "/v1/segments", a.key, withKey("create-vip-1"), dynamicBody("VIP")).mustStatus(t, http.StatusCreated)
		if first.header.Get("Idempotent-Replayed") != "" {
			t.Error("a first create says it was replayed")
		}
		id := str(first.body["id"])

		// The same request, spelled differently, gets the same segment.
		respelled := `{"type":"dynamic",  "url":"https://example.com/vip", "description":"engaged", "name":"VIP",
			"criteria":{"include":[{"field":"tier","operator":"in","value":["gold","platinum"]},{"field":"points","operator":">=","value":1e3}],
			"exclude":[{"value":true,"field":"customFields.testAccount","operator":"equals"}]}}`
		again := a.doWith("POST", "/v1/segments", a.key, withKey("create-vip-1"), respelled).mustStatus(t, http.StatusCreated)
		if str(again.body["id"]) != id || again.header.Get("Idempotent-Replayed") != "true" || again.header.Get("Location") != "/v1/segments/"+id {
			t.Errorf("retry answered %v %s, want segment %s replayed", again.header, again.raw, id)
		}
		if n := count(a.key); n != 1 {
			t.Errorf("%d segments after a retried create, want 1", n)
		}

		// Another request with the key is refused; another key creates.
		other := dynamicBody("VIP")
		other["name"] = "VIP 2"
		a.doWith("POST", "/v1/segments", a.key, withKey("create-vip-1"), other).wantError(t, http.StatusUnprocessableEntity, "idempotency_key_reused", "Idempotency-Key")
		second := a.doWith("POST", "/v1/segments", a.key, withKey("create-vip-2"), other).mustStatus(t, http.StatusCreated)
		if str(second.body["id"]) == id {
			t.Error("a new key replayed the first segment")
		}
		// Keys are the organisation's own.
		theirs := a.doWith("POST", "/v1/segments", a.otherKey, withKey("create-vip-1"), dynamicBody("VIP")).mustStatus(t, http.StatusCreated)
		if str(theirs.body["id"]) == id || count(a.otherKey) != 1 {
			t.Errorf("another organisation's create with the same key answered %s", theirs.raw)
		}

		// A retry after the segment was deleted does not bring it back.
		a.as("DELETE", "/v1/segments/"+id, nil).mustStatus(t, http.StatusNoContent)
		a.doWith("POST", "/v1/segments", a.key, withKey("create-vip-1"), dynamicBody("VIP")).wantError(t, http.StatusConflict, "idempotency_key_reused", "Idempotency-Key")

		for name, h := range map[string]http.Header{
			"empty":    withKey(""),
			"space":    withKey("a b"),
			"too long": withKey(strings.Repeat("k", 256)),
			"twice":    {"Idempotency-Key": {"a", "b"}},
		} {
			t.Run(name, func(t *testing.T) {
				a.doWith("POST", "/v1/segments", a.key, h, dynamicBody("bad key")).wantError(t, http.StatusBadRequest, "validation_failed", "Idempotency-Key")
			})
		}
		if n := count(a.key); n != 1 {
			t.Errorf("%d segments, want 1 (the second key's)", n)
		}
	})
}

// A static create that failed is rolled back with its key; one whose
// request is still running is not touched; one that stopped before its list
// was written is finished by the retry, and only then.
func TestIdempotentStaticCreate(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		a := newTestAPI(t, rdb)
		withKey := func(k string) http.Header { return http.Header{"Idempotency-Key": {k}} }
		body := map[string]any{"name": "Beta", "type": "static", "userIds": []string{"u2", "u1"}}

		a.pub.setFailing(true)
		a.doWith("POST", "/v1/segments", a.key, withKey("static-1"), body).wantError(t, http.StatusServiceUnavailable, "unavailable")
		a.pub.setFailing(false)
		a.pub.take()
		created := a.doWith("POST", "/v1/segments", a.key, withKey("static-1"), body).mustStatus(t, http.StatusCreated)
		if created.header.Get("Idempotent-Replayed") != "" || !slices.Equal(strList(created.body["userIds"]), []string{"u1", "u2"}) {
			t.Errorf("retry after a rollback answered %v %s, want a new create", created.header, created.raw)
		}
		if got := changeSigns(a.pub.take()); !slices.Equal(got, []string{"+u1", "+u2"}) {
			t.Errorf("create published %v", got)
		}

		// Requests that stored the definition and have not written the
		// list: one still running (its lease is live), one gone.
		gamma := map[string]any{"name": "Gamma", "type": "static", "userIds": []string{"u3"}}
		pending := func(key string, lease time.Duration) string {
			t.Helper()
			return pendingStaticCreate(t, rdb, a.org, "Gamma", segment.StatusBuilding, []string{"u3"}, key, lease)
		}
		pending("static-2", time.Hour)
		a.doWith("POST", "/v1/segments", a.key, withKey("static-2"), gamma).wantError(t, http.StatusConflict, "idempotency_key_in_use", "Idempotency-Key")

		id := pending("static-3", time.Millisecond)
		time.Sleep(5 * time.Millisecond)
		retry := a.doWith("POST", "/v1/segments", a.key, withKey("static-3"), gamma).mustStatus(t, http.StatusCreated)
		if str(retry.body["id"]) != id || retry.header.Get("Idempotent-Replayed") != "true" || num(retry.body["size"]) != 1 {
			t.Errorf("retry answered %s, want segment %s with its list", retry.raw, id)
		}
		if got := testenv.SMembers(t, rdb, membership.SegmentMembersKey(a.org, id)); !slices.Equal(got, []string{"u3"}) {
			t.Errorf("members = %v", got)
		}
		if got := changeSigns(a.pub.take()); !slices.Equal(got, []string{"+u3"}) {
			t.Errorf("retry published %v", got)
		}
		// Finished: a further retry leaves the list, edited since, alone.
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"u9"}}).mustStatus(t, http.StatusOK)
		a.pub.take()
		again := a.doWith("POST", "/v1/segments", a.key, withKey("static-3"), gamma).mustStatus(t, http.StatusCreated)
		if got := strList(again.body["userIds"]); !slices.Equal(got, []string{"u3", "u9"}) {
			t.Errorf("a retry of a finished create answered the list %v, want [u3 u9]", got)
		}
		if got := a.pub.take(); len(got) != 0 {
			t.Errorf("a retry of a finished create published %v", changeSigns(got))
		}
	})
}

// failingOnceLocker fails the first lock of a segment's list.
type failingOnceLocker struct {
	Locker
	failed *atomic.Bool
}

func (f failingOnceLocker) TryLock(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	if strings.Contains(name, "seg_") && f.failed.CompareAndSwap(false, true) {
		return false, errors.New("connection reset")
	}
	return f.Locker.TryLock(ctx, name, owner, ttl)
}

// TestIdempotentStaticCreateLockFailure: a static create with a key whose
// list cannot be locked answers 503, and the client's retry creates the
// segment at once (not refused until the lease runs out), leaving no empty
// segment of the first request behind.
func TestIdempotentStaticCreateLockFailure(t *testing.T) {
	var failed atomic.Bool
	a := newTestAPI(t, testenv.RedisClient(t), testOptions{locks: func(l Locker) Locker { return failingOnceLocker{Locker: l, failed: &failed} }})
	key := http.Header{"Idempotency-Key": {"lock-1"}}
	body := map[string]any{"name": "s", "type": "static", "userIds": []string{"u1"}}
	a.doWith("POST", "/v1/segments", a.key, key, body).wantError(t, http.StatusServiceUnavailable, "unavailable")
	retry := a.doWith("POST", "/v1/segments", a.key, key, body).mustStatus(t, http.StatusCreated)
	list := a.as("GET", "/v1/segments?type=static", nil).mustStatus(t, http.StatusOK)
	data, _ := list.body["data"].([]any)
	if len(data) != 1 || str(data[0].(map[string]any)["id"]) != str(retry.body["id"]) || num(data[0].(map[string]any)["size"]) != 1 {
		t.Errorf("segments after the retry: %s, want only %s with its list", list.raw, retry.body["id"])
	}
}

// TestStaticCreateTakeoverKeepsALaterEdit: a retry takes over a create
// whose request stopped before writing its list, and waits for the list's
// lock while an edit of the members, made meanwhile, holds it: the edit is
// newer than the create's list and must stay.
func TestStaticCreateTakeoverKeepsALaterEdit(t *testing.T) {
	rdb := testenv.RedisClient(t)
	var a *testAPI
	var idv atomic.Pointer[string] // read by the server's goroutines
	var hooked atomic.Bool
	a = newTestAPI(t, rdb, testOptions{locks: func(l Locker) Locker {
		return hookedLocker{Locker: l, before: func(name string) {
			// The takeover's first try for the list: another request's
			// edit comes first.
			if id := idv.Load(); id != nil && name == membership.ListLock(a.org, *id) && hooked.CompareAndSwap(false, true) {
				a.as("POST", "/v1/segments/"+*id+"/members", map[string]any{"add": []string{"z"}}).mustStatus(t, http.StatusOK)
			}
		}}
	}})
	// Stored ready, as builds before static segments built stored it: the
	// list could then be edited before the create's retry.
	id := pendingStaticCreate(t, rdb, a.org, "Delta", segment.StatusReady, []string{"u3"}, "static-edit", time.Millisecond)
	time.Sleep(5 * time.Millisecond) // the stopped request's lease ends
	idv.Store(&id)
	body := map[string]any{"name": "Delta", "type": "static", "userIds": []string{"u3"}}
	a.doWith("POST", "/v1/segments", a.key, http.Header{"Idempotency-Key": {"static-edit"}}, body).mustStatus(t, http.StatusCreated)
	if !hooked.Load() {
		t.Fatal("the edit did not run before the takeover's write")
	}
	if got := testenv.SMembers(t, rdb, membership.SegmentMembersKey(a.org, id)); !slices.Equal(got, []string{"z"}) {
		t.Errorf("members = %v, want the edit's [z]", got)
	}
	if got := changeSigns(a.pub.take()); !slices.Equal(got, []string{"+z"}) {
		t.Errorf("published %v, want the edit's +z alone", got)
	}
}

// hookedLocker calls before ahead of each TryLock.
type hookedLocker struct {
	Locker
	before func(name string)
}

func (h hookedLocker) TryLock(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	h.before(name)
	return h.Locker.TryLock(ctx, name, owner, ttl)
}

// TestStaticCreateRetryAfterListWrittenIsReady: a keyed static create whose
// request wrote its whole list and stopped before marking the segment ready
// (its instance killed, or Redis failing on that update and on the
// rollback's) is answered by the retry after the lease as the finished
// create it is: the segment must read ready, not stay building for the jobs
// to roll back 20 minutes after a 201.
func TestStaticCreateRetryAfterListWrittenIsReady(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	ctx := context.Background()
	users := []string{"u1", "u2"}
	id := pendingStaticCreate(t, rdb, a.org, "Eps", segment.StatusBuilding, users, "static-written", time.Millisecond)
	// The stopped request's list, written whole (the version moved).
	sets := membership.NewSets(rdb)
	changes, err := sets.PlanReplace(ctx, a.org, id, users, membership.StaticCause(id, 0, users, nil), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := sets.ApplyList(ctx, a.org, id, changes); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // the stopped request's lease ends
	body := map[string]any{"name": "Eps", "type": "static", "userIds": users}
	retry := a.doWith("POST", "/v1/segments", a.key, http.Header{"Idempotency-Key": {"static-written"}}, body).mustStatus(t, http.StatusCreated)
	if got := str(retry.body["status"]); got != "ready" {
		t.Errorf("the retry of a create whose list is written answered status %q, want ready", got)
	}
	if got := str(a.as("GET", "/v1/segments/"+id, nil).body["status"]); got != "ready" {
		t.Errorf("after the retry the segment reads as %q, want ready (a building one is rolled back by the jobs)", got)
	}
	// Its list can be changed again.
	a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"u3"}}).mustStatus(t, http.StatusOK)
}

// pendingStaticCreate stores a keyed static create as a request that stored
// the definition with status (building, as the API stores it now) and
// stopped before writing the list leaves it, its lease lasting lease, and
// returns the segment's id.
func pendingStaticCreate(t *testing.T, rdb redis.UniversalClient, org, name string, status segment.Status, userIDs []string, key string, lease time.Duration) string {
	t.Helper()
	d := segment.Definition{OrgID: org, Name: name, Type: segment.TypeStatic, Status: status, UserIDs: userIDs}
	fp, err := createFingerprint(d)
	if err != nil {
		t.Fatal(err)
	}
	out, err := membership.NewDefinitions(rdb).CreateIdempotent(context.Background(), d,
		membership.IdempotentCreate{Key: key, Fingerprint: fp, Pending: true, Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	return out.Definition.ID
}

// gatedLocks holds the first list lock taken until release is closed.
type gatedLocks struct {
	Locker
	once             chan struct{}
	started, release chan struct{}
}

func (g gatedLocks) TryLock(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	select {
	case <-g.once:
		close(g.started)
		<-g.release
	default:
	}
	return g.Locker.TryLock(ctx, name, owner, ttl)
}

// TestStaticCreateMeetsADelete: the segment a create made is deleted by
// another request before the create writes its list. The create answers a
// 409, not a 404; with an Idempotency-Key, its retry is refused as after
// any deletion of the key's segment, rather than make a second segment.
func TestStaticCreateMeetsADelete(t *testing.T) {
	for name, tt := range map[string]struct {
		key  string
		code string
	}{
		"keyed":   {"k-1", "idempotency_key_reused"},
		"unkeyed": {"", "segment_busy"},
	} {
		t.Run(name, func(t *testing.T) {
			g := gatedLocks{once: make(chan struct{}, 1), started: make(chan struct{}), release: make(chan struct{})}
			g.once <- struct{}{}
			a := newTestAPI(t, testenv.RedisClient(t), testOptions{locks: func(l Locker) Locker { g.Locker = l; return g }})
			body := map[string]any{"name": "s", "type": "static", "userIds": []string{"u1", "u2"}}
			hdr := http.Header{}
			if tt.key != "" {
				hdr.Set("Idempotency-Key", tt.key)
			}
			created := make(chan response, 1)
			go func() { created <- a.doWith("POST", "/v1/segments", a.key, hdr, body) }()
			<-g.started
			data, _ := a.as("GET", "/v1/segments?type=static", nil).mustStatus(t, http.StatusOK).body["data"].([]any)
			if len(data) != 1 {
				t.Fatalf("%d segments listed, want the one being created", len(data))
			}
			id := str(data[0].(map[string]any)["id"])
			a.as("DELETE", "/v1/segments/"+id, nil).mustStatus(t, http.StatusNoContent)
			close(g.release)
			(<-created).wantError(t, http.StatusConflict, tt.code)
			if tt.key != "" {
				a.doWith("POST", "/v1/segments", a.key, hdr, body).wantError(t, http.StatusConflict, "idempotency_key_reused")
			}
			if n := len(a.pub.take()); n != 0 {
				t.Errorf("%d changes published for a segment whose list was never written", n)
			}
		})
	}
}

// TestStaticCreateMeetsADeleteWhileWritingItsList: the segment a create made
// is deleted by another request while the create writes its list (the
// DELETE waits for the list's lock). The create must not answer 404
// "segment not found" to a POST /v1/segments, and a retry with its
// Idempotency-Key must be refused as after any deletion of the key's
// segment, rather than create the deleted segment again under a new id.
func TestStaticCreateMeetsADeleteWhileWritingItsList(t *testing.T) {
	for name, tt := range map[string]struct {
		key  string
		code string
	}{
		"keyed":   {"k-w", "idempotency_key_reused"},
		"unkeyed": {"", "segment_busy"},
	} {
		t.Run(name, func(t *testing.T) {
			rdb := testenv.RedisClient(t)
			p := &pausedLists{written: make(chan struct{}), release: make(chan struct{})}
			a := newTestAPI(t, rdb, testOptions{membership: func(m MembershipStore) MembershipStore { p.MembershipStore = m; return p }})
			body := map[string]any{"name": "s", "type": "static", "userIds": []string{"u1", "u2"}}
			hdr := http.Header{}
			if tt.key != "" {
				hdr.Set("Idempotency-Key", tt.key)
			}
			p.armed.Store(true)
			created := make(chan response, 1)
			go func() { created <- a.doWith("POST", "/v1/segments", a.key, hdr, body) }()
			<-p.written
			data, _ := a.as("GET", "/v1/segments?type=static", nil).mustStatus(t, http.StatusOK).body["data"].([]any)
			if len(data) != 1 {
				t.Fatalf("%d segments listed, want the one being created", len(data))
			}
			id := str(data[0].(map[string]any)["id"])
			del := make(chan response, 1)
			go func() { del <- a.as("DELETE", "/v1/segments/"+id, nil) }()
			if !testenv.EventuallyEvery(10*time.Second, 5*time.Millisecond, func() bool { return a.as("GET", "/v1/segments/"+id, nil).status == http.StatusNotFound }) {
				t.Fatal("the DELETE did not begin")
			}
			close(p.release)
			r := <-created
			(<-del).mustStatus(t, http.StatusNoContent)
			if r.status != http.StatusConflict {
				t.Errorf("create answered %d %s, want 409 %s", r.status, r.raw, tt.code)
			} else if got := r.errorCode(t); got != tt.code {
				t.Errorf("create answered code %q, want %q", got, tt.code)
			}
			if tt.key != "" {
				retry := a.doWith("POST", "/v1/segments", a.key, hdr, body)
				if retry.status == http.StatusCreated {
					t.Fatalf("the retry of a create whose segment was deleted (DELETE answered 204) created it again as %s", str(retry.body["id"]))
				}
				retry.wantError(t, http.StatusConflict, "idempotency_key_reused")
			}
		})
	}
}
