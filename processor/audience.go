package processor

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// ProfileLister scans stored profiles.
type ProfileLister interface {
	// ScanProfiles calls fn with every stored, non-deleted profile of org, a
	// page at a time; fn is never called concurrently, nor again once it has
	// returned an error.
	ScanProfiles(ctx context.Context, org string, fn func(page []membership.StoredProfile) error) error
}

// Audience answers exact audience counts over the stored profiles.
type Audience struct {
	profiles ProfileLister
	now      func() time.Time
}

// NewAudience returns an audience searcher over profiles.
func NewAudience(profiles ProfileLister, now func() time.Time) *Audience {
	if now == nil {
		now = time.Now
	}
	return &Audience{profiles: profiles, now: now}
}

// AudiencePage is the answer of an audience search.
type AudiencePage struct {
	// Count is the number of distinct stored users the criteria match.
	Count int64
	// UserIDs are the first matching ids after the search's cursor, in
	// ascending order.
	UserIDs []string
	// More reports whether matching ids follow the last of UserIDs.
	More bool
}

// Search counts the stored profiles of org that the criteria match and
// returns the first limit matching user ids above after ("" for the
// first page) in ascending order.
func (a *Audience) Search(ctx context.Context, org string, c segment.Criteria, limit int, after string) (AudiencePage, error) {
	rule, err := segment.Compile(c)
	if err != nil {
		return AudiencePage{}, err
	}
	now := a.now()
	var count int64
	// A scan may meet a profile twice (Redis rehashed meanwhile): the count
	// is of distinct users.
	seen := map[string]struct{}{}
	// The smallest ids above after seen so far, one more than the page so
	// that More is known, kept bounded: a max-heap would do, but a sorted
	// slice trimmed per page is simpler and cheap at these sizes.
	var page []string
	err = a.profiles.ScanProfiles(ctx, org, func(ps []membership.StoredProfile) error {
		matched := matchProfiles(rule, ps, now)
		n := 0
		for _, id := range matched {
			if _, dup := seen[id]; !dup {
				seen[id] = struct{}{}
				matched[n] = id
				n++
			}
		}
		matched = matched[:n]
		count += int64(n)
		if limit > 0 {
			for _, id := range matched {
				if id > after {
					page = append(page, id)
				}
			}
			sort.Strings(page)
			page = page[:min(len(page), limit+1)]
		}
		return nil
	})
	if err != nil {
		return AudiencePage{}, fmt.Errorf("audience of %s: %w", org, err)
	}
	out := AudiencePage{Count: count, UserIDs: page}
	if len(page) > limit {
		out.UserIDs, out.More = page[:limit], true
	}
	return out, nil
}

func matchProfiles(rule *segment.Rule, ps []membership.StoredProfile, now time.Time) []string {
	hits := make([]bool, len(ps))
	keys := rule.ProfileKeys()
	parallel(len(ps), func(i int) {
		if p, err := segment.DecodeUserProfile(ps[i].Profile, keys, ps[i].UserID); err == nil {
			hits[i] = rule.Match(p, now)
		}
	})
	var out []string
	for i, h := range hits {
		if h {
			out = append(out, ps[i].UserID)
		}
	}
	return out
}
