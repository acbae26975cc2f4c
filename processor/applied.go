package processor

import (
	"strconv"
	"strings"
	"time"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/membership"
)

// position is where the processor read an event: the partition and a
// hash of the topic name it was read from, the offset, and at, the latest
// record timestamp (unix ms) among the events applied up to there. A
// user's stored state keeps the position of the last event applied to it
// (membership.UserState.Applied), so that an event redelivered after its
// outbox entry is gone (a commit lost in a crash or a rebalance, after the
// user's next batch replaced the outbox) is known for a duplicate although
// it carries no version: applied again, an old full profile would undo the
// newer ones. It is built for every event, so it allocates nothing.
type position struct {
	partition int
	topic     uint32
	off       int64
	at        int64
}

// positionOf returns where r was read. The topic is kept as a hash:
// offsets of another topic (a new profile topic configured) must not pass
// for this one's.
func positionOf(r Record) position {
	return position{partition: r.Partition, topic: topicHash(r.Topic), off: r.Offset, at: r.Time.UnixMilli()}
}

// topicHash is 32-bit FNV-1a, written out so that it allocates nothing.
func topicHash(topic string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(topic); i++ {
		h ^= uint32(topic[i])
		h *= 16777619
	}
	return h
}

// sameSource reports whether p and q were read from the same partition of
// the same topic.
func (p position) sameSource(q position) bool {
	return p.partition == q.partition && p.topic == q.topic
}

// String encodes p as stored: offset, partition, topic hash and time.
func (p position) String() string {
	b := make([]byte, 0, 48)
	b = strconv.AppendInt(b, p.off, 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(p.partition), 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, uint64(p.topic), 36)
	b = append(b, ':')
	b = strconv.AppendInt(b, p.at, 36)
	return string(b)
}

// parsePosition decodes a stored position; false when s holds none.
func parsePosition(s string) (position, bool) {
	off, rest, ok1 := strings.Cut(s, ":")
	part, rest, ok2 := strings.Cut(rest, ":")
	topic, at, ok3 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || !ok3 {
		return position{}, false
	}
	var p position
	var err error
	if p.off, err = strconv.ParseInt(off, 10, 64); err != nil {
		return position{}, false
	}
	n, err := strconv.ParseInt(part, 10, 32)
	if err != nil {
		return position{}, false
	}
	p.partition = int(n)
	t, err := strconv.ParseUint(topic, 36, 32)
	if err != nil {
		return position{}, false
	}
	p.topic = uint32(t)
	if p.at, err = strconv.ParseInt(at, 36, 64); err != nil {
		return position{}, false
	}
	return p, true
}

// covers reports whether the event read at q was applied before the event
// read at p, or is that event. The time tells a topic deleted and created
// again (or a broker that starts over, as the embedded one does), whose
// offsets start over, from the one whose events were applied: its records
// are newer than every record applied from the old one. Without record
// timestamps (a producer that sets none) nothing is covered: an event is
// rather applied twice than skipped.
func (p position) covers(q position) bool {
	return p.sameSource(q) && q.off <= p.off && q.at > 0 && q.at <= p.at
}

// advance returns the position after applying the event read at q, from p.
// An event at an earlier offset and no later time (a record without a
// timestamp, applied again as covers never skips one) leaves p as it is:
// the position moved back would no longer cover the events after it.
func (p position) advance(q position) position {
	if !p.sameSource(q) {
		return q
	}
	if q.off < p.off && q.at <= p.at {
		return p
	}
	q.at = max(q.at, p.at)
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

// after reports whether q was read after the stored position p of the last
// event applied to the user, on the same partition of the same topic: a
// record there cannot be the redelivery of an event the stored write
// applied, but another copy of it (a producer's retry), which is a
// duplicate and must not be replayed.
func after(p position, ok bool, q position) bool {
	return ok && p.sameSource(q) && q.off > p.off
}
