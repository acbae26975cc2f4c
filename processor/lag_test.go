package processor

import (
	"slices"
	"testing"
	"time"
)

// TestLagTracker: the lag is what is behind in every partition tracked; a
// partition stays tracked while an outage holds the processor up, and
// drops out once it has moved to another instance.
func TestLagTracker(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	rec := func(part int, off, hwm int64) Record {
		return Record{Topic: "p", Partition: part, Offset: off, HighWaterMark: hwm}
	}
	tests := []struct {
		name string
		// run acts on a tracker that fetched offsets 10-11 of partition 0
		// (end 20) and finished none, at t0.
		run      func(l *lagTracker)
		wantLag  int64
		wantKept bool
	}{
		{"fetched, not finished", func(l *lagTracker) { l.partitions(t0.Add(time.Second), true) }, 10, true},
		{"finished", func(l *lagTracker) { l.finished([]Record{rec(0, 10, 0), rec(0, 11, 0)}) }, 8, true},
		{"ends moved on", func(l *lagTracker) { l.ends("p", map[int]int64{0: 50}) }, 40, true},
		{"held up for long", func(l *lagTracker) { l.partitions(t0.Add(time.Hour), true) }, 10, true},
		{"idle and not held up", func(l *lagTracker) { l.partitions(t0.Add(2*lagForget), false) }, 0, false},
		{"others fetched long after", func(l *lagTracker) {
			l.fetched([]Record{rec(1, 0, 1)}, t0.Add(2*lagForget))
			l.finished([]Record{rec(1, 0, 0)})
			l.partitions(t0.Add(2*lagForget), true)
		}, 0, false},
		{"caught up and idle", func(l *lagTracker) {
			l.finished([]Record{rec(0, 19, 0)})
			l.partitions(t0.Add(2*lagForget), true)
		}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &lagTracker{parts: map[partitionOf]*lagPart{}}
			l.fetched([]Record{rec(0, 10, 20), rec(0, 11, 20)}, t0)
			tt.run(l)
			if got := l.total(); got != tt.wantLag {
				t.Errorf("lag %d, want %d", got, tt.wantLag)
			}
			if _, kept := l.parts[partitionOf{"p", 0}]; kept != tt.wantKept {
				t.Errorf("partition 0 tracked: %v, want %v", kept, tt.wantKept)
			}
		})
	}
}

// TestLagForgetsMovedPartitionAfterOldFetchFailure: one fetch failed long
// ago (a broker blip), the processor's own partitions went quiet since (its
// Fetch waits for a record: nothing clears fetchFailed), and partition 0
// moved to another instance, which keeps writing to it. The processor is
// not held up, so partition 0 must drop out and the lag return to 0; it
// used to count the other instance's partition, growing, for good.
func TestLagForgetsMovedPartitionAfterOldFetchFailure(t *testing.T) {
	p := New(Config{})
	t0 := time.Now().Add(-3 * lagForget)
	p.lag.fetched([]Record{{Topic: "p", Partition: 0, Offset: 10, HighWaterMark: 12}, {Topic: "p", Partition: 0, Offset: 11, HighWaterMark: 12}}, t0)
	p.lag.finished([]Record{{Topic: "p", Partition: 0, Offset: 10}, {Topic: "p", Partition: 0, Offset: 11}})
	p.fetchFailed.Store(t0.Add(time.Second).UnixNano())
	// The partition's end, asked of Kafka since: the other instance's.
	p.lag.ends("p", map[int]int64{0: 5000})
	p.lag.partitions(time.Now(), p.held())
	if got := p.lag.total(); got != 0 {
		t.Errorf("lag %d, want 0: a partition moved away %v ago is still counted because of a fetch that failed once", got, 3*lagForget)
	}
}

// TestLagOfMovedPartitionDoesNotGrow: partition 0 moved to another
// instance (a rebalance: an instance joined or left) while this one goes on
// fetching partition 1. For the minute it stays tracked, its end is asked
// of Kafka every lagInterval, so this instance counts every record the new
// owner receives there: at 1,000 records/s on the moved partitions the lag
// reported climbs by ~60,000 and drops back, on every rebalance, while
// nothing is behind.
func TestLagOfMovedPartitionDoesNotGrow(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	l := &lagTracker{parts: map[partitionOf]*lagPart{}}
	l.fetched([]Record{{Topic: "p", Partition: 0, Offset: 99, HighWaterMark: 100}}, t0)
	l.finished([]Record{{Topic: "p", Partition: 0, Offset: 99}})
	// The rebalance: from now on only partition 1 is fetched, and caught up.
	for i := 1; i <= 11; i++ {
		now := t0.Add(time.Duration(i) * lagInterval)
		l.fetched([]Record{{Topic: "p", Partition: 1, Offset: int64(i), HighWaterMark: int64(i + 1)}}, now)
		l.finished([]Record{{Topic: "p", Partition: 1, Offset: int64(i)}})
		for topic, parts := range l.partitions(now, true) { // under load a batch is always in a stage
			ends := map[int]int64{}
			for _, p := range parts {
				if p == 0 {
					ends[0] = 100 + int64(i)*5000 // the new owner's traffic
				} else {
					ends[p] = int64(i + 1)
				}
			}
			l.ends(topic, ends)
		}
		if got := l.total(); got > 0 && i >= 3 {
			t.Fatalf("%v after the move: lag %d, want 0 (nothing is behind on this instance)", time.Duration(i)*lagInterval, got)
		}
	}
}

