package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

func TestDynamicSegmentCRUD(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		a := newTestAPI(t, rdb)
		created := a.as("POST", "/v1/segments", dynamicBody("Engaged VIPs")).mustStatus(t, http.StatusCreated)
		seg := created.body
		id := str(seg["id"])
		if !strings.HasPrefix(id, "seg_") {
			t.Fatalf("id %q", id)
		}
		if got := created.header.Get("Location"); got != "/v1/segments/"+id {
			t.Errorf("Location = %q", got)
		}
		want := map[string]any{
			"name": "Engaged VIPs", "description": "engaged", "type": "dynamic", "url": "https://example.com/vip",
			"estimatedSize": 0.0, "size": 0.0, "status": "building",
		}
		for k, v := range want {
			if seg[k] != v {
				t.Errorf("%s = %v, want %v", k, seg[k], v)
			}
		}
		if _, ok := seg["userIds"]; ok {
			t.Error("a dynamic segment shows userIds")
		}
		if p, _ := seg["progress"].(map[string]any); p == nil || p["usersScanned"] != 0.0 {
			t.Errorf("progress = %v while building, want usersScanned 0", seg["progress"])
		}
		for _, k := range []string{"createdAt", "updatedAt"} {
			if _, err := time.Parse(time.RFC3339, str(seg[k])); err != nil {
				t.Errorf("%s = %v: %v", k, seg[k], err)
			}
		}
		wantCriteria := `{"exclude":[{"field":"customFields.testAccount","operator":"equals","value":true}],"include":[{"field":"tier","operator":"in","value":["gold","platinum"]},{"field":"points","operator":"\u003e=","value":1000}]}`
		if got, _ := json.Marshal(seg["criteria"]); string(got) != wantCriteria {
			t.Errorf("criteria = %s\nwant %s", got, wantCriteria)
		}

		got := a.as("GET", "/v1/segments/"+id, nil).mustStatus(t, http.StatusOK)
		if string(got.raw) != string(created.raw) {
			t.Errorf("GET = %s\nwant %s", got.raw, created.raw)
		}

		// A name change keeps the generation and the status.
		defs := membership.NewDefinitions(rdb)
		if err := defs.MarkReady(context.Background(), a.org, id, 1); err != nil {
			t.Fatal(err)
		}
		put := a.as("PUT", "/v1/segments/"+id, map[string]any{"name": "Renamed", "url": nil}).mustStatus(t, http.StatusOK)
		if put.body["name"] != "Renamed" || put.body["status"] != "ready" || put.body["url"] != nil || put.body["description"] != "engaged" {
			t.Errorf("after renaming: %s", put.raw)
		}
		if d, _ := defs.Get(context.Background(), a.org, id); d.Generation != 1 {
			t.Errorf("generation %d after a rename, want 1", d.Generation)
		}

		// New criteria bump the generation and rebuild.
		put = a.as("PUT", "/v1/segments/"+id, map[string]any{
			"criteria": map[string]any{"include": []any{map[string]any{"field": "email", "operator": "exists"}}},
		}).mustStatus(t, http.StatusOK)
		if put.body["status"] != "building" {
			t.Errorf("status %v after new criteria, want building", put.body["status"])
		}
		if got, _ := json.Marshal(put.body["criteria"]); string(got) != `{"exclude":[],"include":[{"field":"email","operator":"exists"}]}` {
			t.Errorf("criteria = %s", got)
		}
		d, _ := defs.Get(context.Background(), a.org, id)
		if d.Generation != 2 {
			t.Errorf("generation %d after new criteria, want 2", d.Generation)
		}
		if err := defs.MarkReady(context.Background(), a.org, id, 1); err != nil {
			t.Fatal(err)
		}
		if d, _ := defs.Get(context.Background(), a.org, id); d.Status != segment.StatusBuilding {
			t.Error("a backfill of the old criteria marked the new ones ready")
		}

		// The type cannot change; userIds do not belong to a dynamic segment.
		a.as("PUT", "/v1/segments/"+id, map[string]any{"type": "static"}).wantError(t, 400, "validation_failed", "type")
		a.as("PUT", "/v1/segments/"+id, map[string]any{"userIds": []string{"u1"}}).wantError(t, 400, "validation_failed", "userIds")
		a.as("PUT", "/v1/segments/"+id, map[string]any{"name": ""}).wantError(t, 400, "validation_failed", "name")

		// The list shows it.
		list := a.as("GET", "/v1/segments", nil).mustStatus(t, http.StatusOK)
		if data, _ := list.body["data"].([]any); len(data) != 1 || list.body["nextCursor"] != nil {
			t.Errorf("list = %s", list.raw)
		}

		a.as("DELETE", "/v1/segments/"+id, nil).mustStatus(t, http.StatusNoContent)
		a.as("GET", "/v1/segments/"+id, nil).wantError(t, 404, "not_found")
		a.as("DELETE", "/v1/segments/"+id, nil).wantError(t, 404, "not_found")
		a.as("PUT", "/v1/segments/"+id, map[string]any{"name": "x"}).wantError(t, 404, "not_found")
	})
}

