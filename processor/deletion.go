package processor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/segment"
)

// deletionDefinitions is what a segment's removal needs of the stored
// definitions.
type deletionDefinitions interface {
	MarkDeleting(ctx context.Context, org, id string) (segment.Definition, error)
	Revision(ctx context.Context) (int64, error)
	Get(ctx context.Context, org, id string) (segment.Definition, error)
	Delete(ctx context.Context, org, id string) error
}

// SegmentDeletion removes a segment and its membership, in the order that a
// DELETE and the jobs (which finish a deletion left undone) share.
type SegmentDeletion struct {
	// Definitions stores the segment's definition.
	Definitions deletionDefinitions
	// Remover removes the segment's membership.
	Remover SegmentRemover
	// Await waits until no instance has work in flight that was evaluated
	// with definitions older than the revision given; nil waits for none.
	Await func(ctx context.Context, rev int64) error
	// Lock takes the segment's list lock: it returns a context that ends
	// when the lock is lost, and the lock's release.
	Lock func(ctx context.Context, org, id string) (context.Context, func(), error)
	// Publish publishes the members' exits.
	Publish func(ctx context.Context, cs []events.Change) error
	// Now is the clock.
	Now func() time.Time
}

// Remove removes segment d, as read before it was marked deleting; its
// exits take effect no earlier than notBefore. The definition is marked
// again on a retry (its move of the revision may be what failed, and
// marking moves it); every instance stops evaluating the segment before
// its members go; a change of its list in progress ends first, and none
// starts after the mark. A static create that did not finish, or a
// backfill that did not end cleanly, may have left users holding the
// segment in their own set that the member set does not name: they are
// looked for too. The definition goes last.
func (s SegmentDeletion) Remove(ctx context.Context, d segment.Definition, notBefore time.Time) error {
	if _, err := s.Definitions.MarkDeleting(ctx, d.OrgID, d.ID); err != nil {
		return err
	}
	if s.Await != nil {
		rev, err := s.Definitions.Revision(ctx)
		if err != nil {
			return err
		}
		if err := s.Await(ctx, rev); err != nil {
			return fmt.Errorf("delete %s/%s: %w", d.OrgID, d.ID, err)
		}
	}
	ctx, unlock, err := s.Lock(ctx, d.OrgID, d.ID)
	if err != nil {
		return err
	}
	defer unlock()
	// The exits take effect now, after the gate and the lock, later than
	// any change published while the deletion waited for them.
	now := s.Now().UTC()
	if notBefore.After(now) {
		now = notBefore
	}
	if _, err := s.Remover.DeleteSegment(ctx, d.OrgID, d.ID, now, s.Publish); err != nil {
		return err
	}
	// Read after the gate, which waited for any backfill to stop.
	if cur, err := s.Definitions.Get(ctx, d.OrgID, d.ID); err == nil && (d.CreateUnfinished() || cur.BackfillUnfinished()) {
		if _, err := s.Remover.ForgetSegment(ctx, d.OrgID, d.ID); err != nil {
			return err
		}
	} else if err != nil && !errors.Is(err, membership.ErrNotFound) {
		return err
	}
	if err := s.Definitions.Delete(ctx, d.OrgID, d.ID); err != nil && !errors.Is(err, membership.ErrNotFound) {
		return err
	}
	return nil
}
