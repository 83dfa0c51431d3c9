package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/elixirscope/scope/cluster"
	"github.com/elixirscope/scope/rpc"
	"github.com/elixirscope/scope/tlsconf"
)

// tlsFlags are the agent's TLS and secure-by-default flags.
type tlsFlags struct {
	cert, key, ca string
	clientAuth    bool
	insecure      bool
}

func (t *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.cert, "tls-cert", "", "PEM certificate of this node (scope cert node): serves the API and raft over TLS, node-to-node calls use mutual TLS")
	fs.StringVar(&t.key, "tls-key", "", "PEM private key of -tls-cert")
	fs.StringVar(&t.ca, "tls-ca", "", "PEM certificate of the cluster's CA (scope cert init): verifies nodes and client certificates")
	fs.BoolVar(&t.clientAuth, "tls-client-auth", false, "require a client certificate of -tls-ca on the API too")
	fs.BoolVar(&t.insecure, "insecure", false, "allow serving plaintext, unauthenticated, on a non-loopback address (without TLS)")
}

func (t *tlsFlags) on() bool { return t.cert != "" }

// check validates the TLS flags and, without TLS, refuses a non-loopback
// listener unless -insecure (secure by default).
func (t *tlsFlags) check(c *agentConfig) error {
	if given := btoi(t.cert != "") + btoi(t.key != "") + btoi(t.ca != ""); given != 0 && given != 3 {
		return usageError("-tls-cert, -tls-key and -tls-ca go together: pass all three (scope cert init and scope cert node make them)")
	}
	if t.clientAuth && !t.on() {
		return usageError("-tls-client-auth: needs -tls-cert, -tls-key and -tls-ca")
	}
	if t.insecure && t.on() {
		return usageError("-insecure: contradicts -tls-cert; drop one of them")
	}
	if t.on() || t.insecure {
		return nil
	}
	addrs := []struct{ flag, v string }{{"http", c.httpAddr}, {"raft", c.raftAddr}}
	if !c.dev {
		addrs = append(addrs, struct{ flag, v string }{"gossip", c.gossipAddr})
	}
	for _, a := range addrs {
		if host, _, _ := net.SplitHostPort(a.v); !loopbackHost(host) {
			return fmt.Errorf("%w: -%s %s is not a loopback address and TLS is off: pass -tls-cert/-tls-key/-tls-ca to serve TLS, or -insecure to serve plaintext anyway",
				errInsecure, a.flag, a.v)
		}
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// loopbackHost reports whether host is a loopback IP or "localhost".
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// agentTLS is a running agent's TLS state: the reloadable certificates
// and the counters of what was refused.
type agentTLS struct {
	r *tlsconf.Reloader
	// nodeRefused counts NodeService calls and node claims refused for
	// want of the right node certificate.
	nodeRefused prometheus.Counter
}

// startTLS loads the certificates (a.tls stays nil without TLS).
func (a *agent) startTLS() error {
	t := a.cfg.tls
	if !t.on() {
		return nil
	}
	files := tlsconf.Files{Cert: t.cert, Key: t.key, CA: t.ca, ClientAuth: t.clientAuth}
	if !a.cfg.dev {
		files.Node = a.cfg.name
	}
	r, err := tlsconf.NewReloader(files)
	if err != nil {
		return err
	}
	a.tls = &agentTLS{r: r, nodeRefused: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "scope_node_api_refused_total",
		Help: "Node-to-node calls (NodeService, forwarded ingest) refused: no node certificate of the cluster CA, or one naming another node.",
	})}
	return nil
}

// registerMuxMetrics exports the raft mux's TLS refusals.
func (a *agent) registerMuxMetrics(reg prometheus.Registerer) error {
	return reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "scope_raft_mux_tls_refused_total",
		Help: "Raft connections closed because their TLS handshake failed: not a node certificate of the cluster CA, plaintext, or too slow.",
	}, func() float64 { return float64(a.mux.Stats().TLSRefused) }))
}

// muxTLS sets the raft mux's TLS: node certificates only, both ways.
func (a *agent) muxTLS(mc *cluster.MuxConfig) {
	if a.tls == nil {
		return
	}
	mc.TLS = a.tls.r.NodeServerConfig()
	mc.Dial = func(ctx context.Context, addr string) (net.Conn, error) { return a.tls.r.DialNode(ctx, addr, nil) }
}

// clusterTLS makes node-to-node calls use mutual TLS and checks peers'
// names against gossip.
func (a *agent) clusterTLS(c *cluster.Config) {
	if a.tls == nil {
		return
	}
	c.TLS = true
	c.HTTPClient = a.tls.r.NodeHTTPClient()
	a.tls.r.SetPeerNames(func(addr string) []string {
		var names []string
		for _, m := range a.members.Members() {
			if m.Meta.HTTPAddr == addr || m.Meta.RaftAddr == addr {
				names = append(names, m.Name)
			}
		}
		return names
	})
}

// nodeOnly wraps NodeService: with TLS only nodes of the CA may call it.
func (a *agent) nodeOnly(path string, h http.Handler) (string, http.Handler) {
	if a.tls == nil {
		return path, h
	}
	return path, tlsconf.RequireNode(h, a.tls.nodeRefused.Inc)
}

// httpTLS configures the API server for TLS, where a forwarded ingest
// must come with the certificate of the node it names.
func (a *agent) httpTLS() {
	if a.tls == nil {
		return
	}
	a.http.Handler = tlsconf.RequireNodeClaim(a.http.Handler, rpc.ForwardedHeader, a.tls.nodeRefused.Inc)
	a.http.TLSConfig = a.tls.r.APIServerConfig()
	a.http.Protocols.SetUnencryptedHTTP2(false)
	a.http.Protocols.SetHTTP2(true)
}

// serveHTTP serves the API on ln, over TLS when configured.
func (a *agent) serveHTTP(ln net.Listener) error {
	if a.tls == nil {
		return a.http.Serve(ln)
	}
	return a.http.ServeTLS(ln, "", "")
}

// reloadOnHUP reloads the certificates on every SIGHUP until stop closes;
// a reload that fails keeps the certificates in use and says why.
func (a *agent) reloadOnHUP(stop <-chan struct{}) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-stop:
			return
		case <-hup:
			a.reload()
		}
	}
}

// reloadTLS rereads the certificate files (SIGHUP).
func (a *agent) reloadTLS() {
	if a.tls == nil {
		return
	}
	if err := a.tls.r.Reload(); err != nil {
		a.logger.Error("SIGHUP: certificates not reloaded; the previous ones stay in use", "err", err)
		return
	}
	leaf := a.tls.r.Leaf()
	a.logger.Info("SIGHUP: certificates reloaded", "cert", a.cfg.tls.cert, "serial", leaf.SerialNumber.Text(16), "not_after", leaf.NotAfter)
}