func TestStaticSegmentLifecycle(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		a := newTestAPI(t, rdb)
		membersKey := func(id string) string { return membership.SegmentMembersKey(a.org, id) }
		userKey := func(u string) string { return membership.UserSegmentsKey(a.org, u) }

		created := a.as("POST", "/v1/segments", map[string]any{
			"name": "Beta", "type": "static", "userIds": []string{"u3", "u1", "u2", "u1"},
		}).mustStatus(t, http.StatusCreated)
		id := str(created.body["id"])
		// estimatedSize is 0 at creation, static or dynamic, until the estimate job runs.
		if created.body["status"] != "ready" || num(created.body["estimatedSize"]) != 0 || num(created.body["size"]) != 3 {
			t.Errorf("created = %s", created.raw)
		}
		if got := strList(created.body["userIds"]); !slices.Equal(got, []string{"u1", "u2", "u3"}) {
			t.Errorf("userIds = %v", got)
		}
		if _, ok := created.body["criteria"]; ok {
			t.Error("a static segment shows criteria")
		}
		if got := testenv.SMembers(t, rdb, membersKey(id)); !slices.Equal(got, []string{"u1", "u2", "u3"}) {
			t.Errorf("members key = %v", got)
		}
		if got := testenv.SMembers(t, rdb, userKey("u1")); !slices.Equal(got, []string{id}) {
			t.Errorf("u1's segments = %v", got)
		}
		pub := a.pub.take()
		if got := changeSigns(pub); !slices.Equal(got, []string{"+u1", "+u2", "+u3"}) {
			t.Errorf("published %v", got)
		}
		for _, c := range pub {
			if c.Cause.Type != events.CauseStatic || c.OrgID != a.org || c.SegmentID != id {
				t.Errorf("published %+v", c)
			}
		}

		// Add and remove.
		edit := a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"u4", "u1"}, "remove": []string{"u2", "u9"}}).mustStatus(t, http.StatusOK)
		if num(edit.body["added"]) != 1 || num(edit.body["removed"]) != 1 || num(edit.body["size"]) != 3 {
			t.Errorf("edit = %s", edit.raw)
		}
		if got := changeSigns(a.pub.take()); !slices.Equal(got, []string{"+u4", "-u2"}) {
			t.Errorf("published %v", got)
		}
		if got := testenv.SMembers(t, rdb, membersKey(id)); !slices.Equal(got, []string{"u1", "u3", "u4"}) {
			t.Errorf("members key = %v", got)
		}
		if got := testenv.SMembers(t, rdb, userKey("u2")); len(got) != 0 {
			t.Errorf("u2's segments = %v, want none", got)
		}
		if got := testenv.SMembers(t, rdb, userKey("u4")); !slices.Equal(got, []string{id}) {
			t.Errorf("u4's segments = %v", got)
		}
		got := a.as("GET", "/v1/segments/"+id, nil).mustStatus(t, http.StatusOK)
		if num(got.body["estimatedSize"]) != 0 || !slices.Equal(strList(got.body["userIds"]), []string{"u1", "u3", "u4"}) {
			t.Errorf("after the edit: %s", got.raw)
		}
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"u5"}, "remove": []string{"u5"}}).
			wantError(t, 400, "validation_failed", "remove[0]")
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{""}}).wantError(t, 400, "validation_failed", "add[0]")
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []any{"u6", 5}}).wantError(t, 400, "validation_failed", "add[1]")
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"remove": []any{nil}}).wantError(t, 400, "validation_failed", "remove[0]")
		// Errors name an id by its index in the body, duplicates counted.
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"x", "x", "bad}"}, "remove": []string{"y", "y", "x"}}).
			wantError(t, 400, "validation_failed", "add[2]", "remove[2]")
		a.as("PUT", "/v1/segments/"+id, map[string]any{"userIds": []string{"a", "a", "b{"}}).wantError(t, 400, "validation_failed", "userIds[2]")
		// Ids that encoding/json would repair into others are refused.
		a.as("POST", "/v1/segments/"+id+"/members", "{\"add\":[\"ok\",\"u\xff1\"]}").wantError(t, 400, "validation_failed", "add[1]")
		a.as("POST", "/v1/segments/"+id+"/members", `{"remove":["v\ud800"]}`).wantError(t, 400, "validation_failed", "remove[0]")
		a.as("PUT", "/v1/segments/"+id, `{"userIds":["u1"],"name":"x\udc00y"}`).wantError(t, 400, "validation_failed", "name")
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": "u6"}).wantError(t, 400, "validation_failed", "add")
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{}).wantError(t, 400, "validation_failed", "add")
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"u5"}, "extra": 1}).wantError(t, 400, "validation_failed", "extra")

		// Replace the list.
		put := a.as("PUT", "/v1/segments/"+id, map[string]any{"userIds": []string{"u3", "u6"}, "description": "d"}).mustStatus(t, http.StatusOK)
		if !slices.Equal(strList(put.body["userIds"]), []string{"u3", "u6"}) || num(put.body["size"]) != 2 || put.body["description"] != "d" {
			t.Errorf("after PUT: %s", put.raw)
		}
		if got := changeSigns(a.pub.take()); !slices.Equal(got, []string{"+u6", "-u1", "-u4"}) {
			t.Errorf("published %v", got)
		}
		a.as("PUT", "/v1/segments/"+id, map[string]any{"criteria": map[string]any{}}).wantError(t, 400, "validation_failed", "criteria")

		// Members, membership and the user's segments.
		members := a.as("GET", "/v1/segments/"+id+"/members?limit=1", nil).mustStatus(t, http.StatusOK)
		if len(strList(members.body["data"])) != 1 || members.body["nextCursor"] == nil {
			t.Errorf("members page = %s", members.raw)
		}
		next := a.as("GET", "/v1/segments/"+id+"/members?limit=1&cursor="+str(members.body["nextCursor"]), nil).mustStatus(t, http.StatusOK)
		all := append(strList(members.body["data"]), strList(next.body["data"])...)
		slices.Sort(all)
		if !slices.Equal(all, []string{"u3", "u6"}) {
			t.Errorf("paged members = %v", all)
		}
		// A cursor or limit that cannot be read is named, not dropped (a
		// walk that would start over).
		a.as("GET", "/v1/segments/"+id+"/members?limit=1&cursor=%ZZ", nil).wantError(t, 400, "validation_failed", "cursor")
		a.as("GET", "/v1/segments/"+id+"/members?limit=1;cursor=abc", nil).wantError(t, 400, "validation_failed", "limit")
		if m := a.as("GET", "/v1/segments/"+id+"/members/u3", nil).mustStatus(t, 200); m.body["member"] != true {
			t.Errorf("u3 member = %s", m.raw)
		}
		if m := a.as("GET", "/v1/segments/"+id+"/members/u1", nil).mustStatus(t, 200); m.body["member"] != false {
			t.Errorf("u1 member = %s", m.raw)
		}
		us := a.as("GET", "/v1/users/u3/segments", nil).mustStatus(t, 200)
		if data, _ := us.body["data"].([]any); len(data) != 1 || str(data[0].(map[string]any)["id"]) != id || str(data[0].(map[string]any)["name"]) != "Beta" {
			t.Errorf("u3's segments = %s", us.raw)
		}

		// Delete: exits for every member, keys gone.
		a.as("DELETE", "/v1/segments/"+id, nil).mustStatus(t, http.StatusNoContent)
		pub = a.pub.take()
		if got := changeSigns(pub); !slices.Equal(got, []string{"-u3", "-u6"}) {
			t.Errorf("published on delete %v", got)
		}
		for _, c := range pub {
			if c.Cause.Type != events.CauseSegment || c.Cause.EventID != "delete:"+id {
				t.Errorf("delete cause %+v", c.Cause)
			}
		}
		if n, _ := rdb.Exists(context.Background(), membersKey(id)).Result(); n != 0 {
			t.Error("the members key survived the deletion")
		}
		if got := testenv.SMembers(t, rdb, userKey("u3")); len(got) != 0 {
			t.Errorf("u3's segments after the deletion = %v", got)
		}
		a.as("GET", "/v1/segments/"+id+"/members", nil).wantError(t, 404, "not_found")
	})
}

