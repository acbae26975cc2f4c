package api

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentd/segmentd/internal/testenv"
)

// spaces is an endless body of spaces that counts what is read of it.
type spaces struct{ n int64 }

func (c *spaces) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	c.n += int64(len(p))
	return len(p), nil
}

// TestDeclaredOversizedBodyIsNotRead: a request whose Content-Length is
// past the cap is answered 413 without its body being read: reading up to
// the cap first would cost the cap's bytes, several times over, for a body
// the server knows it refuses.
func TestDeclaredOversizedBodyIsNotRead(t *testing.T) {
	const limit = 1 << 20
	a := newTestAPI(t, testenv.RedisClient(t), testOptions{maxBody: limit})
	body := &spaces{}
	req := httptest.NewRequest(http.MethodPost, "/v1/segments", io.LimitReader(body, 4*limit))
	req.ContentLength = 4 * limit
	req.Header.Set("Authorization", "Bearer "+a.key)
	rec := httptest.NewRecorder()
	a.srv.Config.Handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", rec.Code)
	}
	if body.n > 64<<10 {
		t.Errorf("the server read %d bytes of a body declared %d bytes long, past its cap of %d, before refusing it", body.n, 4*limit, limit)
	}
}

// firstRead closes reading when its body is first read.
type firstRead struct {
	io.Reader
	once    sync.Once
	reading chan struct{}
}

func (f *firstRead) Read(p []byte) (int, error) {
	f.once.Do(func() { close(f.reading) })
	return f.Reader.Read(p)
}

// slowBodies starts n requests whose bodies are read from pipes: declared
// bodies of the cap when declared is true, chunked ones (no declared length)
// otherwise. It returns once each handler has begun to read its body (a
// chunked one after its first bytes, given here); end ends them.
func slowBodies(t *testing.T, a *testAPI, n int, declared bool, limit int64) (end func()) {
	t.Helper()
	var wg sync.WaitGroup
	var writers []*io.PipeWriter
	for range n {
		pr, pw := io.Pipe()
		writers = append(writers, pw)
		body := &firstRead{Reader: pr, reading: make(chan struct{})}
		req := httptest.NewRequest(http.MethodPost, "/v1/segments", body)
		req.ContentLength = -1
		if declared {
			req.ContentLength = limit
		}
		req.Header.Set("Authorization", "Bearer "+a.key)
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.srv.Config.Handler.ServeHTTP(httptest.NewRecorder(), req)
		}()
		if !declared {
			go func() { _, _ = pw.Write([]byte(`{"name":"streamed",`)) }()
		}
		<-body.reading
	}
	return func() {
		for _, pw := range writers {
			_ = pw.CloseWithError(io.ErrUnexpectedEOF)
		}
		wg.Wait()
	}
}

// create sends a small create with its length declared, or chunked.
func (a *testAPI) create(chunked bool) *httptest.ResponseRecorder {
	body := `{"name":"s","type":"static","userIds":["u1"]}`
	req := httptest.NewRequest(http.MethodPost, "/v1/segments", strings.NewReader(body))
	if chunked {
		req.ContentLength = -1
	}
	req.Header.Set("Authorization", "Bearer "+a.key)
	rec := httptest.NewRecorder()
	a.srv.Config.Handler.ServeHTTP(rec, req)
	return rec
}

// TestBodyBudget: while bodies of twice the cap in all are being read (two
// slow clients at the cap), another request with a body, declared or
// chunked, is answered 503, to retry; once they end, it goes through.
// Requests without a body are not held back. Slow chunked bodies take only
// what has been read of them.
func TestBodyBudget(t *testing.T) {
	const limit = 1 << 16
	a := newTestAPI(t, testenv.RedisClient(t), testOptions{maxBody: limit})
	end := slowBodies(t, a, bodyBudgetBodies, false, limit)
	if rec := a.create(false); rec.Code != http.StatusCreated {
		t.Errorf("a create while two small chunked bodies are read: %d %s; want 201", rec.Code, rec.Body)
	}
	end()
	end = slowBodies(t, a, bodyBudgetBodies, true, limit)
	for _, chunked := range []bool{false, true} {
		if rec := a.create(chunked); rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), `"unavailable"`) {
			t.Errorf("a create (chunked %v) while two bodies at the cap are read: %d %s; want 503 unavailable", chunked, rec.Code, rec.Body)
		}
	}
	if r := a.do("GET", "/v1/segments", a.key, nil); r.status != http.StatusOK {
		t.Errorf("a list while the bodies are read: %d; want 200", r.status)
	}
	end()
	for _, chunked := range []bool{false, true} {
		if rec := a.create(chunked); rec.Code != http.StatusCreated {
			t.Errorf("a create (chunked %v) once the slow bodies ended: %d %s; want 201", chunked, rec.Code, rec.Body)
		}
	}
}

// TestChunkedOversizedBodyIs413WhileAnotherIsRead: a chunked body past the
// cap is a 413 (no retry cures it). While one declared body at the cap is
// being read (half the budget, so the cap's bytes are left), the chunked
// body is refused with 503 "retry" instead: MaxBytesReader reads cap+1
// bytes to tell that it is past the cap, and the budget has only cap left.
func TestChunkedOversizedBodyIs413WhileAnotherIsRead(t *testing.T) {
	const limit = 1 << 16
	a := newTestAPI(t, testenv.RedisClient(t), testOptions{maxBody: limit})
	end := slowBodies(t, a, 1, true, limit)
	defer end()
	req := httptest.NewRequest(http.MethodPost, "/v1/segments", io.LimitReader(&spaces{}, 2*limit))
	req.ContentLength = -1
	req.Header.Set("Authorization", "Bearer "+a.key)
	rec := httptest.NewRecorder()
	a.srv.Config.Handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("a chunked body of twice the cap while one body at the cap is read: %d %s; want 413", rec.Code, rec.Body)
	}
}

// TestBodyNotReceivedInTimeIsNoInvalidJSON: a valid body that arrives
// more slowly than the server's read timeout allows (a large static list
// over a slow link) is answered 408 request_timeout, not a 400
// invalid_json that tells the client its JSON is broken.
func TestBodyNotReceivedInTimeIsNoInvalidJSON(t *testing.T) {
	a := newTestAPI(t, testenv.RedisClient(t))
	srv := httptest.NewUnstartedServer(a.srv.Config.Handler)
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Start()
	defer srv.Close()

	body := `{"name":"slow","type":"static","userIds":["u1","u2","u3"]}`
	pr, pw := io.Pipe()
	go func() {
		// The whole body, valid JSON, a byte at a time past the timeout.
		for i := range len(body) {
			if _, err := pw.Write([]byte{body[i]}); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		_ = pw.Close()
	}()
	defer pw.Close()
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/segments", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len(body))
	req.Header.Set("Authorization", "Bearer "+a.key)
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatalf("no answer to a slow body: %v", err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(raw), `"request_timeout"`) {
		t.Errorf("a valid body received past the read timeout: %d %s; want 408 request_timeout", res.StatusCode, raw)
	}
}
