package processor_test

import (
	"testing"

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
