package membership_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

func testDynamicDef(org, name string) segment.Definition {
	return segment.Definition{
		OrgID: org, Name: name, Type: segment.TypeDynamic, Status: segment.StatusBuilding,
		Criteria: segment.Criteria{
			Include: []segment.Criterion{
				{Field: "tier", Operator: "in", Value: []any{"gold", "platinum"}, HasValue: true},
				{Field: "points", Operator: ">=", Value: 1000.0, HasValue: true},
				{Field: "email", Operator: "exists"},
			},
			Exclude: []segment.Criterion{
				{Field: "customFields.testAccount", Operator: "equals", Value: true, HasValue: true},
				{Field: "customFields.note", Operator: "equals", Value: nil, HasValue: true},
			},
		},
	}
}

func TestDefinitionsCRUD(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		defs := membership.NewDefinitions(rdb)

		rev0, err := defs.Revision(ctx)
		if err != nil {
			t.Fatal(err)
		}
		in := testDynamicDef(org, "VIPs")
		in.Description = "big spenders"
		in.URL = "https://example.com/vip"
		created, err := defs.Create(ctx, in)
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`^seg_[0-9a-f]{22}$`).MatchString(created.ID) {
			t.Errorf("id %q is not seg_ + 22 hex digits", created.ID)
		}
		if created.Generation != 1 || created.CreatedAt.IsZero() || !created.UpdatedAt.Equal(created.CreatedAt) {
			t.Errorf("created = %+v, want generation 1 and timestamps set", created)
		}
		if rev, _ := defs.Revision(ctx); rev <= rev0 {
			t.Errorf("revision %d did not move past %d on create", rev, rev0)
		}

		got, err := defs.Get(ctx, org, created.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !sameTestDefinition(got, created) {
			t.Errorf("Get = %+v\nwant %+v", got, created)
		}
		// Values keep their presence: exists has none, equals null has one.
		if c := got.Criteria.Include[2]; c.HasValue || c.Value != nil {
			t.Errorf("exists criterion came back with a value: %+v", c)
		}
		if c := got.Criteria.Exclude[1]; !c.HasValue || c.Value != nil {
			t.Errorf("equals-null criterion lost its null value: %+v", c)
		}

		if _, err := defs.Get(ctx, org, "seg_missing"); !errors.Is(err, membership.ErrNotFound) {
			t.Errorf("Get(missing) = %v, want ErrNotFound", err)
		}
		if _, err := defs.Get(ctx, org+"-other", created.ID); !errors.Is(err, membership.ErrNotFound) {
			t.Errorf("Get(other org) = %v, want ErrNotFound", err)
		}

		// Update with compare-and-set.
		upd, err := defs.Update(ctx, org, created.ID, func(d *segment.Definition) error {
			d.Name = "Renamed"
			d.Generation++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if upd.Name != "Renamed" || upd.Generation != 2 {
			t.Errorf("Update = %+v", upd)
		}
		if _, err := defs.Update(ctx, org, "seg_missing", func(*segment.Definition) error { return nil }); !errors.Is(err, membership.ErrNotFound) {
			t.Errorf("Update(missing) = %v, want ErrNotFound", err)
		}
		boom := errors.New("boom")
		if _, err := defs.Update(ctx, org, created.ID, func(*segment.Definition) error { return boom }); !errors.Is(err, boom) {
			t.Errorf("Update with failing fn = %v, want boom", err)
		}

		// MarkReady only for the current generation.
		if err := defs.MarkReady(ctx, org, created.ID, 1); err != nil {
			t.Fatal(err)
		}
		if d, _ := defs.Get(ctx, org, created.ID); d.Status != segment.StatusBuilding {
			t.Errorf("stale generation marked the segment %s", d.Status)
		}
		if err := defs.MarkReady(ctx, org, created.ID, 2); err != nil {
			t.Fatal(err)
		}
		if d, _ := defs.Get(ctx, org, created.ID); d.Status != segment.StatusReady {
			t.Errorf("status = %s, want ready", d.Status)
		}

		// (Whether the estimate moves the revision cannot be checked here:
		// tests running in parallel move it.) A size read at an earlier
		// generation is not recorded: it may be part of a rebuild.
		if err := defs.SetEstimatedSize(ctx, org, created.ID, 1, 7); err != nil {
			t.Fatal(err)
		}
		if d, _ := defs.Get(ctx, org, created.ID); d.EstimatedSize != 0 {
			t.Errorf("estimatedSize = %d after a size read at an earlier generation, want 0", d.EstimatedSize)
		}
		if err := defs.SetEstimatedSize(ctx, org, created.ID, 2, 42); err != nil {
			t.Fatal(err)
		}
		if d, _ := defs.Get(ctx, org, created.ID); d.EstimatedSize != 42 {
			t.Errorf("estimatedSize = %d, want 42", d.EstimatedSize)
		}

		// Replace.
		rep := upd
		rep.Name = "Replaced"
		if err := defs.Replace(ctx, rep); err != nil {
			t.Fatal(err)
		}
		if d, _ := defs.Get(ctx, org, created.ID); d.Name != "Replaced" {
			t.Errorf("name after Replace = %q", d.Name)
		}
		missing := rep
		missing.ID = "seg_missing"
		if err := defs.Replace(ctx, missing); !errors.Is(err, membership.ErrNotFound) {
			t.Errorf("Replace(missing) = %v, want ErrNotFound", err)
		}

		// GetMany leaves out what does not exist.
		many, err := defs.GetMany(ctx, org, []string{created.ID, "seg_missing"})
		if err != nil || len(many) != 1 || many[created.ID].Name != "Replaced" {
			t.Errorf("GetMany = %v, %v", many, err)
		}

		// Deleting hides it from List and All, then Delete removes it.
		if _, err := defs.MarkDeleting(ctx, org, created.ID); err != nil {
			t.Fatal(err)
		}
		if page, _, _ := defs.List(ctx, org, membership.ListOptions{}); len(page) != 0 {
			t.Errorf("List shows a segment being deleted: %v", page)
		}
		all, err := defs.All(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range all {
			if d.OrgID == org {
				t.Errorf("All shows a segment being deleted: %+v", d)
			}
		}
		// ... and Deleting lists it, for the job that finishes deletions.
		deleting, err := defs.Deleting(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(deleting, func(d segment.Definition) bool { return d.OrgID == org && d.ID == created.ID }) {
			t.Errorf("Deleting lacks the segment being deleted: %+v", deleting)
		}
		if err := defs.Delete(ctx, org, created.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := defs.Get(ctx, org, created.ID); !errors.Is(err, membership.ErrNotFound) {
			t.Errorf("Get after Delete = %v, want ErrNotFound", err)
		}
		if err := defs.Delete(ctx, org, created.ID); !errors.Is(err, membership.ErrNotFound) {
			t.Errorf("second Delete = %v, want ErrNotFound", err)
		}
	})
}

func sameTestDefinition(a, b segment.Definition) bool {
	return a.ID == b.ID && a.OrgID == b.OrgID && a.Name == b.Name && a.Description == b.Description &&
		a.URL == b.URL && a.Type == b.Type && a.Status == b.Status && a.EstimatedSize == b.EstimatedSize &&
		a.Generation == b.Generation && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt) &&
		fmt.Sprint(a.Criteria) == fmt.Sprint(b.Criteria)
}

func TestDefinitionsLimitIsAtomic(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		defs := membership.NewDefinitions(rdb)

		// More creations than the limit, concurrently: exactly the limit
		// succeed.
		var ok, limited atomic.Int64
		var wg sync.WaitGroup
		work := make(chan int)
		for range 32 {
			wg.Go(func() {
				for i := range work {
					_, err := defs.Create(ctx, testDynamicDef(org, fmt.Sprint("s", i)))
					switch {
					case err == nil:
						ok.Add(1)
					case errors.Is(err, membership.ErrLimitExceeded):
						limited.Add(1)
					default:
						t.Error(err)
					}
				}
			})
		}
		for i := range segment.MaxSegmentsPerOrg + 20 {
			work <- i
		}
		close(work)
		wg.Wait()
		if ok.Load() != segment.MaxSegmentsPerOrg || limited.Load() != 20 {
			t.Errorf("created %d and refused %d, want %d and 20", ok.Load(), limited.Load(), segment.MaxSegmentsPerOrg)
		}
	})
}

