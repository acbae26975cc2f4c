package processor

import (
	"context"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
)

// projectedRevisions reads which write's decision each segment set holds
// for a user (see membership.Users.ProjectedRevisions).
type projectedRevisions interface {
	// ProjectedRevisions returns, for each change, the revision of the write
	// whose decision the change's segment set holds for its user; -1 for a
	// user with none.
	ProjectedRevisions(ctx context.Context, cs []events.Change) ([]int64, error)
}

// superseded returns the changes among earlier (indexes in changes, each
// decided by the write of revision revs[i]) that a later write of the user
// decided again for their segment, and that are not published before it
// here: the segment's set holds the later write's revision (it is
// projected, and so published or being published), no change of this
// publication comes from it, and pending, when not nil, does not take it
// for a write still to be published after them. Published after the later
// write's change, an earlier change would leave a consumer that follows the
// topic with it, the older one; the earlier change is one a crash (or a
// race, see racedChanges) kept back, and a consumer that never saw it sees
// the later one.
func superseded(ctx context.Context, users projectedRevisions, changes []events.Change, revs []int64, earlier []int, pending func(i int, later int64) bool) (map[int]bool, error) {
	if len(earlier) == 0 {
		return nil, nil
	}
	type userRev struct {
		user membership.UserRef
		rev  int64
	}
	here := make(map[userRev]bool, len(changes))
	for i, c := range changes {
		here[userRev{membership.UserRef{OrgID: c.OrgID, UserID: c.UserID}, revs[i]}] = true
	}
	asked := make([]events.Change, len(earlier))
	for k, i := range earlier {
		asked[k] = changes[i]
	}
	projected, err := users.ProjectedRevisions(ctx, asked)
	if err != nil {
		return nil, err
	}
	var drop map[int]bool
	for k, i := range earlier {
		later := projected[k]
		if later <= revs[i] || here[userRev{membership.UserRef{OrgID: changes[i].OrgID, UserID: changes[i].UserID}, later}] {
			continue
		}
		if pending != nil && pending(i, later) {
			continue
		}
		if drop == nil {
			drop = map[int]bool{}
		}
		drop[i] = true
	}
	return drop, nil
}

// without returns s without the elements at the indexes of drop, in a new
// slice when drop has any.
func without[T any](s []T, drop map[int]bool) []T {
	if len(drop) == 0 {
		return s
	}
	out := make([]T, 0, len(s)-len(drop))
	for i, v := range s {
		if !drop[i] {
			out = append(out, v)
		}
	}
	return out
}
