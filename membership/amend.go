package membership

import (
	"context"
	"fmt"
	"slices"

	"github.com/redis/go-redis/v9"
)

// Amend is a compare-and-set change of one user's membership of one segment
// made outside the profile stream (a backfill or a timer), computed from a
// read of the user that found a profile. It leaves the profile alone and
// appends its entry to the user's outbox, so that the entries of a stream
// batch not yet committed stay replayable.
type Amend struct {
	// OrgID, UserID and SegmentID name the user and the segment whose
	// membership changes.
	OrgID, UserID, SegmentID string
	// ExpectRev is the user revision the amend was computed from: it applies
	// only while the stored revision is still that one.
	ExpectRev int64
	// Entered is true to add the user to the segment and false to remove it.
	Entered bool
	// Entry is the outbox entry appended to the user's outbox when the
	// membership changes.
	Entry OutboxEntry
}

// AmendOutcome is the outcome of one Amend.
type AmendOutcome struct {
	// Result says what the amend did.
	Result AmendResult
	// Before is, for an applied amend, the user's outbox as the amend
	// found it: the entries of writes before it that may not be published
	// yet (see Jobs).
	Before []OutboxEntry
	// Applied is, for an applied amend that found an outbox, the stored
	// position of the last profile event applied to the user (see
	// UserState.Applied), which tells how far its stream entries may be
	// unpublished.
	Applied string
}

// AmendResult says what one Amend did.
type AmendResult int8

const (
	// AmendStale means the user changed (or was deleted) since it was
	// read: read again.
	AmendStale AmendResult = iota
	// AmendApplied means the membership changed and the outbox holds the entry.
	AmendApplied
	// AmendUnchanged means the user's segment set already said what the
	// amend would write: nothing was written, and there is no change.
	AmendUnchanged
)

// The script is on every backfilled change, so it makes as few calls as it
// can: one read of revision and outbox, the membership change itself (whose
// reply says whether the set already held it: the caller may have guessed
// the membership from the member set), one write. It amends each user of
// KEYS (profile hash, segment set) from its four ARGV: expected revision,
// segment, 1|0, outbox entry; and replies with four values a user: the
// outcome, and the outbox, applied position and published marks (see
// Users.MarkPublished) it found when it applied the change (empty strings
// when it did not, the position and marks also when the outbox was
// empty). A deletion moves the revision like any write, and callers amend
// only users they read with a profile, so the revision alone also catches
// a user deleted since the read.
const amendScript = `
local out = {}
for k = 1, #KEYS, 2 do
  local a = 2 * k - 1
  local h = redis.call('HMGET', KEYS[k], 'r', 'o', 'k', 'j')
  local rev = tonumber(h[1] or '0')
  local res = 0
  local before, applied, published = '', '', ''
  if rev == tonumber(ARGV[a]) then
    local n
    if ARGV[a + 2] == '1' then n = redis.call('SADD', KEYS[k + 1], ARGV[a + 1]) else n = redis.call('SREM', KEYS[k + 1], ARGV[a + 1]) end
    if n == 0 then
      res = 2
    else
      local o = h[2]
      -- An outbox in the former JSON form cannot take a binary entry; it is
      -- replaced, which only matters during an upgrade.
      if not o or string.sub(o, 1, 1) == '[' or o == 'null' then o = '' end
      redis.call('HSET', KEYS[k], 'r', rev + 1, 'o', o .. ARGV[a + 3])
      res = 1
      before = o
      if o ~= '' then applied, published = h[3] or '', h[4] or '' end
    end
  end
  out[#out + 1] = res
  out[#out + 1] = before
  out[#out + 1] = applied
  out[#out + 1] = published
end
return out
`

var amend = redis.NewScript(amendScript)

// Amend applies each change atomically per user in one pipelined round trip
// and reports the outcome of each.
func (u *Users) Amend(ctx context.Context, as []Amend) ([]AmendOutcome, error) {
	out := make([]AmendOutcome, len(as))
	calls := make([]scriptCall, len(as))
	for i, a := range as {
		entry := appendEntry(nil, a.Entry)
		in := "0"
		if a.Entered {
			in = "1"
		}
		calls[i] = scriptCall{keys: []string{ProfileKey(a.OrgID, a.UserID), UserSegmentsKey(a.OrgID, a.UserID)},
			args: []any{a.ExpectRev, a.SegmentID, in, string(entry)}}
	}
	res, err := u.runPerUser(ctx, amend, calls, 4)
	for i := 0; i+3 < len(res); i += 4 {
		n, _ := res[i].(int64)
		o := &out[i/4]
		o.Applied, _ = res[i+2].(string)
		o.Result = AmendResult(n)
		before, _ := res[i+1].(string)
		if before != "" {
			// An outbox this package wrote; one it cannot read only hides
			// what the caller would publish again.
			o.Before, _ = DecodeOutbox(before)
			marks, _ := res[i+3].(string)
			markPublished(o.Before, marks)
		}
	}
	if err != nil {
		return out, fmt.Errorf("amend: %w", err)
	}
	return out, nil
}

