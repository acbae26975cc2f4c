package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// Difference is one disagreement between a from-scratch evaluation and Redis.
type Difference struct {
	// OrgID, SegmentID and UserID name the organisation, the segment and the
	// user that disagree.
	OrgID, SegmentID, UserID string
	// Want is whether the user should be a member.
	Want bool
	// Where names the set that disagrees, or what could not be checked:
	// one of the Where* constants.
	Where string
}

// What a Difference's Where names.
const (
	// WhereSegment is the segment's member set (seg:…:members).
	WhereSegment = "segment"
	// WhereUser is the user's segment set (user:…:segments).
	WhereUser = "user"
	// WhereUnreadable is a user whose stored profile cannot be decoded (no
	// SegmentID, no Want), not checked.
	WhereUnreadable = "unreadable"
	// WhereUncompilable is a ready segment whose stored criteria no longer
	// compile (no UserID, no Want), whose members are not checked.
	WhereUncompilable = "uncompilable"
	// WhereNotASet is a ready segment whose member set holds another type
	// (no UserID, no Want): its wanted members are reported missing too.
	WhereNotASet = "not a set"
)

// String describes the difference in one line.
func (d Difference) String() string {
	if d.Where == WhereUnreadable {
		return fmt.Sprintf("%s: user %s has a stored profile that cannot be decoded (%s): not checked", d.OrgID, d.UserID, membership.ProfileKey(d.OrgID, d.UserID))
	}
	if d.Where == WhereUncompilable {
		return fmt.Sprintf("%s/%s: the stored criteria no longer compile (segmentd leaves the segment out; save its criteria again): not checked", d.OrgID, d.SegmentID)
	}
	if d.Where == WhereNotASet {
		return fmt.Sprintf("%s/%s: the member set %s holds another type than a set (segmentd skips it): restore it or remove it", d.OrgID, d.SegmentID, membership.SegmentMembersKey(d.OrgID, d.SegmentID))
	}
	verb := "missing from"
	if !d.Want {
		verb = "wrongly in"
	}
	return fmt.Sprintf("%s/%s: user %s %s the %s set", d.OrgID, d.SegmentID, d.UserID, verb, d.Where)
}

// ProfileScanner reads every stored profile and the users' segment sets.
type ProfileScanner interface {
	// Reindex adds to the organisations' indexes of users (nil: every
	// organisation's) every stored user they lack, and returns how many it
	// added.
	Reindex(ctx context.Context, orgs []string) (int64, error)
	// ScanProfiles calls fn with every stored, non-deleted profile of org, a
	// page at a time; fn is never called concurrently, nor again once it has
	// returned an error.
	ScanProfiles(ctx context.Context, org string, fn func(page []membership.StoredProfile) error) error
	// UserSegmentSets returns the public segment set of each user, in the
	// order of users.
	UserSegmentSets(ctx context.Context, org string, users []string) ([][]string, error)
	// ViewUsers reads users' revisions and profiles again, for the second
	// look at the differences.
	ViewUsers(ctx context.Context, org string, users []string, f membership.ViewFields) ([]membership.SegmentView, error)
	// ScanUserIDs calls fn with every stored user id of org, deleted users
	// included.
	ScanUserIDs(ctx context.Context, org string, fn func(ids []string) error) error
}

// MemberReader reads a segment's members.
type MemberReader interface {
	// AllMembers returns every user id of a segment, sorted.
	AllMembers(ctx context.Context, org, seg string) ([]string, error)
	// AreMembers reports whether each of users is in a segment, in the order
	// of users.
	AreMembers(ctx context.Context, org, seg string, users []string) ([]bool, error)
}

// verifySettle is how long Verify lets the writes in flight during its
// pass end before it looks at its differences again.
const verifySettle = 2 * time.Second

// Checked counts what Verify compared.
type Checked struct {
	// Profiles counts the readable stored profiles compared; one that
	// cannot be decoded is a Difference of its own.
	Orgs, Segments, Profiles int
	// Building counts the dynamic segments left out because they are
	// still being computed.
	Building int
	// Reindexed counts the stored users that were missing from their
	// organisation's index (which backfills and audience searches read)
	// and were added to it before the check.
	Reindexed int64
}

// Verify recomputes every dynamic segment of org (every organisation when org
// is empty) from the stored profiles at now and returns where Redis
// disagrees, sorted, and what it compared. Segments still building are
// skipped (their sets are not yet meant to be exact). It first finds the
// organisations' stored users by scanning the keyspace, not their indexes,
// and repairs the indexes (Checked.Reindexed).
//
// The pass reads profiles, then sets, while the stream, backfills and
// timers go on writing: what it finds, it looks at again, user by user,
// once the writes in flight have ended (verifySettle) and at the clock
// moved on as much, and it reports only what is still wrong.
func Verify(ctx context.Context, defs DefinitionLister, users ProfileScanner, sets MemberReader, now time.Time, org string) ([]Difference, Checked, error) {
	began := time.Now()
	diffs, checked, rules, err := verifyPass(ctx, defs, users, sets, now, org)
	if err != nil || len(diffs) == 0 {
		return diffs, checked, err
	}
	select {
	case <-ctx.Done():
		return nil, checked, ctx.Err()
	case <-time.After(verifySettle):
	}
	diffs, err = recheck(ctx, defs, users, sets, now.Add(time.Since(began)), rules, diffs)
	return diffs, checked, err
}