// TestDefinitionsConcurrentUpdates runs updates of one segment from many
// goroutines at once: each must apply exactly once, none lost to another's
// compare-and-set.
func TestDefinitionsConcurrentUpdates(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		defs := membership.NewDefinitions(rdb)
		d, err := defs.Create(ctx, testDynamicDef(testenv.Org(t, rdb, "org"), "busy"))
		if err != nil {
			t.Fatal(err)
		}
		const writers = 8
		var wg sync.WaitGroup
		for range writers {
			wg.Go(func() {
				_, err := defs.Update(ctx, d.OrgID, d.ID, func(d *segment.Definition) error {
					d.Description += "x"
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		got, err := defs.Get(ctx, d.OrgID, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Description) != writers {
			t.Errorf("description %q: %d of %d updates applied", got.Description, len(got.Description), writers)
		}
	})
}

// TestUpdateContended: an update whose compare-and-set another writer
// beats at every attempt gives up with ErrContended, having written
// nothing, and the other writes stand.
func TestUpdateContended(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		defs := membership.NewDefinitions(rdb)
		d, err := defs.Create(ctx, testDynamicDef(testenv.Org(t, rdb, "org"), "busy"))
		if err != nil {
			t.Fatal(err)
		}
		attempts := 0
		_, err = defs.Update(ctx, d.OrgID, d.ID, func(cur *segment.Definition) error {
			attempts++
			// Another writer, between this attempt's read and its write.
			if _, err := defs.Update(ctx, d.OrgID, d.ID, func(o *segment.Definition) error {
				o.Description += "o"
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			cur.Name = "mine"
			return nil
		})
		if !errors.Is(err, membership.ErrContended) {
			t.Fatalf("err = %v after %d attempts, want ErrContended", err, attempts)
		}
		got, err := defs.Get(ctx, d.OrgID, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name == "mine" || len(got.Description) != attempts {
			t.Errorf("after %d attempts: name %q, description %q; want the other writer's %d writes alone", attempts, got.Name, got.Description, attempts)
		}
	})
}

func TestDefinitionsListPaging(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		defs := membership.NewDefinitions(rdb)
		var ids, staticIDs []string
		for i := range 45 {
			d := testDynamicDef(org, fmt.Sprint("s", i))
			if i%3 == 0 {
				d = segment.Definition{OrgID: org, Name: fmt.Sprint("s", i), Type: segment.TypeStatic, Status: segment.StatusReady}
			}
			c, err := defs.Create(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, c.ID)
			if c.Type == segment.TypeStatic {
				staticIDs = append(staticIDs, c.ID)
			}
		}
		slices.Sort(ids) // also creation order
		if !slices.IsSorted(staticIDs) {
			t.Errorf("ids %v are not in creation order", staticIDs)
		}
		tests := map[string]struct {
			opts membership.ListOptions
			want []string
		}{
			"all by 7":     {membership.ListOptions{Limit: 7}, ids},
			"all by 45":    {membership.ListOptions{Limit: 45}, ids},
			"all by 100":   {membership.ListOptions{Limit: 100}, ids},
			"static by 4":  {membership.ListOptions{Limit: 4, Type: segment.TypeStatic}, staticIDs},
			"default size": {membership.ListOptions{}, ids},
		}
		for name, tt := range tests {
			t.Run(name, func(t *testing.T) {
				var seen []string
				opts := tt.opts
				for pages := 0; ; pages++ {
					if pages > 100 {
						t.Fatal("paging does not end")
					}
					page, next, err := defs.List(ctx, org, opts)
					if err != nil {
						t.Fatal(err)
					}
					limit := opts.Limit
					if limit == 0 {
						limit = membership.DefaultListLimit
					}
					if len(page) > limit {
						t.Fatalf("page of %d, limit %d", len(page), limit)
					}
					for _, d := range page {
						seen = append(seen, d.ID)
					}
					if next == "" {
						break
					}
					opts.Cursor = next
				}
				if !slices.Equal(seen, tt.want) {
					t.Errorf("paged ids = %v\nwant %v", seen, tt.want)
				}
			})
		}
		if _, _, err := defs.List(ctx, org, membership.ListOptions{Cursor: "!!"}); !errors.Is(err, membership.ErrInvalidCursor) {
			t.Errorf("List with a bad cursor = %v, want ErrInvalidCursor", err)
		}
	})
}

func TestDefinitionsAllAndOrgs(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		orgA, orgB := testenv.Org(t, rdb, "a"), testenv.Org(t, rdb, "b")
		defs := membership.NewDefinitions(rdb)
		want := map[string]bool{}
		for _, org := range []string{orgA, orgB, orgA} {
			c, err := defs.Create(ctx, testDynamicDef(org, "x"))
			if err != nil {
				t.Fatal(err)
			}
			want[c.ID] = true
		}
		all, err := defs.All(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range all {
			if d.OrgID == orgA || d.OrgID == orgB {
				if !want[d.ID] {
					t.Errorf("unexpected %+v", d)
				}
				delete(want, d.ID)
			}
		}
		if len(want) != 0 {
			t.Errorf("All misses %v", want)
		}
		orgs, err := defs.Orgs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(orgs, orgA) || !slices.Contains(orgs, orgB) || !slices.IsSorted(orgs) {
			t.Errorf("Orgs = %v, want both, sorted", orgs)
		}
	})
}

func TestNewSegmentIDSortsByTime(t *testing.T) {
	// Later than any id made so far by this process, which ids never go
	// below.
	t0 := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	a := membership.NewSegmentID(t0)
	b := membership.NewSegmentID(t0.Add(time.Millisecond))
	c := membership.NewSegmentID(t0.Add(2 * time.Millisecond))
	if !(a < b && b < c) {
		t.Errorf("ids not in time order: %s %s %s", a, b, c)
	}
	if a[:16] != fmt.Sprintf("seg_%012x", t0.UnixMilli()) {
		t.Errorf("id %s does not start with the hex milliseconds", a)
	}
	// Within one millisecond, and when the clock steps back, ids still
	// rise.
	prev := c
	for range 1000 {
		id := membership.NewSegmentID(t0)
		if id <= prev || len(id) != len(prev) {
			t.Fatalf("id %s after %s", id, prev)
		}
		prev = id
	}
}

// TestDefinitionsChangedOrgs: each change records its organisation at its
// revision, and OrgDefinitions reads one organisation alone.
func TestDefinitionsChangedOrgs(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		orgA, orgB := testenv.Org(t, rdb, "a"), testenv.Org(t, rdb, "b")
		defs := membership.NewDefinitions(rdb)
		rev := func() int64 {
			n, err := defs.Revision(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
		changed := func(since int64) []string {
			orgs, err := defs.ChangedOrgs(ctx, since)
			if err != nil {
				t.Fatal(err)
			}
			var own []string
			for _, o := range orgs {
				if o == orgA || o == orgB {
					own = append(own, o)
				}
			}
			return own
		}
		r0 := rev()
		a1, err := defs.Create(ctx, testDynamicDef(orgA, "x"))
		if err != nil {
			t.Fatal(err)
		}
		a2, err := defs.Create(ctx, testDynamicDef(orgA, "y"))
		if err != nil {
			t.Fatal(err)
		}
		r1 := rev()
		if _, err := defs.Create(ctx, testDynamicDef(orgB, "z")); err != nil {
			t.Fatal(err)
		}
		if got := changed(r1); !slices.Equal(got, []string{orgB}) {
			t.Errorf("changed since %d = %v, want [%s]", r1, got, orgB)
		}
		if got, want := changed(r0), []string{orgA, orgB}; !slices.Equal(got, want) {
			t.Errorf("changed since %d = %v, want %v", r0, got, want)
		}
		if got := changed(rev()); len(got) != 0 {
			t.Errorf("changed since the latest revision = %v, want none", got)
		}
		ds, err := defs.OrgDefinitions(ctx, orgA)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) != 2 || ds[0].ID != min(a1.ID, a2.ID) || ds[1].ID != max(a1.ID, a2.ID) {
			t.Errorf("OrgDefinitions(%s) = %+v, want %s and %s sorted", orgA, ds, a1.ID, a2.ID)
		}
	})
}

