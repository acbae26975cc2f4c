package embedded

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
)

// startRedis starts the embedded Redis alone and returns a client of it;
// both end with the test.
func startRedis(t *testing.T) *redis.Client {
	t.Helper()
	s, err := Start(Options{Redis: true, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	rdb := redis.NewClient(&redis.Options{Addr: s.RedisAddr()})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// TestRedisKeysExpire checks that keys with a lifetime expire in the
// embedded Redis as in a real one: job leases rely on it.
func TestRedisKeysExpire(t *testing.T) {
	rdb := startRedis(t)
	ctx := context.Background()
	if err := rdb.Set(ctx, "lease", "owner", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "kept", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	gone := func() bool {
		n, err := rdb.Exists(ctx, "lease").Result()
		if err != nil {
			t.Fatal(err)
		}
		return n == 0
	}
	// testenv, which starts this package's servers, cannot serve here.
	for deadline := time.Now().Add(10 * time.Second); !gone(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a key with a 300 ms lifetime still exists after 10 s")
		}
	}
	if n, err := rdb.Exists(ctx, "kept").Result(); err != nil || n != 1 {
		t.Errorf("a key without a lifetime is gone (%d, %v)", n, err)
	}
}

// TestDeleteLargeSegment deletes a segment of 10,000 members on the
// embedded Redis, whose SSCAN cursor passes over members when the scan
// removes as it goes: the deletion must still remove every member, with
// an exit published for each, in one call.
func TestDeleteLargeSegment(t *testing.T) {
	rdb := startRedis(t)
	ctx := context.Background()
	sets := membership.NewSets(rdb)
	var entries []events.Change
	for i := range 10000 {
		entries = append(entries, events.Change{OrgID: "dev", SegmentID: "big", UserID: fmt.Sprintf("u%05d", i), Entered: true})
	}
	if err := sets.Apply(ctx, entries); err != nil {
		t.Fatal(err)
	}
	exits := map[string]bool{}
	publish := func(_ context.Context, cs []events.Change) error {
		for _, c := range cs {
			exits[c.UserID] = true
		}
		return nil
	}
	n, err := sets.DeleteSegment(ctx, "dev", "big", time.Now(), publish)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(entries) || len(exits) != len(entries) {
		t.Errorf("removed %d members, published %d exits; want %d of each", n, len(exits), len(entries))
	}
	if left := rdb.SCard(ctx, membership.SegmentMembersKey("dev", "big")).Val(); left != 0 {
		t.Errorf("%d members left", left)
	}
}

// TestClockWait: the clock ages the keys every clockTick while that is
// cheap, and waits clockShare times as long as aging took once it is not,
// so that it never holds the server more than a share of the time.
func TestClockWait(t *testing.T) {
	for name, tt := range map[string]struct{ cost, want time.Duration }{
		"an empty server":                   {0, clockTick},
		"a few thousand keys":               {time.Millisecond, clockTick},
		"at the share exactly":              {clockTick / clockShare, clockTick},
		"300,000 keys (about 170 ms)":       {170 * time.Millisecond, 3400 * time.Millisecond},
		"a call that took longer than tick": {2 * clockTick, 2 * clockShare * clockTick},
	} {
		t.Run(name, func(t *testing.T) {
			if got := clockWait(tt.cost); got != tt.want {
				t.Errorf("clockWait(%v) = %v, want %v", tt.cost, got, tt.want)
			}
		})
	}
}

// BenchmarkClockAging measures one aging of the embedded Redis's keys
// (miniredis's FastForward, which holds the server's lock) with
// SEGMENTD_BENCH_KEYS keys (300,000 unless set: about 150,000 users of make
// run), and reports the share of the server's time the clock then takes
// with a fixed clockTick (as before clockWait: the server answers nothing
// else while the clock holds it) and with clockWait.
func BenchmarkClockAging(b *testing.B) {
	keys := 300000
	if v := os.Getenv("SEGMENTD_BENCH_KEYS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		keys = n
	}
	s, err := Start(Options{Redis: true, Ephemeral: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	rdb := redis.NewClient(&redis.Options{Addr: s.RedisAddr(), ReadTimeout: time.Minute, WriteTimeout: time.Minute})
	defer rdb.Close()
	ctx := context.Background()
	for n := 0; n < keys; {
		pipe := rdb.Pipeline()
		for i := 0; i < 10000 && n < keys; i++ {
			pipe.SAdd(ctx, fmt.Sprintf("usersegs:{org:u%07d}", n), "seg")
			n++
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	start := time.Now()
	for b.Loop() {
		s.redis.FastForward(time.Millisecond)
	}
	cost := time.Since(start) / time.Duration(b.N)
	b.ReportMetric(100*min(1, float64(cost)/float64(clockTick)), "%-fixed-tick")
	b.ReportMetric(100*float64(cost)/float64(clockWait(cost)), "%-clockWait")
}
