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

// Search counts the stored profiles of org that the criteria match and
// returns the first limit matching user ids in ascending order.
func (a *Audience) Search(ctx context.Context, org string, c segment.Criteria, limit int) (int64, []string, error) {
	rule, err := segment.Compile(c)
	if err != nil {
		return 0, nil, err
	}
	now := a.now()
	var count int64
	// A scan may meet a profile twice (Redis rehashed meanwhile): the count
	// is of distinct users.
	seen := map[string]struct{}{}
	// The smallest ids seen so far, kept bounded: a max-heap would do, but
	// a sorted slice trimmed per page is simpler and cheap at these sizes.
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
			page = append(page, matched...)
			sort.Strings(page)
			page = page[:min(len(page), limit)]
		}
		return nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("audience of %s: %w", org, err)
	}
	return count, page, nil
}

func matchProfiles(rule *segment.Rule, ps []membership.StoredProfile, now time.Time) []string {
	hits := make([]bool, len(ps))
	keys := rule.ProfileKeys()
	parallel(len(ps), func(i int) {
		if p, err := segment.DecodeProfileKeys(ps[i].Profile, keys); err == nil {
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
