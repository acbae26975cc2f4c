package embedded

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/testenv"
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
	if !testenv.Eventually(10*time.Second, gone) {
		t.Fatal("a key with a 300 ms lifetime still exists after 10 s")
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
