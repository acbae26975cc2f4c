package processor_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// TestRegistryReloadsOnlyChangedOrgs: after the first load, a change reloads
// its own organisation and leaves every other organisation's compiled rules
// as they were; an organisation left with no dynamic segment drops out.
func TestRegistryReloadsOnlyChangedOrgs(t *testing.T) {
	testenv.OnEachRedis(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		orgA, orgB, orgC := testenv.Org(t, rdb, "a"), testenv.Org(t, rdb, "b"), testenv.Org(t, rdb, "c")
		defs := membership.NewDefinitions(rdb)
		create := func(org, field string) segment.Definition {
			d, err := defs.Create(ctx, segment.Definition{OrgID: org, Name: field, Type: segment.TypeDynamic, Status: segment.StatusReady,
				Criteria: segment.Criteria{Include: []segment.Criterion{{Field: field, Operator: ">=", Value: 1.0, HasValue: true}}}})
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		create(orgA, "points")
		b := create(orgB, "xp")
		reg := processor.NewRegistry(defs, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)))
		reload := func() *processor.Snapshot {
			if err := reg.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			return reg.Current()
		}
		s1 := reload()
		if s1.Org(orgA) == nil || s1.Org(orgB) == nil {
			t.Fatal("first load misses an organisation")
		}
		if s := reload(); s != s1 {
			t.Error("a reload with no change made a new snapshot")
		}

		if _, err := defs.Update(ctx, orgB, b.ID, func(d *segment.Definition) error {
			d.Criteria.Include[0].Field = "coins"
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		create(orgC, "xp")
		s2 := reload()
		if s2.Org(orgA) != s1.Org(orgA) {
			t.Error("an unchanged organisation was compiled again")
		}
		if got := s2.Org(orgB).Segments[b.ID].Def.Criteria.Include[0].Field; got != "coins" {
			t.Errorf("changed segment reads %q, want coins", got)
		}
		if s2.Org(orgC) == nil {
			t.Error("a new organisation is missing")
		}

		if err := defs.Delete(ctx, orgB, b.ID); err != nil {
			t.Fatal(err)
		}
		s3 := reload()
		if s3.Org(orgB) != nil {
			t.Error("an organisation with no dynamic segment left is still there")
		}
		if s3.Org(orgA) != s1.Org(orgA) || s3.Org(orgC) != s2.Org(orgC) {
			t.Error("unchanged organisations were compiled again")
		}
		if s1.Org(orgB).Segments[b.ID].Def.Criteria.Include[0].Field != "xp" {
			t.Error("an older snapshot changed")
		}
	})
}

// BenchmarkDefinitionChange measures how long an instance takes to bring
// its rules up to date after one segment of one organisation changes, with
// SEGMENTD_BENCH_ORGS organisations (default 100) of 100 segments each:
// "everything" loads and compiles every definition (what a reload did before
// it followed the changed organisations, and what the first load does),
// "one-org" reloads the changed organisation alone.
func BenchmarkDefinitionChange(b *testing.B) {
	ctx := context.Background()
	rdb := testenv.RedisClient(b)
	defs := membership.NewDefinitions(rdb)
	orgs := envInt("SEGMENTD_BENCH_ORGS", 100)
	var changed segment.Definition
	var created []segment.Definition
	// Later runs and instances on the same servers would load these too.
	b.Cleanup(func() {
		for _, d := range created {
			if err := defs.Delete(ctx, d.OrgID, d.ID); err != nil {
				b.Error(err)
			}
		}
	})
	for o := range orgs {
		org := testenv.UniqueName(b, "org")
		for i := range 100 {
			d, err := defs.Create(ctx, segment.Definition{OrgID: org, Name: "s", Type: segment.TypeDynamic, Status: segment.StatusReady,
				Criteria: segment.Criteria{Include: []segment.Criterion{
					{Field: "tier", Operator: "in", Value: []any{"gold", "platinum"}, HasValue: true},
					{Field: "points", Operator: ">=", Value: float64(i * 10), HasValue: true},
					{Field: "customFields.region", Operator: "equals", Value: "eu", HasValue: true},
				}}})
			if err != nil {
				b.Fatal(err)
			}
			created = append(created, d)
			if o == 0 && i == 0 {
				changed = d
			}
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b.Run("everything", func(b *testing.B) {
		for b.Loop() {
			if err := processor.NewRegistry(defs, time.Hour, log).Reload(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one-org", func(b *testing.B) {
		reg := processor.NewRegistry(defs, time.Hour, log)
		if err := reg.Reload(ctx); err != nil {
			b.Fatal(err)
		}
		n := 0
		for b.Loop() {
			b.StopTimer()
			n++
			if _, err := defs.Update(ctx, changed.OrgID, changed.ID, func(d *segment.Definition) error {
				d.Criteria.Include[1].Value = float64(n)
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := reg.Reload(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestRegistryReloadsAllAfterCounterReset: a revision counter that starts
// again below the loaded one (a flushed Redis) makes the registry load
// everything, since the organisations changed since cannot be told. It
// runs in a database of its own: the counter is global.
func TestRegistryReloadsAllAfterCounterReset(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t), DB: 9})
	t.Cleanup(func() { rdb.FlushDB(context.Background()); rdb.Close() })
	ctx := context.Background()
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	defs := membership.NewDefinitions(rdb)
	create := func(name string) {
		t.Helper()
		if _, err := defs.Create(ctx, segment.Definition{OrgID: "acme", Name: name, Type: segment.TypeDynamic, Status: segment.StatusReady,
			Criteria: segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 1.0, HasValue: true}}}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"a", "b", "c"} {
		create(name)
	}
	reg := processor.NewRegistry(defs, time.Hour, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(reg.Current().Org("acme").Segments); n != 3 {
		t.Fatalf("%d segments loaded, want 3", n)
	}
	// Redis is flushed and one segment created: the counter is at 1, below
	// the 3 loaded.
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	create("d")
	if err := reg.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if o := reg.Current().Org("acme"); o == nil || len(o.Segments) != 1 {
		t.Errorf("after the reset, %v loaded, want the one segment stored", o)
	}
}
