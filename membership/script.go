package membership

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// scriptCall is one invocation of a script in a pipeline.
type scriptCall struct {
	keys []string
	args []any
}

// runPipelined runs every call of s in one pipeline, first by SHA; calls
// that meet a node without the script (NOSCRIPT) go again with its text,
// which loads it. It returns one result per call; a call's error is in its
// Cmd, and every call whose outcome is unknown (see unsent) holds one.
func runPipelined(ctx context.Context, rdb redis.UniversalClient, s *redis.Script, calls []scriptCall) []*redis.Cmd {
	out := make([]*redis.Cmd, len(calls))
	pending := make([]int, len(calls))
	for i := range calls {
		pending[i] = i
	}
	for _, useSHA := range []bool{true, false} {
		if len(pending) == 0 {
			break
		}
		pipe := rdb.Pipeline()
		for _, i := range pending {
			if useSHA {
				out[i] = s.EvalSha(ctx, pipe, calls[i].keys, calls[i].args...)
			} else {
				out[i] = s.Eval(ctx, pipe, calls[i].keys, calls[i].args...)
			}
		}
		if _, err := pipe.Exec(ctx); unsent(err) != nil {
			for _, i := range pending {
				if out[i].Err() == nil {
					out[i].SetErr(err)
				}
			}
			return out
		}
		var retry []int
		for _, i := range pending {
			if useSHA && redis.HasErrorPrefix(out[i].Err(), "NOSCRIPT") {
				retry = append(retry, i)
			}
		}
		pending = retry
	}
	return out
}

// unsent returns the error of a pipeline's Exec unless it is Redis's reply
// to one of its commands: no connection to be had, a ctx that ended, a
// connection lost. The commands' outcomes are then unknown, and a
// standalone client leaves those it never sent without an error of their
// own, as if they had run.
func unsent(err error) error {
	var reply redis.Error
	if err == nil || errors.As(err, &reply) {
		return nil
	}
	return err
}