// verifiedRule is a segment as the pass checked it.
type verifiedRule struct {
	generation int64
	rule       *segment.Rule
}

// recheck keeps the differences that a fresh read of the user, its sets
// and the segment's definition still shows, at now.
func recheck(ctx context.Context, defs DefinitionLister, users ProfileScanner, sets MemberReader, now time.Time, rules map[string]verifiedRule, diffs []Difference) ([]Difference, error) {
	all, err := defs.All(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	current := map[string]segment.Definition{}
	for _, d := range all {
		current[d.OrgID+"/"+d.ID] = d
	}
	byOrg := map[string][]string{}
	listed := map[string]bool{}
	for _, d := range diffs {
		if d.Where == WhereUncompilable || d.Where == WhereNotASet {
			continue // no user
		}
		if k := d.OrgID + "\x00" + d.UserID; !listed[k] {
			listed[k] = true
			byOrg[d.OrgID] = append(byOrg[d.OrgID], d.UserID)
		}
	}
	type key struct{ org, user string }
	profiles := map[key]*segment.Profile{} // nil: no stored profile (deleted)
	unreadable := map[key]bool{}
	segSets := map[key][]string{}
	for org, us := range byOrg {
		views, err := users.ViewUsers(ctx, org, us, membership.ViewFields{})
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", org, err)
		}
		ss, err := users.UserSegmentSets(ctx, org, us)
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", org, err)
		}
		for i, v := range views {
			k := key{org, v.UserID}
			segSets[k] = ss[i]
			if v.Profile == "" {
				continue
			}
			if p, err := segment.DecodeUserProfile(v.Profile, nil, v.UserID); err != nil {
				unreadable[k] = true
			} else {
				profiles[k] = p
			}
		}
	}
	// The segment sets' answers, one round trip per segment.
	type segKey struct{ org, seg string }
	type segUser struct{ org, seg, user string }
	asked := map[segKey][]string{}
	for _, d := range diffs {
		if d.Where == WhereSegment {
			k := segKey{d.OrgID, d.SegmentID}
			asked[k] = append(asked[k], d.UserID)
		}
	}
	inSegment := map[segUser]bool{}
	for k, us := range asked {
		is, err := sets.AreMembers(ctx, k.org, k.seg, us)
		if errors.Is(err, membership.ErrNotASet) {
			is, err = make([]bool, len(us)), nil // holds no member
		}
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", k.org, err)
		}
		for i, u := range us {
			inSegment[segUser{k.org, k.seg, u}] = is[i]
		}
	}
	var out []Difference
	reported := map[key]bool{}
	for _, d := range diffs {
		k := key{d.OrgID, d.UserID}
		if unreadable[k] {
			// Unreadable now (still, or since the pass): reported once,
			// and its memberships not checked.
			if !reported[k] {
				reported[k] = true
				out = append(out, Difference{OrgID: d.OrgID, UserID: d.UserID, Where: WhereUnreadable})
			}
			continue
		}
		if d.Where == WhereUnreadable {
			continue // a profile written since replaced it
		}
		cur, ok := current[d.OrgID+"/"+d.SegmentID]
		if d.Where == WhereUncompilable {
			if ok && cur.Status == segment.StatusReady {
				if _, err := segment.Compile(cur.Criteria); err != nil {
					out = append(out, d)
				}
			}
			continue
		}
		vr := rules[d.OrgID+"/"+d.SegmentID]
		if !ok || cur.Status != segment.StatusReady || cur.Generation != vr.generation {
			continue // deleted, or rebuilding new criteria, since the pass
		}
		if d.Where == WhereNotASet {
			if _, err := sets.AllMembers(ctx, d.OrgID, d.SegmentID); errors.Is(err, membership.ErrNotASet) {
				out = append(out, d)
			} else if err != nil {
				return nil, fmt.Errorf("verify %s: %w", d.OrgID, err)
			}
			continue
		}
		want := profiles[k] != nil && vr.rule.Match(profiles[k], now)
		var got bool
		if d.Where == WhereSegment {
			got = inSegment[segUser{d.OrgID, d.SegmentID, d.UserID}]
		} else {
			got = slices.Contains(segSets[k], d.SegmentID)
		}
		if got != want && want == d.Want {
			out = append(out, d)
		}
	}
	sortDifferences(out)
	return out, nil
}

// sortDifferences orders differences by organisation, its unreadable
// profiles first, then by segment, user and set.
func sortDifferences(diffs []Difference) {
	sort.Slice(diffs, func(i, j int) bool {
		a, b := diffs[i], diffs[j]
		if a.OrgID != b.OrgID {
			return a.OrgID < b.OrgID
		}
		if ua, ub := a.Where == WhereUnreadable, b.Where == WhereUnreadable; ua != ub {
			return ua
		}
		if a.SegmentID != b.SegmentID {
			return a.SegmentID < b.SegmentID
		}
		if a.UserID != b.UserID {
			return a.UserID < b.UserID
		}
		return a.Where < b.Where
	})
}

