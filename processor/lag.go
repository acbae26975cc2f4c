package processor

import (
	"context"
	"sync"
	"time"
)

// lagTracker keeps, for each partition this processor reads, the end of
// the partition (as last fetched or asked for) and the offset of the next
// record not yet finished: the lag is the sum of the differences. Records
// fetched and held by a failing batch count as behind, as do those Kafka
// received since; kafka-go's own lag counts neither (it measures from the
// records its queue took, and is read only once a batch succeeds).
type lagTracker struct {
	mu    sync.Mutex
	parts map[partitionOf]*lagPart
	// lastFetch is when the processor last fetched a record.
	lastFetch time.Time
	// checked is when partitions was last called (the ends that follow
	// it are as of then).
	checked time.Time
	// done keeps, for every partition whose records this processor
	// finished, the offset after the last of them, however long ago: a
	// partition's end never goes below it unless its topic started over,
	// whoever owns the partition now. Unlike parts it is never forgotten,
	// so that a partition quiet for lagForget before its topic is deleted
	// and created again is still seen to start over (kafka-go fetches
	// nothing from it then).
	done map[partitionOf]*doneMark
}

// doneMark is a partition's offset after the records finished there, and
// how many answers running put its end below it.
type doneMark struct {
	next  int64
	under int
}

type lagPart struct {
	end, next int64
	// seen is when a record of the partition was last fetched.
	seen time.Time
	// behind is when its end was first seen past next, zero while it is
	// caught up.
	behind time.Time
}

// lagForget is how long a partition is tracked after its last fetch while
// the processor fetches others, or is not held up: one that moved to
// another instance drops out. An outage, which holds the processor up,
// keeps every partition (and its backlog) counted.
const lagForget = time.Minute

// lagMoved is how long a partition with records this instance has not
// fetched goes unfetched, while others are fetched or nothing holds the
// processor up, before it is taken for moved to another instance.
const lagMoved = 2 * lagInterval

// fetched records a fetched batch. A batch's records come in runs of one
// partition, so the partition is looked up once a run.
func (l *lagTracker) fetched(rs []Record, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var lp *lagPart
	for i, r := range rs {
		if i == 0 || r.Partition != rs[i-1].Partition || r.Topic != rs[i-1].Topic {
			k := partitionOf{r.Topic, r.Partition}
			if lp = l.parts[k]; lp == nil {
				lp = &lagPart{next: r.Offset}
				l.parts[k] = lp
			}
			lp.seen = now
		}
		lp.end = max(lp.end, r.HighWaterMark, r.Offset+1)
		if lp.behind.IsZero() && lp.end > lp.next {
			lp.behind = now
		}
	}
	if len(rs) > 0 {
		l.lastFetch = now
	}
}

// finished records that a batch's records are processed.
func (l *lagTracker) finished(rs []Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done == nil {
		l.done = map[partitionOf]*doneMark{}
	}
	var lp *lagPart
	var dm *doneMark
	for i, r := range rs {
		if i == 0 || r.Partition != rs[i-1].Partition || r.Topic != rs[i-1].Topic {
			k := partitionOf{r.Topic, r.Partition}
			lp = l.parts[k]
			if dm = l.done[k]; dm == nil {
				dm = &doneMark{}
				l.done[k] = dm
			}
		}
		if lp != nil {
			lp.next = max(lp.next, r.Offset+1)
		}
		dm.next = max(dm.next, r.Offset+1)
	}
}

// ends records the partitions' ends as asked for, and returns the
// partitions whose end was below the records already finished there in
// this answer and the one before: the topic started over (deleted and
// created again).
func (l *lagTracker) ends(topic string, ends map[int]int64) (startedOver []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for part, end := range ends {
		if dm := l.done[partitionOf{topic, part}]; dm != nil {
			// Twice running (lagInterval apart): a new leader's end can
			// lag for a moment behind what its predecessor served.
			if end < dm.next {
				if dm.under++; dm.under >= 2 {
					startedOver = append(startedOver, part)
				}
			} else {
				dm.under = 0
			}
		}
		if lp := l.parts[partitionOf{topic, part}]; lp != nil {
			lp.end = max(lp.end, end)
			if lp.end > lp.next && lp.behind.IsZero() {
				lp.behind = l.checked
			}
		}
	}
	return startedOver
}

