package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/segmentd/segmentd/internal/testenv"
	"github.com/segmentd/segmentd/kafkaio"
)

// outageProxy stands in front of a broker: for its first outage it closes
// every connection it accepts (a broker restarting), then forwards them.
// Only bootstrap connections pass through it: the broker's metadata sends
// clients to its own address.
type outageProxy struct {
	ln       net.Listener
	refused  atomic.Int64
	upstream string
	until    time.Time
	wg       sync.WaitGroup
}

func startOutageProxy(t *testing.T, upstream string, outage time.Duration) *outageProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &outageProxy{ln: ln, upstream: upstream, until: time.Now().Add(outage)}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *outageProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if time.Now().Before(p.until) {
			p.refused.Add(1)
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.wg.Add(2)
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(up, c)
		go pipe(c, up)
	}
}

// TestLoadgenRidesOutAnOutage: a broker that drops every connection for
// its first two seconds is waited for, within -retry-for, and every event
// lands once it answers; with no retries, loadgen gives up with the error.
func TestLoadgenRidesOutAnOutage(t *testing.T) {
	brokers := testenv.Kafka(t)
	for name, tt := range map[string]struct {
		retryFor string
		wantErr  bool
	}{
		"retried":     {"30s", false},
		"not retried": {"0s", true},
	} {
		t.Run(name, func(t *testing.T) {
			topic := testenv.UniqueName(t, "load")
			testenv.CreateTopic(t, brokers, topic, 2)
			proxy := startOutageProxy(t, brokers[0], 2*time.Second)
			env := envMap(map[string]string{"SEGMENTD_KAFKA_BROKERS": proxy.ln.Addr().String()})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var out bytes.Buffer
			err := run(ctx, []string{"loadgen", "-n", "40", "-rate", "0", "-users", "10", "-topic", topic, "-retry-for", tt.retryFor}, env, nil, &out)
			if proxy.refused.Load() == 0 {
				t.Fatal("the outage refused no connection: nothing was tested")
			}
			if tt.wantErr {
				if err == nil {
					t.Fatalf("loadgen with no retries through an outage = nil (%q), want its error", out.String())
				}
				return
			}
			if err != nil || !strings.Contains(out.String(), "produced 40 events") {
				t.Fatalf("loadgen through an outage = %v, said %q; want 40 events produced", err, out.String())
			}
			spans, err := kafkaio.Spans(ctx, brokers, topic, []int{0, 1})
			if err != nil {
				t.Fatal(err)
			}
			if n := spans[0].End + spans[1].End; n < 40 {
				t.Errorf("topic holds %d records, want the 40 produced (repeats of a retried batch allowed)", n)
			}
		})
	}
}

// TestRetriableWrite: an unreachable broker and a moving leader are tried
// again; a refusal no retry changes is not.
func TestRetriableWrite(t *testing.T) {
	for name, tt := range map[string]struct {
		err  error
		want bool
	}{
		"connection refused":    {&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		"leader moving":         {kafkaio.WriteError(kafka.WriteErrors{nil, kafka.NotLeaderForPartition}), true},
		"record too large":      {kafkaio.WriteError(kafka.WriteErrors{nil, kafka.MessageSizeTooLarge}), false},
		"unknown topic":         {kafkaio.WriteError(kafka.WriteErrors{kafka.UnknownTopicOrPartition}), false},
		"wrapped unknown topic": {fmt.Errorf("write: %w", kafka.UnknownTopicOrPartition), false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := retriableWrite(tt.err); got != tt.want {
				t.Errorf("retriableWrite(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestLoadgenKeepsTheRateWhenWritesAreSlow: against a broker that takes
// 40 ms to answer each write (a busy machine, a remote cluster), the events
// due while a write was under way go out together in the next one, so that
// the rate asked for is kept on average, rather than capped at one batch of
// rate/100 per write. Counted in writes, not timed: each write takes at
// least 40 ms, in which 40 events fall due, so a loadgen that keeps the rate
// sends 600 events in far fewer than the 60 writes of 10 that cap it.
func TestLoadgenKeepsTheRateWhenWritesAreSlow(t *testing.T) {
	const topic = "slow-writes"
	c := testenv.OneTopicBroker(t, topic)
	var writes atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		writes.Add(1)
		time.Sleep(40 * time.Millisecond)
		return nil, nil, false // observed only: the cluster answers it
	})
	env := envMap(map[string]string{"SEGMENTD_KAFKA_BROKERS": c.ListenAddrs()[0]})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"loadgen", "-rate", "1000", "-n", "600", "-users", "10", "-topic", topic}, env, nil, &out); err != nil {
		t.Fatalf("loadgen = %v (%q)", err, out.String())
	}
	if n := writes.Load(); n == 0 || n >= 40 {
		t.Errorf("600 events at -rate 1000 against 40 ms writes went in %d writes (%q), want far fewer than 60: the rate is not kept", n, out.String())
	}
}

// TestLoadgenInterruptedBeforeNFails: a loadgen asked for -n events and
// interrupted (SIGINT, SIGTERM) before it sent them all did not do what it
// was asked, so it fails (exit 2) after reporting what it sent, as an
// interrupted produce does; with -n 0 (until interrupted) the interrupt is
// its normal end.
func TestLoadgenInterruptedBeforeNFails(t *testing.T) {
	const topic = "interrupted"
	c := testenv.OneTopicBroker(t, topic)
	env := envMap(map[string]string{"SEGMENTD_KAFKA_BROKERS": c.ListenAddrs()[0]})
	for name, tc := range map[string]struct {
		n       string
		wantErr bool
	}{
		"cut short":         {"100000", true},
		"until interrupted": {"0", false},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond) // the signal
		var out bytes.Buffer
		err := run(ctx, []string{"loadgen", "-rate", "200", "-n", tc.n, "-users", "10", "-topic", topic}, env, nil, &out)
		cancel()
		if !strings.Contains(out.String(), "interrupted") {
			t.Errorf("%s: loadgen -n %s interrupted printed %q, want what it sent and that it was interrupted", name, tc.n, out.String())
		}
		if gotErr := err != nil; gotErr != tc.wantErr {
			t.Errorf("%s: loadgen -n %s interrupted = %v, want an error: %t", name, tc.n, err, tc.wantErr)
		}
	}
}
