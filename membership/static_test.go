package membership_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
)

// changeStrings renders changes as "+user" and "-user", for comparisons.
func testChangeStrings(changes []events.Change) []string {
	out := make([]string, len(changes))
	for i, c := range changes {
		sign := "-"
		if c.Entered {
			sign = "+"
		}
		out[i] = sign + c.UserID
	}
	return out
}

func TestStaticReplaceAndEdit(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		sets := membership.NewSets(rdb)
		seg := "seg_static"
		at := time.Date(2026, 11, 25, 17, 0, 0, 0, time.UTC)

		steps := []struct {
			name        string
			replace     []string // a replacement when not nil
			add, remove []string
			want        []string // the changes
			members     []string
			size        int64 // the size before an edit
		}{
			{name: "first list", replace: []string{"u3", "u1", "u2"}, want: []string{"+u1", "+u2", "+u3"}, members: []string{"u1", "u2", "u3"}},
			{name: "same list", replace: []string{"u2", "u3", "u1"}, want: []string{}, members: []string{"u1", "u2", "u3"}},
			{name: "new list", replace: []string{"u2", "u4"}, want: []string{"+u4", "-u1", "-u3"}, members: []string{"u2", "u4"}},
			{name: "edit", add: []string{"u5", "u2", "u5"}, remove: []string{"u4", "u9"}, want: []string{"+u5", "-u4"}, members: []string{"u2", "u5"}, size: 2},
			{name: "empty list", replace: []string{}, want: []string{"-u2", "-u5"}, members: []string{}},
		}
		for _, st := range steps {
			var changes []events.Change
			var err error
			if st.replace != nil {
				changes, err = sets.PlanReplace(ctx, org, seg, st.replace, membership.StaticCause(seg, 1, st.replace, nil), at)
			} else {
				var size int64
				changes, size, err = sets.PlanEdit(ctx, org, seg, st.add, st.remove, membership.StaticCause(seg, 1, st.add, st.remove), at)
				if size != st.size {
					t.Errorf("%s: size before = %d, want %d", st.name, size, st.size)
				}
			}
			if err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			if got := testChangeStrings(changes); !slices.Equal(got, st.want) {
				t.Errorf("%s: changes = %v, want %v", st.name, got, st.want)
			}
			for _, c := range changes {
				if c.OrgID != org || c.SegmentID != seg || c.Cause.Type != events.CauseStatic || !c.At.Equal(at) {
					t.Errorf("%s: change %+v", st.name, c)
				}
			}
			if err := sets.Apply(ctx, changes); err != nil {
				t.Fatal(err)
			}
			if got := testenv.SMembers(t, rdb, membership.SegmentMembersKey(org, seg)); !slices.Equal(got, st.members) {
				t.Errorf("%s: members = %v, want %v", st.name, got, st.members)
			}
			for _, u := range []string{"u1", "u2", "u3", "u4", "u5"} {
				in := slices.Contains(st.members, u)
				if got := slices.Contains(testenv.SMembers(t, rdb, membership.UserSegmentsKey(org, u)), seg); got != in {
					t.Errorf("%s: %s's segment set has the segment: %v, want %v", st.name, u, got, in)
				}
			}
		}
	})
}

func TestStaticCauseIsDeterministic(t *testing.T) {
	a := membership.StaticCause("seg_1", 3, []string{"b", "a"}, []string{"c"})
	tests := map[string]struct {
		cause events.Cause
		same  bool
	}{
		"same request, other order": {membership.StaticCause("seg_1", 3, []string{"a", "b"}, []string{"c"}), true},
		"other generation":          {membership.StaticCause("seg_1", 4, []string{"a", "b"}, []string{"c"}), false},
		"other segment":             {membership.StaticCause("seg_2", 3, []string{"a", "b"}, []string{"c"}), false},
		"add and remove swapped":    {membership.StaticCause("seg_1", 3, []string{"c"}, []string{"a", "b"}), false},
		"other ids":                 {membership.StaticCause("seg_1", 3, []string{"a", "bc"}, nil), false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if (tt.cause == a) != tt.same {
				t.Errorf("cause %+v vs %+v: same = %v, want %v", tt.cause, a, tt.cause == a, tt.same)
			}
			if tt.cause.Type != events.CauseStatic {
				t.Errorf("type = %s", tt.cause.Type)
			}
		})
	}
}

