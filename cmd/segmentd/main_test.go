package main

import (
	"context"
	"strings"
	"testing"

	"github.com/segmentd/segmentd/config"
)

// TestArguments checks that -h lists every variable segmentd reads and that
// any other argument is refused with a pointer to -h.
func TestArguments(t *testing.T) {
	u := usage()
	for _, v := range config.Vars {
		if !strings.Contains(u, v.Name) {
			t.Errorf("usage lacks %s", v.Name)
		}
	}
	noEnv := func(string) string { return "" }
	if err := run(context.Background(), []string{"-h"}, noEnv); err != nil {
		t.Errorf("segmentd -h: %v", err)
	}
	if err := run(context.Background(), []string{"serve"}, noEnv); err == nil || !strings.Contains(err.Error(), "-h") {
		t.Errorf("segmentd serve: %v, want an error that points to -h", err)
	}
}
