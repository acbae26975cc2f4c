package membership

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
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
// a set that changes during the walk may also repeat a user. A page makes
// at most maxScanRounds SSCAN calls: it may hold fewer than limit ids, even
// none, with a cursor to go on from.
func (s *Sets) Members(ctx context.Context, org, seg string, limit int, cursor string) ([]string, string, error) {
	if limit <= 0 {
		limit = DefaultListLimit
	}
	tag := cursorTag(org, seg)
	c, err := decodeMembersCursor(cursor, tag)
	if err != nil {
		return nil, "", fmt.Errorf("members of %s/%s: %w", org, seg, err)
	}
	key := SegmentMembersKey(org, seg)
	out := make([]string, 0, limit)
	if len(c.left) > 0 {
		n := min(limit, len(c.left))
		// The ids come from the cursor, which the client holds: only those
		// still members are given.
		is, err := s.rdb.SMIsMember(ctx, key, idsAsArgs(c.left[:n])...).Result()
		if err != nil {
			return nil, "", fmt.Errorf("members of %s/%s: %w", org, seg, err)
		}
		for i, in := range is {
			if in {
				out = append(out, c.left[i])
			}
		}
		if n < len(c.left) {
			return out, encodeMembersCursor(tag, membersCursor{scan: c.scan, after: c.after, left: c.left[n:]}), nil
		}
		if c.scan == 0 {
			return out, "", nil
		}
	}
	scan, after := c.scan, c.after
	for rounds := 0; ; rounds++ {
		if rounds == maxScanRounds && scan != 0 {
			// A cursor whose after is above the ids met (forged, or a set
			// that changed) would walk the whole set in one call: the page
			// ends short and the client goes on from where the walk is.
			return out, encodeMembersCursor(tag, membersCursor{scan: scan, after: after}), nil
		}
		room := limit - len(out)
		batch, next, err := s.rdb.SScan(ctx, key, scan, "", int64(room)).Result()
		if err != nil {
			return nil, "", fmt.Errorf("members of %s/%s: %w", org, seg, err)
		}
		slices.Sort(batch)
		if after != "" {
			// Every id up to after was given by whole-set answers: should
			// the set have grown into a hash table since, the whole walk of
			// it skips them, not only its first answer.
			i, found := slices.BinarySearch(batch, after)
			if found {
				i++
			}
			batch = batch[i:]
		}
		if len(batch) > room {
			out = append(out, batch[:room]...)
			if scan == 0 && next == 0 {
				// The whole set in one answer (a compact encoding): the next
				// page reads it again and goes on after the last id given.
				return out, encodeMembersCursor(tag, membersCursor{after: batch[room-1]}), nil
			}
			// Part of a hash table: the rest of this answer rides in the
			// cursor and the walk goes on from next. Reading the batch again
			// would not do: with members gone, SSCAN reads on into buckets
			// this answer did not reach.
			return out, encodeMembersCursor(tag, membersCursor{scan: next, after: after, left: batch[room:]}), nil
		}
		out = append(out, batch...)
		if next == 0 {
			return out, "", nil
		}
		scan = next
		if len(out) == limit {
			return out, encodeMembersCursor(tag, membersCursor{scan: scan, after: after}), nil
		}
	}
}

// maxScanRounds bounds the SSCAN round trips of one page.
const maxScanRounds = 64

// membersCursor is where a walk of a member set resumes: the SSCAN cursor,
// the last id given of whole-set answers (after: the rest of the walk gives
// only ids above it), and the ids of a partial answer not given yet (left).
type membersCursor struct {
	scan  uint64
	after string
	left  []string
}

// cursorTag ties a cursor to the segment it walks, so that one passed to
// another segment's walk is refused rather than resumed there.
func cursorTag(org, seg string) string {
	sum := sha256.Sum256([]byte(org + "\x00" + seg))
	return hex.EncodeToString(sum[:6])
}

