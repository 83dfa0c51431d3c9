package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
)

// ErrCert classifies every certificate and TLS configuration error.
var ErrCert = errors.New("tlsconf")

// uriScheme is the scheme of the URI SAN naming a node or a client.
const uriScheme = "scope"

// Identity is what a certificate names: a node or a client.
type Identity struct {
	Kind string // "node" or "client"
	Name string
}

// IdentityOf returns the identity cert names (ok false for a certificate
// scope cert did not make).
func IdentityOf(cert *x509.Certificate) (Identity, bool) {
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme && (u.Host == "node" || u.Host == "client") {
			name := strings.TrimPrefix(u.Path, "/")
			if CheckName(name) == nil {
				return Identity{Kind: u.Host, Name: name}, true
			}
		}
	}
	return Identity{}, false
}

// NodeName returns the node cert names, if it is a node certificate.
func NodeName(cert *x509.Certificate) (string, bool) {
	id, ok := IdentityOf(cert)
	return id.Name, ok && id.Kind == "node"
}

// Files are the PEM files of a TLS configuration.
type Files struct {
	Cert, Key, CA string
	// Node, when set, is the node name the certificate must name.
	Node string
	// ClientAuth makes client certificates mandatory on the API listener.
	ClientAuth bool
}

// material is one loaded generation of the files.
type material struct {
	cert *tls.Certificate
	pool *x509.CertPool
}

// Reloader serves the current certificate, key and CA pool, and reloads
// them from their files on demand. Safe for concurrent use.
type Reloader struct {
	files Files
	cur   atomic.Pointer[material]
	// peers names the members at an address (SetPeerNames).
	peers atomic.Pointer[func(addr string) []string]
}

// NewReloader loads files once; an error names the file at fault.
func NewReloader(files Files) (*Reloader, error) {
	r := &Reloader{files: files}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload reads the files again and, if they are valid, serves them from
// the next handshake on. On error the previous material stays.
func (r *Reloader) Reload() error {
	m, err := load(r.files)
	if err != nil {
		return err
	}
	r.cur.Store(m)
	return nil
}

// Leaf returns the current certificate (for logs: its expiry, its name).
func (r *Reloader) Leaf() *x509.Certificate { return r.cur.Load().cert.Leaf }

func load(f Files) (*material, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: -tls-cert %s / -tls-key %s: %v", ErrCert, f.Cert, f.Key, err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("%w: -tls-ca: %v", ErrCert, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: -tls-ca %s: no PEM certificate in it", ErrCert, f.CA)
	}
	leaf := cert.Leaf // parsed by LoadX509KeyPair
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: intermediates(cert.Certificate),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return nil, fmt.Errorf("%w: -tls-cert %s is not a server certificate of -tls-ca %s: %v", ErrCert, f.Cert, f.CA, err)
	}
	if f.Node != "" {
		if name, ok := NodeName(leaf); !ok || name != f.Node {
			return nil, fmt.Errorf("%w: -tls-cert %s names %s, not node %q (-name): create one with scope cert node -name %s",
				ErrCert, f.Cert, describe(leaf), f.Node, f.Node)
		}
	}
	return &material{cert: &cert, pool: pool}, nil
}

func describe(c *x509.Certificate) string {
	if id, ok := IdentityOf(c); ok {
		return id.Kind + " " + id.Name
	}
	return fmt.Sprintf("no scope identity (CN %q)", c.Subject.CommonName)
}

func intermediates(chain [][]byte) *x509.CertPool {
	p := x509.NewCertPool()
	for _, der := range chain[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			p.AddCert(c)
		}
	}
	return p
}

// SetPeerNames installs the lookup DialNode checks peers against: the
// names of the members gossip places at an address (HTTP or raft). Until
// it is set, or for an address no member claims, any node certificate of
// the CA is accepted.
func (r *Reloader) SetPeerNames(f func(addr string) []string) { r.peers.Store(&f) }

// APIServerConfig is the public listener's configuration: HTTP/2 and
// HTTP/1.1 through ALPN (gRPC needs h2), client certificates verified
// against the CA when sent, and required with Files.ClientAuth.
func (r *Reloader) APIServerConfig() *tls.Config {
	auth := tls.VerifyClientCertIfGiven
	if r.files.ClientAuth {
		auth = tls.RequireAndVerifyClientCert
	}
	return r.serverConfig(auth, []string{"h2", "http/1.1"}, nil)
}

// NodeServerConfig is the raft listener's configuration: the peer must
// present a node certificate of the CA.
func (r *Reloader) NodeServerConfig() *tls.Config {
	return r.serverConfig(tls.RequireAndVerifyClientCert, nil, func(cs tls.ConnectionState) error {
		_, err := peerNode(cs)
		return err
	})
}

