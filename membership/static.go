package membership

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
)

// Sets reads and writes the public membership sets of the contract: each
// segment's set of user ids (SegmentMembersKey) and each user's set of
// segment ids (UserSegmentsKey). Membership is written with SADD and SREM
// only, so applying the same changes again leaves the sets as they were
// (ApplyList also moves the list's version each time). It works on
// standalone Redis and on Redis Cluster: a command or transaction that
// touches several keys keeps to one segment's hash tag. It is safe for
// concurrent use.
type Sets struct {
	rdb redis.UniversalClient
}

// NewSets returns the membership sets on rdb (standalone or cluster).
func NewSets(rdb redis.UniversalClient) *Sets { return &Sets{rdb: rdb} }

// setsChunk is how many user ids one pipelined round trip handles.
const setsChunk = 1000

// ListVersionKey is the internal counter, beside a static segment's member
// set (same hash tag), of the list changes written to it: ApplyList moves
// it in the same transaction as the change's last write to the set.
func ListVersionKey(org, seg string) string { return "seglistv:{" + org + ":" + seg + "}" }

// ListVersion returns the version of a static segment's list: the number of
// list changes fully written (0 before the first).
func (s *Sets) ListVersion(ctx context.Context, org, seg string) (int64, error) {
	v, err := s.rdb.Get(ctx, ListVersionKey(org, seg)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("list version of %s/%s: %w", org, seg, err)
	}
	return v, nil
}

// StaticCause returns the cause of a change to a static segment's list. Its
// event id depends only on the segment, the list's version (ListVersion)
// and the request (the ids added and removed, or the full list of a
// replacement, in any order), so that a request retried after a failed
// write publishes the same events, and the same request made after it was
// written (the version moved with it) other ones.
func StaticCause(segmentID string, version int64, add, remove []string) events.Cause {
	h := sha256.New()
	h.Write([]byte(segmentID))
	h.Write([]byte{0})
	h.Write([]byte(strconv.FormatInt(version, 10)))
	for _, list := range [][]string{add, remove} {
		sorted := slices.Clone(list)
		slices.Sort(sorted)
		h.Write([]byte{1})
		for _, id := range sorted {
			h.Write([]byte(id))
			h.Write([]byte{0})
		}
	}
	return events.Cause{Type: events.CauseStatic, EventID: "static:" + hex.EncodeToString(h.Sum(nil)[:16])}
}

// DeleteCause returns the cause of the exits published when a segment is
// deleted.
func DeleteCause(segmentID string) events.Cause {
	return events.Cause{Type: events.CauseSegment, EventID: "delete:" + segmentID}
}

// PlanReplace returns the changes that make a static segment's members
// exactly userIDs: an entry for each id not yet a member and an exit for each
// member not in userIDs, each ordered by user id. It writes nothing; publish
// the changes, then write them with ApplyList.
func (s *Sets) PlanReplace(ctx context.Context, org, seg string, userIDs []string, cause events.Cause, at time.Time) ([]events.Change, error) {
	cur, err := s.rdb.SMembers(ctx, SegmentMembersKey(org, seg)).Result()
	if err != nil {
		return nil, fmt.Errorf("plan static list of %s/%s: %w", org, seg, err)
	}
	want := make(map[string]struct{}, len(userIDs))
	for _, id := range userIDs {
		want[id] = struct{}{}
	}
	have := make(map[string]struct{}, len(cur))
	var exits []string
	for _, id := range cur {
		have[id] = struct{}{}
		if _, ok := want[id]; !ok {
			exits = append(exits, id)
		}
	}
	var entries []string
	for id := range want {
		if _, ok := have[id]; !ok {
			entries = append(entries, id)
		}
	}
	return staticChangesOf(org, seg, entries, exits, cause, at), nil
}

