package processor_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segmentd/segmentd/processor"
)

// TestMetricsRegisterOnce checks that a second set of the processor's
// metrics on one registry is an error, not a panic.
func TestMetricsRegisterOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := processor.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := processor.NewMetrics(reg); err == nil {
		t.Error("the same metrics registered twice without an error")
	}
	if _, err := processor.NewJobs(processor.JobsConfig{Registerer: reg}); err != nil {
		t.Errorf("the jobs' own metrics: %v", err)
	}
	if _, err := processor.NewJobs(processor.JobsConfig{Registerer: reg}); err == nil {
		t.Error("the jobs' metrics registered twice without an error")
	}
}

// TestLatencyOfAnEventFromTheFuture: a producer's clock ahead of
// segmentd's must not take the latency histogram's sum down, which
// Prometheus reads as a counter reset.
func TestLatencyOfAnEventFromTheFuture(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := processor.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	m.ObserveLatency(now.Add(-20*time.Millisecond), now.Add(-5*time.Millisecond), now)
	m.ObserveLatency(now.Add(time.Hour), now.Add(-5*time.Millisecond), now)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "segmentd_event_latency_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		if h.GetSampleCount() != 2 || h.GetSampleSum() < 0.019 || h.GetSampleSum() > 0.021 {
			t.Errorf("count %d, sum %v: want 2 events, 20 ms in all (the one from the future at 0)", h.GetSampleCount(), h.GetSampleSum())
		}
		return
	}
	t.Error("no segmentd_event_latency_seconds gathered")
}

// TestLabelledSeriesExistFromTheStart: every series of a labelled metric
// whose label values are known in advance is on /metrics at 0 from the
// start, as Prometheus's instrumentation practice asks. A series that
// appears only with its first increment hides that increment from
// rate() and increase(): an alert on the first dead letter, the first
// failed backfill or the first time-caused change would not fire.
func TestLabelledSeriesExistFromTheStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := processor.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := processor.NewJobs(processor.JobsConfig{Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			have[key] = true
		}
	}
	var want []string
	for _, r := range []string{"applied", "duplicate", "replayed", "dlq"} {
		want = append(want, "segmentd_profile_events_total,result="+r)
	}
	for _, c := range []string{"profile", "segment", "static", "time"} {
		for _, d := range []string{"entered", "exited"} {
			want = append(want, "segmentd_membership_changes_total,cause="+c+",direction="+d)
		}
	}
	for _, s := range []string{"decode", "load", "evaluate", "write", "project", "schedule", "publish", "commit"} {
		want = append(want, "segmentd_batch_step_seconds,step="+s)
	}
	for _, r := range []string{"hit", "miss"} {
		want = append(want, "segmentd_user_cache_lookups_total,result="+r)
	}
	for _, r := range []string{"ready", "superseded", "error"} {
		want = append(want, "segmentd_backfills_total,result="+r)
	}
	for _, w := range want {
		if !have[w] {
			t.Errorf("no series %s before its first observation", w)
		}
	}
}
