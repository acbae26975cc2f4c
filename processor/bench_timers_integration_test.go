package processor_test

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/kafkaio"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
)

// BenchmarkTimerFlips times the flip of SEGMENTD_BENCH_FLIP_USERS users
// (10,000 by default: a batch imported together) into an "inactive for 30
// days" segment at one instant, from the instant until every one is a
// member, in an organisation of SEGMENTD_BENCH_TIME_SEGMENTS relative-date
// segments (100; the others change nothing for these users), and, as the
// baseline in the same run, in one with that segment alone. The contract
// gives 5 s. It also reports the Redis servers' CPU time per flip (summed
// over the masters of a cluster) in the flips of the segment alone.
func BenchmarkTimerFlips(b *testing.B) {
	users, segments := envInt("SEGMENTD_BENCH_FLIP_USERS", 10000), envInt("SEGMENTD_BENCH_TIME_SEGMENTS", 100)
	r := newBenchRig(b)
	flipAll := func(org string, others int) (time.Duration, float64) {
		ctx := context.Background()
		flip := time.Now().Add(-time.Millisecond)
		seg := seedFlips(b, r.rig, org, users, others, flip)
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		reg := processor.NewRegistry(r.defs, time.Second, log)
		if err := reg.Reload(ctx); err != nil {
			b.Fatal(err)
		}
		writer := kafkaio.NewWriter(r.brokers)
		defer writer.Close()
		jobs, err := processor.NewJobs(processor.JobsConfig{
			InstanceID: "bench-" + org, Definitions: r.defs, Users: r.users, Schedules: membership.NewSchedules(r.rdb),
			Sizes: membership.NewSets(r.rdb), Coordinator: membership.NewCoordinator(r.rdb), Registry: reg,
			Publisher: kafkaio.NewPublisher(writer, r.membershipT), Logger: log,
		})
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		cpu := redisCPU(b, r.rdb)
		// As the jobs run: a call of the timers each second, which claims
		// rounds until none is due or the second has passed.
		for {
			jobs.FireTimers(ctx)
			if n := r.rdb.SCard(ctx, membership.SegmentMembersKey(org, seg)).Val(); n == int64(users) {
				return time.Since(flip), redisCPU(b, r.rdb) - cpu
			}
			if time.Since(flip) > time.Minute {
				b.Fatalf("not every user entered within a minute of the flip")
			}
		}
	}
	b.ResetTimer()
	alone, cpu := flipAll(r.org, 0)
	many, _ := flipAll(testenv.Org(b, r.rdb, "many"), segments-1)
	b.StopTimer()
	b.ReportMetric(cpu*1e6/float64(users), "redis-cpu-us/flip")
	b.ReportMetric(alone.Seconds(), "one-segment-s")
	b.ReportMetric(many.Seconds(), "all-entered-s")
}