// User ids hold no control characters (segment.CheckUserID): a NUL
// separates them in a cursor.
func encodeMembersCursor(tag string, c membersCursor) string {
	b := []byte("m4:" + tag + ":" + strconv.FormatUint(c.scan, 10) + ":")
	switch {
	// 'a' where it will do (builds before 'b' read it, with any scan).
	case c.after != "" && len(c.left) > 0:
		b = append(b, 'b')
		b = append(b, c.after...)
		for _, id := range c.left {
			b = append(b, 0)
			b = append(b, id...)
		}
	case c.after != "":
		b = append(b, 'a')
		b = append(b, c.after...)
	default:
		b = append(b, 'l')
		b = append(b, strings.Join(c.left, "\x00")...)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeMembersCursor reads a cursor of the walk tagged tag. A cursor of
// the form before tags (m3) is still read.
func decodeMembersCursor(s, tag string) (membersCursor, error) {
	if s == "" {
		return membersCursor{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return membersCursor{}, ErrInvalidCursor
	}
	str := string(b)
	if rest, ok := strings.CutPrefix(str, "m4:"); ok {
		got, rest, ok := strings.Cut(rest, ":")
		if !ok || got != tag {
			return membersCursor{}, ErrInvalidCursor
		}
		str = "m3:" + rest
	}
	parts := strings.SplitN(str, ":", 3)
	if len(parts) != 3 || parts[0] != "m3" || parts[2] == "" {
		return membersCursor{}, ErrInvalidCursor
	}
	scan, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return membersCursor{}, ErrInvalidCursor
	}
	c := membersCursor{scan: scan}
	switch rest := parts[2][1:]; parts[2][0] {
	case 'a':
		c.after = rest
	case 'b':
		parts := strings.Split(rest, "\x00")
		c.after, c.left = parts[0], parts[1:]
		if len(c.left) == 0 {
			c.left = nil
		}
	case 'l':
		if rest != "" {
			c.left = strings.Split(rest, "\x00")
		}
	default:
		return membersCursor{}, ErrInvalidCursor
	}
	return c, nil
}

// AllMembers returns every user id of a segment, sorted. It is meant for
// static segments, whose lists are bounded.
func (s *Sets) AllMembers(ctx context.Context, org, seg string) ([]string, error) {
	ids, err := s.rdb.SMembers(ctx, SegmentMembersKey(org, seg)).Result()
	if err != nil {
		return nil, fmt.Errorf("members of %s/%s: %w", org, seg, setErr(err))
	}
	slices.Sort(ids)
	return ids, nil
}

// ErrNotASet reports a segment's member set that holds another type than a
// set (written by hand, or damaged). It is returned wrapped, with Redis's
// own error; test it with errors.Is.
var ErrNotASet = errors.New("the member set holds another type than a set")

// setErr marks Redis's WRONGTYPE answer about a member set as ErrNotASet.
func setErr(err error) error {
	if wrongType(err) {
		return fmt.Errorf("%w (%w)", ErrNotASet, err)
	}
	return err
}

// IsMember reports whether a user is in a segment (SISMEMBER).
func (s *Sets) IsMember(ctx context.Context, org, seg, user string) (bool, error) {
	ok, err := s.rdb.SIsMember(ctx, SegmentMembersKey(org, seg), user).Result()
	if err != nil {
		return false, fmt.Errorf("is %s in %s/%s: %w", user, org, seg, err)
	}
	return ok, nil
}

// AreMembers reports whether each of users is in a segment (SMISMEMBER, a
// round trip per 10,000 users).
func (s *Sets) AreMembers(ctx context.Context, org, seg string, users []string) ([]bool, error) {
	out := make([]bool, 0, len(users))
	for chunk := range slices.Chunk(users, 10_000) {
		is, err := s.rdb.SMIsMember(ctx, SegmentMembersKey(org, seg), idsAsArgs(chunk)...).Result()
		if err != nil {
			return nil, fmt.Errorf("are %d users in %s/%s: %w", len(chunk), org, seg, setErr(err))
		}
		out = append(out, is...)
	}
	return out, nil
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
