package membership

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Due is the earliest instant at which a time-relative criterion of any
// segment of the organisation can next flip for one user. One timer per
// user keeps the schedule's size and writes independent of how many
// time-relative segments there are.
type Due struct {
	// OrgID and UserID name the user.
	OrgID, UserID string
	// At is the instant at which the user's membership can next flip.
	At time.Time
}

// ScheduleKey is the internal sorted set of an organisation's timers: members
// are user ids, scores the due instant in unix milliseconds (rounded up, so
// that a timer never fires before its flip).
func ScheduleKey(org string) string { return "sched:{" + org + "}" }

func dueScore(t time.Time) float64 {
	ms := t.UnixMilli()
	if t.After(time.UnixMilli(ms)) {
		ms++
	}
	return float64(ms)
}

// PendingKey is the internal hash, beside an organisation's timers (same
// hash tag), of the earliest instant scheduled for each user while its timer
// was claimed: the claim's lease is then the timer's score, and a later
// instant could not lower it, so Done takes it from here.
func PendingKey(org string) string { return "schedpend:{" + org + "}" }

// Schedules stores timers in Redis, shared by every instance.
type Schedules struct {
	rdb   redis.UniversalClient
	claim *redis.Script
}

// NewSchedules returns a schedule store on rdb.
func NewSchedules(rdb redis.UniversalClient) *Schedules {
	return &Schedules{rdb: rdb, claim: redis.NewScript(claimScript)}
}

// scheduleScript moves each timer of ARGV (user, score pairs) earlier
// (ZADD LT), and records the instant as pending for a user whose timer is
// claimed: its score is then the claim's lease, which an instant after the
// lease does not lower, and the claim's Done would otherwise replace it by
// a next flip computed before this write.
var scheduleScript = redis.NewScript(`
for i = 1, #ARGV, 2 do
  local user, at = ARGV[i], ARGV[i + 1]
  redis.call('ZADD', KEYS[1], 'LT', at, user)
  if redis.call('HEXISTS', KEYS[2], user) == 1 then
    local p = redis.call('HGET', KEYS[3], user)
    if not p or tonumber(at) < tonumber(p) then redis.call('HSET', KEYS[3], user, at) end
  end
end
return 0
`)

// Schedule records each due instant where it is earlier than the user's
// timer (ZADD LT): a timer only ever moves earlier here. One that fires
// before its user's true next flip finds nothing to change and moves itself
// there (see Done), so an early timer costs one re-evaluation, while moving
// a timer later on every profile event (each new updatedAt pushes an
// "inactive for 30 days" flip back) costs Redis a reordering of the sorted
// set each time. Writers that know one segment's flip and not the others'
// rely on it too. ZADD is idempotent, so a replayed batch changes nothing.
func (s *Schedules) Schedule(ctx context.Context, due []Due) error {
	if len(due) == 0 {
		return nil
	}
	byOrg := map[string]int{}
	var calls []scriptCall
	for _, d := range due {
		i, ok := byOrg[d.OrgID]
		if !ok {
			i = len(calls)
			byOrg[d.OrgID] = i
			calls = append(calls, scriptCall{keys: []string{ScheduleKey(d.OrgID), ClaimsKey(d.OrgID), PendingKey(d.OrgID)}})
		}
		calls[i].args = append(calls[i].args, d.UserID, strconv.FormatFloat(dueScore(d.At), 'f', 0, 64))
	}
	for _, cmd := range runPipelined(ctx, s.rdb, scheduleScript, calls) {
		if err := cmd.Err(); err != nil {
			return fmt.Errorf("schedule %d timers: %w", len(due), err)
		}
	}
	return nil
}

// ClaimsKey is the internal hash, beside an organisation's timers (same
// hash tag), of each claimed timer's record: the flip it was claimed for,
// its lease, and the flips of earlier claims that never finished.
func ClaimsKey(org string) string { return "schedclaim:{" + org + "}" }