func TestMembersOfDynamicSegmentConflict(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	id := str(a.as("POST", "/v1/segments", dynamicBody("d")).mustStatus(t, 201).body["id"])
	a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"u1"}}).wantError(t, 409, "segment_not_static")
}

func TestPublishFailures(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	ctx := context.Background()

	// A static segment whose entries cannot be published is not created.
	a.pub.setFailing(true)
	a.as("POST", "/v1/segments", map[string]any{"name": "s", "type": "static", "userIds": []string{"u1"}}).wantError(t, 503, "unavailable")
	a.pub.setFailing(false)
	if list := a.as("GET", "/v1/segments", nil).mustStatus(t, 200); len(list.body["data"].([]any)) != 0 {
		t.Errorf("a failed creation left %s", list.raw)
	}
	a.pub.take()

	// An edit that cannot be published writes nothing; its retry publishes
	// the same event ids.
	id := str(a.as("POST", "/v1/segments", map[string]any{"name": "s", "type": "static", "userIds": []string{"u1"}}).mustStatus(t, 201).body["id"])
	a.pub.take()
	edit := map[string]any{"add": []string{"u2"}, "remove": []string{"u1"}}
	var failed []events.Change
	a.pub.setFailing(true)
	a.as("POST", "/v1/segments/"+id+"/members", edit).wantError(t, 503, "unavailable")
	a.pub.setFailing(false)
	if got := testenv.SMembers(t, rdb, membership.SegmentMembersKey(a.org, id)); !slices.Equal(got, []string{"u1"}) {
		t.Errorf("members after a failed publish = %v", got)
	}
	// Simulate a publish that went out before the write failed: plan as the
	// server does, then retry and compare the event ids.
	version, err := membership.NewSets(rdb).ListVersion(ctx, a.org, id)
	if err != nil {
		t.Fatal(err)
	}
	failed, _, err = membership.NewSets(rdb).PlanEdit(ctx, a.org, id, []string{"u2"}, []string{"u1"},
		membership.StaticCause(id, version, []string{"u2"}, []string{"u1"}), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a.as("POST", "/v1/segments/"+id+"/members", edit).mustStatus(t, 200)
	retried := a.pub.take()
	if len(retried) != len(failed) || len(retried) != 2 {
		t.Fatalf("retry published %d changes, want %d", len(retried), len(failed))
	}
	for i := range retried {
		if retried[i].EventID() != failed[i].EventID() {
			t.Errorf("retry event id %s, want %s", retried[i].EventID(), failed[i].EventID())
		}
	}

	// A deletion whose exits cannot be published answers 503 and hides the
	// segment; the retry finishes it.
	a.pub.setFailing(true)
	a.as("DELETE", "/v1/segments/"+id, nil).wantError(t, 503, "unavailable")
	a.pub.setFailing(false)
	a.as("GET", "/v1/segments/"+id, nil).wantError(t, 404, "not_found")
	a.as("DELETE", "/v1/segments/"+id, nil).mustStatus(t, 204)
	if got := changeSigns(a.pub.take()); !slices.Equal(got, []string{"-u2"}) {
		t.Errorf("deletion published %v", got)
	}
}

func TestListPagesThroughAThousandSegments(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		a := newTestAPI(t, rdb)
		created := map[string]bool{}
		static := map[string]bool{}
		for i := range segment.MaxSegmentsPerOrg {
			body := dynamicBody(fmt.Sprint("seg ", i))
			if i%10 == 0 {
				body = map[string]any{"name": fmt.Sprint("seg ", i), "type": "static", "userIds": []string{}}
			}
			r := a.as("POST", "/v1/segments", body).mustStatus(t, http.StatusCreated)
			created[str(r.body["id"])] = true
			if i%10 == 0 {
				static[str(r.body["id"])] = true
			}
		}
		// The 1,001st is refused.
		a.as("POST", "/v1/segments", dynamicBody("one too many")).wantError(t, 400, "limit_exceeded")

		page := func(query string, want map[string]bool, limit int) {
			seen := map[string]bool{}
			var order []string
			cursor := ""
			for pages := 0; ; pages++ {
				if pages > 1000 {
					t.Fatal("paging does not end")
				}
				path := "/v1/segments?" + query
				if cursor != "" {
					path += "&cursor=" + cursor
				}
				r := a.as("GET", path, nil).mustStatus(t, 200)
				data := r.body["data"].([]any)
				if len(data) > limit {
					t.Fatalf("page of %d, limit %d", len(data), limit)
				}
				for _, item := range data {
					id := str(item.(map[string]any)["id"])
					if seen[id] {
						t.Fatalf("%s seen twice", id)
					}
					seen[id] = true
					order = append(order, id)
				}
				if r.body["nextCursor"] == nil {
					break
				}
				cursor = str(r.body["nextCursor"])
			}
			if len(seen) != len(want) {
				t.Errorf("%s: saw %d segments, want %d", query, len(seen), len(want))
			}
			for id := range want {
				if !seen[id] {
					t.Errorf("%s: never saw %s", query, id)
				}
			}
			if !slices.IsSorted(order) {
				t.Errorf("%s: not in creation order", query)
			}
		}
		page("limit=100", created, 100)
		page("limit=7", created, 7)
		page("", created, 50)
		page("type=static&limit=33", static, 33)
	})
}

