package membership

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/segment"
)

// ProfileKey is the internal hash holding one user's profile, version,
// revision and outbox. It shares the {org:user} hash tag with the user's
// public segment set, so that one script updates both atomically.
func ProfileKey(org, user string) string { return "prof:{" + org + ":" + user + "}" }

// OutboxChange is one membership change recorded in a user's outbox.
type OutboxChange struct {
	// SegmentID is the segment the user entered or left.
	SegmentID string
	// Entered is true for an entry and false for an exit.
	Entered bool
}

// UnmarshalJSON decodes ["seg", 1], the form of an outbox stored as JSON.
func (c *OutboxChange) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("outbox change: %w", err)
	}
	if len(raw) != 2 {
		return fmt.Errorf("outbox change: want [segment, 0|1], got %d elements", len(raw))
	}
	if err := json.Unmarshal(raw[0], &c.SegmentID); err != nil {
		return fmt.Errorf("outbox change: %w", err)
	}
	c.Entered = string(raw[1]) == "1"
	return nil
}

// OutboxEntry is the diff one profile event, backfill or timer made to a
// user's memberships, or the record of a profile event dead-lettered in
// the user's evaluation (no changes). A user's outbox keeps the entries
// that may not be projected and published yet: those of the batches that
// wrote the user and have not finished, and recent ones of backfills and
// timers, so that whoever comes next after a crash can finish them.
type OutboxEntry struct {
	// EventID is the id of the profile event, or of the cause of a backfill's
	// or timer's changes (events.Cause.EventID).
	EventID string `json:"e"`
	// Version is the profile event's version, 0 when it carried none or for a
	// backfill or timer.
	Version int64 `json:"v,omitempty"`
	// Rev is the user revision that the write of this entry created.
	Rev int64 `json:"r,omitempty"`
	// CauseType is the changes' cause type (events.CauseProfile, or "" as
	// older builds wrote it, for a profile event), or "dead-letter:" and the
	// reason for a dead-lettered event.
	CauseType string `json:"k,omitempty"`
	// AtMillis is when the changes were decided, in unix milliseconds: the At
	// of their change events.
	AtMillis int64 `json:"t"`
	// Changes are the membership changes the entry records; none for a
	// dead-lettered event.
	Changes []OutboxChange `json:"c,omitempty"`
	// Published is true for an entry that a timer round (its writer, or one
	// that published a backfill's entry again) recorded, once Kafka
	// acknowledged them, as published (see Users.MarkPublished); the record
	// is kept beside the outbox, not in the entry's stored form. An entry
	// without it may be published or not.
	Published bool `json:"-"`
}

// Events returns the change events of the entry's changes for user ref,
// as their writer published them (or will): the same eventIds.
func (e OutboxEntry) Events(ref UserRef) []events.Change {
	out := make([]events.Change, 0, len(e.Changes))
	cause := e.CauseType
	if cause == "" {
		cause = events.CauseProfile
	}
	for _, c := range e.Changes {
		out = append(out, events.Change{
			OrgID: ref.OrgID, SegmentID: c.SegmentID, UserID: ref.UserID, Entered: c.Entered,
			At:    time.UnixMilli(e.AtMillis).UTC(),
			Cause: events.Cause{Type: cause, EventID: e.EventID, Version: e.Version},
		})
	}
	return out
}

