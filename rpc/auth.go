package rpc

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"connectrpc.com/connect"

	"github.com/elixirscope/scope/rpc/gen/scope/node/v1/nodev1connect"
	"github.com/elixirscope/scope/rpc/gen/scope/v1/scopev1connect"
	"github.com/elixirscope/scope/ui"
)

// Authentication and authorization (docs/OPERATIONS.md, "Tokens and
// roles"). A client presents `Authorization: Bearer TOKEN`; the server
// knows tokens only by their SHA-256 and compares hashes in constant time.
// A node presents the cluster's node credential in NodeCredentialHeader:
// NodeService accepts nothing else, never a client token. The check runs in
// an HTTP middleware ahead of every handler (Connect services, /metrics,
// /debug/pprof, mounted handlers), so an unauthenticated caller is refused
// before its request body is read; Connect errors are written in the
// caller's protocol (connect.ErrorWriter).

// Role is what a token may do.
type Role uint8

const (
	// RoleIngest may call IngestService.
	RoleIngest Role = iota + 1
	// RoleQuery may call QueryService, ClusterService's read-only methods
	// (Members, Shards) and read /metrics.
	RoleQuery
	// RoleAdmin may do everything a client may: the other roles, Join,
	// Leave and /debug/pprof.
	RoleAdmin
)

var roleNames = map[Role]string{RoleIngest: "ingest", RoleQuery: "query", RoleAdmin: "admin"}

func (r Role) String() string {
	if s, ok := roleNames[r]; ok {
		return s
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// ParseRole reads a role name: ingest, query or admin.
func ParseRole(s string) (Role, error) {
	for r, name := range roleNames {
		if s == name {
			return r, nil
		}
	}
	return 0, fmt.Errorf("unknown role %q: want ingest, query or admin", s)
}

// allows reports whether a token of role r may do what need requires.
func (r Role) allows(need Role) bool { return r == RoleAdmin || r == need }

// Token is one line of a token file: a role and the SHA-256 of the token.
type Token struct {
	Role Role
	Hash [sha256.Size]byte
	// Name labels the caller in logs and per-caller limits; it defaults to
	// "token-" and the first 8 hex digits of the hash.
	Name string
}

// TokenSet is a parsed token file.
type TokenSet struct{ tokens []Token }

// Len is the number of tokens.
func (s *TokenSet) Len() int { return len(s.tokens) }

// ErrTokenFile: a token file is malformed; the error names the line.
var ErrTokenFile = errors.New("rpc: invalid token file")

// maxTokens bounds a token file (each request compares against all).
const maxTokens = 4096

// ParseTokens reads a token file: one token per line, `ROLE SHA256HEX
// [NAME]`; blank lines and lines starting with # are ignored. A file with
// no token is an error (it would refuse every caller).
func ParseTokens(r io.Reader) (*TokenSet, error) {
	set := &TokenSet{}
	seen := map[[sha256.Size]byte]int{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) < 2 || len(fields) > 3 {
			return nil, fmt.Errorf("%w: line %d: want ROLE SHA256HEX [NAME], got %d fields", ErrTokenFile, line, len(fields))
		}
		role, err := ParseRole(fields[0])
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %v", ErrTokenFile, line, err)
		}
		var t Token
		if n, err := hex.Decode(t.Hash[:], []byte(fields[1])); err != nil || n != sha256.Size || len(fields[1]) != 2*sha256.Size {
			return nil, fmt.Errorf("%w: line %d: %q is not a SHA-256 in hex (64 hex digits; `scope token new` prints one)",
				ErrTokenFile, line, clip(fields[1]))
		}
		if prev, dup := seen[t.Hash]; dup {
			return nil, fmt.Errorf("%w: line %d: the same token hash as line %d", ErrTokenFile, line, prev)
		}
		seen[t.Hash] = line
		t.Role, t.Name = role, "token-"+fields[1][:8]
		if len(fields) == 3 {
			t.Name = fields[2]
		}
		if len(set.tokens) == maxTokens {
			return nil, fmt.Errorf("%w: line %d: more than %d tokens", ErrTokenFile, line, maxTokens)
		}
		set.tokens = append(set.tokens, t)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTokenFile, err)
	}
	if len(set.tokens) == 0 {
		return nil, fmt.Errorf("%w: no token (every caller would be refused)", ErrTokenFile)
	}
	return set, nil
}