func TestLimits(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	criteria := func(n int) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = map[string]any{"field": fmt.Sprint("f", i), "operator": "exists"}
		}
		return out
	}
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprint("user-", i)
		}
		return out
	}
	tests := map[string]struct {
		body  map[string]any
		field string
	}{
		"21 include criteria": {
			body:  map[string]any{"name": "x", "type": "dynamic", "criteria": map[string]any{"include": criteria(21)}},
			field: "criteria.include",
		},
		"21 exclude criteria": {
			body:  map[string]any{"name": "x", "type": "dynamic", "criteria": map[string]any{"exclude": criteria(21)}},
			field: "criteria.exclude",
		},
		"100001 user ids": {
			body:  map[string]any{"name": "x", "type": "static", "userIds": ids(segment.MaxStaticUsers + 1)},
			field: "userIds",
		},
		// Every instance holds every definition: one criterion's value
		// may not take the whole body.
		"criteria over 256 KiB": {
			body: map[string]any{"name": "x", "type": "dynamic", "criteria": map[string]any{"exclude": []any{
				map[string]any{"field": "customFields.x", "operator": "not_in", "value": ids(30_000)}}}},
			field: "criteria.exclude",
		},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			a.as("POST", "/v1/segments", tt.body).wantError(t, 400, "limit_exceeded", tt.field)
		})
	}
	t.Run("criteria stored over 256 KiB take a rename", func(t *testing.T) {
		// As a build before the limit stored them.
		values := make([]any, 30_000)
		for i := range values {
			values[i] = fmt.Sprint("user-", i)
		}
		d, err := membership.NewDefinitions(a.rdb).Create(context.Background(), segment.Definition{OrgID: a.org, Name: "old", Type: segment.TypeDynamic,
			Status: segment.StatusReady, Criteria: segment.Criteria{Include: []segment.Criterion{{Field: "customFields.x", Operator: segment.OpIn, Value: values, HasValue: true}}}})
		if err != nil {
			t.Fatal(err)
		}
		a.as("PUT", "/v1/segments/"+d.ID, map[string]any{"name": "renamed"}).mustStatus(t, 200)
		a.as("PUT", "/v1/segments/"+d.ID, map[string]any{"criteria": map[string]any{"include": []any{
			map[string]any{"field": "customFields.x", "operator": "in", "value": values}}}}).wantError(t, 400, "limit_exceeded", "criteria.include")
	})
	t.Run("at the limits", func(t *testing.T) {
		a.as("POST", "/v1/segments", map[string]any{"name": "x", "type": "dynamic",
			"criteria": map[string]any{"include": criteria(20), "exclude": criteria(20)}}).mustStatus(t, 201)
		// The longest ids allowed (256 bytes): the largest body the API
		// must take.
		longest := make([]string, segment.MaxStaticUsers)
		for i := range longest {
			longest[i] = fmt.Sprintf("user-%0*d", segment.MaxUserIDLength-5, i)
		}
		r := a.as("POST", "/v1/segments", map[string]any{"name": "x", "type": "static", "userIds": longest}).mustStatus(t, 201)
		id := str(r.body["id"])
		a.pub.take()
		// Adding one more user goes past the limit; replacing one does not.
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"new"}}).wantError(t, 400, "limit_exceeded", "add")
		a.as("POST", "/v1/segments/"+id+"/members", map[string]any{"add": []string{"new"}, "remove": longest[:1]}).mustStatus(t, 200)
		a.as("PUT", "/v1/segments/"+id, map[string]any{"userIds": ids(segment.MaxStaticUsers + 1)}).wantError(t, 400, "limit_exceeded", "userIds")
	})
}

