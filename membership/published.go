package membership

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Published names an outbox entry whose changes a job published (a timer
// round, its own entries and those it published again before them): the
// user, and the revision the entry's write created (revisions of a
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
// as published in the hash's field j: revisions in increasing order, each
// followed by a comma, the highest 16. The cap counts the user's entries
// of every segment (a timer round writes one for each segment it flips,
// and an outbox keeps a timer's entries of the user's last flips), and
// keeps the newest by revision whatever order the marks come in; a mark
// that falls off only makes a writer publish that entry again. The mark
// leaves the revision alone: it changes no membership, and a writer that
// read the user before it and writes after it loses nothing but the mark
// (it publishes the entry again). A revision the user has not reached (a
// hash flushed since) is not marked. It replies 1 a user.
const markPublishedScript = `
local out = {}
for k = 1, #KEYS, 2 do
  local rev = ARGV[(k + 1) / 2]
  local n = tonumber(rev)
  local h = redis.call('HMGET', KEYS[k], 'r', 'j')
  local j = h[2] or ''
  if tonumber(h[1] or '0') >= n then
    local write = true
    if n > tonumber(string.match(',' .. j, '^.*,(%d+),$') or '-1') then
      -- Marks come mostly in the order of their revisions.
      j = j .. rev .. ','
    elseif string.find(',' .. j, ',' .. rev .. ',', 1, true) then
      write = false
    else
      local revs = {}
      for m in string.gmatch(j, '(%d+),') do revs[#revs + 1] = tonumber(m) end
      revs[#revs + 1] = n
      table.sort(revs)
      j = table.concat(revs, ',') .. ','
    end
    if write then
      local _, c = string.gsub(j, ',', ',')
      while c > 16 do
        j = string.sub(j, string.find(j, ',', 1, true) + 1)
        c = c - 1
      end
      redis.call('HSET', KEYS[k], 'j', j)
    end
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
