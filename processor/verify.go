package processor

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// Difference is one disagreement between a from-scratch evaluation and Redis.
type Difference struct {
	OrgID, SegmentID, UserID string
	// Want is whether the user should be a member.
	Want bool
	// Where names the set that disagrees: "segment" (seg:…:members) or "user" (user:…:segments).
	Where string
}

// String describes the difference in one line.
func (d Difference) String() string {
	verb := "missing from"
	if !d.Want {
		verb = "wrongly in"
	}
	return fmt.Sprintf("%s/%s: user %s %s the %s set", d.OrgID, d.SegmentID, d.UserID, verb, d.Where)
}

// ProfileScanner reads every stored profile and the users' segment sets.
type ProfileScanner interface {
	// Reindex adds to the organisations' indexes of users every stored
	// user they lack, and returns how many it added.
	Reindex(ctx context.Context, orgs []string) (int64, error)
	ScanProfiles(ctx context.Context, org string, fn func(page []membership.StoredProfile) error) error
	UserSegmentSets(ctx context.Context, org string, users []string) ([][]string, error)
}

// MemberReader reads a segment's whole member set.
type MemberReader interface {
	AllMembers(ctx context.Context, org, seg string) ([]string, error)
}

// Checked counts what Verify compared.
type Checked struct {
	Orgs, Segments, Profiles int
	// Building counts the dynamic segments left out because they are
	// still being computed.
	Building int
	// Reindexed counts the stored users that were missing from their
	// organisation's index (which backfills and audience searches read)
	// and were added to it before the check, which covers them.
	Reindexed int64
}

// Verify recomputes every dynamic segment of org (every organisation when org
// is empty) from the stored profiles at now and returns where Redis
// disagrees, sorted, and what it compared. Segments still building are
// skipped (their sets are not yet meant to be exact). It first finds the
// organisations' stored users by scanning the keyspace, not their indexes,
// and repairs the indexes (Checked.Reindexed).
func Verify(ctx context.Context, defs DefinitionLister, users ProfileScanner, sets MemberReader, now time.Time, org string) ([]Difference, Checked, error) {
	var checked Checked
	all, err := defs.All(ctx)
	if err != nil {
		return nil, checked, fmt.Errorf("verify: %w", err)
	}
	byOrg := map[string][]segment.Definition{}
	for _, d := range all {
		if d.Type != segment.TypeDynamic || (org != "" && d.OrgID != org) {
			continue
		}
		switch d.Status {
		case segment.StatusReady:
			byOrg[d.OrgID] = append(byOrg[d.OrgID], d)
		case segment.StatusBuilding:
			checked.Building++
		}
	}
	orgs := make([]string, 0, len(byOrg))
	for o := range byOrg {
		orgs = append(orgs, o)
	}
	if checked.Reindexed, err = users.Reindex(ctx, orgs); err != nil {
		return nil, checked, fmt.Errorf("verify: %w", err)
	}
	var diffs []Difference
	for org, ds := range byOrg {
		rules := map[string]*segment.Rule{}
		want := map[string]map[string]bool{}
		for _, d := range ds {
			r, err := segment.Compile(d.Criteria)
			if err != nil {
				return nil, checked, fmt.Errorf("verify %s/%s: %w", org, d.ID, err)
			}
			rules[d.ID] = r
			want[d.ID] = map[string]bool{}
		}
		var userIDs []string
		err := users.ScanProfiles(ctx, org, func(page []membership.StoredProfile) error {
			for _, sp := range page {
				p, err := segment.DecodeProfile(sp.Profile)
				if err != nil {
					return fmt.Errorf("profile of %s: %w", sp.UserID, err)
				}
				userIDs = append(userIDs, sp.UserID)
				for id, r := range rules {
					if r.Match(p, now) {
						want[id][sp.UserID] = true
					}
				}
			}
			return nil
		})
		if err != nil {
			return nil, checked, fmt.Errorf("verify %s: %w", org, err)
		}
		checked.Orgs++
		checked.Segments += len(rules)
		checked.Profiles += len(userIDs)
		segSets, err := users.UserSegmentSets(ctx, org, userIDs)
		if err != nil {
			return nil, checked, fmt.Errorf("verify %s: %w", org, err)
		}
		userHas := make(map[string]map[string]bool, len(userIDs))
		for i, u := range userIDs {
			m := map[string]bool{}
			for _, s := range segSets[i] {
				m[s] = true
			}
			userHas[u] = m
		}
		for id := range rules {
			members, err := sets.AllMembers(ctx, org, id)
			if err != nil {
				return nil, checked, fmt.Errorf("verify %s: %w", org, err)
			}
			got := make(map[string]bool, len(members))
			for _, m := range members {
				got[m] = true
				if !want[id][m] {
					diffs = append(diffs, Difference{org, id, m, false, "segment"})
				}
			}
			for u := range want[id] {
				if !got[u] {
					diffs = append(diffs, Difference{org, id, u, true, "segment"})
				}
			}
			for _, u := range userIDs {
				if userHas[u][id] != want[id][u] {
					diffs = append(diffs, Difference{org, id, u, want[id][u], "user"})
				}
			}
		}
	}
	sort.Slice(diffs, func(i, j int) bool { return diffs[i].String() < diffs[j].String() })
	return diffs, checked, nil
}
