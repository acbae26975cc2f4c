package processor

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentd/segmentd/segment"
)

// DefinitionLister lists every organisation's segment definitions.
type DefinitionLister interface {
	// All returns the definitions of every organisation, leaving out segments
	// being deleted.
	All(ctx context.Context) ([]segment.Definition, error)
}

// DefinitionSource is where segment definitions live, with a revision that
// moves on every change and the organisations each change touched.
type DefinitionSource interface {
	DefinitionLister
	// Revision returns the definitions' revision, which moves after every
	// change that evaluation can see; 0 before the first.
	Revision(ctx context.Context) (int64, error)
	// ChangedOrgs lists the organisations changed at a revision after since.
	ChangedOrgs(ctx context.Context, since int64) ([]string, error)
	// OrgDefinitions returns the definitions of one organisation, leaving out
	// segments being deleted.
	OrgDefinitions(ctx context.Context, org string) ([]segment.Definition, error)
}

// CompiledSegment is a dynamic segment ready to evaluate.
type CompiledSegment struct {
	// Def is the segment's definition as loaded.
	Def segment.Definition
	// Rule is the segment's compiled criteria, bound to its organisation's
	// OrgRules.Slots.
	Rule *segment.Rule
}

// OrgRules holds one organisation's compiled dynamic segments and the index
// from fields to the segments that read them.
type OrgRules struct {
	// Segments holds the compiled dynamic segments by id.
	Segments map[string]*CompiledSegment
	// IDs lists every dynamic segment, sorted.
	IDs []string
	// TimeIDs lists the segments with a time-relative criterion, sorted.
	TimeIDs []string
	// Index maps the profile fields to the segments that read them, and
	// numbers the segments.
	Index *segment.Index
	// ByNumber holds the segments in the index's numbering.
	ByNumber []*CompiledSegment
	// All holds every index number, for users seen for the first time.
	All []int32
	// Slots numbers the fields the segments read; every Rule here is bound
	// to it, so that a Lookup from it reads each field of a profile once
	// however many segments are evaluated.
	Slots *segment.FieldSlots
	// GuardSlots lists the distinct fields of the segments' guards (see
	// segment.Guard); GuardOf gives, by index number, the segment's guard as
	// an index into GuardSlots (-1 for none) and GuardKey its value.
	GuardSlots []int32
	// GuardOf gives, by index number, the segment's guard as an index into
	// GuardSlots, -1 for none.
	GuardOf []int32
	// GuardKey gives, by index number, the value of the segment's guard (nil
	// for none).
	GuardKey []any
}

// Guarded reports whether segment number n's guard rules out the profile
// whose guard keys (by GuardSlots index, from Lookup.GuardKey) are keys and
// ok: then it is not a member, and evaluating its rule can be skipped.
func (o *OrgRules) Guarded(n int32, keys []any, ok []bool) bool {
	g := o.GuardOf[n]
	return g >= 0 && (!ok[g] || keys[g] != o.GuardKey[n])
}

// NewLookup returns a field memo for evaluating this organisation's rules;
// give each goroutine its own.
func (o *OrgRules) NewLookup() *segment.Lookup { return o.Slots.NewLookup() }

// TimeDependent reports whether any segment of the organisation has a
// time-relative criterion.
func (o *OrgRules) TimeDependent() bool { return len(o.TimeIDs) > 0 }

// NextFlip returns the earliest instant after now at which any
// time-relative segment of the organisation can change for p.
func (o *OrgRules) NextFlip(p *segment.Profile, now time.Time) (time.Time, bool) {
	var best time.Time
	for _, id := range o.TimeIDs {
		if at, ok := o.Segments[id].Rule.NextFlip(p, now); ok && (best.IsZero() || at.Before(best)) {
			best = at
		}
	}
	return best, !best.IsZero()
}

// Snapshot is an immutable view of every organisation's rules.
type Snapshot struct {
	// Revision is the definitions revision the snapshot was loaded at.
	Revision int64
	// Orgs holds the rules of each organisation with a dynamic segment, by
	// organisation id.
	Orgs map[string]*OrgRules
}

// Org returns the rules of org, nil when it has no dynamic segment.
func (s *Snapshot) Org(org string) *OrgRules {
	if s == nil {
		return nil
	}
	return s.Orgs[org]
}

// Registry keeps the compiled definitions current by polling the source's
// revision, so that a change made through any instance is in force here
// within one poll interval.
type Registry struct {
	src      DefinitionSource
	interval time.Duration
	log      *slog.Logger
	cur      atomic.Pointer[Snapshot]
	// reloading serialises reloads (the poll's and Fresh's), so that an
	// older snapshot never replaces a newer one.
	reloading sync.Mutex
}

// NewRegistry returns a registry polling src every interval.
func NewRegistry(src DefinitionSource, interval time.Duration, log *slog.Logger) *Registry {
	return &Registry{src: src, interval: interval, log: log}
}

// Current returns the latest snapshot, nil before the first load.
func (r *Registry) Current() *Snapshot { return r.cur.Load() }

// Fresh reads the source's revision now, reloads when it moved, and
// returns the current snapshot: for a writer about to write what an older
// snapshot decided. After a pause of the process (SIGSTOP, a paused
// container or VM, a long stall) that snapshot may be older than what the
// other instances' revision gate, which takes an instance silent for 3 s
// for gone, still waits for.
func (r *Registry) Fresh(ctx context.Context) (*Snapshot, error) {
	if err := r.Reload(ctx); err != nil {
		return nil, err
	}
	return r.cur.Load(), nil
}