// LastDecisions returns the trailing run of decisions of segment seg that
// outbox's entries below revision below made and that take accepts, and
// that are not marked published (a marked entry's changes were on the
// topic before the mark, so before anything the caller publishes), oldest
// first (by revision, then in outbox order: the events of one write share
// its revision), each entry with its change of seg alone; an entry found
// twice counts once, where it comes last; the run stops at a decision
// written more than ReplayWindow before the newest. It is empty when the
// newest such decision is not accepted. A writer that publishes the decisions
// before its own publishes them all, in order, not only the newest: a
// consumer that keeps each eventId's first sighting then sees them as they
// were written.
func LastDecisions(outbox []OutboxEntry, seg string, below int64, take func(OutboxEntry) bool) []OutboxEntry {
	// The newest decision first, without allocating: on the stream's path
	// it is most often the stream's own, which its callers do not take.
	var newest OutboxEntry
	found := false
	for _, e := range outbox {
		if e.Rev < below && (!found || e.Rev >= newest.Rev) {
			if _, ok := changeOf(e, seg); ok {
				newest, found = e, true
			}
		}
	}
	taken := func(e OutboxEntry) bool { return !e.Published && take(e) }
	if !found || !taken(newest) {
		return nil
	}
	var ds []OutboxEntry
	for _, e := range outbox {
		if e.Rev >= below {
			continue
		}
		change, ok := changeOf(e, seg)
		if !ok {
			continue
		}
		e.Changes = []OutboxChange{change}
		if i := slices.IndexFunc(ds, func(d OutboxEntry) bool { return d.Rev == e.Rev && d.EventID == e.EventID }); i >= 0 {
			ds = slices.Delete(ds, i, i+1)
		}
		ds = append(ds, e)
	}
	slices.SortStableFunc(ds, func(a, b OutboxEntry) int { return cmp.Compare(a.Rev, b.Rev) })
	first := len(ds)
	for first > 0 && taken(ds[first-1]) {
		// Decisions long before the newest were published, or their own
		// retry publishes them: a job's entries stay in an outbox that
		// no stream write trims, and each flip would repeat them all.
		if first < len(ds) && ds[first-1].AtMillis < ds[len(ds)-1].AtMillis-ReplayWindow.Milliseconds() {
			break
		}
		first--
	}
	return ds[first:]
}

// changeOf returns entry e's change of segment seg, the last when it holds
// several.
func changeOf(e OutboxEntry, seg string) (OutboxChange, bool) {
	for i := len(e.Changes) - 1; i >= 0; i-- {
		if e.Changes[i].SegmentID == seg {
			return e.Changes[i], true
		}
	}
	return OutboxChange{}, false
}

// ReplayWindow is how long after a write of a user its changes are taken
// for possibly unpublished by a later writer of the same segment (a
// backfill, a timer, a deletion), which then publishes them before its
// own: a batch whose instance died is replayed by the partition's next
// owner once the group has rebalanced (its session timeout is 10 s), after
// the later writer's change otherwise. (Backfills and timers also take a
// job's changes so whatever their age, unless a timer round marked them
// published (see Users.MarkPublished): a job's retry may come much later.)
const ReplayWindow = 2 * time.Minute

// UserState is one user's stored state as the processor needs it.
type UserState struct {
	// Rev counts writes of the user; writes compare and set it.
	Rev int64
	// Version is the highest applied event version, -1 when none carried one.
	Version int64
	// Deleted is true after a profile.deleted event (a tombstone keeps the version).
	Deleted bool
	// Profile is the stored profile (see segment.DecodeProfile), empty when
	// none. A string, as Redis returns it: decoding it takes no copy.
	Profile string
	// Segments is the user's public segment set.
	Segments []string
	// Outbox is the user's outbox, oldest entry first.
	Outbox []OutboxEntry
	// Applied is the position of the last event applied to the user, as
	// the processor wrote it (opaque here), empty when none is stored. It
	// tells a redelivered event that carries no version from a new one.
	Applied string
	// Unreadable, when not nil, says why the stored state could not be
	// decoded (the other fields are then unset): the user's events cannot be
	// applied until the key is repaired, and the other users go on.
	Unreadable error
}

// UserWrite is one compare-and-set update of a user's state.
type UserWrite struct {
	// OrgID and UserID name the user to write.
	OrgID, UserID string
	// ExpectRev is the revision the update was computed from.
	ExpectRev int64
	// Version is the highest applied event version after the update (see
	// UserState.Version).
	Version int64
	// Profile is the new profile, encoded by segment.AppendProfile (JSON is
	// read too); nil writes a deletion tombstone (Remove then lists every
	// segment the user leaves).
	Profile []byte
	// Add lists the segments the user enters: they are added to its public
	// segment set.
	Add []string
	// Remove lists the segments the user leaves: they are removed from its
	// public segment set.
	Remove []string
	// Outbox is the user's outbox after the update; it replaces the stored
	// one.
	Outbox []OutboxEntry
	// Applied, when not empty, replaces the stored position of the last
	// event applied (see UserState.Applied).
	Applied string
}