// Claimed is a timer taken by one instance until its lease ends.
type Claimed struct {
	// Due is the timer claimed: its user, and in At the flip it was claimed
	// for.
	Due
	// Lease is the score the claim left on the timer; Done removes the timer
	// only while it still carries this score.
	Lease int64
	// Earlier are the flips of claims of this timer that never finished
	// (an instance died or failed after it may have written changes and
	// before it published them), most recent first: their changes are
	// looked for under their own causes. A retry of a claim whose timer no
	// one moved keeps the flip in At instead, so that its changes keep
	// their eventIds.
	Earlier []time.Time
	// token identifies the claim's record.
	token string
}

// MaxEarlierClaims bounds the unfinished claims a timer remembers; the
// oldest beyond it are past the time the users' outboxes keep their
// entries, and a retry looks for entries under these flips only.
const MaxEarlierClaims = 8

// claimScript pushes due timers forward by the lease, so that another
// instance takes them again only if this one dies before Done, and records
// the claim. A timer still at the lease of its recorded claim is a retry of
// that claim, for the same flip; one moved since (a profile event
// scheduled an earlier flip) is claimed for its new flip, and the recorded
// one joins the unfinished. Replies user, flip (ms) and the unfinished
// flips (comma-separated ms) of each timer.
const claimScript = `
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i = 1, #due, 2 do
  local user, at, earlier = due[i], due[i + 1], ''
  local rec = redis.call('HGET', KEYS[2], user)
  if rec then
    local rat, rlease, rrest = string.match(rec, '^([^:]*):([^:]*):(.*)$')
    local rearlier = string.match(rrest, '^([^|]*)')
    if tonumber(rlease) == tonumber(at) then
      at, earlier = rat, rearlier
    else
      earlier = rat
      local n = 1
      for e in string.gmatch(rearlier, '[^,]+') do
        if n == tonumber(ARGV[4]) then break end
        earlier, n = earlier .. ',' .. e, n + 1
      end
    end
  end
  redis.call('ZADD', KEYS[1], ARGV[2], user)
  redis.call('HSET', KEYS[2], user, at .. ':' .. ARGV[2] .. ':' .. earlier .. '|' .. ARGV[5])
  -- A pending instant now due is this claim's to evaluate.
  local p = redis.call('HGET', KEYS[3], user)
  if p and tonumber(p) <= tonumber(ARGV[1]) then redis.call('HDEL', KEYS[3], user) end
  out[#out + 1] = user
  out[#out + 1] = at
  out[#out + 1] = earlier
end
return out
`

// Claim takes up to limit timers of org due at or before now for owner (an
// instance id; empty: none), leasing them for lease. A claim's owner lets
// TakeOver hand its timers to other instances before the lease ends when
// the owner stops beating.
func (s *Schedules) Claim(ctx context.Context, org, owner string, now time.Time, lease time.Duration, limit int) ([]Claimed, error) {
	leaseAt := now.Add(lease).UnixMilli()
	// Two claims may get the same lease (two instances in one
	// millisecond): the token tells their records apart. The owner follows
	// an "@" (instance ids hold none: host, pid and a random part).
	var b [8]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	if owner != "" {
		token += "@" + owner
	}
	res, err := s.claim.Run(ctx, s.rdb, []string{ScheduleKey(org), ClaimsKey(org), PendingKey(org)}, now.UnixMilli(), leaseAt, limit, MaxEarlierClaims, token).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("claim timers of %s: %w", org, err)
	}
	out := make([]Claimed, 0, len(res)/3)
	for i := 0; i+2 < len(res); i += 3 {
		c := Claimed{Due: Due{OrgID: org, UserID: res[i], At: parseMillis(res[i+1])}, Lease: leaseAt, token: token}
		for e := range strings.SplitSeq(res[i+2], ",") {
			if e != "" {
				c.Earlier = append(c.Earlier, parseMillis(e))
			}
		}
		out = append(out, c)
	}
	return out, nil
}

