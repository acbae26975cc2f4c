package embedded

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestRedisKeysExpire checks that keys with a lifetime expire in the
// embedded Redis as in a real one: job leases rely on it.
func TestRedisKeysExpire(t *testing.T) {
	s, err := Start(Options{Redis: true, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rdb := redis.NewClient(&redis.Options{Addr: s.RedisAddr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.Set(ctx, "lease", "owner", 300*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "kept", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		n, err := rdb.Exists(ctx, "lease").Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a key with a 300 ms lifetime still exists after 10 s")
		}
	}
	if n, err := rdb.Exists(ctx, "kept").Result(); err != nil || n != 1 {
		t.Errorf("a key without a lifetime is gone (%d, %v)", n, err)
	}
}