// SegmentView is a user's state as seen for one segment.
type SegmentView struct {
	// UserID is the user viewed.
	UserID string
	// Rev is the user's revision, 0 for a user never stored.
	Rev int64
	// Profile is the stored profile, empty when none.
	Profile string
	// Member reports whether the user's segment set holds the segment.
	Member bool
	// Outbox is the user's outbox, read only when ViewFields.Outbox asks for
	// it.
	Outbox []OutboxEntry
	// Applied is the stored position of the last profile event applied to
	// the user (see UserState.Applied), read with the outbox.
	Applied string
	// Unreadable, when not nil, says why the stored state could not be
	// decoded; the other fields are then unset.
	Unreadable error
}

// ViewFields says what ViewUsers reads besides each user's revision and
// profile.
type ViewFields struct {
	// Segment, when not empty, is the segment whose membership is read.
	Segment string
	// Outbox reads each user's outbox. Only a caller that may find entries
	// of its own earlier attempt needs it; it is the larger part of a read.
	Outbox bool
}

// ViewUsers reads, in one pipelined round trip, each user's revision,
// profile and what f asks for. Deleted or unknown users come back with an
// empty Profile.
func (u *Users) ViewUsers(ctx context.Context, org string, users []string, f ViewFields) ([]SegmentView, error) {
	if len(users) <= readRoundTripUsers {
		return u.viewUsers(ctx, org, users, f)
	}
	// A round trip a chunk (see readRoundTripUsers): segmentctl verify
	// reads again every user it found a difference of.
	out := make([]SegmentView, 0, len(users))
	for chunk := range slices.Chunk(users, readRoundTripUsers) {
		vs, err := u.viewUsers(ctx, org, chunk, f)
		if err != nil {
			return nil, err
		}
		out = append(out, vs...)
	}
	return out, nil
}

func (u *Users) viewUsers(ctx context.Context, org string, users []string, f ViewFields) ([]SegmentView, error) {
	fields := []string{"r", "p"}
	if f.Outbox {
		fields = append(fields, "o", "k", "j")
	}
	pipe := u.rdb.Pipeline()
	hm := make([]*redis.SliceCmd, len(users))
	is := make([]*redis.BoolCmd, len(users))
	for i, user := range users {
		hm[i] = pipe.HMGet(ctx, ProfileKey(org, user), fields...)
		if f.Segment != "" {
			is[i] = pipe.SIsMember(ctx, UserSegmentsKey(org, user), f.Segment)
		}
	}
	if len(users) > 0 {
		if _, err := pipe.Exec(ctx); unsent(err) != nil {
			return nil, fmt.Errorf("view users of %s: %w", org, err)
		}
		// Each command holds its own reply's error, looked at below.
	}
	out := make([]SegmentView, len(users))
	for i, user := range users {
		cmds := []redis.Cmder{hm[i]}
		if is[i] != nil {
			cmds = append(cmds, is[i])
		}
		bad, err := readErr(cmds...)
		if err != nil {
			return nil, fmt.Errorf("view users of %s: %w", org, err)
		}
		h := hm[i].Val()
		st, err := decodeFields(field(h, 0), "", field(h, 1), field(h, 2), nil)
		if bad != nil {
			err = bad
		}
		if err != nil {
			out[i] = SegmentView{UserID: user, Unreadable: unreadable(org, user, err)}
			continue
		}
		markPublished(st.Outbox, field(h, 4))
		v := SegmentView{UserID: user, Rev: st.Rev, Member: is[i] != nil && is[i].Val(), Outbox: st.Outbox, Applied: field(h, 3)}
		if !st.Deleted {
			v.Profile = st.Profile
		}
		out[i] = v
	}
	return out, nil
}

// ScanUserIDs calls fn with every stored user id of org, a page at a time
// (deleted users included; ViewUsers tells them apart), from the
// organisation's index. fn is never called concurrently, nor again once it
// has returned an error.
func (u *Users) ScanUserIDs(ctx context.Context, org string, fn func(ids []string) error) error {
	return scanIndex(ctx, u, org, func(_ context.Context, ids []string) ([]string, error) { return ids, nil }, fn)
}