func TestValidationNamesTheField(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	with := func(k string, v any) map[string]any {
		b := dynamicBody("x")
		b[k] = v
		return b
	}
	crit := func(c map[string]any) map[string]any {
		return with("criteria", map[string]any{"include": []any{c}})
	}
	tests := map[string]struct {
		body   any
		code   string
		fields []string
	}{
		"missing name":          {body: map[string]any{"type": "dynamic", "criteria": map[string]any{}}, code: "validation_failed", fields: []string{"name"}},
		"name not a string":     {body: with("name", 5), code: "validation_failed", fields: []string{"name"}},
		"long name":             {body: with("name", strings.Repeat("n", 201)), code: "validation_failed", fields: []string{"name"}},
		"missing type":          {body: map[string]any{"name": "x"}, code: "validation_failed", fields: []string{"type"}},
		"bad type":              {body: with("type", "smart"), code: "validation_failed", fields: []string{"type"}},
		"dynamic sans criteria": {body: map[string]any{"name": "x", "type": "dynamic"}, code: "validation_failed", fields: []string{"criteria"}},
		"static sans userIds":   {body: map[string]any{"name": "x", "type": "static"}, code: "validation_failed", fields: []string{"userIds"}},
		"static with criteria":  {body: map[string]any{"name": "x", "type": "static", "userIds": []string{}, "criteria": map[string]any{}}, code: "validation_failed", fields: []string{"criteria"}},
		"relative url":          {body: with("url", "/x"), code: "validation_failed", fields: []string{"url"}},
		"unknown operator":      {body: crit(map[string]any{"field": "tier", "operator": "equal", "value": "gold"}), code: "validation_failed", fields: []string{"criteria.include[0].operator"}},
		"in without array":      {body: crit(map[string]any{"field": "tier", "operator": "in", "value": "gold"}), code: "validation_failed", fields: []string{"criteria.include[0].value"}},
		"> with a non-date":     {body: crit(map[string]any{"field": "createdAt", "operator": ">", "value": "yesterday"}), code: "validation_failed", fields: []string{"criteria.include[0].value"}},
		"empty field":           {body: crit(map[string]any{"field": "", "operator": "exists"}), code: "validation_failed", fields: []string{"criteria.include[0].field"}},
		"exists with a value":   {body: crit(map[string]any{"field": "email", "operator": "exists", "value": nil}), code: "validation_failed", fields: []string{"criteria.include[0].value"}},
		"number out of range":   {body: `{"name":"x","type":"dynamic","criteria":{"include":[{"field":"points","operator":">=","value":1e400}]}}`, code: "validation_failed", fields: []string{"criteria.include[0].value"}},
		"unknown criterion key": {body: crit(map[string]any{"field": "email", "operator": "exists", "op": 1}), code: "validation_failed", fields: []string{"criteria.include[0].op"}},
		"unknown criteria key":  {body: with("criteria", map[string]any{"include": []any{}, "any": []any{}}), code: "validation_failed", fields: []string{"criteria.any"}},
		"criteria not object":   {body: with("criteria", []any{}), code: "validation_failed", fields: []string{"criteria"}},
		"unknown field":         {body: with("color", "red"), code: "validation_failed", fields: []string{"color"}},
		"server-owned id":       {body: with("id", "seg_x"), code: "validation_failed", fields: []string{"id"}},
		"server-owned fields": {
			body: with("size", 1), code: "validation_failed", fields: []string{"size"},
		},
		"many server-owned fields": {
			body: func() any {
				b := dynamicBody("x")
				for _, k := range []string{"status", "estimatedSize", "createdAt", "updatedAt", "generation"} {
					b[k] = "x"
				}
				return b
			}(),
			code: "validation_failed", fields: []string{"status", "estimatedSize", "createdAt", "updatedAt", "generation"},
		},
		"field name in other case": {body: with("Name", "x"), code: "validation_failed", fields: []string{"Name"}},
		"invalid JSON":             {body: `{"name": `, code: "invalid_json"},
		"not an object":            {body: `["x"]`, code: "invalid_json"},
		"null body":                {body: `null`, code: "invalid_json"},
		"trailing data":            {body: `{"name":"x","type":"static","userIds":[]} {}`, code: "invalid_json"},
		"empty body":               {body: ``, code: "invalid_json"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			a.as("POST", "/v1/segments", tt.body).wantError(t, 400, tt.code, tt.fields...)
		})
	}
	if list := a.as("GET", "/v1/segments", nil).mustStatus(t, 200); len(list.body["data"].([]any)) != 0 {
		t.Errorf("an invalid request created a segment: %s", list.raw)
	}

	queries := map[string]struct {
		path  string
		field string
	}{
		"limit 0":            {"/v1/segments?limit=0", "limit"},
		"limit 101":          {"/v1/segments?limit=101", "limit"},
		"limit not a number": {"/v1/segments?limit=ten", "limit"},
		"bad type":           {"/v1/segments?type=smart", "type"},
		"bad cursor":         {"/v1/segments?cursor=nonsense", "cursor"},
		"bad escape in type": {"/v1/segments?type=%Zstatic", "type"},
		"';' in the query":   {"/v1/segments?limit=1;type=static", "limit"},
	}
	for name, tt := range queries {
		t.Run(name, func(t *testing.T) {
			a.as("GET", tt.path, nil).wantError(t, 400, "validation_failed", tt.field)
		})
	}
}

