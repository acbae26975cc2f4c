package membership

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
)

// StoredProfile is one stored profile met by a scan.
type StoredProfile struct {
	// UserID is the user whose profile it is.
	UserID string
	// Profile is the stored profile (see segment.DecodeProfile).
	Profile string
}

// scanCount is the SCAN batch: big enough that a million profiles take about
// a thousand round trips per node.
const scanCount = 2000

// ScanProfiles calls fn with every stored, non-deleted profile of org, a
// page at a time, from the organisation's index: pages are read
// concurrently, and fn is never called concurrently, nor again once it has
// returned an error. The scan sees every profile that exists for its whole
// duration at least once (Redis SCAN's guarantee) and may see one twice.
func (u *Users) ScanProfiles(ctx context.Context, org string, fn func(page []StoredProfile) error) error {
	return scanIndex(ctx, u, org, func(ctx context.Context, ids []string) ([]StoredProfile, error) {
		return u.readProfiles(ctx, org, ids)
	}, fn)
}

// scanKeys calls fn with every key matching match, a SCAN page at a time, on
// every master of a cluster; calls of fn are serialised, and none follows
// one that failed.
func (u *Users) scanKeys(ctx context.Context, match string, fn func(keys []string) error) error {
	var (
		mu     sync.Mutex
		failed error
	)
	scanNode := func(ctx context.Context, node redis.Cmdable) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, match, scanCount).Result()
			if err != nil {
				return fmt.Errorf("scan %s: %w", match, err)
			}
			if len(keys) > 0 {
				mu.Lock()
				if failed == nil {
					failed = fn(keys)
				}
				err = failed
				mu.Unlock()
				if err != nil {
					return err
				}
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	if cc, ok := u.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return scanNode(ctx, node)
		})
	}
	return scanNode(ctx, u.rdb)
}

func (u *Users) readProfiles(ctx context.Context, org string, ids []string) ([]StoredProfile, error) {
	pipe := u.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGet(ctx, ProfileKey(org, id), "p")
	}
	if _, err := pipe.Exec(ctx); unsent(err) != nil {
		return nil, fmt.Errorf("read profiles: %w", err)
	}
	// Each command's own error: a pipeline answers the first one in the
	// order sent, which may be a tombstone's "no field" before a node's
	// failure.
	page := make([]StoredProfile, 0, len(ids))
	for i, id := range ids {
		bad, err := readErr(cmds[i])
		if err != nil {
			return nil, fmt.Errorf("read profiles: %w", err)
		}
		// A deleted user's tombstone has no profile; a key of another type
		// is skipped, as the stream and the backfills skip that user.
		if p := cmds[i].Val(); p != "" && bad == nil {
			page = append(page, StoredProfile{UserID: id, Profile: p})
		}
	}
	return page, nil
}
