package membership

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Coordination keys: leases that give one instance a job, and the heartbeat
// in which each instance says which definitions revision it has in force.
const instancesKey = "segmentd:instances"

func lockKey(name string) string { return "lock:{" + name + "}" }

// ListLock names the lease that one change of a static segment's list, or
// the removal of a segment's members, holds at a time.
func ListLock(org, seg string) string { return "list:" + org + ":" + seg }

// ListLockTTL is how long a list's lease lasts unrenewed. Its holder renews
// it while it works (KeepLease), so a change may run for minutes and a
// holder that dies frees the list within this time.
const ListLockTTL = 30 * time.Second

// Coordinator hands jobs to one instance at a time and tracks instances.
type Coordinator struct {
	rdb redis.UniversalClient
	// mu guards lastBeat: the instant each instance last beat at from this
	// process, which its next beat passes.
	mu       sync.Mutex
	lastBeat map[string]int64
}

// NewCoordinator returns a coordinator on rdb.
func NewCoordinator(rdb redis.UniversalClient) *Coordinator {
	return &Coordinator{rdb: rdb, lastBeat: map[string]int64{}}
}

// TryLock takes the named lease for owner, or extends it when owner holds it.
func (c *Coordinator) TryLock(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	res, err := lockScript.Run(ctx, c.rdb, []string{lockKey(name)}, owner, ttl.Milliseconds()).Int64()
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", name, err)
	}
	return res == 1, nil
}

// Extend extends the named lease while owner holds it; false when it has
// lapsed or another owner holds it, even if the lease is free now: a holder
// that lost its lease for a while must not carry on as if it had not.
func (c *Coordinator) Extend(ctx context.Context, name, owner string, ttl time.Duration) (bool, error) {
	res, err := extendScript.Run(ctx, c.rdb, []string{lockKey(name)}, owner, ttl.Milliseconds()).Int64()
	if err != nil {
		return false, fmt.Errorf("extend lock %s: %w", name, err)
	}
	return res == 1, nil
}

// ErrLeaseLost is the cause with which a kept lease's context ends once a
// renewal finds the lease lapsed or held by another owner.
var ErrLeaseLost = errors.New("lease lost")

// LeaseExtender extends a lease that its owner holds; a Coordinator is one.
type LeaseExtender interface {
	// Extend extends the named lease for ttl while owner holds it, and
	// reports false when it has lapsed or another owner holds it.
	Extend(ctx context.Context, name, owner string, ttl time.Duration) (bool, error)
}

// KeepLease renews owner's lease name, just taken with ttl, three times per
// ttl in the background, only ever extending it, so that a lease can be
// short and yet held by work that runs long. It returns a context that ends
// with cause ErrLeaseLost when a renewal finds the lease lapsed or taken
// (another holder may have worked since), or when renewals have failed for
// half a ttl (the lease may lapse before the next one: the work stops
// before another holder can begin), and the function that stops the
// renewals; that function does not give the lease up.
func KeepLease(ctx context.Context, l LeaseExtender, name, owner string, ttl time.Duration) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	done, stopped := make(chan struct{}), make(chan struct{})
	// renewed is when the last renewal that succeeded began (the lease was
	// just taken): the lease lasts ttl from a moment after it.
	renewed := time.Now()
	go func() {
		defer close(stopped)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
			began := time.Now()
			// A renewal that takes long to fail (dials and reads until
			// their timeouts, with retries) must not keep the work going
			// past half the ttl since the last renewal: it is cut then.
			ectx, ecancel := context.WithDeadline(ctx, renewed.Add(ttl/2))
			ok, err := l.Extend(ectx, name, owner, ttl)
			ecancel()
			switch {
			case err == nil && !ok:
				cancel(ErrLeaseLost)
				return
			case err == nil:
				renewed = began
			case time.Since(renewed) >= ttl/2:
				// Renewals keep failing: the lease may lapse before the
				// next one, and another holder work beside this one.
				cancel(fmt.Errorf("%w: not renewed for %v: %w", ErrLeaseLost, time.Since(renewed).Round(time.Millisecond), err))
				return
			}
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() { close(done) })
		<-stopped
		cancel(nil)
	}
}