func TestBodyTooLarge(t *testing.T) {
	rdb := testenv.RedisClient(t)
	t.Run("default limit", func(t *testing.T) {
		a := newTestAPI(t, rdb)
		big := `{"name": "x", "type": "static", "userIds": ["` + strings.Repeat("u", DefaultMaxBodyBytes) + `"]}`
		a.as("POST", "/v1/segments", big).wantError(t, http.StatusRequestEntityTooLarge, "body_too_large")
	})
	t.Run("configured limit", func(t *testing.T) {
		a := newTestAPI(t, rdb, testOptions{maxBody: 100})
		a.as("POST", "/v1/segments", dynamicBody(strings.Repeat("n", 150))).wantError(t, http.StatusRequestEntityTooLarge, "body_too_large")
		a.as("POST", "/v1/segments", map[string]any{"name": "n", "type": "static", "userIds": []string{}}).mustStatus(t, 201)
	})
}

func TestAuthentication(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	headers := map[string]string{
		"no header":          "",
		"unknown key":        "Bearer nope",
		"empty bearer":       "Bearer ",
		"basic scheme":       "Basic " + a.key,
		"key without scheme": a.key,
		"key plus junk":      "Bearer " + a.key + "x",
	}
	for name, h := range headers {
		t.Run(name, func(t *testing.T) {
			for _, rt := range a.routesNeedingAuth() {
				req, _ := http.NewRequest(rt[0], a.srv.URL+rt[1], strings.NewReader("{}"))
				if h != "" {
					req.Header.Set("Authorization", h)
				}
				res, err := a.srv.Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				var body errorBody
				_ = json.NewDecoder(res.Body).Decode(&body)
				res.Body.Close()
				if res.StatusCode != 401 || body.Error.Code != "unauthorized" {
					t.Errorf("%s %s: %d %+v, want 401 unauthorized", rt[0], rt[1], res.StatusCode, body)
				}
			}
		})
	}
	t.Run("scheme is case-insensitive", func(t *testing.T) {
		req, _ := http.NewRequest("GET", a.srv.URL+"/v1/segments", nil)
		req.Header.Set("Authorization", "bearer "+a.key)
		res, err := a.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Errorf("status %d", res.StatusCode)
		}
	})
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		t.Run("no auth for "+path, func(t *testing.T) {
			a.do("GET", path, "", nil).mustStatus(t, 200)
		})
	}
	// A /v1 call that matches no route needs a key too: 401 without one,
	// 404 or 405 with it.
	for name, tt := range map[string]struct {
		method, path string
		status       int
		code         string
	}{
		"unknown path":       {"GET", "/v1/nothing", 404, "not_found"},
		"method not allowed": {"PATCH", "/v1/segments/x", 405, "method_not_allowed"},
		// Paths the mux would redirect to a clean form.
		"dot-dot element": {"GET", "/v1/segments/x/../seg_abc", 404, "not_found"},
		"double slash":    {"GET", "/v1//segments", 404, "not_found"},
		"empty user id":   {"GET", "/v1/users//segments", 404, "not_found"},
	} {
		t.Run(name, func(t *testing.T) {
			a.do(tt.method, tt.path, "", nil).wantError(t, 401, "unauthorized")
			a.as(tt.method, tt.path, nil).wantError(t, tt.status, tt.code)
		})
	}
	// An id with an encoded slash is an id like any other: the route
	// answers, not the fallback for unmatched paths.
	t.Run("encoded slash in an id", func(t *testing.T) {
		a.do("GET", "/v1/segments/%2Fx/members", "", nil).wantError(t, 401, "unauthorized")
		res := a.as("GET", "/v1/segments/%2Fx/members", nil)
		res.wantError(t, 404, "not_found")
		if msg := res.body["error"].(map[string]any)["message"]; msg != segmentNotFoundMessage {
			t.Errorf("message %q, want the route's %q", msg, segmentNotFoundMessage)
		}
	})
}