// Users stores user state in Redis. It is safe for concurrent use.
type Users struct {
	rdb   redis.UniversalClient
	write *redis.Script
	// usersPerCall is how many users one call of the write script
	// updates: one on Redis Cluster, where each user has a hash slot of its
	// own; more on a single Redis, which spares the cost of a script call
	// per user.
	usersPerCall int
	// allIndexed caches that AllIndexedKey is set, which is for good:
	// nothing but a flush of Redis removes it, and a flush leaves no user
	// to miss. (A restore from a backup older than the key would need the
	// instances restarted, and verify, as any restore does.)
	allIndexed atomic.Bool
	log        *slog.Logger
}

// NewUsers returns a user store on rdb (standalone or cluster), logging
// with slog's default logger until WithLogger sets another.
func NewUsers(rdb redis.UniversalClient) *Users {
	u := &Users{rdb: rdb, write: redis.NewScript(writeUsersScript), usersPerCall: 1, log: slog.Default()}
	if _, cluster := rdb.(*redis.ClusterClient); !cluster {
		u.usersPerCall = writeUsersPerCall
	}
	return u
}

// WithLogger makes u log with l (what it logs: keys it cannot write and
// leaves for an operator to repair) and returns u.
func (u *Users) WithLogger(l *slog.Logger) *Users {
	u.log = l
	return u
}

// writeUsersPerCall bounds the users of one script call on a single Redis,
// which runs nothing else meanwhile: ~100 users take well under a
// millisecond.
const writeUsersPerCall = 100

// The script updates each user of KEYS (profile hash, segment set) from its
// ARGV group: expected revision, version, profile (empty for a deleted
// user), outbox, applied position (empty: kept as stored), number of
// additions, number of removals, then the additions and the removals. It checks each user's revision so that a write computed
// from a stale read (another instance, or a go-redis retry of a write that
// did land) changes nothing and reports a conflict (0) instead of 1. A
// deletion removes the segments the writer read, not the whole set: a
// static segment added since (the API writes those without the revision)
// stays, as it does in the segment's own set.
const writeUsersScript = `
local out, a = {}, 1
for k = 1, #KEYS, 2 do
  local nadd, nrem = tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
  local rev = tonumber(redis.call('HGET', KEYS[k], 'r') or '0')
  if rev ~= tonumber(ARGV[a]) then
    out[#out + 1] = 0
  else
    -- The set first: one that is not a set (written by hand) fails the
    -- script before this user's hash moves, not after.
    if nadd > 0 then redis.call('SADD', KEYS[k + 1], unpack(ARGV, a + 7, a + 6 + nadd)) end
    if nrem > 0 then redis.call('SREM', KEYS[k + 1], unpack(ARGV, a + 7 + nadd, a + 6 + nadd + nrem)) end
    if ARGV[a + 4] ~= '' then
      redis.call('HSET', KEYS[k], 'r', rev + 1, 'v', ARGV[a + 1], 'p', ARGV[a + 2], 'o', ARGV[a + 3], 'k', ARGV[a + 4])
    else
      redis.call('HSET', KEYS[k], 'r', rev + 1, 'v', ARGV[a + 1], 'p', ARGV[a + 2], 'o', ARGV[a + 3])
    end
    out[#out + 1] = 1
  end
  a = a + 7 + nadd + nrem
end
return out
`

// UserRef names one user of one organisation.
type UserRef struct {
	// OrgID and UserID name the user.
	OrgID, UserID string
}

