package processor_test

import (
	"context"
	"slices"
	"testing"

	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
	"github.com/segmentd/segmentd/segment"
)

// pagedProfiles hands out fixed pages of profiles, as a Redis SCAN does;
// a SCAN during a rehash may return a key in two pages.
type pagedProfiles [][]membership.StoredProfile

func (p pagedProfiles) ScanProfiles(ctx context.Context, org string, fn func([]membership.StoredProfile) error) error {
	for _, page := range p {
		if err := fn(page); err != nil {
			return err
		}
	}
	return nil
}

// TestAudienceCountsEachUserOnce: a user met twice by the scan counts once.
func TestAudienceCountsEachUserOnce(t *testing.T) {
	prof := func(user string, points float64) membership.StoredProfile {
		return membership.StoredProfile{UserID: user, Profile: string(segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": points})))}
	}
	lister := pagedProfiles{
		{prof("u1", 10), prof("u2", 20), prof("u4", 1)},
		{prof("u2", 20), prof("u3", 30), prof("u1", 10)},
	}
	crit := segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 5.0, HasValue: true}}}
	count, page, err := processor.NewAudience(lister, nil).Search(context.Background(), "acme", crit, 10)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"u1", "u2", "u3"}; count != 3 || !slices.Equal(page, want) {
		t.Fatalf("count %d, page %v; want 3, %v", count, page, want)
	}
}