// takeOverScript makes due now (ARGV[1], unix ms) every timer still under
// the claim of an owner in ARGV[2:] whose lease has not ended, and moves the
// claim's lease in its record to now: the next claim of the timer is then a
// retry of that claim, for the same flip (see claimScript), as it would be
// after the lease. Replies how many it took over.
var takeOverScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local silent = {}
for i = 2, #ARGV do silent[ARGV[i]] = true end
local recs = redis.call('HGETALL', KEYS[2])
local n = 0
for i = 1, #recs, 2 do
  local user, rec = recs[i], recs[i + 1]
  local rat, rlease, rrest = string.match(rec, '^([^:]*):([^:]*):(.*)$')
  local owner = rrest and string.match(rrest, '|[^@]*@(.*)$')
  if owner and silent[owner] and tonumber(rlease) and tonumber(rlease) > now then
    local score = redis.call('ZSCORE', KEYS[1], user)
    -- A timer moved since its claim (an earlier flip scheduled) is due
    -- by then, or will be, on its own.
    if score and tonumber(score) == tonumber(rlease) then
      redis.call('ZADD', KEYS[1], ARGV[1], user)
      redis.call('HSET', KEYS[2], user, rat .. ':' .. ARGV[1] .. ':' .. rrest)
      n = n + 1
    end
  end
end
return n
`)

// TakeOver makes the timers of org that owners (instances that stopped
// beating: killed, frozen, cut off) claimed and have not finished due at
// now, before their leases end, and returns how many. Their next claim is
// a retry of the owner's, under the same flips, as after the lease; should
// an owner be alive after all, its round and the retry may both publish the
// same changes, with the same eventIds, which a lapsed lease allows too.
func (s *Schedules) TakeOver(ctx context.Context, org string, owners []string, now time.Time) (int, error) {
	if len(owners) == 0 {
		return 0, nil
	}
	args := make([]any, 0, 1+len(owners))
	args = append(args, now.UnixMilli())
	for _, o := range owners {
		args = append(args, o)
	}
	n, err := takeOverScript.Run(ctx, s.rdb, []string{ScheduleKey(org), ClaimsKey(org)}, args...).Int()
	if err != nil {
		return 0, fmt.Errorf("take over the timers of %s: %w", org, err)
	}
	return n, nil
}

// oldestDueScript returns the earliest instant at or before ARGV[1] (unix
// ms) of a flip of org not fired yet: the lowest score of a timer due, and
// the flip each claim not finished was taken for (a claimed timer's score
// is its lease, which says nothing of how late its flip is: a claim whose
// instance died holds it for the whole lease). False when there is none.
var oldestDueScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local best
local z = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
if z[2] then best = tonumber(z[2]) end
for _, rec in ipairs(redis.call('HVALS', KEYS[2])) do
  local at = tonumber(string.match(rec, '^([^:]*):'))
  if at and at <= now and (not best or at < best) then best = at end
end
if not best then return false end
return string.format('%d', best)
`)

// OldestDue returns the earliest flip instant of org, at or before now,
// that no round has fired yet: a timer due and unclaimed, or one under a
// claim that has not finished (running now, failed, or left by an
// instance that died), counted from the flip it was claimed for rather
// than from its lease. It tells how late relative-date flips are.
func (s *Schedules) OldestDue(ctx context.Context, org string, now time.Time) (time.Time, bool, error) {
	res, err := oldestDueScript.Run(ctx, s.rdb, []string{ScheduleKey(org), ClaimsKey(org)}, now.UnixMilli()).Text()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("oldest timer of %s: %w", org, err)
	}
	return parseMillis(res), true, nil
}

