package rpc_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	"github.com/elixirscope/scope/correlate"
	"github.com/elixirscope/scope/rpc"
	nodev1 "github.com/elixirscope/scope/rpc/gen/scope/node/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/rpc/rpctest"
)

func TestParseTokens(t *testing.T) {
	h := rpc.HashToken("secret")
	tests := []struct {
		name, file string
		want       int    // tokens; 0: an error
		err        string // substring of the error
	}{
		{"one", "ingest " + h + "\n", 1, ""},
		{"comments and blanks", "# tokens\n\n  query " + h + " alice  \n# end\n", 1, ""},
		{"three roles", "ingest " + rpc.HashToken("a") + "\nquery " + rpc.HashToken("b") + " bob\nadmin " + rpc.HashToken("c") + "\n", 3, ""},
		{"empty", "# nothing\n", 0, "no token"},
		{"bad role", "ingest " + h + "\nroot " + rpc.HashToken("x") + "\n", 0, `line 2: unknown role "root"`},
		{"short hash", "query abcd\n", 0, "line 1: \"abcd\" is not a SHA-256"},
		{"not hex", "query " + strings.Repeat("z", 64) + "\n", 0, "line 1:"},
		{"one field", "\nadmin\n", 0, "line 2: want ROLE SHA256HEX [NAME], got 1 fields"},
		{"four fields", "admin " + h + " a b\n", 0, "line 1: want ROLE SHA256HEX [NAME], got 4 fields"},
		{"duplicate", "admin " + h + "\n\nquery " + h + "\n", 0, "line 3: the same token hash as line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, err := rpc.ParseTokens(strings.NewReader(tt.file))
			if tt.want == 0 {
				if err == nil || !errors.Is(err, rpc.ErrTokenFile) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want ErrTokenFile containing %q", err, tt.err)
				}
				return
			}
			if err != nil || set.Len() != tt.want {
				t.Fatalf("got %v tokens, err %v; want %d", set, err, tt.want)
			}
		})
	}
}