// LoadTokens reads the token file at path.
func LoadTokens(path string) (*TokenSet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	set, err := ParseTokens(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return set, nil
}

// lookup finds the token whose hash is SHA-256(secret). Every entry is
// compared, in constant time, whatever matches.
func (s *TokenSet) lookup(secret string) (Token, bool) {
	h := sha256.Sum256([]byte(secret))
	var found Token
	ok := 0
	for i := range s.tokens {
		m := subtle.ConstantTimeCompare(h[:], s.tokens[i].Hash[:])
		if m == 1 {
			found = s.tokens[i]
		}
		ok |= m
	}
	return found, ok == 1
}

// NewToken returns a random token (256 bits) and its token-file line.
func NewToken(role Role, name string) (token, line string, err error) {
	if _, ok := roleNames[role]; !ok {
		return "", "", fmt.Errorf("unknown role %v", role)
	}
	if strings.ContainsAny(name, " \t\r\n#") {
		return "", "", fmt.Errorf("name %q: must not contain spaces or #", name)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	token = "scope_" + base64.RawURLEncoding.EncodeToString(b[:])
	line = role.String() + " " + HashToken(token)
	if name != "" {
		line += " " + name
	}
	return token, line, nil
}

// HashToken is the hex SHA-256 a token file lists for token.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// NodeCredentialHeader carries the node credential on node-to-node calls.
const NodeCredentialHeader = "Scope-Node-Credential"

// NodeCredentials derives the node credentials from the gossip keyring:
// HMAC-SHA256(key, "scope node credential v1") in hex for each key. The
// first (the primary key's) is the one a node sends; all are accepted, so
// the keyring's rotation (install, use, remove) rotates them too. The
// credential does not reveal the key.
func NodeCredentials(gossipKeys [][]byte) []string {
	out := make([]string, 0, len(gossipKeys))
	for _, k := range gossipKeys {
		m := hmac.New(sha256.New, k)
		m.Write([]byte("scope node credential v1"))
		out = append(out, hex.EncodeToString(m.Sum(nil)))
	}
	return out
}

// Auth decides who may call what. Its token set and node credentials are
// replaced atomically (a SIGHUP reload), so requests in flight keep the
// set they started with. The zero value lets every caller in.
type Auth struct {
	tokens atomic.Pointer[TokenSet]
	node   atomic.Pointer[[]string] // accepted node credentials; [0] is sent
}

// SetTokens turns tokens on (nil: off, every client is let in).
func (a *Auth) SetTokens(s *TokenSet) { a.tokens.Store(s) }

// SetNodeCredentials sets the credentials NodeService accepts; the first
// is the one this node sends. Empty: NodeService requires none unless
// tokens are on, and then accepts no call at all.
func (a *Auth) SetNodeCredentials(creds []string) {
	c := append([]string(nil), creds...)
	a.node.Store(&c)
}

// TokensOn reports whether client tokens are required.
func (a *Auth) TokensOn() bool { return a != nil && a.tokens.Load() != nil }

// NodeCredential is the credential this node sends ("" if none).
func (a *Auth) NodeCredential() string {
	if a == nil {
		return ""
	}
	if c := a.node.Load(); c != nil && len(*c) > 0 {
		return (*c)[0]
	}
	return ""
}

// nodeCredentialOK reports whether h carries an accepted node credential.
// Every accepted credential is compared in constant time.
func (a *Auth) nodeCredentialOK(h http.Header) bool {
	c := a.node.Load()
	if c == nil {
		return false
	}
	got := []byte(h.Get(NodeCredentialHeader))
	ok := 0
	for _, want := range *c {
		ok |= subtle.ConstantTimeCompare(got, []byte(want))
	}
	return ok == 1 && len(got) > 0
}

func (a *Auth) nodeCredentialsSet() bool {
	c := a.node.Load()
	return c != nil && len(*c) > 0
}

// NodeTransport wraps base (nil: http.DefaultTransport) to send this
// node's current node credential on every request.
func (a *Auth) NodeTransport(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return nodeTransport{a: a, base: base}
}

type nodeTransport struct {
	a    *Auth
	base http.RoundTripper
}

func (t nodeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if cred := t.a.NodeCredential(); cred != "" {
		r = r.Clone(r.Context())
		r.Header.Set(NodeCredentialHeader, cred)
	}
	return t.base.RoundTrip(r)
}

// Caller is who made a request, as the auth middleware established it.
type Caller struct {
	// Name is the token's name, "node" for a node credential, or the remote
	// IP when tokens are off.
	Name string
	Role Role // 0 when tokens are off
	Node bool // authenticated with the node credential
}

type callerKey struct{}

// CallerOf returns the caller the auth middleware stored in ctx.
func CallerOf(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)
	return c, ok
}

// access is what a path requires.
type access uint8

const (
	accessOpen       access = iota // anyone: probes, gRPC health
	accessAny                      // any valid token: reflection
	accessRole                     // a token of the given role
	accessNode                     // the node credential only
	accessNodeOrRole               // the node credential or a token of the role (forwarded ingest)
)

// required says what calling path needs. Unknown paths need admin: the mux
// answers 404 after the check.
func required(path string) (access, Role) {
	switch {
	case path == "/healthz" || path == "/readyz" || strings.HasPrefix(path, "/grpc.health.v1.Health/"):
		return accessOpen, 0
	case path == "/" || path == "/ui" || strings.HasPrefix(path, ui.Prefix):
		// Static pages and scripts only: they hold no data, and read the
		// API from the browser with the token a person gives them.
		return accessOpen, 0
	case strings.HasPrefix(path, "/grpc.reflection."):
		return accessAny, 0
	case strings.HasPrefix(path, "/"+nodev1connect.NodeServiceName+"/"):
		return accessNode, 0
	case strings.HasPrefix(path, "/"+scopev1connect.IngestServiceName+"/"):
		return accessNodeOrRole, RoleIngest
	case strings.HasPrefix(path, "/"+scopev1connect.QueryServiceName+"/"),
		path == scopev1connect.ClusterServiceMembersProcedure, path == scopev1connect.ClusterServiceShardsProcedure,
		path == "/metrics":
		return accessRole, RoleQuery
	}
	return accessRole, RoleAdmin
}

// authRefusal is why the middleware refused a request (a metrics label).
type authRefusal string

const (
	refuseUnauthenticated authRefusal = "unauthenticated"
	refusePermission      authRefusal = "permission_denied"
	refuseNode            authRefusal = "node_credential"
)

// check decides r: the caller, or why it is refused and the error to
// return.
func (a *Auth) check(r *http.Request) (Caller, authRefusal, *connect.Error) {
	need, role := required(r.URL.Path)
	tokens := a.tokens.Load()
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	if need == accessOpen {
		return Caller{Name: ip}, "", nil
	}
	if need == accessNode || need == accessNodeOrRole {
		switch {
		case a.nodeCredentialOK(r.Header):
			return Caller{Name: "node", Node: true}, "", nil
		case need == accessNode && (a.nodeCredentialsSet() || tokens != nil):
			// Never a client token: NodeService is for nodes.
			return Caller{}, refuseNode, connect.NewError(connect.CodeUnauthenticated,
				errors.New("the node API accepts only the cluster's node credential (a client token is not one)"))
		}
	}
	if tokens == nil {
		return Caller{Name: ip}, "", nil
	}
	h := r.Header.Get("Authorization")
	scheme, bearer, _ := strings.Cut(h, " ")
	if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(bearer) == "" {
		return Caller{}, refuseUnauthenticated, connect.NewError(connect.CodeUnauthenticated,
			errors.New("this node requires a token: send Authorization: Bearer TOKEN (scope: -token or SCOPE_TOKEN)"))
	}
	tok, ok := tokens.lookup(strings.TrimSpace(bearer))
	if !ok {
		return Caller{}, refuseUnauthenticated, connect.NewError(connect.CodeUnauthenticated, errors.New("unknown token"))
	}
	if need == accessRole || need == accessNodeOrRole {
		if !tok.Role.allows(role) {
			return Caller{}, refusePermission, connect.NewError(connect.CodePermissionDenied,
				fmt.Errorf("token %q has role %s; %s needs role %s", tok.Name, tok.Role, r.URL.Path, role))
		}
	}
	return Caller{Name: tok.Name, Role: tok.Role}, "", nil
}