// TestLagOfQuietPartitionCountsOutageBacklog: partition 0 is this
// instance's and quiet (caught up, nothing new for 15 s) while partition 1
// is busy. Then Redis fails: the processor is held, fetching stops, and
// 5,000 events arrive on partition 0. README: the lag "keeps growing
// through an outage". The quiet partition was dropped as "moved away"
// 10 s into its quiet spell, so its backlog is never counted.
func TestLagOfQuietPartitionCountsOutageBacklog(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	l := &lagTracker{parts: map[partitionOf]*lagPart{}}
	l.fetched([]Record{{Topic: "p", Partition: 0, Offset: 99, HighWaterMark: 100}}, t0)
	l.finished([]Record{{Topic: "p", Partition: 0, Offset: 99}})
	// Partition 1 busy for 15 s, partition 0 quiet; the lag loop runs every 5 s.
	var off int64
	for ms := 100; ms <= 15000; ms += 100 {
		now := t0.Add(time.Duration(ms) * time.Millisecond)
		l.fetched([]Record{{Topic: "p", Partition: 1, Offset: off, HighWaterMark: off + 1}}, now)
		l.finished([]Record{{Topic: "p", Partition: 1, Offset: off}})
		off++
		if ms%5000 == 0 {
			for topic, parts := range l.partitions(now, true) {
				ends := map[int]int64{}
				for _, p := range parts {
					ends[p] = map[int]int64{0: 100, 1: off}[p]
				}
				l.ends(topic, ends)
			}
		}
	}
	// The outage: nothing fetched any more, the processor held; 5,000
	// events arrive on partition 0 (and none on 1).
	for i := 1; i <= 6; i++ {
		now := t0.Add(15*time.Second + time.Duration(i)*lagInterval)
		for topic, parts := range l.partitions(now, true) {
			ends := map[int]int64{}
			for _, p := range parts {
				ends[p] = map[int]int64{0: 5100, 1: off}[p]
			}
			l.ends(topic, ends)
		}
	}
	if got := l.total(); got != 5000 {
		t.Errorf("lag %d through the outage, want 5000: the backlog of a partition this instance owns, quiet for 10 s before the outage, is not counted", got)
	}
}

// TestLagOfMovedPartitionOnQuietInstance: a rebalance moves partition 0
// (caught up) to another instance, which receives 1,000 records/s there.
// This instance keeps partition 1, which is quiet (or it keeps no
// partition at all: more instances than partitions). Nothing is behind
// here, yet the lag reported counts the new owner's records until
// partition 0 has been idle for lagForget: ~55,000 after 55 s.
func TestLagOfMovedPartitionOnQuietInstance(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	l := &lagTracker{parts: map[partitionOf]*lagPart{}}
	l.fetched([]Record{{Topic: "p", Partition: 0, Offset: 99, HighWaterMark: 100}, {Topic: "p", Partition: 1, Offset: 9, HighWaterMark: 10}}, t0)
	l.finished([]Record{{Topic: "p", Partition: 0, Offset: 99}, {Topic: "p", Partition: 1, Offset: 9}})
	for i := 1; i <= 11; i++ {
		now := t0.Add(time.Duration(i) * lagInterval)
		for topic, parts := range l.partitions(now, false) { // idle: nothing to fetch
			ends := map[int]int64{}
			for _, p := range parts {
				ends[p] = map[int]int64{0: 100 + int64(i)*5000, 1: 10}[p]
			}
			l.ends(topic, ends)
		}
		if got := l.total(); got > 0 && i >= 4 {
			t.Fatalf("%v after the move: lag %d, want 0 (nothing is behind on this instance)", time.Duration(i)*lagInterval, got)
		}
	}
}

// TestLagTopicStartedOver: a partition's end below the records finished
// there, in two answers running, is a topic that started over; one such
// answer alone (a new leader's end lagging for a moment) is not. A
// partition quiet for longer than lagForget before its topic is deleted
// and created again (kafka-go, waiting past the new topic's end, fetches
// nothing from it) is still asked for, and noticed.
func TestLagTopicStartedOver(t *testing.T) {
	for name, tc := range map[string]struct {
		ends []int64 // the partition's end in the answers, lagInterval apart
		want []int   // the partitions reported started over, all answers together
	}{
		"an end lagging for one answer": {ends: []int64{10, 41, 41}},
		"a topic started over":          {ends: []int64{41, 10, 12, 12}, want: []int{0, 0}},
		// 2 minutes quiet, then the new topic for 30 s.
		"a quiet partition whose topic started over": {
			ends: append(slices.Repeat([]int64{41}, int(2*time.Minute/lagInterval)), slices.Repeat([]int64{12}, 6)...),
			want: []int{0, 0, 0, 0, 0},
		},
	} {
		t.Run(name, func(t *testing.T) {
			l := lagTracker{parts: map[partitionOf]*lagPart{}}
			t0 := time.Unix(1_700_000_000, 0)
			rs := []Record{{Topic: "p", Partition: 0, Offset: 40, HighWaterMark: 41}}
			l.fetched(rs, t0)
			l.finished(rs)
			var over []int
			for i, end := range tc.ends {
				for topic, parts := range l.partitions(t0.Add(time.Duration(i+1)*lagInterval), false) {
					ends := map[int]int64{}
					for _, p := range parts {
						ends[p] = end
					}
					over = append(over, l.ends(topic, ends)...)
				}
			}
			if !slices.Equal(over, tc.want) {
				t.Errorf("ends %v: started over %v, want %v", tc.ends, over, tc.want)
			}
		})
	}
}
