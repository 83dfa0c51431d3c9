package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pki is a CA directory with node and client certificates made by the
// scope cert code.
type pki struct {
	t   *testing.T
	dir string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	if _, err := InitCA(dir, false); err != nil {
		t.Fatal(err)
	}
	return pki{t, dir}
}

func (p pki) ca() string { return filepath.Join(p.dir, CACert) }

// node issues (once) and returns files for node name, verified as name.
func (p pki) node(name string) Files {
	p.t.Helper()
	crt, key := NodeFiles(name)
	crt, key = filepath.Join(p.dir, crt), filepath.Join(p.dir, key)
	if _, err := os.Stat(crt); err != nil {
		if _, _, err := IssueNode(p.dir, name, []string{"127.0.0.1", "localhost"}, false); err != nil {
			p.t.Fatal(err)
		}
	}
	return Files{Cert: crt, Key: key, CA: p.ca(), Node: name}
}

func (p pki) client(name string) (crt, key string) {
	p.t.Helper()
	if _, _, err := IssueClient(p.dir, name, false); err != nil {
		p.t.Fatal(err)
	}
	crt, key = ClientFiles(name)
	return filepath.Join(p.dir, crt), filepath.Join(p.dir, key)
}

func (p pki) reloader(name string) *Reloader {
	p.t.Helper()
	r, err := NewReloader(p.node(name))
	if err != nil {
		p.t.Fatal(err)
	}
	return r
}

// TestCertFiles: scope cert's files: keys 0600, no overwrite without
// force, the identities the certificates carry, and names refused.
func TestCertFiles(t *testing.T) {
	p := newPKI(t)
	if _, err := InitCA(p.dir, false); err == nil || !strings.Contains(err.Error(), "exists: pass -force") {
		t.Fatalf("second init: %v", err)
	}
	caBefore, _ := os.ReadFile(p.ca())
	if _, err := InitCA(p.dir, true); err != nil {
		t.Fatal(err)
	}
	if caAfter, _ := os.ReadFile(p.ca()); string(caAfter) == string(caBefore) {
		t.Fatal("init -force kept the old CA")
	}
	f := p.node("n1")
	if _, _, err := IssueNode(p.dir, "n1", []string{"127.0.0.1"}, false); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second node n1: %v", err)
	}
	ccrt, ckey := p.client("alice")
	for _, k := range []string{filepath.Join(p.dir, CAKey), f.Key, ckey} {
		if st, err := os.Stat(k); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", k, st.Mode().Perm(), err)
		}
	}
	for _, tc := range []struct {
		crt, key string
		want     Identity
	}{{f.Cert, f.Key, Identity{"node", "n1"}}, {ccrt, ckey, Identity{"client", "alice"}}} {
		c, err := tls.LoadX509KeyPair(tc.crt, tc.key)
		if err != nil {
			t.Fatal(err)
		}
		if id, ok := IdentityOf(c.Leaf); !ok || id != tc.want {
			t.Errorf("%s names %+v %v, want %+v", tc.crt, id, ok, tc.want)
		}
		if life := c.Leaf.NotAfter.Sub(c.Leaf.NotBefore); life > LeafLifetime+2*backdate || life < LeafLifetime {
			t.Errorf("%s lifetime %v", tc.crt, life)
		}
	}
	if _, _, err := IssueClient(p.dir, "../x", false); err == nil {
		t.Error("a name with a slash was accepted")
	}
	if _, _, err := IssueNode(p.dir, "n2", nil, false); err == nil || !strings.Contains(err.Error(), "at least one host") {
		t.Errorf("node without hosts: %v", err)
	}
	if _, _, err := IssueNode(t.TempDir(), "n2", []string{"h"}, false); err == nil || !strings.Contains(err.Error(), "scope cert init") {
		t.Errorf("node without a CA: %v", err)
	}
}

// TestReloaderChecksOwnCertificate: a node's certificate must name the
// node and chain to the CA it is given.
func TestReloaderChecksOwnCertificate(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	f := p.node("n1")
	f.Node = "n2"
	if _, err := NewReloader(f); err == nil || !strings.Contains(err.Error(), `names node n1, not node "n2"`) {
		t.Errorf("cert of n1 as n2: %v", err)
	}
	f = other.node("n1")
	f.CA = p.ca()
	if _, err := NewReloader(f); err == nil || !strings.Contains(err.Error(), "is not a server certificate of -tls-ca") {
		t.Errorf("cert of another CA: %v", err)
	}
	crt, key := p.client("alice")
	if _, err := NewReloader(Files{Cert: crt, Key: key, CA: p.ca()}); err == nil {
		t.Error("a client certificate was accepted as a server certificate")
	}
}