func TestDeleteSegmentMembership(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		sets := membership.NewSets(rdb)
		seg, other := "seg_del", "seg_keep"
		at := time.Now().UTC()
		var users []string
		for i := range 2500 {
			users = append(users, fmt.Sprintf("u%04d", i))
		}
		for _, s := range []string{seg, other} {
			changes, err := sets.PlanReplace(ctx, org, s, users[:2500], membership.StaticCause(s, 1, users, nil), at)
			if err != nil {
				t.Fatal(err)
			}
			if err := sets.Apply(ctx, changes); err != nil {
				t.Fatal(err)
			}
		}

		// A publisher that fails on its second call stops the deletion with
		// nothing of that chunk written.
		var published []events.Change
		calls := 0
		failing := func(_ context.Context, cs []events.Change) error {
			calls++
			if calls == 2 {
				return errors.New("kafka down")
			}
			published = append(published, cs...)
			return nil
		}
		n, err := sets.DeleteSegment(ctx, org, seg, at, failing)
		if err == nil {
			t.Fatal("DeleteSegment succeeded with a failing publisher")
		}
		size, _ := rdb.SCard(ctx, membership.SegmentMembersKey(org, seg)).Result()
		if int(size) != 2500-n || n != len(published) {
			t.Fatalf("removed %d, published %d, %d left: want what was published removed and nothing else", n, len(published), size)
		}

		// Again: it finishes, publishing exits for the rest.
		record := func(_ context.Context, cs []events.Change) error {
			published = append(published, cs...)
			return nil
		}
		if _, err := sets.DeleteSegment(ctx, org, seg, at, record); err != nil {
			t.Fatal(err)
		}
		exited := map[string]int{}
		for _, c := range published {
			if c.Entered || c.SegmentID != seg || c.Cause != membership.DeleteCause(seg) {
				t.Fatalf("unexpected change %+v", c)
			}
			exited[c.UserID]++
		}
		if len(exited) != len(users) {
			t.Errorf("exits published for %d users, want %d", len(exited), len(users))
		}
		if n, _ := rdb.Exists(ctx, membership.SegmentMembersKey(org, seg)).Result(); n != 0 {
			t.Error("members set still exists")
		}
		for _, u := range []string{users[0], users[1234], users[2499]} {
			got := testenv.SMembers(t, rdb, membership.UserSegmentsKey(org, u))
			if !slices.Equal(got, []string{other}) {
				t.Errorf("%s's segments = %v, want only %s", u, got, other)
			}
		}
		if n, _ := rdb.SCard(ctx, membership.SegmentMembersKey(org, other)).Result(); n != 2500 {
			t.Errorf("the other segment has %d members, want 2500", n)
		}
	})
}

// TestListVersion: a list change written whole moves the list's version
// once, in the transaction of its last write, so that the same request
// made again later gets other event ids; an empty change moves nothing.
func TestListVersion(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		sets := membership.NewSets(rdb)
		version := func() int64 {
			t.Helper()
			v, err := sets.ListVersion(ctx, org, "s")
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		edit := func(add, remove []string) []events.Change {
			t.Helper()
			v := version()
			changes, _, err := sets.PlanEdit(ctx, org, "s", add, remove, membership.StaticCause("s", v, add, remove), time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if err := sets.ApplyList(ctx, org, "s", changes); err != nil {
				t.Fatal(err)
			}
			return changes
		}
		users := make([]string, 2500) // three chunks
		for i := range users {
			users[i] = fmt.Sprintf("u%04d", i)
		}
		first := edit(users, nil)
		if v := version(); v != 1 {
			t.Fatalf("version %d after one change, want 1", v)
		}
		edit(nil, []string{"u0001"})
		again := edit([]string{"u0001"}, nil) // the create's entry of u0001, made again
		if v := version(); v != 3 {
			t.Fatalf("version %d after three changes, want 3", v)
		}
		if len(again) != 1 || again[0].EventID() == first[1].EventID() {
			t.Errorf("re-entry event %v shares its id with the first entry's", again)
		}
		edit([]string{"u0001"}, nil) // nothing to change
		if v := version(); v != 3 {
			t.Errorf("version %d after an empty change, want 3", v)
		}
	})
}

// failHGet makes the HGET of one key fail inside pipelines, as a command
// sent to a node that is going away does, the others answering.
type failHGet struct{ key string }

func (failHGet) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (failHGet) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (f failHGet) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		_ = next(ctx, cmds)
		for _, c := range cmds {
			if c.Name() == "hget" && len(c.Args()) > 1 && c.Args()[1] == f.key {
				c.(*redis.StringCmd).SetVal("") // not read
				c.SetErr(errors.New("dial tcp: connection refused"))
			}
		}
		for _, c := range cmds { // as go-redis answers: the first command's error
			if err := c.Err(); err != nil {
				return err
			}
		}
		return nil
	}
}