func (r *Reloader) serverConfig(auth tls.ClientAuthType, protos []string, verify func(tls.ConnectionState) error) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := r.cur.Load()
			return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*m.cert}, ClientCAs: m.pool,
				ClientAuth: auth, NextProtos: protos, VerifyConnection: verify}, nil
		},
	}
}

// peerNode returns the node a verified peer certificate names.
func peerNode(cs tls.ConnectionState) (string, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return "", fmt.Errorf("%w: no certificate of the cluster CA", ErrCert)
	}
	name, ok := NodeName(cs.PeerCertificates[0])
	if !ok {
		return "", fmt.Errorf("%w: peer certificate names %s: only nodes may call this", ErrCert, describe(cs.PeerCertificates[0]))
	}
	return name, nil
}

// DialNode connects to another node at addr over TLS: it presents this
// node's certificate and accepts only a node certificate of the CA naming
// a member gossip places at addr (SetPeerNames). protos is the ALPN list.
func (r *Reloader) DialNode(ctx context.Context, addr string, protos []string) (*tls.Conn, error) {
	m := r.cur.Load()
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: protos,
		// The chain and the node name are verified below: between nodes
		// the identity is the node name, not the host dialed.
		InsecureSkipVerify:   true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return m.cert, nil },
		VerifyConnection:     func(cs tls.ConnectionState) error { return r.verifyServerNode(m, addr, cs) },
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	if err := c.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	return c, nil
}

func (r *Reloader) verifyServerNode(m *material, addr string, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: %s presented no certificate", ErrCert, addr)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.pool, Intermediates: intermediatesOf(cs.PeerCertificates),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("%w: %s: certificate not from the cluster CA: %v", ErrCert, addr, err)
	}
	name, ok := NodeName(leaf)
	if !ok {
		return fmt.Errorf("%w: %s presents %s, not a node certificate", ErrCert, addr, describe(leaf))
	}
	if f := r.peers.Load(); f != nil {
		if want := (*f)(addr); len(want) > 0 && !slices.Contains(want, name) {
			return fmt.Errorf("%w: %s presents a certificate of node %q, but member %s is there", ErrCert, addr, name,
				strings.Join(want, "/"))
		}
	}
	return nil
}

func intermediatesOf(certs []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs[1:] {
		p.AddCert(c)
	}
	return p
}

// NodeHTTPClient returns the HTTP client of node-to-node calls: HTTP/2
// over DialNode's mutual TLS.
func (r *Reloader) NodeHTTPClient() *http.Client {
	t := &http.Transport{
		DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return r.DialNode(ctx, addr, []string{"h2"})
		},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	return &http.Client{Transport: t}
}

// RequireNode wraps a handler that only nodes may call (NodeService): a
// request without a node certificate of the CA is refused with
// PERMISSION_DENIED, and counted by refused (may be nil).
func RequireNode(h http.Handler, refused func()) http.Handler {
	ew := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.TLS == nil {
			deny(w, req, ew, refused, fmt.Errorf("%w: node API over plaintext", ErrCert))
			return
		}
		if _, err := peerNode(*req.TLS); err != nil {
			deny(w, req, ew, refused, err)
			return
		}
		h.ServeHTTP(w, req)
	})
}

// RequireNodeClaim wraps the public API: a request carrying header (a
// node's claim to have sent it, such as a forwarded ingest) must come with
// the certificate of the node it names. Other requests pass.
func RequireNodeClaim(h http.Handler, header string, refused func()) http.Handler {
	ew := connect.NewErrorWriter()
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if claim := req.Header.Get(header); claim != "" {
			var name string
			err := fmt.Errorf("%w: node API over plaintext", ErrCert)
			if req.TLS != nil {
				name, err = peerNode(*req.TLS)
			}
			if err == nil && name != claim {
				err = fmt.Errorf("%w: %s %q sent with the certificate of node %q", ErrCert, header, claim, name)
			}
			if err != nil {
				deny(w, req, ew, refused, err)
				return
			}
		}
		h.ServeHTTP(w, req)
	})
}

func deny(w http.ResponseWriter, req *http.Request, ew *connect.ErrorWriter, refused func(), err error) {
	if refused != nil {
		refused()
	}
	_ = ew.Write(w, req, connect.NewError(connect.CodePermissionDenied, err))
}

// ClientConfig is the TLS configuration of a command-line client: the
// server is verified against caFile (the system roots if empty) by host
// name; certFile/keyFile, when given, are presented as the client
// certificate.
func ClientConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		caPEM, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%w: -ca: %v", ErrCert, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("%w: -ca %s: no PEM certificate in it", ErrCert, caFile)
		}
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("%w: -cert and -key go together", ErrCert)
	}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: -cert %s / -key %s: %v", ErrCert, certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}
