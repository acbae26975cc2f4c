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

// prof is a stored profile with points.
func prof(user string, points float64) membership.StoredProfile {
	return membership.StoredProfile{UserID: user, Profile: string(segment.AppendProfile(nil, segment.NewProfile(map[string]any{"points": points})))}
}

// TestAudienceCountsEachUserOnce: a user met twice by the scan counts once.
func TestAudienceCountsEachUserOnce(t *testing.T) {
	lister := pagedProfiles{
		{prof("u1", 10), prof("u2", 20), prof("u4", 1)},
		{prof("u2", 20), prof("u3", 30), prof("u1", 10)},
	}
	crit := segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 5.0, HasValue: true}}}
	res, err := processor.NewAudience(lister, nil).Search(context.Background(), "acme", crit, 10, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"u1", "u2", "u3"}; res.Count != 3 || !slices.Equal(res.UserIDs, want) || res.More {
		t.Fatalf("got %+v; want count 3, page %v, no more", res, want)
	}
}

// TestAudienceReadsUsersOwnIDs: a criterion on userId reads each user's
// own id, also from profiles stored without one.
func TestAudienceReadsUsersOwnIDs(t *testing.T) {
	lister := pagedProfiles{{prof("u1", 10), prof("u2", 20), prof("u3", 1)}}
	crit := segment.Criteria{Include: []segment.Criterion{{Field: "userId", Operator: "in", Value: []any{"u1", "u3", "u9"}, HasValue: true}}}
	res, err := processor.NewAudience(lister, nil).Search(context.Background(), "acme", crit, 10, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"u1", "u3"}; res.Count != 2 || !slices.Equal(res.UserIDs, want) {
		t.Fatalf("got %+v; want count 2, page %v", res, want)
	}
}

// TestAudiencePages walks the matching ids a page at a time.
func TestAudiencePages(t *testing.T) {
	lister := pagedProfiles{
		{prof("u5", 10), prof("u2", 20), prof("u4", 1)},
		{prof("u2", 20), prof("u3", 30), prof("u1", 10), prof("u6", 9)},
	}
	crit := segment.Criteria{Include: []segment.Criterion{{Field: "points", Operator: ">=", Value: 5.0, HasValue: true}}}
	aud := processor.NewAudience(lister, nil)
	tests := map[string]struct {
		limit int
		after string
		want  []string
		more  bool
	}{
		"first page":      {2, "", []string{"u1", "u2"}, true},
		"second page":     {2, "u2", []string{"u3", "u5"}, true},
		"last page":       {2, "u5", []string{"u6"}, false},
		"exactly the end": {3, "u3", []string{"u5", "u6"}, false},
		"after the end":   {2, "u9", nil, false},
		"count only":      {0, "", nil, false},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			res, err := aud.Search(context.Background(), "acme", crit, tt.limit, tt.after)
			if err != nil {
				t.Fatal(err)
			}
			if res.Count != 5 || !slices.Equal(res.UserIDs, tt.want) || res.More != tt.more {
				t.Errorf("got %+v; want count 5, %v, more %v", res, tt.want, tt.more)
			}
		})
	}
}