// serveNode accepts TLS connections with cfg on a loopback listener and
// echoes one byte on each, until the test ends.
func serveNode(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, cfg)
			_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
			var b [1]byte
			if _, err := io.ReadFull(tc, b[:]); err == nil {
				_, _ = tc.Write(b[:])
			}
			tc.Close()
		}
	}()
	return ln.Addr().String()
}

// roundTrip sends one byte over c and waits for its echo: the server's
// verdict on a TLS 1.3 client certificate arrives only with the first read.
func roundTrip(c net.Conn) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{7}); err != nil {
		return err
	}
	var b [1]byte
	_, err := io.ReadFull(c, b[:])
	return err
}

// TestNodeListenerRefuses: a node listener (the raft mux's configuration)
// takes a node of its CA and refuses plaintext, a client certificate,
// and a node certificate of another CA; a dialing node refuses a server
// that presents the certificate of another node than gossip places there.
func TestNodeListenerRefuses(t *testing.T) {
	p, other := newPKI(t), newPKI(t)
	n1, n2 := p.reloader("n1"), p.reloader("n2")
	addr := serveNode(t, n1.NodeServerConfig())
	ctx := context.Background()

	c, err := n2.DialNode(ctx, addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c); err != nil {
		t.Fatalf("node n2 of the CA refused: %v", err)
	}

	// Plaintext: the server wants a ClientHello; no echo ever comes.
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(raw); err == nil {
		t.Error("plaintext connection answered")
	}

	// A node of another CA: refused by the listener (and it refuses the
	// listener's certificate too).
	if c, err := other.reloader("n2").DialNode(ctx, addr, nil); err == nil {
		if err := roundTrip(c); err == nil {
			t.Error("node certificate of another CA accepted")
		}
	} else if !strings.Contains(err.Error(), "not from the cluster CA") {
		t.Errorf("dial with another CA: %v", err)
	}

	// A client certificate of the right CA, dialing as a client would.
	crt, key := p.client("alice")
	cc, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cc}})
	if err == nil {
		err = roundTrip(tc)
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("client certificate on a node listener: %v", err)
	}

	// n3 answering at an address gossip gives to n1: the dialer refuses.
	n2.SetPeerNames(func(a string) []string {
		if a == addr {
			return []string{"n1"}
		}
		return nil
	})
	if c, err := n2.DialNode(ctx, addr, nil); err != nil {
		t.Fatalf("n1 where gossip places n1: %v", err)
	} else if err := roundTrip(c); err != nil {
		t.Fatal(err)
	}
	imp := serveNode(t, p.reloader("n3").NodeServerConfig())
	n2.SetPeerNames(func(string) []string { return []string{"n1"} })
	if _, err := n2.DialNode(ctx, imp, nil); err == nil || !strings.Contains(err.Error(), `certificate of node "n3", but member n1 is there`) {
		t.Errorf("n3 answering for n1: %v", err)
	}
	// A client certificate presented by a server is no node either.
	cs := serveNode(t, &tls.Config{Certificates: []tls.Certificate{cc}})
	if _, err := n2.DialNode(ctx, cs, nil); err == nil || !strings.Contains(err.Error(), "not a node certificate") {
		t.Errorf("server with a client certificate: %v", err)
	}
}

// TestReloadSwapsCertificate: after the files are replaced, Reload serves
// the new certificate to the next handshake; a failed reload keeps the
// previous one.
func TestReloadSwapsCertificate(t *testing.T) {
	p := newPKI(t)
	n1 := p.reloader("n1")
	addr := serveNode(t, n1.NodeServerConfig())
	served := func() string {
		t.Helper()
		c, err := p.reloader("n2").DialNode(context.Background(), addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := served()
	if _, _, err := IssueNode(p.dir, "n1", []string{"127.0.0.1"}, true); err != nil {
		t.Fatal(err)
	}
	if got := served(); got != before {
		t.Fatalf("certificate changed before Reload: %s -> %s", before, got)
	}
	if err := n1.Reload(); err != nil {
		t.Fatal(err)
	}
	after := served()
	if after == before {
		t.Fatal("Reload did not swap the served certificate")
	}
	if err := os.WriteFile(n1.files.Cert, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n1.Reload(); err == nil || !errors.Is(err, ErrCert) {
		t.Fatalf("reload of a broken file: %v", err)
	}
	if got := served(); got != after {
		t.Fatalf("a failed reload changed the certificate: %s -> %s", after, got)
	}
}
