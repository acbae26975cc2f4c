// Command segmentctl is segmentd's operator and developer CLI: produce
// profile events, tail membership changes, generate load, and verify that
// the membership in Redis equals a from-scratch evaluation.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/segmentd/segmentd/config"
	"github.com/segmentd/segmentd/embedded"
	"github.com/segmentd/segmentd/membership"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first interrupt asks the command to finish (produce sends what it
	// read); a second one ends segmentctl at once.
	go func() { <-ctx.Done(); stop() }()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout)
	var exit exitCode
	switch {
	case errors.Is(err, flag.ErrHelp):
		// A subcommand's -h: its flag set has printed the flags.
	case errors.As(err, new(flagError)):
		// Printed, with the usage, by the flag set.
		os.Exit(2)
	case errors.As(err, &exit):
		os.Exit(int(exit))
	case err != nil:
		fmt.Fprintln(os.Stderr, "segmentctl:", err)
		// Not every client wraps the dial error; its text is what is sure.
		if errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused") {
			fmt.Fprintln(os.Stderr, refusedHint(os.Getenv))
		}
		os.Exit(2)
	}
}

// refusedHint explains a refused connection by where segmentctl looked.
func refusedHint(getenv func(string) string) string {
	kafkaAt, redisAt := getenv("SEGMENTD_KAFKA_BROKERS"), getenv("SEGMENTD_REDIS_ADDRS")
	if kafkaAt == "" && redisAt == "" {
		return `segmentctl: nothing answers there: with no SEGMENTD_KAFKA_BROKERS and SEGMENTD_REDIS_ADDRS set,
segmentctl talks to the embedded Kafka (` + embedded.KafkaAddr + `) and Redis (` + embedded.RedisAddr + `) of a running ` + "`make run`" + `;
set both to reach other servers (a segmentd started with SEGMENTD_EMBEDDED_EPHEMERAL=true prints its own).`
	}
	where := func(v, name, fallback string) string {
		if v == "" {
			return fallback + " (" + name + " is not set: the embedded segmentd's)"
		}
		return v + " (" + name + ")"
	}
	return "segmentctl: nothing answers there: segmentctl looked for Kafka at " +
		where(kafkaAt, "SEGMENTD_KAFKA_BROKERS", embedded.KafkaAddr) + " and Redis at " +
		where(redisAt, "SEGMENTD_REDIS_ADDRS", embedded.RedisAddr) + "."
}

// exitCode ends the program with a code and no message (verify's exit 1).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit %d", int(e)) }

const usage = `usage: segmentctl <command> [flags]

commands:
  produce   JSON lines (a file or stdin) into the profile topic, keyed by userId
  tail      print membership-change events as JSON lines (-topic and -headers for the DLQ and its reasons)
  loadgen   synthetic profile events at a given rate
  verify    recompute every ready dynamic segment and diff it against Redis (exit 1 on any difference)

Kafka, Redis and topics come from the SEGMENTD_* variables of segmentd; with
none set, segmentctl talks to a local segmentd in embedded mode (` + embedded.KafkaAddr + `, ` + embedded.RedisAddr + `).`

func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stdout, usage)
		return exitCode(2)
	}
	switch args[0] {
	case "help", "-h", "--help":
		if args[0] != "help" || len(args) == 1 || args[1] == "help" || isHelpFlag(args[1]) {
			fmt.Fprintln(stdout, usage)
			return nil
		}
		if len(args) > 2 {
			return fmt.Errorf("help takes one command; %q is one too many", args[2])
		}
		args = []string{args[1], "-h"} // help <command>: its flags
	}
	env, err := loadEnv(getenv)
	if err != nil {
		if !slices.ContainsFunc(args[1:], isHelpFlag) {
			return err
		}
		// Help does not depend on the environment: it shows the defaults.
		env, err = loadEnv(func(string) string { return "" })
		if err != nil {
			return err
		}
	}
	switch args[0] {
	case "produce":
		return produce(ctx, env, args[1:], stdin, stdout)
	case "tail":
		return tail(ctx, env, args[1:], stdout)
	case "loadgen":
		return runLoadgen(ctx, env, args[1:], stdout)
	case "verify":
		return verify(ctx, env, args[1:], stdout)
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}

// cmdFlags is a subcommand's flag set, with where its help goes when asked
// for; a flag's error goes to stderr, with the usage.
type cmdFlags struct {
	// FlagSet is the subcommand's flag set.
	*flag.FlagSet
	help, errs io.Writer
}

// newFlags returns a subcommand's flag set, whose -h says on help what
// the subcommand does and how it is called.
func newFlags(name, synopsis, about string, help io.Writer) cmdFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: segmentctl %s [flags]%s\n\n%s\n\nflags:\n", name, synopsis, about)
		fs.PrintDefaults()
	}
	return cmdFlags{fs, help, os.Stderr}
}

// flagError is a subcommand's flag that could not be parsed; its flag set
// has printed it, with the usage.
type flagError struct{ err error }

func (e flagError) Error() string { return e.err.Error() }
func (e flagError) Unwrap() error { return e.err }

// parseArgs parses a subcommand's arguments, taking its flags before and
// after the others (`produce events.jsonl -topic t`, as people type them;
// after "--" everything is an argument), and returns the other arguments.
func parseArgs(fs cmdFlags, args []string) ([]string, error) {
	var rest []string
	if i := slices.Index(args, "--"); i >= 0 {
		args, rest = args[:i], args[i+1:]
	}
	// What the flag set prints goes to the help's writer when help was
	// asked for (the command's output), to stderr for a flag's error.
	var printed bytes.Buffer
	fs.SetOutput(&printed)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				_, _ = printed.WriteTo(fs.help)
				return nil, err
			}
			_, _ = printed.WriteTo(fs.errs)
			return nil, flagError{err}
		}
		if fs.NArg() == 0 {
			return append(pos, rest...), nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// isHelpFlag reports whether a is one of the flags that ask for help.
func isHelpFlag(a string) bool { return a == "-h" || a == "-help" || a == "--help" || a == "--h" }

// env is what segmentctl needs of segmentd's configuration.
type env struct {
	brokers                            []string
	redisAddrs                         []string
	redisAuth                          membership.Auth
	profileTopic, membershipTopic, dlq string
}

func loadEnv(getenv func(string) string) (env, error) {
	cfg, err := config.LoadClient(getenv)
	if err != nil {
		return env{}, err
	}
	e := env{brokers: cfg.KafkaBrokers, redisAddrs: cfg.RedisAddrs, profileTopic: cfg.ProfileTopic,
		redisAuth:       membership.Auth{Username: cfg.RedisUsername, Password: cfg.RedisPassword},
		membershipTopic: cfg.MembershipTopic, dlq: cfg.DLQTopic}
	if len(e.brokers) == 0 {
		e.brokers = []string{embedded.KafkaAddr}
	}
	if len(e.redisAddrs) == 0 {
		e.redisAddrs = []string{embedded.RedisAddr}
	}
	return e, nil
}

// plural writes n and the noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