// Load reads the state of each user in one pipelined round trip.
func (u *Users) Load(ctx context.Context, refs []UserRef) ([]UserState, error) {
	if len(refs) == 0 {
		return nil, nil
	}
	pipe := u.rdb.Pipeline()
	hm := make([]*redis.SliceCmd, len(refs))
	sm := make([]*redis.StringSliceCmd, len(refs))
	for i, r := range refs {
		hm[i] = pipe.HMGet(ctx, ProfileKey(r.OrgID, r.UserID), "r", "v", "p", "o", "k", "j")
		sm[i] = pipe.SMembers(ctx, UserSegmentsKey(r.OrgID, r.UserID))
	}
	if _, err := pipe.Exec(ctx); unsent(err) != nil {
		return nil, fmt.Errorf("load users: %w", err)
	}
	// Each command holds its own reply's error, looked at below.
	out := make([]UserState, len(refs))
	for i := range refs {
		bad, err := readErr(hm[i], sm[i])
		if err != nil {
			return nil, fmt.Errorf("load users: %w", err)
		}
		st, err := decodeState(hm[i].Val(), sm[i].Val())
		if bad != nil {
			err = bad
		}
		if err != nil {
			st = UserState{Unreadable: unreadable(refs[i].OrgID, refs[i].UserID, err)}
		}
		out[i] = st
	}
	return out, nil
}

// readErr sorts the errors of the commands that read one user: bad is a
// key of that user holding another type than segmentd writes there (a key
// written by hand), which makes the user unreadable rather than fail every
// user read with it; failed is any other error but a missing key.
func readErr(cmds ...redis.Cmder) (bad, failed error) {
	for _, c := range cmds {
		err := c.Err()
		switch {
		case err == nil || errors.Is(err, redis.Nil):
		case wrongType(err):
			bad = fmt.Errorf("key %v: %w", c.Args()[1], err)
		default:
			return nil, err
		}
	}
	return bad, nil
}

// unreadable describes a user's stored state that cannot be decoded, with
// the key to repair.
func unreadable(org, user string, err error) error {
	return fmt.Errorf("stored state of user %s/%s (key %s) unreadable: %w", org, user, ProfileKey(org, user), err)
}

func decodeState(h []any, segs []string) (UserState, error) {
	st, err := decodeFields(field(h, 0), field(h, 1), field(h, 2), field(h, 3), segs)
	st.Applied = field(h, 4)
	markPublished(st.Outbox, field(h, 5))
	return st, err
}

// field is the i-th reply of an HMGET as a string, "" when missing.
func field(h []any, i int) string {
	if i < len(h) {
		if s, ok := h[i].(string); ok {
			return s
		}
	}
	return ""
}

// decodeFields decodes a user's stored fields: revision, version, profile
// and outbox, each "" when missing or not read.
func decodeFields(r, v, p, o string, segs []string) (UserState, error) {
	st := UserState{Version: -1, Segments: segs}
	if r != "" {
		n, err := strconv.ParseInt(r, 10, 64)
		if err != nil {
			return st, fmt.Errorf("revision %q: %w", r, err)
		}
		st.Rev = n
	}
	if v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return st, fmt.Errorf("version %q: %w", v, err)
		}
		st.Version = n
	}
	if st.Rev > 0 {
		if p != "" {
			st.Profile = p
		} else {
			st.Deleted = true
		}
	}
	if o != "" {
		es, err := DecodeOutbox(o)
		if err != nil {
			return st, fmt.Errorf("outbox: %w", err)
		}
		st.Outbox = es
	}
	return st, nil
}

// Write applies each update atomically per user in one pipelined round trip
// (two when it stores users for the first time: they are added to their
// organisations' indexes first) and reports, per update, whether it was
// applied (false: the revision had moved and the caller must reload and
// recompute).
func (u *Users) Write(ctx context.Context, ws []UserWrite) ([]bool, error) {
	applied := make([]bool, len(ws))
	calls := make([]scriptCall, len(ws))
	var created []UserRef
	for i, w := range ws {
		calls[i].keys, calls[i].args = writeArgs(w)
		if w.ExpectRev == 0 { // the user's first write: a profile, or a deletion that came first
			created = append(created, UserRef{OrgID: w.OrgID, UserID: w.UserID})
		}
	}
	// A round trip of its own, before the users: on Redis Cluster the
	// index and the users are on different masters, and a stored user
	// must be in the index whatever fails after.
	if _, err := u.addToIndex(ctx, created); err != nil {
		return applied, fmt.Errorf("write users: %w", err)
	}
	res, err := u.runPerUser(ctx, u.write, calls, 1)
	for i, n := range res {
		applied[i] = n == int64(1)
	}
	if err != nil {
		return applied, fmt.Errorf("write users: %w", err)
	}
	return applied, nil
}

