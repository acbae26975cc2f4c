package membership

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Members returns up to limit user ids of a segment and the cursor of the
// next page ("" after the last page), walking the segment's set with SSCAN.
// The cursor is opaque; one this store did not issue fails with
// ErrInvalidCursor. As with SSCAN, a user who is a member for the whole walk
// is returned, and one who enters or leaves during it may be returned or not;
// a set that changes during the walk may also repeat a user.
func (s *Sets) Members(ctx context.Context, org, seg string, limit int, cursor string) ([]string, string, error) {
	if limit <= 0 {
		limit = DefaultListLimit
	}
	scan, skip, err := decodeMembersCursor(cursor)
	if err != nil {
		return nil, "", fmt.Errorf("members of %s/%s: %w", org, seg, err)
	}
	key := SegmentMembersKey(org, seg)
	out := make([]string, 0, limit)
	for {
		// SSCAN may answer more than COUNT (a small set comes whole), so
		// the cursor also says how many of a batch were already returned.
		batch, next, err := s.rdb.SScan(ctx, key, scan, "", int64(limit)).Result()
		if err != nil {
			return nil, "", fmt.Errorf("members of %s/%s: %w", org, seg, err)
		}
		if skip > len(batch) {
			skip = len(batch)
		}
		batch = batch[skip:]
		room := limit - len(out)
		if len(batch) > room {
			out = append(out, batch[:room]...)
			return out, encodeMembersCursor(scan, skip+room), nil
		}
		out = append(out, batch...)
		if next == 0 {
			return out, "", nil
		}
		scan, skip = next, 0
		if len(out) == limit {
			return out, encodeMembersCursor(scan, 0), nil
		}
	}
}

func encodeMembersCursor(scan uint64, skip int) string {
	return base64.RawURLEncoding.EncodeToString([]byte("m1:" + strconv.FormatUint(scan, 10) + ":" + strconv.Itoa(skip)))
}

func decodeMembersCursor(c string) (uint64, int, error) {
	if c == "" {
		return 0, 0, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, 0, ErrInvalidCursor
	}
	parts := strings.Split(string(b), ":")
	if len(parts) != 3 || parts[0] != "m1" {
		return 0, 0, ErrInvalidCursor
	}
	scan, err1 := strconv.ParseUint(parts[1], 10, 64)
	skip, err2 := strconv.Atoi(parts[2])
	if err1 != nil || err2 != nil || skip < 0 {
		return 0, 0, ErrInvalidCursor
	}
	return scan, skip, nil
}

// AllMembers returns every user id of a segment, sorted. It is meant for
// static segments, whose lists are bounded.
func (s *Sets) AllMembers(ctx context.Context, org, seg string) ([]string, error) {
	ids, err := s.rdb.SMembers(ctx, SegmentMembersKey(org, seg)).Result()
	if err != nil {
		return nil, fmt.Errorf("members of %s/%s: %w", org, seg, err)
	}
	slices.Sort(ids)
	return ids, nil
}

// IsMember reports whether a user is in a segment (SISMEMBER).
func (s *Sets) IsMember(ctx context.Context, org, seg, user string) (bool, error) {
	ok, err := s.rdb.SIsMember(ctx, SegmentMembersKey(org, seg), user).Result()
	if err != nil {
		return false, fmt.Errorf("is %s in %s/%s: %w", user, org, seg, err)
	}
	return ok, nil
}

// UserSegments returns the ids of the segments a user is in, sorted.
func (s *Sets) UserSegments(ctx context.Context, org, user string) ([]string, error) {
	ids, err := s.rdb.SMembers(ctx, UserSegmentsKey(org, user)).Result()
	if err != nil {
		return nil, fmt.Errorf("segments of %s/%s: %w", org, user, err)
	}
	slices.Sort(ids)
	return ids, nil
}

// Sizes returns the exact size (SCARD) of each segment, in one pipelined
// round trip; a segment without members has size 0.
func (s *Sets) Sizes(ctx context.Context, org string, ids []string) (map[string]int64, error) {
	out := make(map[string]int64, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.SCard(ctx, SegmentMembersKey(org, id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("sizes of %d segments of %s: %w", len(ids), org, err)
	}
	for i, id := range ids {
		out[id] = cmds[i].Val()
	}
	return out, nil
}
