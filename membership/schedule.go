package membership

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Due is the earliest instant at which a time-relative criterion of any
// segment of the organisation can next flip for one user. One timer per
// user keeps the schedule's size and writes independent of how many
// time-relative segments there are.
type Due struct {
	OrgID, UserID string
	At            time.Time
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

// Schedules stores timers in Redis, shared by every instance.
type Schedules struct {
	rdb   redis.UniversalClient
	claim *redis.Script
}

// NewSchedules returns a schedule store on rdb.
func NewSchedules(rdb redis.UniversalClient) *Schedules {
	return &Schedules{rdb: rdb, claim: redis.NewScript(claimScript)}
}

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
	pipe := s.rdb.Pipeline()
	for _, d := range due {
		pipe.ZAddLT(ctx, ScheduleKey(d.OrgID), redis.Z{Score: dueScore(d.At), Member: d.UserID})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("schedule %d timers: %w", len(due), err)
	}
	return nil
}

// Claimed is a timer taken by one instance until its lease ends.
type Claimed struct {
	Due
	// Lease is the score the claim left on the timer; Done removes the timer
	// only while it still carries this score.
	Lease int64
}

// Claims pushes due timers forward by the lease, so that another instance
// takes them again only if this one dies before Done.
const claimScript = `
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], ARGV[2], due[i])
  table.insert(out, due[i])
  table.insert(out, due[i + 1])
end
return out
`

// Claim takes up to limit timers of org due at or before now, leasing them
// for lease.
func (s *Schedules) Claim(ctx context.Context, org string, now time.Time, lease time.Duration, limit int) ([]Claimed, error) {
	leaseAt := now.Add(lease).UnixMilli()
	res, err := s.claim.Run(ctx, s.rdb, []string{ScheduleKey(org)}, now.UnixMilli(), leaseAt, limit).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("claim timers of %s: %w", org, err)
	}
	out := make([]Claimed, 0, len(res)/2)
	for i := 0; i+1 < len(res); i += 2 {
		ms, _ := strconv.ParseFloat(res[i+1], 64)
		out = append(out, Claimed{Due: Due{OrgID: org, UserID: res[i], At: time.UnixMilli(int64(ms))}, Lease: leaseAt})
	}
	return out, nil
}

// doneScript removes a claimed timer, or moves it to its next instant, only
// if no one rescheduled it since the claim.
const doneScript = `
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1
`

var done = redis.NewScript(doneScript)

// Done ends a claim: the timer goes, or moves to next when next is not zero.
func (s *Schedules) Done(ctx context.Context, c Claimed, next time.Time) error {
	n := ""
	if !next.IsZero() {
		n = strconv.FormatFloat(dueScore(next), 'f', 0, 64)
	}
	if err := done.Run(ctx, s.rdb, []string{ScheduleKey(c.OrgID)}, c.UserID, c.Lease, n).Err(); err != nil {
		return fmt.Errorf("finish timer: %w", err)
	}
	return nil
}