// runPerUser runs s over the users of calls (one user each), usersPerCall
// users a call, in one pipelined round trip. s takes two keys and the
// arguments of each user, one user after the other, and replies with width
// values per user. It returns the replies, user after user; on an error,
// those of the users before the failed call.
func (u *Users) runPerUser(ctx context.Context, s *redis.Script, calls []scriptCall, width int) ([]any, error) {
	var merged []scriptCall
	for chunk := range slices.Chunk(calls, u.usersPerCall) {
		if len(chunk) == 1 {
			merged = append(merged, chunk[0])
			continue
		}
		var c scriptCall
		for _, one := range chunk {
			c.keys = append(c.keys, one.keys...)
			c.args = append(c.args, one.args...)
		}
		merged = append(merged, c)
	}
	out := make([]any, 0, width*len(calls))
	for i, cmd := range runPipelined(ctx, u.rdb, s, merged) {
		res, err := cmd.Slice()
		if err == nil && len(res) != width*len(merged[i].keys)/2 {
			err = fmt.Errorf("%d replies for %d users", len(res), len(merged[i].keys)/2)
		}
		if err != nil {
			return out, err
		}
		out = append(out, res...)
	}
	return out, nil
}

func writeArgs(w UserWrite) ([]string, []any) {
	outbox := encodeOutbox(w.Outbox)
	args := make([]any, 0, 7+len(w.Add)+len(w.Remove))
	args = append(args, w.ExpectRev, w.Version, string(w.Profile), string(outbox), w.Applied, len(w.Add), len(w.Remove))
	for _, s := range w.Add {
		args = append(args, s)
	}
	for _, s := range w.Remove {
		args = append(args, s)
	}
	return []string{ProfileKey(w.OrgID, w.UserID), UserSegmentsKey(w.OrgID, w.UserID)}, args
}

// SegmentRevisionsKey is the internal hash, beside a segment's member set
// (same hash tag), of the user revision that last set each user's
// membership there.
func SegmentRevisionsKey(org, seg string) string { return "segrev:{" + org + ":" + seg + "}" }

// Projection is one membership change to mirror onto a segment's member
// set, with the user revision whose write decided it.
type Projection struct {
	// Change is the membership change to mirror.
	Change events.Change
	// Rev is the revision of the user write that decided the change: an older
	// decision never overwrites a newer one.
	Rev int64
	// Probe asks only whether the segment is deleted, and writes nothing:
	// for a change published without being projected (see Deletions).
	Probe bool
}

// SegmentDeletedKey is the internal marker, beside a deleted segment's
// member set (same hash tag), that refuses projections onto it: a batch
// written before the deletion and replayed after it (its instance died
// between its write and its projection, and the deletion's gate stops
// waiting for an instance silent for 3 s) would otherwise put members back.
func SegmentDeletedKey(org, seg string) string { return "segdel:{" + org + ":" + seg + "}" }

// deletedMarkerTTL is how long a deleted segment refuses projections:
// replays come within minutes of a crash.
const deletedMarkerTTL = 7 * 24 * time.Hour

// deletedRevisionsTTL is how long a deleted segment keeps its users'
// revisions (SegmentRevisionsKey), which tell a replay whether its
// decision had reached the member set before the deletion (see
// Deletions). Shorter than the marker's: they take memory in proportion
// to the segment's users, and a replay comes within minutes.
const deletedRevisionsTTL = time.Hour