// partitions returns the partitions tracked, by topic, and forgets those
// behind and not fetched for lagMoved while others were (moved to another
// instance), and those not fetched for lagForget that are caught up or
// while the processor was not held up. Partitions forgotten whose records
// were finished are returned too: their ends tell a topic that started
// over (see ends), and count in no lag.
func (l *lagTracker) partitions(now time.Time, held bool) map[string][]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]int{}
	l.checked = now
	for k, lp := range l.parts {
		if lp.next >= lp.end {
			lp.behind = time.Time{}
		}
		idle := now.Sub(lp.seen) > lagForget
		// Others fetched for a while without this one: it moved away (kafka-go
		// fetches every assigned partition concurrently; an outage stops all
		// fetches, so lastFetch does not move past seen then).
		// A partition caught up (quiet) is not taken for moved: it counts
		// nothing, and an outage that follows must find it still tracked.
		// One behind is, once others were fetched after it was seen behind.
		// So is one behind for lagMoved, unfetched, while the processor was
		// not held up: kafka-go would have fetched it were it still here
		// (this instance may have no other partition to fetch, or only
		// quiet ones).
		movedAway := !lp.behind.IsZero() && (l.lastFetch.After(lp.behind) && l.lastFetch.Sub(lp.seen) > lagMoved ||
			!held && now.Sub(lp.behind) > lagMoved && now.Sub(lp.seen) > lagMoved)
		if movedAway || (idle && (lp.next >= lp.end || !held)) {
			delete(l.parts, k)
			continue
		}
		out[k.topic] = append(out[k.topic], k.partition)
	}
	for k := range l.done {
		if l.parts[k] == nil {
			out[k.topic] = append(out[k.topic], k.partition)
		}
	}
	return out
}

// total is the lag: the records behind in every partition tracked.
func (l *lagTracker) total() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, lp := range l.parts {
		n += max(0, lp.end-lp.next)
	}
	return n
}

// lagInterval is how often the lag is measured while batches are not
// finishing to measure it.
const lagInterval = 5 * time.Second

// lagLoop refreshes the partitions' ends and the lag every lagInterval
// until ctx ends.
func (p *Processor) lagLoop(ctx context.Context) {
	t := time.NewTicker(lagInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if eo, ok := p.cfg.Fetcher.(EndOffsets); ok {
			for topic, parts := range p.lag.partitions(time.Now(), p.held()) {
				qctx, cancel := context.WithTimeout(ctx, lagInterval)
				ends, err := eo.EndOffsets(qctx, topic, parts)
				cancel()
				if err != nil {
					continue
				}
				if over := p.lag.ends(topic, ends); len(over) > 0 {
					// kafka-go goes on asking for the old topic's offsets,
					// past the new one's end, and waits there without an
					// error: nothing would say that no event is read.
					if !p.startedOver.Swap(true) {
						p.cfg.Logger.Error("topic started over (deleted and created again): its events are not read; restart every instance", "topic", topic, "partitions", over)
					}
				}
			}
		} else {
			p.lag.partitions(time.Now(), p.held())
		}
		p.cfg.Metrics.SetLag(p.lag.total())
		// Dead letters held back with none after them to log them.
		p.logDLQ(nil)
	}
}

// held reports whether the processor is held up: a batch is in one of the
// stages, or fetching fails. Its partitions' backlogs then stay counted.
func (p *Processor) held() bool {
	// As Healthy reads it: a quiet topic gives no fetch to clear a failure,
	// so one counts for fetchFailureWindow only (an outage renews it).
	if t := p.fetchFailed.Load(); t != 0 && time.Since(time.Unix(0, t)) < fetchFailureWindow {
		return true
	}
	for i := range p.stages {
		if p.stages[i].start.Load() != 0 {
			return true
		}
	}
	return false
}