// Unfinished returns, for each user of org with a claimed timer whose
// claim has not ended (its round failed, or runs now) and whose lease ran
// out by leasedTo (the zero time: whatever its lease), the flips its
// changes may have been written under: the claim's own, then the earlier
// unfinished ones.
func (s *Schedules) Unfinished(ctx context.Context, org string, leasedTo time.Time) (map[string][]time.Time, error) {
	recs, err := s.rdb.HGetAll(ctx, ClaimsKey(org)).Result()
	if err != nil {
		return nil, fmt.Errorf("unfinished timers of %s: %w", org, err)
	}
	out := make(map[string][]time.Time, len(recs))
	for user, rec := range recs {
		// at:lease:earlier|token, as claimScript writes it.
		at, rest, ok := strings.Cut(rec, ":")
		if !ok {
			continue
		}
		lease, rest, _ := strings.Cut(rest, ":")
		if !leasedTo.IsZero() && parseMillis(lease).After(leasedTo) {
			continue
		}
		earlier, _, _ := strings.Cut(rest, "|")
		flips := []time.Time{parseMillis(at)}
		for e := range strings.SplitSeq(earlier, ",") {
			if e != "" {
				flips = append(flips, parseMillis(e))
			}
		}
		out[user] = flips
	}
	return out, nil
}

// parseMillis reads a score of the schedule (unix milliseconds, as Redis
// formats a double).
func parseMillis(s string) time.Time {
	ms, _ := strconv.ParseFloat(s, 64)
	return time.UnixMilli(int64(ms))
}

// doneScript ends a claim: its record goes (unless a later claim replaced
// it), and the timer goes or moves to its next instant, only if no one
// rescheduled it earlier since the claim. An instant scheduled meanwhile
// for later than the lease (pending) is kept: the timer moves to the
// earlier of it and the next instant.
const doneScript = `
local rec = redis.call('HGET', KEYS[2], ARGV[1])
local ours = false
if rec then
  local rlease, rrest = string.match(rec, '^[^:]*:([^:]*):(.*)$')
  local tok = string.match(rrest, '|(.*)$')
  -- A record without a token is of a build before them: its lease tells.
  if tok then ours = tok == ARGV[4] else ours = tonumber(rlease) == tonumber(ARGV[2]) end
end
if ours then redis.call('HDEL', KEYS[2], ARGV[1]) end
local pend = false
if ours or not rec then
  -- A later claim's record leaves the pending instant to that claim.
  pend = redis.call('HGET', KEYS[3], ARGV[1])
  if pend then redis.call('HDEL', KEYS[3], ARGV[1]) end
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
-- Another claim's record: the timer is that claim's to move.
if not score or tonumber(score) ~= tonumber(ARGV[2]) or (rec and not ours) then
  if pend then redis.call('ZADD', KEYS[1], 'LT', pend, ARGV[1]) end
  -- This claim's timer, moved earlier meanwhile: its next flip may be
  -- earlier still.
  if ours and score and ARGV[3] ~= '' then redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[1]) end
  return 0
end
local n = ARGV[3]
if pend and (n == '' or tonumber(pend) < tonumber(n)) then n = pend end
if n == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], n, ARGV[1]) end
return 1
`

var done = redis.NewScript(doneScript)

// Done ends claims, in one pipelined round trip: each timer goes, or moves
// to its next instant where next is not zero.
func (s *Schedules) Done(ctx context.Context, cs []Claimed, next []time.Time) error {
	calls := make([]scriptCall, len(cs))
	for i, c := range cs {
		n := ""
		if !next[i].IsZero() {
			n = strconv.FormatFloat(dueScore(next[i]), 'f', 0, 64)
		}
		calls[i] = scriptCall{keys: []string{ScheduleKey(c.OrgID), ClaimsKey(c.OrgID), PendingKey(c.OrgID)}, args: []any{c.UserID, c.Lease, n, c.token}}
	}
	for _, cmd := range runPipelined(ctx, s.rdb, done, calls) {
		if err := cmd.Err(); err != nil {
			return fmt.Errorf("finish %d timers: %w", len(cs), err)
		}
	}
	return nil
}