// The stream, backfills and timers each project what their own writes
// decided, in no common order; the revision makes the newest decision win
// whatever order the projections arrive in. Equal revisions come from one
// write and apply in order. One call carries every projection of a batch
// onto one segment (ARGV holds user, revision, 1|0|p triples, p a probe
// that writes nothing): the keys share
// the segment's hash tag, so this holds on Redis Cluster too. A deleted
// segment (KEYS[3]) takes none: it answers -1 followed by the revision
// each of the users had there before the deletion (user, revision pairs,
// only users with one; see Deletions).
//
// A call of more than a few projections decides in Lua what each user ends
// with and then writes it in a few variadic commands: a Redis call made
// from a script costs about as much as the command itself, and three of
// them for every user were half of a backfill's Redis time. A command
// takes at most 1,000 arguments (an even number, for field and value
// pairs), far within what unpack can pass.
var projectScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[3]) == 1 then
  local out = {-1}
  for i = 1, #ARGV, 3 do
    local cur = redis.call('HGET', KEYS[2], ARGV[i])
    if cur then
      out[#out + 1] = ARGV[i]
      out[#out + 1] = cur
    end
  end
  return out
end
-- A revision that is not a number (a key written by hand) counts as none,
-- so that the next decision repairs it rather than every batch failing.
if #ARGV <= 3 * 4 then
  -- A few projections (the stream's usual call: a batch's one or two
  -- changes of a segment) cost less one by one than by the tables below.
  local n = 0
  for i = 1, #ARGV, 3 do
    local user, rev, op = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
    if op ~= 'p' then
      local cur = tonumber(redis.call('HGET', KEYS[2], user) or '-1') or -1
      if rev >= cur then
        redis.call('HSET', KEYS[2], user, rev)
        if op == '1' then redis.call('SADD', KEYS[1], user) else redis.call('SREM', KEYS[1], user) end
        n = n + 1
      end
    end
  end
  return n
end
-- call runs cmd on key with args, 1000 at a time, and returns the replies
-- end to end.
local function call(cmd, key, args)
  local out = {}
  for s = 1, #args, 1000 do
    local r = redis.call(cmd, key, unpack(args, s, math.min(s + 999, #args)))
    if type(r) == 'table' then
      for j = 1, #r do out[#out + 1] = r[j] end
    end
  end
  return out
end
local users, cur = {}, {}
for i = 1, #ARGV, 3 do
  local user = ARGV[i]
  if ARGV[i + 2] ~= 'p' and not cur[user] then
    cur[user] = -1
    users[#users + 1] = user
  end
end
if #users == 0 then return 0 end
local revs = call('HMGET', KEYS[2], users)
for j = 1, #users do cur[users[j]] = tonumber(revs[j] or '-1') or -1 end
local final, n = {}, 0
for i = 1, #ARGV, 3 do
  local user, rev, op = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if op ~= 'p' and rev >= cur[user] then
    cur[user] = rev
    final[user] = op
    n = n + 1
  end
end
local hs, ins, outs = {}, {}, {}
for _, user in ipairs(users) do
  local op = final[user]
  if op then
    hs[#hs + 1] = user
    hs[#hs + 1] = cur[user]
    if op == '1' then ins[#ins + 1] = user else outs[#outs + 1] = user end
  end
end
call('HSET', KEYS[2], hs)
call('SADD', KEYS[1], ins)
call('SREM', KEYS[1], outs)
return n
`)

// ProjectedRevisions returns, for each change, the revision of the write
// whose decision the change's segment set holds for its user (see
// Project): -1 for a user with none. It reads every segment in one
// pipelined round trip.
func (u *Users) ProjectedRevisions(ctx context.Context, cs []events.Change) ([]int64, error) {
	out := make([]int64, len(cs))
	if len(cs) == 0 {
		return out, nil
	}
	type read struct {
		at  []int // indexes in cs
		cmd *redis.SliceCmd
	}
	bySeg := map[SegmentRef]*read{}
	var order []SegmentRef
	for i, c := range cs {
		ref := SegmentRef{c.OrgID, c.SegmentID}
		r := bySeg[ref]
		if r == nil {
			r = &read{}
			bySeg[ref] = r
			order = append(order, ref)
		}
		r.at = append(r.at, i)
	}
	pipe := u.rdb.Pipeline()
	for _, ref := range order {
		r := bySeg[ref]
		users := make([]string, len(r.at))
		for n, i := range r.at {
			users[n] = cs[i].UserID
		}
		r.cmd = pipe.HMGet(ctx, SegmentRevisionsKey(ref.OrgID, ref.SegmentID), users...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("revisions of %d users in %d segments: %w", len(cs), len(order), err)
	}
	for _, ref := range order {
		r := bySeg[ref]
		for n, v := range r.cmd.Val() {
			i := r.at[n]
			out[i] = -1
			if s, ok := v.(string); ok {
				rev, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					// As Project counts it (a key written by hand):
					// none, until the next decision repairs it.
					u.log.Warn("segment revision unreadable: taken for none", "key", SegmentRevisionsKey(ref.OrgID, ref.SegmentID), "err", err)
					continue
				}
				out[i] = rev
			}
		}
	}
	return out, nil
}

// Deletions are the segments that Project found deleted, each with the
// revision that its users' memberships had reached there before the
// deletion (see SegmentRevisionsKey).
type Deletions map[SegmentRef]map[string]int64

// Refuses reports whether change c, decided by the write of revision rev,
// must not be published because its segment is deleted. An entry never is
// published: the deletion published the user's exit if the entry had
// reached the member set, and the user was never seen to enter otherwise.
// An exit is published when it had reached the member set before the
// deletion (the projection is being repeated: its batch failed, or its
// instance died before publishing), since the deletion, which found the
// user gone from the set, published none; otherwise the deletion
// published the user's exit itself.
func (d Deletions) Refuses(c events.Change, rev int64) bool {
	users, ok := d[SegmentRef{c.OrgID, c.SegmentID}]
	if !ok {
		return false
	}
	cur, ok := users[c.UserID]
	return c.Entered || !ok || rev > cur
}

// Published returns the changes of cs that Refuses lets through, in a new
// slice; rev(i) is the revision whose write decided cs[i].
func (d Deletions) Published(cs []events.Change, rev func(i int) int64) []events.Change {
	out := make([]events.Change, 0, len(cs))
	for i, c := range cs {
		if !d.Refuses(c, rev(i)) {
			out = append(out, c)
		}
	}
	return out
}

// Project mirrors changes onto the public per-segment sets in one pipelined
// round trip, one script call per segment. It is idempotent, so projecting
// again after a crash changes nothing, and an older decision never
// overwrites a newer one. It returns the segments found deleted: their
// changes were not projected, and their users' segment sets lose them (the
// write being projected had put them there); callers publish only the
// changes that Deletions.Refuses lets through.
func (u *Users) Project(ctx context.Context, ps []Projection) (Deletions, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	bySeg := map[SegmentRef]int{}
	var calls []scriptCall
	var segs []SegmentRef
	for _, p := range ps {
		c := p.Change
		k := SegmentRef{c.OrgID, c.SegmentID}
		i, ok := bySeg[k]
		if !ok {
			i = len(calls)
			bySeg[k] = i
			segs = append(segs, k)
			calls = append(calls, scriptCall{keys: []string{SegmentMembersKey(c.OrgID, c.SegmentID), SegmentRevisionsKey(c.OrgID, c.SegmentID), SegmentDeletedKey(c.OrgID, c.SegmentID)}})
		}
		in := "0"
		switch {
		case p.Probe:
			in = "p"
		case c.Entered:
			in = "1"
		}
		calls[i].args = append(calls[i].args, c.UserID, p.Rev, in)
	}
	var deleted Deletions
	// A batch of many new users in an organisation of many segments can
	// decide hundreds of thousands of changes: one round trip for all of
	// them would outlast the client's read timeout, and its retry too. The
	// segments' calls go in round trips of about projectChunk projections,
	// one after another, each segment's whole in one call, so that a
	// deletion finds all of a call's projections applied or none.
	for first := 0; first < len(calls); {
		last, n := first, 0
		for last < len(calls) && (last == first || n+len(calls[last].args)/3 <= projectChunk) {
			n += len(calls[last].args) / 3
			last++
		}
		for i, cmd := range runPipelined(ctx, u.rdb, projectScript, calls[first:last]) {
			reply, err := cmd.Result()
			if wrongType(err) {
				// A member set (or its revisions) written by hand as
				// another type: it cannot take the projection, now or on
				// any retry, and must not hold up every other segment's
				// (the users' own sets are right; verify reports it).
				// Either key may be the one of the wrong type: both named.
				u.log.Warn("segment set unreadable: projection skipped; repair the key of the wrong type", "key", calls[first+i].keys[0], "revisions_key", calls[first+i].keys[1], "err", err)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("project %d changes: %w", len(ps), err)
			}
			pairs, ok := reply.([]any)
			if !ok {
				continue // the number of projections applied
			}
			revs, err := deletedRevisions(pairs)
			if err != nil {
				return nil, fmt.Errorf("project %d changes: %w", len(ps), err)
			}
			if deleted == nil {
				deleted = Deletions{}
			}
			deleted[segs[first+i]] = revs
		}
		first = last
	}
	if len(deleted) == 0 {
		return nil, nil
	}
	pipe := u.rdb.Pipeline()
	for _, p := range ps {
		c := p.Change
		if _, ok := deleted[SegmentRef{c.OrgID, c.SegmentID}]; ok {
			pipe.SRem(ctx, UserSegmentsKey(c.OrgID, c.UserID), c.SegmentID)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("project %d changes: forget deleted segments: %w", len(ps), err)
	}
	return deleted, nil
}

// projectChunk bounds the projections of one round trip (~10 ms of Redis),
// unless one segment's alone are more.
const projectChunk = 10000

// SegmentRef names one segment of one organisation.
type SegmentRef struct {
	// OrgID and SegmentID name the segment.
	OrgID, SegmentID string
}

// deletedRevisions reads projectScript's answer for a deleted segment: -1,
// then user and revision pairs.
func deletedRevisions(reply []any) (map[string]int64, error) {
	if len(reply)%2 != 1 {
		return nil, fmt.Errorf("a deleted segment's revisions: %d values", len(reply))
	}
	revs := make(map[string]int64, len(reply)/2)
	for i := 1; i < len(reply); i += 2 {
		user, ok1 := reply[i].(string)
		raw, ok2 := reply[i+1].(string)
		rev, err := strconv.ParseInt(raw, 10, 64)
		if !ok1 || !ok2 || err != nil {
			return nil, fmt.Errorf("a deleted segment's revisions: %v %v", reply[i], reply[i+1])
		}
		revs[user] = rev
	}
	return revs, nil
}

// Profile returns a user's stored profile, decoded; false when the user has
// none or was deleted.
func (u *Users) Profile(ctx context.Context, org, user string) (*segment.Profile, bool, error) {
	p, err := u.rdb.HGet(ctx, ProfileKey(org, user), "p").Result()
	if errors.Is(err, redis.Nil) || (err == nil && p == "") {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read profile %s/%s: %w", org, user, err)
	}
	m, err := segment.DecodeUserProfile(p, nil, user)
	if err != nil {
		return nil, false, fmt.Errorf("read profile %s/%s: %w", org, user, err)
	}
	return m, true, nil
}

// userFromProfileKey parses a profile key back into its org and user.
func userFromProfileKey(key string) (UserRef, bool) {
	rest, ok := strings.CutPrefix(key, "prof:{")
	if !ok || !strings.HasSuffix(rest, "}") {
		return UserRef{}, false
	}
	org, user, ok := strings.Cut(rest[:len(rest)-1], ":")
	return UserRef{OrgID: org, UserID: user}, ok
}

// UserSegmentSets returns the public segment set of each user, pipelined,
// readRoundTripUsers users a round trip: a caller may ask for every stored
// user of an organisation (segmentctl verify), and one pipeline of a
// million reads outlasts the client's timeouts.
func (u *Users) UserSegmentSets(ctx context.Context, org string, users []string) ([][]string, error) {
	out := make([][]string, 0, len(users))
	for chunk := range slices.Chunk(users, readRoundTripUsers) {
		pipe := u.rdb.Pipeline()
		cmds := make([]*redis.StringSliceCmd, len(chunk))
		for i, user := range chunk {
			cmds[i] = pipe.SMembers(ctx, UserSegmentsKey(org, user))
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("user segment sets: %w", err)
		}
		for _, c := range cmds {
			out = append(out, c.Val())
		}
	}
	return out, nil
}

// readRoundTripUsers bounds the users whose reads one pipelined round trip
// of UserSegmentSets or ViewUsers carries: ~0.1 s of Redis's time, far
// within the client's 3 s timeouts.
const readRoundTripUsers = 10_000
