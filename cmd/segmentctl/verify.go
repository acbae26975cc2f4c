package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/segmentd/segmentd/membership"
	"github.com/segmentd/segmentd/processor"
)

// verify recomputes every ready dynamic segment from the stored profiles and
// prints each difference with Redis; any difference exits 1.
func verify(ctx context.Context, e env, args []string, stdout io.Writer) error {
	fs := newFlags("verify", "", "Recomputes every ready dynamic segment from the stored profiles and prints each difference\nwith the member sets in Redis; exits 1 on any difference. It also adds to each organisation's\nindex of users any stored user missing from it, and then exits 1 too.", stdout)
	org := fs.String("org", "", "verify only this organisation")
	args, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(args) > 0 {
		return fmt.Errorf("verify: unexpected argument %q", args[0])
	}
	rdb := membership.NewClient(e.redisAddrs, e.redisAuth)
	defer rdb.Close()
	// A wrong kind of Redis is said so, by the variable to set, rather than
	// by the first command's MOVED.
	if err := membership.Ping(ctx, rdb); errors.Is(err, membership.ErrIsCluster) || errors.Is(err, membership.ErrNotCluster) {
		return fmt.Errorf("verify: SEGMENTD_REDIS_ADDRS: %w", err)
	}
	defs := membership.NewDefinitions(rdb)
	diffs, checked, err := processor.Verify(ctx, defs, membership.NewUsers(rdb), membership.NewSets(rdb), time.Now(), *org)
	if err != nil {
		return err
	}
	for _, d := range diffs {
		fmt.Fprintln(stdout, d)
	}
	summary := fmt.Sprintf("%s of %s against %s", plural(checked.Segments, "ready dynamic segment"),
		plural(checked.Orgs, "organisation"), plural(checked.Profiles, "stored profile"))
	if checked.Segments == 0 {
		// No profile is read then: "against 0 stored profiles" would say
		// that there are none.
		summary = "no ready dynamic segment to check"
		if *org != "" {
			summary = fmt.Sprintf("organisation %q has no ready dynamic segment to check", *org)
		}
	}
	if checked.Building > 0 {
		summary += fmt.Sprintf("; %s still building, not checked", plural(checked.Building, "segment"))
	}
	if checked.Reindexed > 0 {
		fmt.Fprintf(stdout, "%s missing from their organisation's index of users, which backfills and audience searches read: added\n", plural(int(checked.Reindexed), "stored user"))
	}
	if len(diffs) > 0 {
		unreadable, uncompilable := 0, 0
		for _, d := range diffs {
			switch d.Where {
			case processor.WhereUnreadable:
				unreadable++
			case processor.WhereUncompilable:
				uncompilable++
			}
		}
		counts := plural(len(diffs)-unreadable-uncompilable, "difference")
		if unreadable > 0 {
			counts += fmt.Sprintf(", %s not checked", plural(unreadable, "unreadable profile"))
		}
		if uncompilable > 0 {
			counts += fmt.Sprintf(", %s whose criteria no longer compile not checked", plural(uncompilable, "segment"))
		}
		fmt.Fprintf(stdout, "%s (%s)\n", counts, summary)
		return exitCode(1)
	}
	if checked.Reindexed > 0 {
		fmt.Fprintf(stdout, "no membership differences (%s)\n", summary)
		return exitCode(1)
	}
	if *org != "" && checked.Orgs == 0 {
		orgs, err := defs.Orgs(ctx)
		if err != nil {
			return err
		}
		if !slices.Contains(orgs, *org) {
			// Most often a mistyped id: not a pass, and not said to be one.
			fmt.Fprintf(stdout, "organisation %q has no segments: nothing was checked (is the id right?)\n", *org)
			return exitCode(1)
		}
	}
	fmt.Fprintf(stdout, "no differences (%s)\n", summary)
	return nil
}
