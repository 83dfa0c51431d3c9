package cluster

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/internal/testwait"
	"github.com/elixirscope/scope/tlsconf"
)

// tlsNode makes a CA in dir (once) and a node certificate for name, and
// returns its reloader.
func tlsNode(t *testing.T, dir, name string) *tlsconf.Reloader {
	t.Helper()
	if _, err := tlsconf.InitCA(dir, false); err != nil && !strings.Contains(err.Error(), "exists") {
		t.Fatal(err)
	}
	crt, key, err := tlsconf.IssueNode(dir, name, []string{"127.0.0.1"}, false)
	if err != nil {
		t.Fatal(err)
	}
	r, err := tlsconf.NewReloader(tlsconf.Files{Cert: crt, Key: key, CA: filepath.Join(dir, tlsconf.CACert), Node: name})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func tlsMux(t *testing.T, r *tlsconf.Reloader) *Mux {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultMuxConfig()
	cfg.HandshakeTimeout = 2 * time.Second
	cfg.TLS = r.NodeServerConfig()
	cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return r.DialNode(ctx, addr, nil) }
	m, err := NewMux(ln, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// TestMuxTLSAcceptsOnlyNodesOfItsCA: with TLS the raft mux hands a shard
// the connections of nodes of its CA, and closes (and counts) plaintext
// and nodes of another CA before reading any header.
func TestMuxTLSAcceptsOnlyNodesOfItsCA(t *testing.T) {
	dir, otherDir := t.TempDir(), t.TempDir()
	m1 := tlsMux(t, tlsNode(t, dir, "n1"))
	m2 := tlsMux(t, tlsNode(t, dir, "n2"))
	s1, err := m1.StreamLayer(3)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := m2.StreamLayer(3)
	if err != nil {
		t.Fatal(err)
	}
	addr := raft.ServerAddress(m1.Addr().String())
	c, err := s2.Dial(addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	srv, err := s1.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v over TLS", buf, err)
	}

	// Plaintext raft (a header, as DialRaft sends it) and a node of
	// another CA are refused at the handshake.
	plain, err := DialRaft(addr, 3, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := tlsNode(t, otherDir, "n2").DialNode(context.Background(), string(addr), nil); err == nil {
		t.Error("a node of another CA completed a handshake with the mux")
	}
	testwait.For(t, "two TLS refusals", 5*time.Second, func() bool { return m1.Stats().TLSRefused == 2 })
	if st := m1.Stats(); st.Accepted != 1 || st.BadHeader != 0 {
		t.Fatalf("stats %+v: want 1 accepted, nothing read from refused connections", st)
	}
	_ = plain.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := plain.Read(buf); err == nil {
		t.Error("plaintext raft connection still open")
	}
}