// TestBackfillMarks walks a segment's backfill records through the life of
// its generations: the first attempt of a generation is told it is first,
// a retry is not; a generation whose backfill began after older ones had
// begun and not ended tells every one of its attempts about all of them,
// until it is ready or ends cleanly.
func TestBackfillMarks(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		defs := membership.NewDefinitions(rdb)
		org := testenv.Org(t, rdb, "org")
		d, err := defs.Create(ctx, testDynamicDef(org, "vip"))
		if err != nil {
			t.Fatal(err)
		}
		begin := func(gen int64, wantFirst bool, wantUnfinished ...int64) {
			t.Helper()
			first, unfinished, err := defs.BeginBackfill(ctx, org, d.ID, gen)
			if err != nil || first != wantFirst || !slices.Equal(unfinished, wantUnfinished) {
				t.Fatalf("BeginBackfill(%d) = %v, %v, %v; want %v, %v", gen, first, unfinished, err, wantFirst, wantUnfinished)
			}
		}
		newCriteria := func() int64 {
			t.Helper()
			d, err = defs.Update(ctx, org, d.ID, func(d *segment.Definition) error {
				d.Generation, d.Status = d.Generation+1, segment.StatusBuilding
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return d.Generation
		}
		g1 := d.Generation
		begin(g1, true)
		begin(g1, false) // a retry of the first generation: no older one
		// The criteria change before generation 1's backfill ended, and
		// again before generation 2's did.
		g2 := newCriteria()
		begin(g1, false) // a stale generation's backfill learns nothing
		begin(g2, true, g1)
		begin(g2, false, g1) // every retry still looks for generation 1's changes
		g3 := newCriteria()
		begin(g3, true, g1, g2)
		begin(g3, false, g1, g2)
		// Generation 3's backfill is stopped partway by new criteria, with
		// what it wrote published: the next one still looks for 1 and 2.
		if err := defs.EndBackfill(ctx, org, d.ID, g3); err != nil {
			t.Fatal(err)
		}
		g4 := newCriteria()
		begin(g4, true, g1, g2)
		if err := defs.MarkReady(ctx, org, d.ID, g4); err != nil {
			t.Fatal(err)
		}
		got, err := defs.Get(ctx, org, d.ID)
		if err != nil || got.BackfillStarted != 0 || got.BackfillEarlier != nil || got.Status != segment.StatusReady {
			t.Fatalf("after ready: started %d, earlier %v, status %s (%v); want 0, none, ready", got.BackfillStarted, got.BackfillEarlier, got.Status, err)
		}
		// A later generation after a clean end has no older one to look for.
		g5 := newCriteria()
		begin(g5, true)
		begin(g5, false)

		// At most MaxUnfinishedBackfills older generations, the newest.
		var want []int64
		for range segment.MaxUnfinishedBackfills + 2 {
			want = append(want, d.Generation)
			g := newCriteria()
			if len(want) > segment.MaxUnfinishedBackfills {
				want = want[1:]
			}
			begin(g, true, want...)
		}

		// The newest older generation is also stored as the number that
		// builds before the list read, and a record of such a build (the
		// number alone) reads as a list of it.
		raw, err := rdb.HGet(ctx, membership.DefinitionsKey(org), d.ID).Result()
		if err != nil {
			t.Fatal(err)
		}
		if single := fmt.Sprintf(`"backfillEarlier":%d,`, want[len(want)-1]); !strings.Contains(raw, single) {
			t.Errorf("stored %s, want %s in it", raw, single)
		}
		i := strings.Index(raw, `"backfillEarlierAll":[`)
		if i < 0 {
			t.Fatalf("no backfillEarlierAll list in %s", raw)
		}
		j := strings.Index(raw[i:], "],")
		legacy := raw[:i] + raw[i+j+2:]
		legacy = strings.Replace(legacy, fmt.Sprintf(`"backfillEarlier":%d,`, want[len(want)-1]), `"backfillEarlier":7,`, 1)
		if err := rdb.HSet(ctx, membership.DefinitionsKey(org), d.ID, legacy).Err(); err != nil {
			t.Fatal(err)
		}
		if got, err := defs.Get(ctx, org, d.ID); err != nil || !slices.Equal(got.BackfillEarlier, []int64{7}) {
			t.Errorf("legacy record read as %v, %v; want [7]", got.BackfillEarlier, err)
		}
	})
}

