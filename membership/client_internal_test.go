package membership

import (
	"context"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func TestClusterState(t *testing.T) {
	for name, tc := range map[string]struct{ info, want string }{
		"ok":      {"cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:16384\r\n", "ok"},
		"fail":    {"cluster_state:fail\r\ncluster_slots_assigned:16384\r\n", "fail"},
		"missing": {"cluster_enabled:1\r\n", ""},
	} {
		t.Run(name, func(t *testing.T) {
			if got := clusterState(tc.info); got != tc.want {
				t.Errorf("clusterState = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestWrongType: a key of another type is recognised in the wording of
// the embedded Redis (miniredis), for a plain command and for a call in a
// script, which it reports as the script's error; other errors are not.
func TestWrongType(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	if err := rdb.Set(ctx, "k", "a string", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		err  error
		want bool
	}{
		"a command":          {rdb.SAdd(ctx, "k", "m").Err(), true},
		"a call in a script": {rdb.Eval(ctx, "return redis.call('SADD', KEYS[1], 'm')", []string{"k"}).Err(), true},
		"another error":      {rdb.Eval(ctx, "return redis.call('NOSUCHCOMMAND')", nil).Err(), false},
		"no error":           {nil, false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := wrongType(tc.err); got != tc.want {
				t.Errorf("wrongType(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
