package ui_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"

	"github.com/elixirscope/scope/cluster/clustertest"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/rpc/rpctest"
	"github.com/elixirscope/scope/ui"
)

// TestClusterPageShowsAStoppedNode: the cluster page of a 3-node cluster
// lists 3 alive members; once one is stopped it shows that member down and
// the shards it held as affected, by itself (the page refreshes). With two
// stopped, a search answers without the shards and lists them.
func TestClusterPageShowsAStoppedNode(t *testing.T) {
	c := clustertest.Start(t, clustertest.Options{Nodes: 3, Shards: 4, Replicas: 3})
	p := newPage(t)
	p.open(c.Nodes[0].URL + "/ui/cluster")
	p.waitJS("3 alive members", `document.querySelectorAll('tr[data-member][data-status="ALIVE"]').length === 3`, 20*time.Second)
	p.waitJS("4 shards with a leader", `document.querySelectorAll("table.shards tbody tr").length === 4 &&
		document.querySelectorAll("table.shards td.bad").length === 0`, 20*time.Second)
	p.noErrors("cluster")
	p.screenshot("cluster-3-nodes")

	stopped := c.Nodes[2]
	c.Stop(stopped)
	p.waitJS(stopped.Name+" shown down", fmt.Sprintf(`(() => { const r = document.querySelector('tr[data-member="%s"]');
		return r !== null && r.dataset.status !== "ALIVE"; })()`, stopped.Name), 60*time.Second)
	// With R=3 on 3 nodes every shard had a replica there.
	p.waitJS("every shard affected", `document.querySelectorAll("table.shards tr.affected").length === 4`, 20*time.Second)
	if txt := p.text("#notices"); !strings.Contains(txt, stopped.Name) {
		t.Errorf("the page's notices %q do not name the stopped member", txt)
	}
	p.noErrors("cluster with a node down")
	p.screenshot("cluster-node-down")

	// With a second node stopped no shard has a quorum: a search through
	// the last node answers without them and says so.
	c.Stop(c.Nodes[1])
	p.open(c.Nodes[0].URL + "/ui/?origin=app%40host")
	p.waitJS("the partial answer shown", `document.querySelector("#notices .partial") !== null &&
		document.querySelector("#notices .partial").textContent.includes("4 shard(s) did not answer")`, 60*time.Second)
	p.screenshot("search-partial")
}

// TestTokenAskedAndKeptForTheTab: when the node requires tokens, the UI
// asks for one, uses it for every call, and keeps it in the tab only.
func TestTokenAskedAndKeptForTheTab(t *testing.T) {
	token, line, err := rpc.NewToken(rpc.RoleQuery, "viewer")
	if err != nil {
		t.Fatal(err)
	}
	set, err := rpc.ParseTokens(strings.NewReader(line))
	if err != nil {
		t.Fatal(err)
	}
	auth := &rpc.Auth{}
	auth.SetTokens(set)
	n := rpctest.Start(t, rpctest.Options{EditRPC: func(c *rpc.Config) { c.Auth = auth }})
	// The pages themselves are open; the API is not.
	resp, err := http.Get(n.URL + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /ui/ with tokens on: %s, want 200", resp.Status)
	}

	p := newPage(t)
	p.open(n.URL + "/ui/?origin=app%40host")
	p.waitJS("the token form", `document.getElementById("token-form") !== null`, 10*time.Second)
	p.expectConsole("status of 401") // the browser logs the refused call
	p.do("type the token", chromedp.SendKeys(chromedp.CSS("#token"), token))
	p.click("#token-form button")
	p.waitJS("the search answered", `document.body.dataset.ready === "1" && document.getElementById("token-form") === null &&
		document.querySelector("main p.muted") !== null && document.querySelector("main p.muted").textContent === "No events match."`, 20*time.Second)
	if where := eval[string](p, `sessionStorage.getItem("scope.token") === null ? "" : "session"`); where != "session" {
		t.Error("the token is not in sessionStorage")
	}
	if eval[bool](p, `localStorage.length > 0 || document.cookie !== ""`) {
		t.Error("the token was kept beyond the tab (localStorage or a cookie)")
	}
	p.noErrors("search with a token")
}

// fakeTail is a QueryService whose Tail sends a fixed stream: one event,
// then a Lagged item, then another event. No real shard can be made to
// drop events on demand; the page's rendering of the API's Lagged item is
// what is tested here.
type fakeTail struct {
	scopev1connect.UnimplementedQueryServiceHandler
}