// routesNeedingAuth returns the method and a concrete path of every route
// behind authentication.
func (a *testAPI) routesNeedingAuth() [][2]string {
	s := New(Config{})
	var out [][2]string
	for _, rt := range s.routes() {
		if rt.auth {
			p := strings.NewReplacer("{id}", "seg_x", "{userId}", "u1").Replace(rt.path)
			out = append(out, [2]string{rt.method, p})
		}
	}
	return out
}

// TestBuildingSegmentShowsProgress checks that a building segment shows how
// far its backfill has come, and a ready one shows nothing.
func TestBuildingSegmentShowsProgress(t *testing.T) {
	rdb := testenv.RedisClient(t)
	a := newTestAPI(t, rdb)
	defs := membership.NewDefinitions(rdb)
	id := str(a.as("POST", "/v1/segments", dynamicBody("building")).mustStatus(t, http.StatusCreated).body["id"])
	if err := defs.SetBackfillProgress(context.Background(), a.org, id, 1, 1234); err != nil {
		t.Fatal(err)
	}
	got := a.as("GET", "/v1/segments/"+id, nil).mustStatus(t, http.StatusOK).body
	if p, _ := got["progress"].(map[string]any); p == nil || p["usersScanned"] != 1234.0 {
		t.Errorf("progress = %v, want usersScanned 1234", got["progress"])
	}
	// Progress of another generation is not recorded.
	if err := defs.SetBackfillProgress(context.Background(), a.org, id, 2, 99); err != nil {
		t.Fatal(err)
	}
	got = a.as("GET", "/v1/segments/"+id, nil).mustStatus(t, http.StatusOK).body
	if p, _ := got["progress"].(map[string]any); p == nil || p["usersScanned"] != 1234.0 {
		t.Errorf("progress = %v after another generation's report, want usersScanned 1234", got["progress"])
	}
	if err := defs.MarkReady(context.Background(), a.org, id, 1); err != nil {
		t.Fatal(err)
	}
	got = a.as("GET", "/v1/segments/"+id, nil).mustStatus(t, http.StatusOK).body
	if _, ok := got["progress"]; ok || got["status"] != "ready" {
		t.Errorf("ready segment shows status %v, progress %v", got["status"], got["progress"])
	}
}

