package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/segmentd/segmentd/events"
	"github.com/segmentd/segmentd/internal/loadgen"
	"github.com/segmentd/segmentd/kafkaio"
)

// runLoadgen produces synthetic profile events: each user's first event is a
// full profile, later ones are mostly patches (points, xp, coins, tier,
// updatedAt, a custom field) with an occasional full profile. A chosen share
// of events moves points across 1,000 and tier across gold/bronze, which
// flips membership of segments such as "points >= 1000".
func runLoadgen(ctx context.Context, e env, args []string, stdout io.Writer) error {
	fs := newFlags("loadgen", "", "Produces synthetic profile events: a full profile first for each user, then mostly patches.", stdout)
	rate := fs.Int("rate", 1000, "events per second (0: as fast as possible)")
	total := fs.Int("n", 10000, "events to produce (0: until interrupted)")
	users := fs.Int("users", 1000, "users per organisation")
	orgs := fs.Int("orgs", 1, "organisations")
	orgPrefix := fs.String("org-prefix", "load", "organisation ids are <prefix><n>, or the prefix alone with -orgs 1")
	flip := fs.Float64("flip", 0.1, "share of events that flip points across 1000 and tier across gold/bronze")
	full := fs.Float64("full", 0.1, "share of later events sent as full profiles")
	seed := fs.Uint64("seed", 1, "random seed")
	topic := fs.String("topic", e.profileTopic, "topic to produce to")
	retryFor := fs.Duration("retry-for", 2*time.Minute, "how long a batch that Kafka does not take is tried again before loadgen gives up (0: not retried)")
	args, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(args) > 0 {
		return fmt.Errorf("loadgen: unexpected argument %q", args[0])
	}
	if *users < 1 || *orgs < 1 || *rate < 0 || *total < 0 || *retryFor < 0 {
		return fmt.Errorf("loadgen: -users and -orgs must be positive, -rate, -n and -retry-for not negative")
	}
	if !(*flip >= 0 && *flip <= 1) || !(*full >= 0 && *full <= 1) {
		return fmt.Errorf("loadgen: -flip and -full are shares, from 0 to 1")
	}
	// The longest id, and one of each form: an id segmentd would refuse
	// sends every event to the DLQ.
	if last := *orgPrefix + strconv.Itoa(*orgs-1); !events.ValidOrgID(*orgPrefix) || (*orgs > 1 && !events.ValidOrgID(last)) {
		return fmt.Errorf("loadgen: -org-prefix %q gives organisation ids that are not 1-100 characters of [a-zA-Z0-9_.-]", *orgPrefix)
	}
	g := loadgen.New(*orgPrefix, *orgs, *users, *flip, *full, *seed)
	start := time.Now()
	// Versions rise across runs too: a user gets at most one event a
	// microsecond, so a later run's first versions are above an earlier
	// run's last (segmentd drops an event at or below the stored version).
	g.StartVersionsAt(start.UnixMicro())
	w := kafkaio.NewWriter(e.brokers)
	defer kafkaio.CloseWriter(w)
	batch := maxLoadBatch
	if *rate > 0 {
		// About a hundred batches a second; the first goes at once.
		batch = min(max(*rate/100, 1), maxLoadBatch)
	}
	sent := 0
	msgs := make([]kafka.Message, 0, batch)
	// An interrupt ends the run; what it sent is still reported, and a run
	// of -n events cut short fails.
	interrupted := ""
gen:
	for *total == 0 || sent < *total {
		if *rate > 0 && sent > 0 {
			// Each batch goes when the rate, counted from the start, is
			// due to have sent the events before it: a write slower than
			// a batch's share of a second is made up by the next ones,
			// rather than lost as a ticker's dropped ticks are.
			due := start.Add(time.Duration(float64(sent) * float64(time.Second) / float64(*rate)))
			if d := time.Until(due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
				case <-t.C:
				}
			}
		}
		if ctx.Err() != nil {
			interrupted = ", interrupted"
			break gen
		}
		n := batch
		if *rate > 0 {
			// Behind the rate (a write took longer than a batch's share
			// of a second): the events due by now go in this write, up
			// to the largest batch, so that the rate is caught up rather
			// than capped at one small batch per write's round trip.
			due := int(time.Since(start).Seconds()*float64(*rate)) - sent
			n = max(n, min(due, maxLoadBatch))
		}
		if *total > 0 {
			n = min(n, *total-sent)
		}
		msgs = msgs[:0]
		now := time.Now()
		for range n {
			ev := g.Next(now)
			v, err := events.EncodeProfileEvent(ev)
			if err != nil {
				return err
			}
			msgs = append(msgs, kafka.Message{Topic: *topic, Key: []byte(ev.UserID), Value: v, Time: now})
		}
		if err := writeRetrying(ctx, w, msgs, *retryFor, fs.errs); err != nil {
			if ctx.Err() != nil {
				interrupted = fmt.Sprintf(", interrupted (a batch of %d in flight, maybe sent)", n)
				break gen
			}
			return fmt.Errorf("loadgen: %w", err)
		}
		sent += n
	}
	el := time.Since(start)
	fmt.Fprintf(stdout, "produced %d events in %s (%.0f events/s)%s\n", sent, el.Round(time.Millisecond), float64(sent)/el.Seconds(), interrupted)
	if interrupted != "" && *total > 0 && sent < *total {
		// Asked for -n events and stopped short: not done, as an
		// interrupted produce is not (with -n 0 the interrupt is the end).
		return fmt.Errorf("loadgen: interrupted after %d of the %d events asked for: %w", sent, *total, ctx.Err())
	}
	return nil
}

// maxLoadBatch is the most events loadgen sends in one write.
const maxLoadBatch = 500

// writeRetrying writes msgs, trying a batch that Kafka did not take again
// for up to retryFor (a broker restarting, a leader moving), with a line on
// warn for each failure. A retry after a partial write sends some events
// twice, with the same versions: segmentd ignores the repeats. A refusal
// that no retry changes (a record too large, a topic that does not exist)
// ends it at once.
func writeRetrying(ctx context.Context, w *kafka.Writer, msgs []kafka.Message, retryFor time.Duration, warn io.Writer) error {
	bo := backoff.NewExponentialBackOff(backoff.WithInitialInterval(200*time.Millisecond),
		backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(retryFor))
	var b backoff.BackOff = bo
	if retryFor == 0 {
		b = &backoff.StopBackOff{} // a zero MaxElapsedTime would retry forever
	}
	failures := 0
	return backoff.RetryNotify(func() error {
		err := kafkaio.WriteError(w.WriteMessages(ctx, msgs...))
		if err == nil || ctx.Err() != nil || !retriableWrite(err) {
			return backoff.Permanent(err)
		}
		failures++
		return err
	}, backoff.WithContext(b, ctx), func(err error, wait time.Duration) {
		fmt.Fprintf(warn, "segmentctl: loadgen: a batch of %d not written (failure %d), trying again in %s: %v\n", len(msgs), failures, wait.Round(time.Millisecond), err)
	})
}

// retriableWrite tells a write that may succeed later (the broker
// unreachable, a leader moving) from one Kafka refuses for good. A topic
// Kafka does not know counts as refused: segmentd creates its topics when
// it starts, and a mistyped -topic should not wait for the retry bound.
func retriableWrite(err error) bool {
	var ke kafka.Error
	if errors.As(err, &ke) {
		return ke.Temporary() && ke != kafka.UnknownTopicOrPartition
	}
	return true
}
