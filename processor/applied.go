package processor

import (
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
)

// position is where the processor read an event: src names the topic and
// partition, off the offset, and at is the latest record timestamp (unix
// ms) among the events applied up to there. A user's stored state keeps
// the position of the last event applied to it (membership.UserState.Applied),
// so that an event redelivered after its outbox entry is gone (a commit
// lost in a crash or a rebalance, after the user's next batch replaced the
// outbox) is known for a duplicate although it carries no version: applied
// again, an old full profile would undo the newer ones.
type position struct {
	src string
	off int64
	at  int64
}

// positionOf returns where r was read. The topic is kept as a short hash:
// offsets of another topic (a new profile topic configured) must not pass
// for this one's.
func positionOf(r Record) position {
	h := fnv.New32a()
	h.Write([]byte(r.Topic))
	return position{
		src: strconv.Itoa(r.Partition) + ":" + strconv.FormatUint(uint64(h.Sum32()), 36),
		off: r.Offset, at: r.Time.UnixMilli(),
	}
}

// String encodes p as stored: offset, partition, topic hash and time.
func (p position) String() string {
	return strconv.FormatInt(p.off, 10) + ":" + p.src + ":" + strconv.FormatInt(p.at, 36)
}

// parsePosition decodes a stored position; false when s holds none.
func parsePosition(s string) (position, bool) {
	parts := strings.Split(s, ":")
	if len(parts) != 4 {
		return position{}, false
	}
	off, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return position{}, false
	}
	at, err := strconv.ParseInt(parts[3], 36, 64)
	if err != nil {
		return position{}, false
	}
	return position{src: parts[1] + ":" + parts[2], off: off, at: at}, true
}

// covers reports whether the event read at q was applied before the event
// read at p, or is that event. The time tells a topic deleted and created
// again (or a broker that starts over, as the embedded one does), whose
// offsets start over, from the one whose events were applied: its records
// are newer than every record applied from the old one. Without record
// timestamps (a producer that sets none) nothing is covered: an event is
// rather applied twice than skipped.
func (p position) covers(q position) bool {
	return p.src == q.src && q.off <= p.off && q.at > 0 && q.at <= p.at
}

// advance returns the position after applying the event read at q, from p.
func (p position) advance(q position) position {
	if p.src == q.src && p.at > q.at {
		q.at = p.at
	}
	return q
}

// deadLetterPrefix starts the cause of an outbox entry that records a
// profile event dead-lettered in its user's evaluation; the reason
// follows. An entry with a cause of its own, not a new field, keeps the
// outbox readable by builds that know nothing of it.
const deadLetterPrefix = "dead-letter:"

// maxStoredReason bounds the reason an entry keeps: the dead letter has it
// whole, a redelivery's copy the start of it.
const maxStoredReason = 300

// deadLetterEntry records that ev was dead-lettered for reason by the write
// of revision rev: it changes no membership.
func deadLetterEntry(ev events.ProfileEvent, reason string, now time.Time, rev int64) membership.OutboxEntry {
	if len(reason) > maxStoredReason {
		reason = strings.ToValidUTF8(reason[:maxStoredReason], "") + " …"
	}
	return membership.OutboxEntry{EventID: ev.EventID, Version: ev.Version, CauseType: deadLetterPrefix + reason,
		AtMillis: now.UnixMilli(), Rev: rev}
}

// deadLetterReason returns the reason e records, when it records a dead
// letter.
func deadLetterReason(e membership.OutboxEntry) (string, bool) {
	return strings.CutPrefix(e.CauseType, deadLetterPrefix)
}

// streamEntry reports whether e was written by the stream for a profile
// event (applied or dead-lettered), rather than by a backfill or a timer.
func streamEntry(e membership.OutboxEntry) bool {
	if e.CauseType == "" || e.CauseType == events.CauseProfile {
		return true
	}
	_, ok := deadLetterReason(e)
	return ok
}