// verifyPass is Verify's pass over every profile and set; it also returns
// the rules it checked, by org/segment.
func verifyPass(ctx context.Context, defs DefinitionLister, users ProfileScanner, sets MemberReader, now time.Time, org string) ([]Difference, Checked, map[string]verifiedRule, error) {
	var checked Checked
	checkedRules := map[string]verifiedRule{}
	all, err := defs.All(ctx)
	if err != nil {
		return nil, checked, nil, fmt.Errorf("verify: %w", err)
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
	// Every organisation's index, not only those with a segment to check:
	// backfills and audience searches read them all. An -org that names
	// no organisation with segments (a mistyped id) is not scanned for.
	var orgs []string
	if org != "" {
		orgs = []string{}
		if slices.ContainsFunc(all, func(d segment.Definition) bool { return d.OrgID == org }) {
			orgs = []string{org}
		}
	}
	if checked.Reindexed, err = users.Reindex(ctx, orgs); err != nil {
		return nil, checked, nil, fmt.Errorf("verify: %w", err)
	}
	var diffs []Difference
	for org, ds := range byOrg {
		rules := map[string]*segment.Rule{}
		want := map[string]map[string]bool{}
		for _, d := range ds {
			r, err := segment.Compile(d.Criteria)
			if err != nil {
				// Valid when stored, refused by this build (segmentd logs
				// and leaves it out): reported, and the others checked.
				diffs = append(diffs, Difference{OrgID: org, SegmentID: d.ID, Where: WhereUncompilable})
				continue
			}
			rules[d.ID] = r
			checkedRules[org+"/"+d.ID] = verifiedRule{generation: d.Generation, rule: r}
			want[d.ID] = map[string]bool{}
		}
		var userIDs []string
		scanned := map[string]bool{}
		unreadable := map[string]bool{}
		err := users.ScanProfiles(ctx, org, func(page []membership.StoredProfile) error {
			for _, sp := range page {
				if scanned[sp.UserID] {
					continue // a scan may give a user twice
				}
				scanned[sp.UserID] = true
				p, err := segment.DecodeUserProfile(sp.Profile, nil, sp.UserID)
				if err != nil {
					// Reported, and the rest checked: the stream and the jobs
					// leave such a user alone too.
					diffs = append(diffs, Difference{OrgID: org, UserID: sp.UserID, Where: WhereUnreadable})
					unreadable[sp.UserID] = true
					continue
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
			return nil, checked, nil, fmt.Errorf("verify %s: %w", org, err)
		}
		checked.Orgs++
		checked.Segments += len(rules)
		checked.Profiles += len(userIDs)
		segSets, err := users.UserSegmentSets(ctx, org, userIDs)
		if err != nil {
			return nil, checked, nil, fmt.Errorf("verify %s: %w", org, err)
		}
		others := map[string]bool{} // users seen with no readable stored profile
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
			if errors.Is(err, membership.ErrNotASet) {
				// Reported, with every member it should hold, and the
				// other segments checked.
				diffs = append(diffs, Difference{OrgID: org, SegmentID: id, Where: WhereNotASet})
				members, err = nil, nil
			}
			if err != nil {
				return nil, checked, nil, fmt.Errorf("verify %s: %w", org, err)
			}
			got := make(map[string]bool, len(members))
			for _, m := range members {
				got[m] = true
				if !want[id][m] && !unreadable[m] {
					diffs = append(diffs, Difference{org, id, m, false, WhereSegment})
				}
			}
			for u := range want[id] {
				if !got[u] {
					diffs = append(diffs, Difference{org, id, u, true, WhereSegment})
				}
			}
			for _, u := range userIDs {
				if userHas[u][id] != want[id][u] {
					diffs = append(diffs, Difference{org, id, u, want[id][u], WhereUser})
				}
			}
			for _, m := range members {
				if !scanned[m] {
					others[m] = true
				}
			}
		}
		// Users with no readable stored profile (deleted users, whose
		// tombstones the index keeps, and members with no profile at all)
		// are in no dynamic segment: their own sets must not name one.
		if err := users.ScanUserIDs(ctx, org, func(ids []string) error {
			for _, u := range ids {
				if !scanned[u] {
					others[u] = true
				}
			}
			return nil
		}); err != nil {
			return nil, checked, nil, fmt.Errorf("verify %s: %w", org, err)
		}
		if len(others) > 0 {
			ids := make([]string, 0, len(others))
			for u := range others {
				ids = append(ids, u)
			}
			own, err := users.UserSegmentSets(ctx, org, ids)
			if err != nil {
				return nil, checked, nil, fmt.Errorf("verify %s: %w", org, err)
			}
			for i, u := range ids {
				for _, s := range own[i] {
					if rules[s] != nil {
						diffs = append(diffs, Difference{org, s, u, false, WhereUser})
					}
				}
			}
		}
	}
	sortDifferences(diffs)
	return diffs, checked, checkedRules, nil
}