var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

var lockScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// Held reports, for each name, whether its lease is held now, in one
// pipelined round trip.
func (c *Coordinator) Held(ctx context.Context, names []string) ([]bool, error) {
	if len(names) == 0 {
		return nil, nil
	}
	pipe := c.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(names))
	for i, n := range names {
		cmds[i] = pipe.Exists(ctx, lockKey(n))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("read %d leases: %w", len(names), err)
	}
	out := make([]bool, len(names))
	for i, c := range cmds {
		out[i] = c.Val() > 0
	}
	return out, nil
}

// Unlock gives the lease up if owner still holds it.
func (c *Coordinator) Unlock(ctx context.Context, name, owner string) error {
	if err := unlockScript.Run(ctx, c.rdb, []string{lockKey(name)}, owner).Err(); err != nil {
		return fmt.Errorf("unlock %s: %w", name, err)
	}
	return nil
}

// Beat records that instance id has definitions revision rev in force at
// now. Each beat's value differs from the one before: its instant passes
// the last one's by a millisecond at least (a clock that stands still or
// steps back is outrun by a few milliseconds a second), so that Beats'
// readers tell a live instance by its beat changing, whatever the
// instances' clocks say.
func (c *Coordinator) Beat(ctx context.Context, id string, rev int64, now time.Time) error {
	ms := now.UnixMilli()
	c.mu.Lock()
	if last, ok := c.lastBeat[id]; ok && ms <= last {
		ms = last + 1
	}
	c.lastBeat[id] = ms
	c.mu.Unlock()
	v := strconv.FormatInt(rev, 10) + ":" + strconv.FormatInt(ms, 10)
	if err := c.rdb.HSet(ctx, instancesKey, id, v).Err(); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// pruneBeat removes an instance's beat while it is still the one read.
var pruneBeat = redis.NewScript(`
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
`)

// Leave removes instance id from the heartbeat.
func (c *Coordinator) Leave(ctx context.Context, id string) error {
	c.mu.Lock()
	delete(c.lastBeat, id)
	c.mu.Unlock()
	if err := c.rdb.HDel(ctx, instancesKey, id).Err(); err != nil {
		return fmt.Errorf("leave the heartbeat as %s: %w", id, err)
	}
	return nil
}

// LiveRevisions returns the revision in force at each instance that beat
// within maxAge of now, and removes instances silent for much longer.
func (c *Coordinator) LiveRevisions(ctx context.Context, now time.Time, maxAge time.Duration) (map[string]int64, error) {
	out := map[string]int64{}
	err := c.eachBeat(ctx, func(id, v string, rev int64, at time.Time) {
		switch age := now.Sub(at); {
		case age <= maxAge:
			out[id] = rev
		case age > 10*maxAge:
			// Only the beat read: one the instance wrote since stays. A
			// failed prune is tried again at the next read.
			_ = pruneBeat.Run(ctx, c.rdb, []string{instancesKey}, id, v).Err()
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Beats returns each instance's last beat as stored, by instance id: a
// value that has not changed for a while (see Beat) is an instance that
// died, or stopped beating, without leaving.
func (c *Coordinator) Beats(ctx context.Context) (map[string]string, error) {
	all, err := c.rdb.HGetAll(ctx, instancesKey).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("instances: %w", err)
	}
	return all, nil
}

// eachBeat calls fn with every instance's last beat: its value as stored,
// and the revision and time it holds.
func (c *Coordinator) eachBeat(ctx context.Context, fn func(id, v string, rev int64, at time.Time)) error {
	all, err := c.Beats(ctx)
	if err != nil {
		return err
	}
	for id, v := range all {
		r, at, ok := strings.Cut(v, ":")
		rev, err1 := strconv.ParseInt(r, 10, 64)
		ms, err2 := strconv.ParseInt(at, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		fn(id, v, rev, time.UnixMilli(ms))
	}
	return nil
}