// PlanEdit returns the changes of adding add to and removing remove from a
// static segment: an entry for each id of add not yet a member and an exit
// for each id of remove that is one, each ordered by user id. It also returns
// the segment's size before the changes. An id should not be in both lists.
// It writes nothing; publish the changes, then write them with ApplyList.
func (s *Sets) PlanEdit(ctx context.Context, org, seg string, add, remove []string, cause events.Cause, at time.Time) ([]events.Change, int64, error) {
	key := SegmentMembersKey(org, seg)
	size, err := s.rdb.SCard(ctx, key).Result()
	if err != nil {
		return nil, 0, fmt.Errorf("plan static edit of %s/%s: %w", org, seg, err)
	}
	add, remove = sortedUniqueIDs(add), sortedUniqueIDs(remove)
	var entries, exits []string
	for _, part := range []struct {
		ids    []string
		member bool
		out    *[]string
	}{{add, false, &entries}, {remove, true, &exits}} {
		for chunk := range slices.Chunk(part.ids, setsChunk*10) {
			is, err := s.rdb.SMIsMember(ctx, key, idsAsArgs(chunk)...).Result()
			if err != nil {
				return nil, 0, fmt.Errorf("plan static edit of %s/%s: %w", org, seg, err)
			}
			for i, m := range is {
				if m == part.member {
					*part.out = append(*part.out, chunk[i])
				}
			}
		}
	}
	return staticChangesOf(org, seg, entries, exits, cause, at), size, nil
}

// Apply writes changes to the membership sets: for each chunk, first the
// users' segment sets, then the segments' member sets, so that a member set
// (from which the next plan is computed) never runs ahead of the user sets.
// The changes of one user and segment must come in order. Applying the same
// changes again changes nothing.
func (s *Sets) Apply(ctx context.Context, changes []events.Change) error {
	return s.apply(ctx, changes, "")
}

// ApplyList is Apply for a change of one static segment's list: the last
// write to the segment's set and the move of its ListVersion go in one
// transaction (same hash tag), so that the version moves exactly when the
// change is written whole.
func (s *Sets) ApplyList(ctx context.Context, org, seg string, changes []events.Change) error {
	if len(changes) == 0 {
		return nil
	}
	return s.apply(ctx, changes, ListVersionKey(org, seg))
}

func (s *Sets) apply(ctx context.Context, changes []events.Change, version string) error {
	chunks := slices.Collect(slices.Chunk(changes, setsChunk))
	for n, chunk := range chunks {
		pipe := s.rdb.Pipeline()
		for _, c := range chunk {
			if c.Entered {
				pipe.SAdd(ctx, UserSegmentsKey(c.OrgID, c.UserID), c.SegmentID)
			} else {
				pipe.SRem(ctx, UserSegmentsKey(c.OrgID, c.UserID), c.SegmentID)
			}
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("apply %d membership changes: user sets: %w", len(chunk), err)
		}
		pipe = s.rdb.Pipeline()
		last := version != "" && n == len(chunks)-1
		if last {
			pipe = s.rdb.TxPipeline()
		}
		// Consecutive changes of one segment and direction go in one command.
		for i := 0; i < len(chunk); {
			j := i + 1
			for j < len(chunk) && chunk[j].OrgID == chunk[i].OrgID && chunk[j].SegmentID == chunk[i].SegmentID && chunk[j].Entered == chunk[i].Entered {
				j++
			}
			ids := make([]any, 0, j-i)
			for _, c := range chunk[i:j] {
				ids = append(ids, c.UserID)
			}
			key := SegmentMembersKey(chunk[i].OrgID, chunk[i].SegmentID)
			if chunk[i].Entered {
				pipe.SAdd(ctx, key, ids...)
			} else {
				pipe.SRem(ctx, key, ids...)
			}
			i = j
		}
		if last {
			pipe.Incr(ctx, version)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("apply %d membership changes: segment sets: %w", len(chunk), err)
		}
	}
	return nil
}

