package processor_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
)

// TestRevisionGate waits on real heartbeats in a database of its own, so
// that no other test's instances take part.
func TestRevisionGate(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: testenv.Redis(t), DB: 9})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	coord := membership.NewCoordinator(rdb)
	beat := func(id string, rev int64, at time.Time) {
		t.Helper()
		if err := coord.Beat(ctx, id, rev, at); err != nil {
			t.Fatal(err)
		}
	}
	gate := processor.NewRevisionGate(coord, nil)
	beat("a", 5, time.Now())
	beat("b", 7, time.Now())
	if err := gate.Wait(ctx, 5); err != nil {
		t.Fatalf("Wait(5) with instances at 5 and 7: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- gate.Wait(ctx, 6) }()
	select {
	case err := <-done:
		t.Fatalf("Wait(6) returned %v while instance a is at 5", err)
	case <-time.After(400 * time.Millisecond):
	}
	beat("a", 6, time.Now())
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Wait(6) after a moved to 6: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait(6) did not return within 5 s of a moving to 6")
	}
	// An instance that stopped beating a minute ago is gone, not waited for.
	beat("c", 1, time.Now().Add(-time.Minute))
	if err := gate.Wait(ctx, 6); err != nil {
		t.Fatalf("Wait(6) with a dead instance at 1: %v", err)
	}
	// Waiting ends with the context.
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := gate.Wait(cctx, 8); err == nil {
		t.Fatal("Wait(8) returned nil with every instance behind")
	}
}