func TestIdempotentCreateRecord(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		defs := membership.NewDefinitions(rdb)
		ic := membership.IdempotentCreate{Key: "k1", Fingerprint: "f1", Pending: true, Lease: time.Hour}
		recordTTL := func() time.Duration {
			t.Helper()
			var keys []string
			err := testenv.EachNode(ctx, rdb, func(ctx context.Context, node redis.UniversalClient) error {
				ks, err := node.Keys(ctx, "segidem:{"+org+"}:*").Result()
				keys = append(keys, ks...)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) == 0 {
				return 0
			}
			if len(keys) != 1 {
				t.Fatalf("records %v, want one", keys)
			}
			return rdb.TTL(ctx, keys[0]).Val()
		}

		// A pending create under a live lease: a retry is told to wait.
		first, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "a"), ic)
		if err != nil || first.Replayed || first.Claim == nil {
			t.Fatalf("first create: %+v, %v; want a claim", first, err)
		}
		if ttl := recordTTL(); ttl <= membership.IdempotencyTTL-time.Minute || ttl > membership.IdempotencyTTL {
			t.Errorf("record lives %v, want %v", ttl, membership.IdempotencyTTL)
		}
		if _, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "a"), ic); !errors.Is(err, membership.ErrCreateInProgress) {
			t.Fatalf("retry under a live lease: %v, want ErrCreateInProgress", err)
		}
		if err := defs.FinishCreate(ctx, first.Claim); err != nil {
			t.Fatal(err)
		}
		if ttl := recordTTL(); ttl <= membership.IdempotencyTTL-time.Minute {
			t.Errorf("finishing a create reset its lifetime to %v", ttl)
		}
		again, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "a"), ic)
		if err != nil || !again.Replayed || again.Claim != nil || again.Definition.ID != first.Definition.ID {
			t.Errorf("retry of a finished create: %+v, %v; want a replay of %s", again, err, first.Definition.ID)
		}
		ic.Fingerprint = "f2"
		if _, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "b"), ic); !errors.Is(err, membership.ErrIdempotencyKeyReused) {
			t.Errorf("another request with the key: %v, want ErrIdempotencyKeyReused", err)
		}

		// A request whose lease ran out: one retry takes over, the next
		// waits, and the first can no longer finish or forget it.
		gone := membership.IdempotentCreate{Key: "k2", Fingerprint: "f1", Pending: true, Lease: time.Millisecond}
		stopped, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "c"), gone)
		if err != nil || stopped.Claim == nil {
			t.Fatalf("create: %+v, %v", stopped, err)
		}
		time.Sleep(5 * time.Millisecond)
		retry := gone
		retry.Lease = time.Hour
		taken, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "c"), retry)
		if err != nil || !taken.Replayed || taken.Claim == nil || taken.Definition.ID != stopped.Definition.ID {
			t.Fatalf("retry after the lease: %+v, %v; want the create taken over", taken, err)
		}
		if _, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "c"), retry); !errors.Is(err, membership.ErrCreateInProgress) {
			t.Errorf("retry under the new lease: %v, want ErrCreateInProgress", err)
		}
		if defs.FinishCreate(ctx, stopped.Claim) == nil || defs.ForgetCreate(ctx, stopped.Claim) == nil {
			t.Error("a request whose create was taken over finished or forgot it")
		}
		if err := defs.ForgetCreate(ctx, taken.Claim); err != nil {
			t.Fatal(err)
		}
		if fresh, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "d"), retry); err != nil || fresh.Replayed {
			t.Errorf("create after forgetting: %+v, %v; want a new segment", fresh, err)
		}

		// A segment whose list changed after a lease ran out: nothing is
		// left to do, and the record says so.
		late := membership.IdempotentCreate{Key: "k3", Fingerprint: "f1", Pending: true, Lease: time.Millisecond}
		edited, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "e"), late)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := defs.Update(ctx, org, edited.Definition.ID, func(d *segment.Definition) error { d.Generation++; return nil }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		for range 2 {
			if got, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "e"), late); err != nil || !got.Replayed || got.Claim != nil {
				t.Errorf("retry of a create whose list changed: %+v, %v; want a replay with nothing to do", got, err)
			}
		}
		// A list written since with the generation unchanged (the edit's
		// bump failed): its version moved, and there is nothing to do.
		bumpless := membership.IdempotentCreate{Key: "k4", Fingerprint: "f1", Pending: true, Lease: time.Millisecond}
		w, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "g"), bumpless)
		if err != nil {
			t.Fatal(err)
		}
		if err := membership.NewSets(rdb).ApplyList(ctx, org, w.Definition.ID,
			[]events.Change{{OrgID: org, SegmentID: w.Definition.ID, UserID: "u7", Entered: true}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		if got, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "g"), bumpless); err != nil || !got.Replayed || got.Claim != nil {
			t.Errorf("retry of a create whose list was written since: %+v, %v; want a replay with nothing to do", got, err)
		}
		if all, err := defs.OrgDefinitions(ctx, org); err != nil || len(all) != 5 {
			t.Errorf("%d definitions (%v), want 5", len(all), err)
		}
	})
}

