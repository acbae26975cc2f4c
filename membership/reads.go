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
	scan, after, err := decodeMembersCursor(cursor)
	if err != nil {
		return nil, "", fmt.Errorf("members of %s/%s: %w", org, seg, err)
	}
	key := SegmentMembersKey(org, seg)
	out := make([]string, 0, limit)
	for {
		// SSCAN may answer more than COUNT: a set in a compact encoding
		// comes whole. A batch is therefore sorted and handed out in id
		// order, the cursor keeping the last id returned from it: a batch
		// read again is the same or, once a compact set has grown into a
		// hash table, a part of the whole set whose ids up to that one
		// were all returned. (A count of entries to skip would not do: the
		// batch's order changes with the encoding.)
		batch, next, err := s.rdb.SScan(ctx, key, scan, "", int64(limit)).Result()
		if err != nil {
			return nil, "", fmt.Errorf("members of %s/%s: %w", org, seg, err)
		}
		slices.Sort(batch)
		if after != "" {
			i, found := slices.BinarySearch(batch, after)
			if found {
				i++
			}
			batch = batch[i:]
		}
		room := limit - len(out)
		if len(batch) > room {
			out = append(out, batch[:room]...)
			return out, encodeMembersCursor(scan, batch[room-1]), nil
		}
		out = append(out, batch...)
		if next == 0 {
			return out, "", nil
		}
		scan, after = next, ""
		if len(out) == limit {
			return out, encodeMembersCursor(scan, ""), nil
		}
	}
}

func encodeMembersCursor(scan uint64, after string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("m2:" + strconv.FormatUint(scan, 10) + ":" + after))
}

func decodeMembersCursor(c string) (uint64, string, error) {
	if c == "" {
		return 0, "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, "", ErrInvalidCursor
	}
	// The last id may itself hold colons: it is everything after the second.
	parts := strings.SplitN(string(b), ":", 3)
	if len(parts) != 3 || parts[0] != "m2" {
		return 0, "", ErrInvalidCursor
	}
	scan, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return 0, "", ErrInvalidCursor
	}
	return scan, parts[2], nil
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