// TestDeleteWaitsForInstances checks that a delete waits, after hiding the
// segment and before removing its members, for every instance to stop
// evaluating it.
func TestDeleteWaitsForInstances(t *testing.T) {
	rdb := testenv.RedisClient(t)
	defs := membership.NewDefinitions(rdb)
	var org, id string
	called := false
	await := func(ctx context.Context, rev int64) error {
		called = true
		d, err := defs.Get(ctx, org, id)
		if err != nil || d.Status != segment.StatusDeleting {
			t.Errorf("while waiting: definition %+v, %v; want status deleting", d, err)
		}
		if latest, err := defs.Revision(ctx); err != nil || rev != latest {
			t.Errorf("waiting for revision %d, definitions at %d (%v)", rev, latest, err)
		}
		if n := len(testenv.SMembers(t, rdb, membership.SegmentMembersKey(org, id))); n != 2 {
			t.Errorf("%d members while waiting, want both still there", n)
		}
		return nil
	}
	a := newTestAPI(t, rdb, testOptions{await: await})
	org = a.org
	id = str(a.as("POST", "/v1/segments", map[string]any{"name": "vip", "type": "static", "userIds": []string{"u1", "u2"}}).mustStatus(t, http.StatusCreated).body["id"])
	a.as("DELETE", "/v1/segments/"+id, nil).mustStatus(t, http.StatusNoContent)
	if !called {
		t.Fatal("the delete did not wait for the instances")
	}
	if n := len(testenv.SMembers(t, rdb, membership.SegmentMembersKey(org, id))); n != 0 {
		t.Errorf("%d members after the delete", n)
	}
}
