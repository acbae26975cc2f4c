package membership

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Published names an outbox entry whose changes its writer published:
// the user, and the revision the entry's write created (revisions of a
// user only grow, a deletion's tombstone included, so one names one
// entry for good).
type Published struct {
	// OrgID and UserID name the user.
	OrgID, UserID string
	// Rev is the entry's revision (OutboxEntry.Rev).
	Rev int64
}

// The script marks, for each user of KEYS (profile hash, and the segment
// set, unused, as every per-user script takes), the revision of its ARGV
// as published in the hash's field j: revisions, each followed by a
// comma, the newest 8 (a writer looks for the newest decisions of a
// segment before its own, and a mark that falls off only makes a writer
// publish that entry again). The mark leaves the revision alone: it
// changes no membership, and a writer that read the user before it and
// writes after it loses nothing but the mark (it publishes the entry
// again). A revision the user has not reached (a hash flushed since) is
// not marked. It replies 1 a user.
const markPublishedScript = `
local out = {}
for k = 1, #KEYS, 2 do
  local rev = ARGV[(k + 1) / 2]
  local h = redis.call('HMGET', KEYS[k], 'r', 'j')
  local j = h[2] or ''
  if tonumber(h[1] or '0') >= tonumber(rev) and not string.find(',' .. j, ',' .. rev .. ',', 1, true) then
    j = j .. rev .. ','
    local _, n = string.gsub(j, ',', '')
    while n > 8 do
      j = string.sub(j, string.find(j, ',', 1, true) + 1)
      n = n - 1
    end
    redis.call('HSET', KEYS[k], 'j', j)
  end
  out[#out + 1] = 1
end
return out
`

var markPublishedEntries = redis.NewScript(markPublishedScript)

// MarkPublished records, in one pipelined round trip, that the entries ps
// name are published: readers of the users' outboxes then see their
// Published set, and need not publish them again before their own changes.
// Call it only once Kafka has acknowledged the entries' changes.
func (u *Users) MarkPublished(ctx context.Context, ps []Published) error {
	calls := make([]scriptCall, len(ps))
	for i, p := range ps {
		calls[i] = scriptCall{keys: []string{ProfileKey(p.OrgID, p.UserID), UserSegmentsKey(p.OrgID, p.UserID)}, args: []any{p.Rev}}
	}
	if _, err := u.runPerUser(ctx, markPublishedEntries, calls, 1); err != nil {
		return fmt.Errorf("mark %d entries published: %w", len(ps), err)
	}
	return nil
}

// markPublished sets Published on the entries of es whose revision marks
// (a user's field j) lists.
func markPublished(es []OutboxEntry, marks string) {
	for marks != "" {
		var m string
		m, marks, _ = strings.Cut(marks, ",")
		rev, err := strconv.ParseInt(m, 10, 64)
		if err != nil {
			continue
		}
		for i := range es {
			if es[i].Rev == rev {
				es[i].Published = true
			}
		}
	}
}
