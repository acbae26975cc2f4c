package processor

import (
	"hash/fnv"
	"strconv"
	"strings"
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

// seqFloor is the position of an event that a batch dead-lettered in its
// user's evaluation.
type seqFloor struct {
	seq uint64
	pos position
}

// belowFloors reports whether a user's stored position may move to p:
// not past an event of the user dead-lettered by a batch not yet published
// (floors), whose redelivery must dead-letter it again rather than take it
// for applied.
func belowFloors(p position, floors []position) bool {
	for _, f := range floors {
		if f.src == p.src && p.off >= f.off {
			return false
		}
	}
	return true
}
