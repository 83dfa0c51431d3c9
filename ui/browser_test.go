package ui_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"

	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/rpc/rpctest"
)

// Browser tests drive Debian's Chromium (chromium-headless-shell or
// chromium, which .ci/run installs) with chromedp against real agents.
// SCOPE_BROWSER names the binary; without one a test is skipped, unless
// SCOPE_REQUIRE_BROWSER=1 (CI sets it), when it fails.

// browserPath finds the browser to drive.
func browserPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("SCOPE_BROWSER"); p != "" {
		return p
	}
	for _, name := range []string{"chromium-headless-shell", "chromium", "headless_shell", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const why = "no Chromium found (install chromium-headless-shell or chromium, or set SCOPE_BROWSER)"
	if os.Getenv("SCOPE_REQUIRE_BROWSER") == "1" {
		t.Fatal(why + "; SCOPE_REQUIRE_BROWSER=1 requires one")
	}
	t.Skip(why)
	return ""
}

// page is one browser tab and what its pages wrote to the console.
type page struct {
	t   testing.TB
	ctx context.Context

	mu      sync.Mutex
	console []string // errors and uncaught exceptions
}

// newPage starts a headless browser with one tab; t.Cleanup stops it.
func newPage(t testing.TB) *page {
	t.Helper()
	exe := browserPath(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 900),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-quic", true),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	p := &page{t: t, ctx: ctx}
	// Subscribe before the first navigation; the subscription ends with
	// ctx.
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				p.mu.Lock()
				p.console = append(p.console, m.String())
				p.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		<-done
	})
	return p
}

// do runs actions, failing the test on error.
func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// open loads url and waits until its view has rendered (or failed: the
// script marks the body ready either way).
func (p *page) open(url string) {
	p.t.Helper()
	p.do("open "+url, chromedp.Navigate(url))
	p.waitJS("view of "+url+" rendered", `document.body.dataset.ready === "1"`, 30*time.Second)
}

// waitJS waits for the expression to be truthy. It asks again every 50 ms,
// through navigations (an evaluation that a page load interrupts is asked
// again on the new page).
func (p *page) waitJS(what, expr string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+expr+")"))
		cancel()
		if err == nil && ok {
			return
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	p.t.Fatalf("waiting for %s (%s): not after %v (last error: %v)\nnotices on the page: %s", what, expr, timeout, last, p.text("#notices"))
}

// eval evaluates expr and decodes its value.
func eval[T any](p *page, expr string) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// text is the text of the first element matching sel ("" if none).
func (p *page) text(sel string) string {
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	v, _ := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.querySelector(%q) || {}).textContent || ""`, sel)))
	return v
}

func (p *page) click(sel string) {
	p.t.Helper()
	p.do("click "+sel, chromedp.Click(chromedp.CSS(sel)))
}

// noErrors fails the test if the page showed an error notice or wrote an
// error to the console.
func (p *page) noErrors(where string) {
	p.t.Helper()
	if n := eval[int](p, `document.querySelectorAll("#notices .error").length`); n > 0 {
		p.t.Errorf("%s shows an error: %s", where, p.text("#notices"))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.console) > 0 {
		p.t.Errorf("%s wrote to the console:\n%s", where, strings.Join(p.console, "\n"))
		p.console = nil
	}
}

// expectConsole waits for an error message containing substr and takes it
// off the list noErrors checks: an error the test caused on purpose.
func (p *page) expectConsole(substr string) {
	p.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		for i, m := range p.console {
			if strings.Contains(m, substr) {
				p.console = append(p.console[:i], p.console[i+1:]...)
				p.mu.Unlock()
				return
			}
		}
		p.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Errorf("the console never showed %q", substr)
}

// screenshot saves the page under the test's artifact directory
// (go test -artifacts keeps it).
func (p *page) screenshot(name string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()) // the viewport: a whole trace can be too tall for one image
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	dir := p.t.(interface{ ArtifactDir() string }).ArtifactDir()
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// loadFixture reads a JSONL trace captured from a real Erlang VM.
func loadFixture(t testing.TB, name string) []*scopev1.Event {
	t.Helper()
	return rpctest.LoadJSONL(t, filepath.Join("..", "correlate", "testdata", "erlang", name))
}

// ingest stores evs COMMITTED, in batches, and returns their ids.
func ingest(t testing.TB, c scopev1connect.IngestServiceClient, evs []*scopev1.Event) []string {
	t.Helper()
	var ids []string
	for i := 0; i < len(evs); i += 1000 {
		resp, err := c.Ingest(context.Background(), connect.NewRequest(&scopev1.IngestRequest{Events: evs[i:min(i+1000, len(evs))]}))
		if err != nil {
			t.Fatal(err)
		}
		if r := resp.Msg; r.GetRefused() != 0 || r.GetUnknown() != 0 {
			t.Fatalf("ingest: %d refused, %d unknown", r.GetRefused(), r.GetUnknown())
		}
		ids = append(ids, resp.Msg.GetEventIds()...)
	}
	return ids
}

// fmtDur is the UI's duration format (scope.js fmtDur).
func fmtDur(ns int64) string {
	n := float64(ns)
	switch {
	case ns < 1e3:
		return fmt.Sprintf("%d ns", ns)
	case ns < 1e6:
		return fmt.Sprintf("%.1f µs", n/1e3)
	case ns < 1e9:
		return fmt.Sprintf("%.2f ms", n/1e6)
	}
	return fmt.Sprintf("%.3f s", n/1e9)
}