// TestUnchangedUpdateBumps: an update that finds its change already made
// (a retry after its bump failed) moves the revision again, so that every
// instance loads the change.
func TestUnchangedUpdateBumps(t *testing.T) {
	rdb := testenv.RedisClient(t)
	ctx := context.Background()
	defs := membership.NewDefinitions(rdb)
	d, err := defs.Create(ctx, testDynamicDef(testenv.Org(t, rdb, "org"), "vip"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := defs.MarkDeleting(ctx, d.OrgID, d.ID); err != nil {
		t.Fatal(err)
	}
	before, err := defs.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := defs.MarkDeleting(ctx, d.OrgID, d.ID); err != nil {
		t.Fatal(err)
	}
	after, err := defs.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Errorf("revision %d after marking again, want above %d", after, before)
	}
	changed, err := defs.ChangedOrgs(ctx, before)
	if err != nil || !slices.Contains(changed, d.OrgID) {
		t.Errorf("organisations changed since %d: %v, %v; want %s", before, changed, err, d.OrgID)
	}
}

// TestCreateSentTwice: the Redis client sends a script again when its
// reply is lost (a timeout, a dropped connection); a create sent twice
// must create one segment and answer as the first run did, with or
// without an idempotency key.
func TestCreateSentTwice(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		rdb.AddHook(scriptsSentTwice{})
		defs := membership.NewDefinitions(rdb)
		d, err := defs.Create(ctx, testDynamicDef(org, "a"))
		if err != nil {
			t.Fatal(err)
		}
		keyed, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "b"),
			membership.IdempotentCreate{Key: "k1", Fingerprint: "f1", Pending: true, Lease: time.Hour})
		if err != nil || keyed.Replayed || keyed.Claim == nil {
			t.Fatalf("keyed create: %+v, %v; want a fresh create with its claim", keyed, err)
		}
		if err := defs.FinishCreate(ctx, keyed.Claim); err != nil {
			t.Errorf("finish the keyed create: %v", err)
		}
		forgot, err := defs.CreateIdempotent(ctx, testDynamicDef(org, "c"),
			membership.IdempotentCreate{Key: "k2", Fingerprint: "f2", Pending: true, Lease: time.Hour})
		if err != nil || forgot.Claim == nil {
			t.Fatalf("keyed create: %+v, %v; want a fresh create with its claim", forgot, err)
		}
		if err := defs.Delete(ctx, org, forgot.Definition.ID); err != nil {
			t.Fatal(err)
		}
		if err := defs.ForgetCreate(ctx, forgot.Claim); err != nil {
			t.Errorf("forget the rolled-back create: %v", err)
		}
		all, err := defs.OrgDefinitions(ctx, org)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, x := range all {
			ids = append(ids, x.ID)
		}
		if want := []string{d.ID, keyed.Definition.ID}; !slices.Equal(ids, want) && !slices.Equal(ids, []string{want[1], want[0]}) {
			t.Errorf("segments %v, want %v", ids, want)
		}
	})
}

