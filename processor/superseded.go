package processor

import (
	"context"
	"slices"
	"time"

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
// projected, and so published or being published), and no change of this
// publication comes from it. Published after the later write's change, an
// earlier change would leave a consumer that follows the topic with it, the
// older one; and the later write published the earlier change before its
// own (see precedingChanges), so leaving it out here loses nothing.
func superseded(ctx context.Context, users projectedRevisions, changes []events.Change, revs []int64, earlier []int) (map[int]bool, error) {
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

// precedingChanges returns the changes of segment seg that the newest
// entries of outbox written before revision rev made there, oldest first,
// with their entries' revisions (membership.LastDecisions), when take
// accepts them and a change of seg to entered flips from the newest. A
// backfill's or a timer's decision may never have been published, whatever
// its age (its round gave up on Kafka, or its instance died), unless a
// timer round marked it published (LastDecisions leaves those out: they
// were on the topic before the mark), and its retry
// leaves it out once a later write has decided the segment again (see
// superseded): the later writer publishes it first (again, with its
// eventId, when it was published), so that it is neither lost nor
// published after the change that followed it; and the decisions before
// it that may be unpublished too (one batch's entry and exit), so that
// they come in the order written.
func precedingChanges(ref membership.UserRef, outbox []membership.OutboxEntry, seg string, rev int64, entered bool, take func(membership.OutboxEntry) bool) []membership.Projection {
	ds := membership.LastDecisions(outbox, seg, rev, take)
	if len(ds) == 0 || ds[len(ds)-1].Changes[0].Entered == entered {
		return nil
	}
	out := make([]membership.Projection, len(ds))
	for i, d := range ds {
		out[i] = membership.Projection{Change: d.Events(ref)[0], Rev: d.Rev}
	}
	return out
}

// unpublishedStream tells which stream entries of a user's outbox may
// still be unpublished, as a job sees them (see Jobs.unpublished).
type unpublishedStream struct {
	// from is the earliest instant at which such an entry may have been
	// decided (see Jobs.unpublishedFrom).
	from time.Time
	// topic is the hash of the profile topic's name (see position), and
	// committed the consumer group's committed offset of each of its
	// partitions, as last read; nil when unknown.
	topic     uint32
	committed map[int]int64
	// rules are the user's organisation's definitions, which tell the
	// backfills that have published all they wrote (see
	// OrgRules.backfillPublished); nil takes every job's entry.
	rules *OrgRules
}

// published reports whether every stream entry of a user whose stored
// position of the last applied event is applied (UserState.Applied) is
// published: that event lies below its partition's committed offset. A
// user's events come from one partition (they are keyed by user), applied
// in offset order, and the stream commits a batch once its changes are
// published, batches in order.
func (u unpublishedStream) published(applied string) bool {
	p, ok := parsePosition(applied)
	if !ok || p.topic != u.topic {
		return false
	}
	c, ok := u.committed[p.partition]
	return ok && p.off < c
}

// take accepts, for a backfill's or timer's change of a user whose stored
// position of the last applied event is applied (see precedingChanges),
// the outbox entries whose decision may still be unpublished, other than
// those own names: a job's whatever its age (but a finished backfill's),
// the stream's decided at or after u.from unless published says they all
// are (membership.LastDecisions leaves out those marked published).
func (u unpublishedStream) take(applied string, own func(membership.OutboxEntry) bool) func(membership.OutboxEntry) bool {
	recent, published := u.from.UnixMilli(), u.published(applied)
	return func(e membership.OutboxEntry) bool {
		return !own(e) && (u.rules.unpublishedJob(e) || (streamEntry(e) && !published && e.AtMillis >= recent))
	}
}

// withoutRepeats returns ps without the projections that repeat an earlier
// one's change (the same eventId, segment and direction).
func withoutRepeats(ps []membership.Projection) []membership.Projection {
	out := ps[:0:0]
	for _, p := range ps {
		if !slices.ContainsFunc(out, func(q membership.Projection) bool {
			return q.Change.Cause.EventID == p.Change.Cause.EventID && q.Change.SegmentID == p.Change.SegmentID && q.Change.Entered == p.Change.Entered
		}) {
			out = append(out, p)
		}
	}
	return out
}
