// Package processor is segmentd's stream processing: the consumer loop that
// turns profile events into exact membership (fetch a batch, decode,
// evaluate the segments a change can affect, write, publish, commit), the
// registry that keeps compiled definitions current, and the jobs that follow
// definitions and time (backfill, timers, size estimates).
package processor