// TestUpdateSentTwice: an update whose compare-and-set is sent twice (its
// first reply lost) is applied once: the resend finds its own write, not
// another writer's, and the update is not made again on top of it.
func TestUpdateSentTwice(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		org := testenv.Org(t, rdb, "org")
		defs := membership.NewDefinitions(rdb)
		d, err := defs.Create(ctx, testDynamicDef(org, "a"))
		if err != nil {
			t.Fatal(err)
		}
		rdb.AddHook(scriptsSentTwice{})
		calls := 0
		out, err := defs.Update(ctx, org, d.ID, func(x *segment.Definition) error {
			calls++
			x.Generation++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := defs.Get(ctx, org, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if calls != 1 || out.Generation != d.Generation+1 || got.Generation != d.Generation+1 {
			t.Errorf("update applied %d times: generation %d answered, %d stored; want %d once",
				calls, out.Generation, got.Generation, d.Generation+1)
		}
	})
}

// scriptsSentTwice runs every script twice and answers the second run's
// reply, as the client's resend after a lost reply does.
type scriptsSentTwice struct{}

func (scriptsSentTwice) DialHook(next redis.DialHook) redis.DialHook { return next }

func (scriptsSentTwice) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			if err := next(ctx, cmd); err != nil {
				return err
			}
		}
		return next(ctx, cmd)
	}
}