func (fakeTail) Tail(ctx context.Context, _ *connect.Request[scopev1.TailRequest], s *connect.ServerStream[scopev1.TailResponse]) error {
	shard := uint32(3)
	ev := func(id string) *scopev1.TailResponse {
		return &scopev1.TailResponse{Item: &scopev1.TailResponse_Event{Event: &scopev1.Event{EventId: id, Origin: "a@h", Pid: "<0.1.0>",
			Kind: scopev1.Kind_KIND_STATE_CHANGE, TimestampNs: time.Now().UnixNano()}}}
	}
	for _, item := range []*scopev1.TailResponse{
		{Item: &scopev1.TailResponse_Started{Started: &scopev1.TailStarted{Shards: []uint32{0, 1, 2, 3}}}},
		ev("01J00000000000000000000001"),
		{Item: &scopev1.TailResponse_Lagged{Lagged: &scopev1.Lagged{Dropped: 42, Shard: &shard, Reason: "slow_consumer"}}},
		ev("01J00000000000000000000002"),
	} {
		if err := s.Send(item); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

// TestTailShowsLaggedAsAGap: a Lagged item is a visible marker between the
// events around it, naming the count, the shard and the reason.
func TestTailShowsLaggedAsAGap(t *testing.T) {
	mux := http.NewServeMux()
	mux.Handle(scopev1connect.NewQueryServiceHandler(fakeTail{}))
	mux.Handle(ui.Prefix, ui.Handler())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	p := newPage(t)
	p.open(srv.URL + "/ui/tail")
	p.waitJS("both events shown", `document.querySelectorAll("table.tail tr[data-event]").length === 2`, 10*time.Second)
	rows := eval[[]string](p, `[...document.querySelectorAll("table.tail tbody tr")].map((r) => r.dataset.event || r.className)`)
	// Newest first: the second event, the gap, the first event.
	if len(rows) != 3 || rows[0] != "01J00000000000000000000002" || rows[1] != "gap" || rows[2] != "01J00000000000000000000001" {
		t.Fatalf("rows %q: want the gap between the two events", rows)
	}
	if txt := p.text("tr.gap"); !strings.Contains(txt, "42 event(s) dropped on shard 3 (slow_consumer)") {
		t.Errorf("gap marker %q", txt)
	}
	p.noErrors("tail with a gap")
	// The page goes away before the server: the stream ends with it.
	p.open(srv.URL + "/ui/nothing")
}

// TestHandler covers what the UI's server side does: one page for every
// view's address, assets with their types, a strict content security
// policy, and nothing else.
func TestHandler(t *testing.T) {
	srv := httptest.NewServer(ui.Handler())
	t.Cleanup(srv.Close)
	get := func(method, path string) (*http.Response, string) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(body)
	}
	index := ""
	for _, path := range []string{"/ui/", "/ui/tree/01J00000000000000000000001", "/ui/process/" + url.PathEscape("a@h") + "/" + url.PathEscape("<0.1.0>"), "/ui/flow?a=x/y&b=z/w"} {
		resp, body := get("GET", path)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Errorf("GET %s: %s %s", path, resp.Status, resp.Header.Get("Content-Type"))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
		if index == "" {
			index = body
		} else if body != index {
			t.Errorf("GET %s is not the one page", path)
		}
	}
	for path, ctype := range map[string]string{"/ui/assets/scope.js": "text/javascript", "/ui/assets/scope.css": "text/css", "/ui/assets/icon.svg": "image/svg+xml"} {
		resp, _ := get("GET", path)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) || resp.Header.Get("ETag") == "" {
			t.Errorf("GET %s: %s %q etag %q", path, resp.Status, resp.Header.Get("Content-Type"), resp.Header.Get("ETag"))
		}
	}
	for _, path := range []string{"/ui/assets/nothing.js", "/ui/assets/../index.html", "/ui/assets/"} {
		if resp, _ := get("GET", path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", path, resp.Status)
		}
	}
	if resp, _ := get("POST", "/ui/"); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /ui/: %s, want 405", resp.Status)
	}
	// A browser that has the script revalidates it cheaply.
	resp, _ := get("GET", "/ui/assets/scope.js")
	req, _ := http.NewRequest("GET", srv.URL+"/ui/assets/scope.js", nil)
	req.Header.Set("If-None-Match", resp.Header.Get("ETag"))
	again, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	again.Body.Close()
	if again.StatusCode != http.StatusNotModified {
		t.Errorf("revalidation: %s, want 304", again.Status)
	}
}
