package membership

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Each organisation keeps an index of its users, so that a backfill, an
// audience search or verify reads one organisation's users rather than
// scanning every key of every organisation. A user enters the index before
// its first profile is written (so a user with a profile is always in it)
// and stays in it after a deletion, as its tombstone stays: readers skip
// users without a profile. The index is split into indexShards sets, so
// that on Redis Cluster one organisation's index spreads over the masters
// and no one set takes all of its writes.
const indexShards = 16

// userIndexKey returns the internal SET of the ids of org's users whose id
// falls in shard.
func userIndexKey(org string, shard int) string {
	return "orgusers:{" + org + ":" + strconv.Itoa(shard) + "}"
}

// indexedKey returns the internal key whose presence says that org's index
// holds every user stored before it: users stored by a build older than
// the index are added by the first read that scans the keyspace for them.
func indexedKey(org string) string { return "orgusers:{" + org + "}:indexed" }

func indexShard(user string) int {
	h := fnv.New32a()
	h.Write([]byte(user))
	return int(h.Sum32() % indexShards)
}

// addToIndex adds users to their organisations' indexes in one pipelined
// round trip. SADD is idempotent, so a retry changes nothing twice.
func (u *Users) addToIndex(ctx context.Context, refs []UserRef) error {
	if len(refs) == 0 {
		return nil
	}
	type shard struct {
		org string
		n   int
	}
	byShard := map[shard][]any{}
	var order []shard
	for _, r := range refs {
		s := shard{r.OrgID, indexShard(r.UserID)}
		if _, ok := byShard[s]; !ok {
			order = append(order, s)
		}
		byShard[s] = append(byShard[s], r.UserID)
	}
	pipe := u.rdb.Pipeline()
	for _, s := range order {
		pipe.SAdd(ctx, userIndexKey(s.org, s.n), byShard[s]...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("index %d users: %w", len(refs), err)
	}
	return nil
}

// indexReaders is how many of an organisation's index sets are read at
// once, so that one page's round trips overlap another's processing.
const indexReaders = 4

// scanUsers calls fn with every user id of org's index, a page at a time
// (a user may come twice, as with SCAN), from up to indexReaders
// goroutines at once. An organisation not yet indexed is indexed first, by
// scanning the keyspace for its profiles (fn is then called from one
// goroutine at a time): a read that fails half-way leaves the users it
// added, and the next one scans again.
func (u *Users) scanUsers(ctx context.Context, org string, fn func(ids []string) error) error {
	n, err := u.rdb.Exists(ctx, indexedKey(org)).Result()
	if err != nil {
		return fmt.Errorf("user index of %s: %w", org, err)
	}
	if n == 0 {
		return u.buildIndex(ctx, org, fn)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	shards := make(chan int)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
		cancel()
	}
	for range indexReaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for shard := range shards {
				if err := u.scanShard(ctx, userIndexKey(org, shard), fn); err != nil {
					fail(err)
				}
			}
		}()
	}
feed:
	for shard := range indexShards {
		select {
		case shards <- shard:
		case <-ctx.Done():
			break feed
		}
	}
	close(shards)
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

func (u *Users) scanShard(ctx context.Context, key string, fn func(ids []string) error) error {
	var cursor uint64
	for {
		ids, next, err := u.rdb.SScan(ctx, key, cursor, "", scanCount).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("scan %s: %w", key, err)
		}
		if len(ids) > 0 {
			if err := fn(ids); err != nil {
				return err
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// buildIndex scans the keyspace for org's stored users, adds each page to
// the index before passing it to fn, and marks the organisation indexed
// once the scan is complete. Users stored meanwhile are indexed by their
// writers (see UserWrite.Created).
func (u *Users) buildIndex(ctx context.Context, org string, fn func(ids []string) error) error {
	err := u.scanKeys(ctx, "prof:{"+org+":*", func(keys []string) error {
		ids := make([]string, 0, len(keys))
		refs := make([]UserRef, 0, len(keys))
		for _, k := range keys {
			if ref, ok := userFromProfileKey(k); ok && ref.OrgID == org {
				ids = append(ids, ref.UserID)
				refs = append(refs, ref)
			}
		}
		if err := u.addToIndex(ctx, refs); err != nil {
			return err
		}
		return fn(ids)
	})
	if err != nil {
		return err
	}
	if err := u.rdb.Set(ctx, indexedKey(org), "1", 0).Err(); err != nil {
		return fmt.Errorf("mark %s indexed: %w", org, err)
	}
	return nil
}