// TestDeleteSegmentHeldEntryReadFails: u2's outbox holds its recent,
// possibly unpublished entry into the segment; the read of that outbox
// fails while the read of u1's (who has none: redis.Nil) comes first in
// the pipeline. The deletion must not publish u2's exit without u2's entry
// before it: either it fails (and its retry publishes both) or it
// publishes both.
func TestDeleteSegmentHeldEntryReadFails(t *testing.T) {
	base := testenv.RedisClient(t)
	ctx := context.Background()
	org := testenv.Org(t, base, "org")
	seg := "seg_held"
	at := time.Now().UTC()
	for _, u := range []string{"u1", "u2"} {
		if err := base.SAdd(ctx, membership.SegmentMembersKey(org, seg), u).Err(); err != nil {
			t.Fatal(err)
		}
		if err := base.SAdd(ctx, membership.UserSegmentsKey(org, u), seg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	entry := membership.OutboxEntry{EventID: "e1", Version: 1, Rev: 1, CauseType: events.CauseProfile,
		AtMillis: at.Add(-time.Second).UnixMilli(), Changes: []membership.OutboxChange{{SegmentID: seg, Entered: true}}}
	if err := base.HSet(ctx, membership.ProfileKey(org, "u2"), "r", 1, "o", string(membership.AppendOutbox(nil, []membership.OutboxEntry{entry}))).Err(); err != nil {
		t.Fatal(err)
	}

	rdb := redis.NewClient(base.(*redis.Client).Options())
	t.Cleanup(func() { _ = rdb.Close() })
	rdb.AddHook(failHGet{key: membership.ProfileKey(org, "u2")})

	published, err := deleteRecorded(membership.NewSets(rdb), org, seg, at)
	if err == nil && !(len(published) == 3 && published[0] == "+u2") {
		t.Fatalf("deletion succeeded and published %v: u2's exit without its entry (the replay refuses the entry of a deleted segment: lost)", published)
	}
}

// TestDeleteSegmentHeldEntryBeforeUnprojectedExit: one instance's pipeline
// entered u1 (rev 1, projected: the member set holds it) and then took it
// out (rev 2, written, not projected) and died before publishing either.
// The replay publishes neither (an entry of a deleted segment, and an exit
// that had not reached the member set); the deletion publishes u1's exit.
// It must publish the entry the member set holds before it: a consumer
// would otherwise see u1 leave a segment it never entered.
func TestDeleteSegmentHeldEntryBeforeUnprojectedExit(t *testing.T) {
	rdb := testenv.RedisClient(t)
	ctx := context.Background()
	org := testenv.Org(t, rdb, "org")
	seg := "seg_held"
	at := time.Now().UTC()
	es := []membership.OutboxEntry{
		{EventID: "e1", Version: 1, Rev: 1, CauseType: events.CauseProfile, AtMillis: at.Add(-2 * time.Second).UnixMilli(), Changes: []membership.OutboxChange{{SegmentID: seg, Entered: true}}},
		{EventID: "e2", Version: 2, Rev: 2, CauseType: events.CauseProfile, AtMillis: at.Add(-time.Second).UnixMilli(), Changes: []membership.OutboxChange{{SegmentID: seg, Entered: false}}},
	}
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, membership.SegmentMembersKey(org, seg), "u1")
		p.HSet(ctx, membership.SegmentRevisionsKey(org, seg), "u1", 1)
		p.SAdd(ctx, membership.UserSegmentsKey(org, "u1"), seg)
		p.HSet(ctx, membership.ProfileKey(org, "u1"), "r", 2, "o", string(membership.AppendOutbox(nil, es)))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	published, err := deleteRecorded(membership.NewSets(rdb), org, seg, at)
	if err != nil {
		t.Fatal(err)
	}
	if len(published) != 2 || published[0] != "+u1" {
		t.Errorf("deletion published %v, want [+u1 -u1]: e1's entry, which the member set holds, is published by nobody", published)
	}
}

// deleteRecorded deletes seg's membership and returns the changes it
// published ("+user", "-user").
func deleteRecorded(sets *membership.Sets, org, seg string, at time.Time) ([]string, error) {
	var published []string
	_, err := sets.DeleteSegment(context.Background(), org, seg, at, func(_ context.Context, cs []events.Change) error {
		published = append(published, testChangeStrings(cs)...)
		return nil
	})
	return published, err
}