// Loaded reports whether definitions have been loaded once.
func (r *Registry) Loaded() bool { return r.cur.Load() != nil }

// Reload loads the definitions now if their revision moved: all of them the
// first time, afterwards only the organisations that changed, so that a
// change costs the same however many organisations there are.
func (r *Registry) Reload(ctx context.Context) error {
	r.reloading.Lock()
	defer r.reloading.Unlock()
	rev, err := r.src.Revision(ctx)
	if err != nil {
		return fmt.Errorf("definitions revision: %w", err)
	}
	old := r.cur.Load()
	if old != nil && old.Revision == rev {
		return nil
	}
	var snap *Snapshot
	// A revision below the one loaded means the counter started again (a
	// flushed or restored Redis): the changes since cannot be told, so
	// everything is loaded again.
	if old == nil || rev < old.Revision {
		defs, err := r.src.All(ctx)
		if err != nil {
			return fmt.Errorf("load definitions: %w", err)
		}
		snap = Compile(rev, defs, r.log)
	} else {
		// Every organisation changed up to rev is listed (the source records
		// both at once); one changed later is listed too and loaded early,
		// which is harmless: the next reload loads it again.
		orgs, err := r.src.ChangedOrgs(ctx, old.Revision)
		if err != nil {
			return fmt.Errorf("load definitions: %w", err)
		}
		snap = &Snapshot{Revision: rev, Orgs: maps.Clone(old.Orgs)}
		for _, org := range orgs {
			defs, err := r.src.OrgDefinitions(ctx, org)
			if err != nil {
				return fmt.Errorf("load definitions: %w", err)
			}
			if o := compileOrg(defs, r.log); o != nil {
				snap.Orgs[org] = o
			} else {
				delete(snap.Orgs, org)
			}
		}
	}
	r.cur.Store(snap)
	return nil
}

// Run polls until ctx ends.
func (r *Registry) Run(ctx context.Context) error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	var failingSince, lastWarned time.Time
	for {
		switch err := r.Reload(ctx); {
		case err != nil && ctx.Err() == nil:
			// Four polls a second: an outage is reported when it starts and
			// every 10 s while it lasts, not at each poll.
			now := time.Now()
			if failingSince.IsZero() {
				failingSince = now
			}
			if now.Sub(lastWarned) >= 10*time.Second {
				lastWarned = now
				r.log.Warn("reload definitions", "err", err, "failing_for", now.Sub(failingSince).Round(time.Second))
			}
		case err == nil && !failingSince.IsZero():
			r.log.Info("reload definitions works again", "after", time.Since(failingSince).Round(time.Second))
			failingSince, lastWarned = time.Time{}, time.Time{}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Compile builds a snapshot from definitions; a definition that no longer
// compiles (it was valid when stored) is logged and left out.
func Compile(rev int64, defs []segment.Definition, log *slog.Logger) *Snapshot {
	snap := &Snapshot{Revision: rev, Orgs: map[string]*OrgRules{}}
	byOrg := map[string][]segment.Definition{}
	for _, d := range defs {
		byOrg[d.OrgID] = append(byOrg[d.OrgID], d)
	}
	for org, ds := range byOrg {
		if o := compileOrg(ds, log); o != nil {
			snap.Orgs[org] = o
		}
	}
	return snap
}

// compileOrg builds one organisation's rules; nil when it has no dynamic
// segment in force.
func compileOrg(defs []segment.Definition, log *slog.Logger) *OrgRules {
	var o *OrgRules
	fields := map[string][]string{}
	for _, d := range defs {
		if d.Type != segment.TypeDynamic || d.Status == segment.StatusDeleting {
			continue
		}
		rule, err := segment.Compile(d.Criteria)
		if err != nil {
			log.Error("stored segment does not compile", "org", d.OrgID, "segment", d.ID, "err", err)
			continue
		}
		if o == nil {
			o = &OrgRules{Segments: map[string]*CompiledSegment{}, Slots: segment.NewFieldSlots()}
		}
		o.Segments[d.ID] = &CompiledSegment{Def: d, Rule: o.Slots.Bind(rule)}
		o.IDs = append(o.IDs, d.ID)
		if rule.TimeDependent() {
			o.TimeIDs = append(o.TimeIDs, d.ID)
		}
		fields[d.ID] = rule.Fields()
	}
	if o == nil {
		return nil
	}
	o.Index = segment.NewIndex(fields)
	sort.Strings(o.IDs)
	sort.Strings(o.TimeIDs)
	o.ByNumber = make([]*CompiledSegment, o.Index.Len())
	o.All = make([]int32, o.Index.Len())
	o.GuardOf = make([]int32, o.Index.Len())
	o.GuardKey = make([]any, o.Index.Len())
	for i := range o.ByNumber {
		cs := o.Segments[o.Index.ID(int32(i))]
		o.ByNumber[i] = cs
		o.All[i] = int32(i)
		o.GuardOf[i] = -1
		if g, ok := cs.Rule.Guard(); ok {
			at := slices.Index(o.GuardSlots, g.Slot)
			if at < 0 {
				at = len(o.GuardSlots)
				o.GuardSlots = append(o.GuardSlots, g.Slot)
			}
			o.GuardOf[i], o.GuardKey[i] = int32(at), g.Key
		}
	}
	return o
}