// ForgetSegment takes seg out of the segment set of every stored user of
// org, member or not, and returns how many sets held it: a backfill that
// stopped part way (its instance killed) left users that hold the segment
// in their own set and that no member set names, for DeleteSegment to
// find. A user's set that cannot take the command (of another type) is
// left as it is.
func (s *Sets) ForgetSegment(ctx context.Context, org, seg string) (int64, error) {
	var n int64
	err := NewUsers(s.rdb).ScanUserIDs(ctx, org, func(ids []string) error {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.IntCmd, len(ids))
		for i, id := range ids {
			cmds[i] = pipe.SRem(ctx, UserSegmentsKey(org, id), seg)
		}
		if _, err := pipe.Exec(ctx); unsent(err) != nil {
			return err
		}
		for _, c := range cmds {
			// Only a set of another type is left; any other failure of
			// one command (a node going away) fails the walk.
			if err := c.Err(); err != nil && !wrongType(err) {
				return err
			}
			n += c.Val()
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("forget segment %s/%s: %w", org, seg, err)
	}
	return n, nil
}

// RestoreUserSets puts seg into the own segment set of each of userIDs,
// users its member set already holds, and publishes nothing: a user that
// the member set names and whose own set lost the segment (an add racing
// the user's deletion, see the README's known limits) is put right by
// adding it to the list again. A user whose own set holds seg already is
// left as it is.
func (s *Sets) RestoreUserSets(ctx context.Context, org, seg string, userIDs []string) error {
	for chunk := range slices.Chunk(userIDs, setsChunk) {
		pipe := s.rdb.Pipeline()
		for _, id := range chunk {
			pipe.SAdd(ctx, UserSegmentsKey(org, id), seg)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("restore %d user sets of %s/%s: %w", len(chunk), org, seg, err)
		}
	}
	return nil
}

// Enlist adds users to a segment's member set alone. DeleteSegment works
// from that set: enlisted first, every one of them gets its exit published
// and loses the segment from its own set, also users whose own set a list
// write that stopped part way had reached and the segment's set had not.
func (s *Sets) Enlist(ctx context.Context, org, seg string, userIDs []string) error {
	for chunk := range slices.Chunk(userIDs, setsChunk) {
		if err := s.rdb.SAdd(ctx, SegmentMembersKey(org, seg), idsAsArgs(chunk)...).Err(); err != nil {
			return fmt.Errorf("enlist %d users in %s/%s: %w", len(chunk), org, seg, err)
		}
	}
	return nil
}

// DeleteSegment removes every member of a segment, of any type, a chunk at
// a time: it reads a chunk of members, hands their exits (cause DeleteCause)
// to publish, after the entries of theirs that may not be published yet
// (heldEntries), removes the segment from each of those users' segment sets and
// then the users from the segment's set. At the end it deletes the segment's
// set. When publish fails, DeleteSegment stops and returns its error with
// nothing of that chunk written, so a later call picks up where this one
// stopped and publishes the same events. publish may be nil. It returns how
// many members it removed.
func (s *Sets) DeleteSegment(ctx context.Context, org, seg string, at time.Time, publish func(context.Context, []events.Change) error) (int, error) {
	key := SegmentMembersKey(org, seg)
	cause := DeleteCause(seg)
	removed := 0
	// From now on no projection puts members back (see SegmentDeletedKey).
	if err := s.rdb.Set(ctx, SegmentDeletedKey(org, seg), "1", deletedMarkerTTL).Err(); err != nil {
		return 0, fmt.Errorf("delete membership of %s/%s: %w", org, seg, err)
	}
	// Members added while the scan runs (a racing writer) may be missed by
	// it, so the set is scanned again until it is empty, as long as each
	// pass leaves it smaller. (A scan that removes as it goes may also pass
	// over members: Redis's cursor does not, but the embedded server's
	// skips about half of them.)
	left := int64(-1)
	for pass := 0; ; pass++ {
		var cursor uint64
		for {
			ids, next, err := s.rdb.SScan(ctx, key, cursor, "", setsChunk).Result()
			if err != nil {
				return removed, fmt.Errorf("delete membership of %s/%s: %w", org, seg, err)
			}
			for chunk := range slices.Chunk(sortedUniqueIDs(ids), setsChunk) {
				changes := staticChangesOf(org, seg, nil, chunk, cause, at)
				if publish != nil {
					held, err := s.heldEntries(ctx, org, seg, chunk, at)
					if err != nil {
						return removed, fmt.Errorf("delete membership of %s/%s: %w", org, seg, err)
					}
					if err := publish(ctx, append(held, changes...)); err != nil {
						return removed, fmt.Errorf("delete membership of %s/%s: publish: %w", org, seg, err)
					}
				}
				if err := s.Apply(ctx, changes); err != nil {
					return removed, fmt.Errorf("delete membership of %s/%s: %w", org, seg, err)
				}
				removed += len(chunk)
			}
			cursor = next
			if cursor == 0 {
				break
			}
		}
		n, err := s.rdb.SCard(ctx, key).Result()
		if err != nil {
			return removed, fmt.Errorf("delete membership of %s/%s: %w", org, seg, err)
		}
		if n == 0 {
			break
		}
		if pass >= 2 && left >= 0 && n >= left {
			// Writers still adding: leave the rest for the caller's retry
			// rather than drop members without their exits.
			return removed, fmt.Errorf("delete membership of %s/%s: %d members still being added", org, seg, n)
		}
		left = n
	}
	if err := s.rdb.Del(ctx, key, ListVersionKey(org, seg)).Err(); err != nil {
		return removed, fmt.Errorf("delete membership of %s/%s: %w", org, seg, err)
	}
	// Kept a while: a replay of a decision that had reached the member set
	// before the deletion finds it there and publishes its change.
	if err := s.rdb.Expire(ctx, SegmentRevisionsKey(org, seg), deletedRevisionsTTL).Err(); err != nil {
		return removed, fmt.Errorf("delete membership of %s/%s: %w", org, seg, err)
	}
	return removed, nil
}

// heldEntries returns the entries of users (members of seg) into seg that
// their outboxes hold as the last decision of seg whose write the member
// set holds (a later write not projected is not what the set answers for),
// written within ReplayWindow of now: it may not be published yet, its
// writer having died between its projection and its publication (a batch;
// or a backfill or timer, which the deletion's gate waits for while their
// instance lives). The replay publishes no entry of a deleted segment
// (Deletions.Refuses), and published after the deletion's exit it would
// leave the user in the segment for a consumer: the deletion publishes it
// first, with its eventId (a repeat when it was published), after the
// recent decisions before it (LastDecisions).
func (s *Sets) heldEntries(ctx context.Context, org, seg string, users []string, now time.Time) ([]events.Change, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(users))
	for i, u := range users {
		cmds[i] = pipe.HGet(ctx, ProfileKey(org, u), "o")
	}
	revs := pipe.HMGet(ctx, SegmentRevisionsKey(org, seg), users...)
	if _, err := pipe.Exec(ctx); unsent(err) != nil {
		return nil, fmt.Errorf("outboxes of %d members: %w", len(users), err)
	}
	// Each read's own error: the pipeline's is the first one's, which may
	// be a member without an outbox (redis.Nil) before a node's failure.
	for i, c := range cmds {
		if _, err := readErr(c); err != nil {
			return nil, fmt.Errorf("outbox of member %s: %w", users[i], err)
		}
	}
	if err := revs.Err(); err != nil {
		return nil, fmt.Errorf("revisions of %d members: %w", len(users), err)
	}
	var out []events.Change
	recent := func(e OutboxEntry) bool { return e.AtMillis >= now.Add(-ReplayWindow).UnixMilli() }
	for i, u := range users {
		// An outbox this package cannot read holds nothing it wrote.
		es, _ := DecodeOutbox(cmds[i].Val())
		below := int64(math.MaxInt64)
		if v, ok := revs.Val()[i].(string); ok {
			if held, err := strconv.ParseInt(v, 10, 64); err == nil {
				below = held + 1
			}
		}
		ds := LastDecisions(es, seg, below, recent)
		if len(ds) == 0 || !ds[len(ds)-1].Changes[0].Entered {
			continue
		}
		for _, d := range ds {
			out = append(out, d.Events(UserRef{OrgID: org, UserID: u})...)
		}
	}
	return out, nil
}

// staticChangesOf returns the entries then the exits of users into or out
// of one segment, each sorted by user id.
func staticChangesOf(org, seg string, entries, exits []string, cause events.Cause, at time.Time) []events.Change {
	slices.Sort(entries)
	slices.Sort(exits)
	out := make([]events.Change, 0, len(entries)+len(exits))
	for _, list := range []struct {
		ids     []string
		entered bool
	}{{entries, true}, {exits, false}} {
		for _, id := range list.ids {
			out = append(out, events.Change{OrgID: org, SegmentID: seg, UserID: id, Entered: list.entered, At: at, Cause: cause})
		}
	}
	return out
}

// sortedUniqueIDs returns the distinct ids, sorted, in a new slice.
func sortedUniqueIDs(ids []string) []string {
	out := slices.Clone(ids)
	slices.Sort(out)
	return slices.Compact(out)
}

func idsAsArgs(ids []string) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}
