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
