package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// PrivateRedis is a redis-server of one test's own, which the test may
// freeze and thaw (an outage) without touching the shared servers.
type PrivateRedis struct {
	// Addr is the server's host:port on 127.0.0.1.
	Addr string
	proc *os.Process
}

// StartPrivateRedis starts a standalone redis-server (Debian's, from PATH)
// on a free loopback port, with no persistence, and waits until it answers.
// It is stopped when the test ends. Like Redis, it skips the test when the
// shared servers are not configured (or fails it under make test), so that
// a plain go test without servers skips it with the rest.
func StartPrivateRedis(t testing.TB) *PrivateRedis {
	t.Helper()
	Redis(t)
	if Standins() {
		t.Skip("embedded stand-ins: the test freezes a redis-server of its own")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("testenv: redis-server: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	srv := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := srv.Start(); err != nil {
		t.Fatalf("testenv: start redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGCONT)
		_ = srv.Process.Kill()
		_ = srv.Wait()
	})
	p := &PrivateRedis{Addr: fmt.Sprintf("127.0.0.1:%d", port), proc: srv.Process}
	c := redis.NewClient(&redis.Options{Addr: p.Addr})
	defer c.Close()
	if !Eventually(setupTimeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Ping(ctx).Err() == nil
	}) {
		t.Fatalf("testenv: own redis-server at %s does not answer", p.Addr)
	}
	return p
}

// Freeze stops the server's process (SIGSTOP): connections stay open and
// every command waits, as with a server that hangs.
func (p *PrivateRedis) Freeze(t testing.TB) {
	t.Helper()
	if err := p.proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("testenv: freeze redis-server: %v", err)
	}
}

// Thaw resumes a frozen server (SIGCONT).
func (p *PrivateRedis) Thaw(t testing.TB) {
	t.Helper()
	if err := p.proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("testenv: thaw redis-server: %v", err)
	}
}