func (scriptsSentTwice) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestUnreachableRedisFails: with no Redis to reach, every read and write
// of users and timers fails, rather than pass for done or for an empty
// state (a standalone client leaves the commands of a pipeline it could not
// send without an error of their own).
func TestUnreachableRedisFails(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	users, scheds := membership.NewUsers(rdb), membership.NewSchedules(rdb)
	due := membership.Due{OrgID: "o", UserID: "u", At: time.Now()}
	for name, call := range map[string]func() error{
		"load": func() error {
			_, err := users.Load(ctx, []membership.UserRef{{OrgID: "o", UserID: "u"}})
			return err
		},
		"view": func() error {
			_, err := users.ViewUsers(ctx, "o", []string{"u"}, membership.ViewFields{Segment: "s", Outbox: true})
			return err
		},
		"write": func() error {
			_, err := users.Write(ctx, []membership.UserWrite{{OrgID: "o", UserID: "u", Version: 1}})
			return err
		},
		"amend": func() error {
			_, err := users.Amend(ctx, []membership.Amend{{OrgID: "o", UserID: "u", SegmentID: "s", Entered: true}})
			return err
		},
		"project": func() error {
			_, err := users.Project(ctx, []membership.Projection{{Change: events.Change{OrgID: "o", SegmentID: "s", UserID: "u", Entered: true}, Rev: 1}})
			return err
		},
		"schedule": func() error { return scheds.Schedule(ctx, []membership.Due{due}) },
		"done":     func() error { return scheds.Done(ctx, []membership.Claimed{{Due: due}}, []time.Time{{}}) },
	} {
		t.Run(name, func(t *testing.T) {
			if err := call(); err == nil {
				t.Error("succeeded with no Redis to reach")
			}
		})
	}
}