func TestNewToken(t *testing.T) {
	tok, line, err := rpc.NewToken(rpc.RoleQuery, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if want := "query " + rpc.HashToken(tok) + " alice"; line != want {
		t.Fatalf("line %q, want %q", line, want)
	}
	if _, err := rpc.ParseTokens(strings.NewReader(line)); err != nil {
		t.Fatalf("its line does not parse: %v", err)
	}
	if tok2, _, _ := rpc.NewToken(rpc.RoleQuery, ""); tok2 == tok || len(tok) < 40 {
		t.Fatalf("tokens %q, %q: want long random tokens", tok, tok2)
	}
	if _, _, err := rpc.NewToken(rpc.RoleAdmin, "a b"); err == nil {
		t.Fatal("a name with a space was accepted")
	}
}

// authNode starts a node with tokens of each role on (alice ingest, bob
// query, root admin) and a node credential.
type authNode struct {
	*rpctest.Node
	auth                 *rpc.Auth
	ingest, query, admin string
}

func startAuthNode(t *testing.T, edit func(*rpc.Config)) *authNode {
	t.Helper()
	a := &authNode{auth: &rpc.Auth{}}
	var lines []string
	for _, r := range []struct {
		role rpc.Role
		name string
		dst  *string
	}{{rpc.RoleIngest, "alice", &a.ingest}, {rpc.RoleQuery, "bob", &a.query}, {rpc.RoleAdmin, "root", &a.admin}} {
		tok, line, err := rpc.NewToken(r.role, r.name)
		if err != nil {
			t.Fatal(err)
		}
		*r.dst = tok
		lines = append(lines, line)
	}
	set, err := rpc.ParseTokens(strings.NewReader(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatal(err)
	}
	a.auth.SetTokens(set)
	a.auth.SetNodeCredentials(rpc.NodeCredentials([][]byte{[]byte("0123456789abcdef")}))
	a.Node = rpctest.Start(t, rpctest.Options{EditRPC: func(c *rpc.Config) {
		c.Auth = a.auth
		if edit != nil {
			edit(c)
		}
	}})
	return a
}

// withToken is a client sending token (none if "") over base.
func withToken(base *http.Client, token string) *http.Client {
	return &http.Client{Transport: bearer{token, base.Transport}}
}

type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if b.token != "" {
		r.Header.Set("Authorization", "Bearer "+b.token)
	}
	return b.base.RoundTrip(r)
}

func oneEvent() *scopev1.IngestRequest {
	return &scopev1.IngestRequest{Events: []*scopev1.Event{
		ev(correlate.Process{Origin: "auth@h", PID: "<0.1.0>"}, scopev1.Kind_KIND_EXIT, 1)}}
}

// TestTokenRoles: no token or an unknown one is UNAUTHENTICATED, a known
// token of the wrong role PERMISSION_DENIED, over Connect and gRPC, for
// unary and streaming methods; probes and gRPC health stay open; /metrics
// needs query, /debug/pprof admin; the node API never takes a client token;
// a reload replaces the set.
func TestTokenRoles(t *testing.T) {
	n := startAuthNode(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	type call func(hc *http.Client, opts ...connect.ClientOption) error
	ingest := func(hc *http.Client, opts ...connect.ClientOption) error {
		_, err := scopev1connect.NewIngestServiceClient(hc, n.URL, opts...).Ingest(ctx, connect.NewRequest(oneEvent()))
		return err
	}
	ingestStream := func(hc *http.Client, opts ...connect.ClientOption) error {
		s := scopev1connect.NewIngestServiceClient(hc, n.URL, opts...).IngestStream(ctx)
		_ = s.Send(oneEvent())
		_, err := s.CloseAndReceive()
		return err
	}
	events := func(hc *http.Client, opts ...connect.ClientOption) error {
		_, err := scopev1connect.NewQueryServiceClient(hc, n.URL, opts...).Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Origin: "auth@h"}))
		return err
	}
	tail := func(hc *http.Client, opts ...connect.ClientOption) error {
		s, err := scopev1connect.NewQueryServiceClient(hc, n.URL, opts...).Tail(ctx, connect.NewRequest(&scopev1.TailRequest{Origin: "auth@h"}))
		if err != nil {
			return err
		}
		defer s.Close()
		if !s.Receive() {
			return s.Err()
		}
		return nil
	}
	members := func(hc *http.Client, opts ...connect.ClientOption) error {
		_, err := scopev1connect.NewClusterServiceClient(hc, n.URL, opts...).Members(ctx, connect.NewRequest(&scopev1.MembersRequest{}))
		return err
	}
	join := func(hc *http.Client, opts ...connect.ClientOption) error {
		// A one-node server answers Join itself; what matters is that the
		// call passed authorization (no UNAUTHENTICATED/PERMISSION_DENIED).
		_, err := scopev1connect.NewClusterServiceClient(hc, n.URL, opts...).Join(ctx, connect.NewRequest(&scopev1.JoinRequest{Addrs: []string{"127.0.0.1:1"}}))
		return err
	}
	keyring := func(hc *http.Client, opts ...connect.ClientOption) error {
		_, err := scopev1connect.NewClusterServiceClient(hc, n.URL, opts...).Keyring(ctx,
			connect.NewRequest(&scopev1.KeyringRequest{Operation: scopev1.KeyringOperation_KEYRING_OPERATION_LIST}))
		return err
	}
	nodeAPI := func(hc *http.Client, opts ...connect.ClientOption) error {
		_, err := nodev1connect.NewNodeServiceClient(hc, n.URL, opts...).ReplicaStatus(ctx, connect.NewRequest(&nodev1.ReplicaStatusRequest{}))
		return err
	}
	authCodes := func(err error) connect.Code {
		switch c := connect.CodeOf(err); c {
		case connect.CodeUnauthenticated, connect.CodePermissionDenied:
			return c
		}
		return 0 // allowed (whatever the method then answered)
	}
	const (
		ok     = connect.Code(0)
		unauth = connect.CodeUnauthenticated
		denied = connect.CodePermissionDenied
	)
	calls := []struct {
		name string
		f    call
		// codes for: no token, unknown token, ingest, query, admin
		want [5]connect.Code
	}{
		{"Ingest", ingest, [5]connect.Code{unauth, unauth, ok, denied, ok}},
		{"IngestStream", ingestStream, [5]connect.Code{unauth, unauth, ok, denied, ok}},
		{"Events", events, [5]connect.Code{unauth, unauth, denied, ok, ok}},
		{"Tail", tail, [5]connect.Code{unauth, unauth, denied, ok, ok}},
		{"Members", members, [5]connect.Code{unauth, unauth, denied, ok, ok}},
		{"Join", join, [5]connect.Code{unauth, unauth, denied, denied, ok}},
		{"Keyring", keyring, [5]connect.Code{unauth, unauth, denied, denied, ok}},
		// The node API takes the node credential only.
		{"NodeService", nodeAPI, [5]connect.Code{unauth, unauth, unauth, unauth, unauth}},
	}
	tokens := []string{"", "scope_not-a-token", n.ingest, n.query, n.admin}
	for _, proto := range []struct {
		name string
		hc   *http.Client
		opts []connect.ClientOption
	}{{"connect", n.HTTP1, nil}, {"grpc", n.H2C, []connect.ClientOption{connect.WithGRPC()}}} {
		for _, c := range calls {
			for i, tok := range tokens {
				err := c.f(withToken(proto.hc, tok), proto.opts...)
				if got := authCodes(err); got != c.want[i] {
					t.Errorf("%s %s with token #%d: %v (code %v), want %v", proto.name, c.name, i, err, got, c.want[i])
				}
			}
		}
	}
	// The node credential reaches the node API and may forward ingest.
	nodeHC := &http.Client{Transport: n.auth.NodeTransport(n.HTTP1.Transport)}
	if err := nodeAPI(nodeHC); authCodes(err) != 0 {
		t.Errorf("node API with the node credential: %v", err)
	}
	if err := ingest(nodeHC); err != nil {
		t.Errorf("ingest with the node credential (forwarding): %v", err)
	}
	if err := events(nodeHC); connect.CodeOf(err) != unauth {
		t.Errorf("query with the node credential: %v, want UNAUTHENTICATED (it is no client token)", err)
	}
	// A PERMISSION_DENIED names the token and the role needed.
	err := ingest(withToken(n.HTTP1, n.query))
	if msg := connect.CodeOf(err).String() + ": " + errMessage(err); !strings.Contains(msg, `token "bob" has role query`) || !strings.Contains(msg, "needs role ingest") {
		t.Errorf("permission denied says %q", msg)
	}

	// Probes and gRPC health stay open; /metrics needs query.
	for _, p := range []string{"/healthz", "/readyz"} {
		if code := httpStatus(t, n.HTTP1, n.URL+p, ""); code != http.StatusOK {
			t.Errorf("GET %s without a token: %d", p, code)
		}
	}
	hc := grpchealth.NewClient(n.HTTP1, n.URL)
	if resp, err := hc.Check(ctx, &grpchealth.CheckRequest{}); err != nil || resp.Status != grpchealth.StatusServing {
		t.Errorf("gRPC health without a token: %v %v", resp, err)
	}
	// Reflection needs a token of any role.
	for _, c := range []struct {
		token string
		want  connect.Code
	}{{"", unauth}, {n.ingest, ok}, {n.query, ok}} {
		rs := grpcreflect.NewClient(withToken(n.H2C, c.token), n.URL, connect.WithGRPC()).NewStream(ctx)
		_, err := rs.ListServices()
		_, _ = rs.Close()
		if got := authCodes(err); got != c.want || (c.want == ok && err != nil) {
			t.Errorf("reflection with %q: %v, want %v", c.token, err, c.want)
		}
	}
	for _, c := range []struct {
		path, token string
		want        int
	}{
		{"/metrics", "", http.StatusUnauthorized}, {"/metrics", n.ingest, http.StatusForbidden},
		{"/metrics", n.query, http.StatusOK}, {"/metrics", n.admin, http.StatusOK},
		{"/debug/pprof/", "", http.StatusUnauthorized}, {"/debug/pprof/", n.query, http.StatusForbidden},
	} {
		if code := httpStatus(t, n.HTTP1, n.URL+c.path, c.token); code != c.want {
			t.Errorf("GET %s with %q: %d, want %d", c.path, c.token, code, c.want)
		}
	}
	if got := refusals(t, n, "unauthenticated"); got == 0 {
		t.Error("no unauthenticated refusal counted")
	}
	if got := refusals(t, n, "permission_denied"); got == 0 {
		t.Error("no permission_denied refusal counted")
	}

	// A reload replaces the set: bob's token goes, a new one works.
	tok, line, _ := rpc.NewToken(rpc.RoleQuery, "carol")
	set, err := rpc.ParseTokens(strings.NewReader(line))
	if err != nil {
		t.Fatal(err)
	}
	n.auth.SetTokens(set)
	if err := events(withToken(n.HTTP1, n.query)); connect.CodeOf(err) != unauth {
		t.Errorf("removed token after reload: %v, want UNAUTHENTICATED", err)
	}
	if err := events(withToken(n.HTTP1, tok)); err != nil {
		t.Errorf("new token after reload: %v", err)
	}
}

func errMessage(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return ""
}

func httpStatus(t *testing.T, hc *http.Client, url, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// refusals reads scope_rpc_refusals_total{reason} from /metrics.
func refusals(t *testing.T, n *authNode, reason string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, n.URL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+n.admin)
	resp, err := n.HTTP1.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^scope_rpc_refusals_total\{reason="` + reason + `"\} (\d+)`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}
