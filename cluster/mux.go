package cluster

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Protocol is the first byte of every connection to a node's internal TCP
// listener. It says which subsystem the connection is for.
type Protocol byte

const (
	// ProtoRaft connections carry one shard's hashicorp/raft RPCs; the
	// protocol byte is followed by the shard id (4 bytes, big-endian).
	ProtoRaft Protocol = 1
)

// muxHeaderLen is the protocol byte plus the shard id.
const muxHeaderLen = 5

// MuxConfig configures a Mux.
type MuxConfig struct {
	// HandshakeTimeout bounds how long an accepted connection may take to
	// send its header before it is closed.
	HandshakeTimeout time.Duration
	// MaxHandshakes bounds connections accepted but not yet dispatched;
	// beyond it new connections are closed at once (and counted).
	MaxHandshakes int
	// AcceptBacklog bounds connections dispatched to a shard whose raft
	// transport has not yet accepted them.
	AcceptBacklog int
	// TLS, when set, is the server configuration every accepted
	// connection must complete a handshake with, within HandshakeTimeout,
	// before its header is read: it decides which peers pass (a node
	// certificate of the cluster CA, see tlsconf.NodeServerConfig).
	TLS *tls.Config
	// Dial opens this node's outgoing raft connections (nil: plain TCP).
	// With TLS it must dial TLS too (tlsconf.Reloader.DialNode).
	Dial   func(ctx context.Context, addr string) (net.Conn, error)
	Logger *slog.Logger
}

// DefaultMuxConfig returns defaults sized for a few hundred raft groups.
func DefaultMuxConfig() MuxConfig {
	return MuxConfig{HandshakeTimeout: 5 * time.Second, MaxHandshakes: 256, AcceptBacklog: 64,
		Logger: slog.Default()}
}

// Validate reports the first invalid field.
func (c MuxConfig) Validate() error {
	switch {
	case c.HandshakeTimeout <= 0:
		return fmt.Errorf("cluster: mux HandshakeTimeout %v: must be positive", c.HandshakeTimeout)
	case c.MaxHandshakes <= 0:
		return fmt.Errorf("cluster: mux MaxHandshakes %d: must be positive", c.MaxHandshakes)
	case c.AcceptBacklog <= 0:
		return fmt.Errorf("cluster: mux AcceptBacklog %d: must be positive", c.AcceptBacklog)
	}
	return nil
}

// MuxStats counts what the mux refused.
type MuxStats struct {
	Accepted        uint64 // connections dispatched to a shard
	UnknownShard    uint64 // closed: no raft group for that shard here
	BadHeader       uint64 // closed: unknown protocol or short/slow header
	HandshakeRefuse uint64 // closed: too many handshakes in progress
	BacklogFull     uint64 // closed: the shard's accept backlog was full
	TLSRefused      uint64 // closed: the TLS handshake failed (not a node of the CA, plaintext, slow)
}

// Mux multiplexes one TCP listener between many raft groups (one per
// hosted shard). Each connection starts with a protocol byte and a shard id;
// the mux hands the rest of the connection to that shard's StreamLayer,
// whose NetworkTransport then speaks plain raft on it.
type Mux struct {
	cfg  MuxConfig
	ln   net.Listener
	addr net.Addr

	mu     sync.Mutex
	shards map[uint32]*shardStream
	closed bool

	handshakes chan struct{} // semaphore: MaxHandshakes
	wg         sync.WaitGroup

	accepted, unknownShard, badHeader, handshakeRefuse, backlogFull, tlsRefused atomic.Uint64
}

// NewMux starts serving ln. Close stops it and closes ln.
func NewMux(ln net.Listener, cfg MuxConfig) (*Mux, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Mux{cfg: cfg, ln: ln, addr: ln.Addr(), shards: make(map[uint32]*shardStream),
		handshakes: make(chan struct{}, cfg.MaxHandshakes)}
	m.wg.Add(1)
	go m.serve()
	return m, nil
}

// Addr is the listener's address.
func (m *Mux) Addr() net.Addr { return m.addr }

// Stats returns the mux's counters.
func (m *Mux) Stats() MuxStats {
	return MuxStats{Accepted: m.accepted.Load(), UnknownShard: m.unknownShard.Load(),
		BadHeader: m.badHeader.Load(), HandshakeRefuse: m.handshakeRefuse.Load(),
		BacklogFull: m.backlogFull.Load(), TLSRefused: m.tlsRefused.Load()}
}

// Close stops accepting, closes every shard stream layer and waits for the
// handshake goroutines to finish.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	streams := make([]*shardStream, 0, len(m.shards))
	for _, s := range m.shards {
		streams = append(streams, s)
	}
	m.mu.Unlock()
	err := m.ln.Close()
	for _, s := range streams {
		_ = s.Close()
	}
	m.wg.Wait()
	return err
}

// StreamLayer registers shard and returns the raft StreamLayer for it.
// Closing the returned layer unregisters the shard (raft's NetworkTransport
// closes it on shutdown), after which the shard may be registered again.
func (m *Mux) StreamLayer(shard uint32) (raft.StreamLayer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrMuxClosed
	}
	if _, ok := m.shards[shard]; ok {
		return nil, fmt.Errorf("%w: shard %d", ErrShardRegistered, shard)
	}
	s := &shardStream{mux: m, shard: shard, conns: make(chan net.Conn, m.cfg.AcceptBacklog),
		done: make(chan struct{}), live: make(map[*trackedConn]struct{})}
	m.shards[shard] = s
	return s, nil
}

func (m *Mux) serve() {
	defer m.wg.Done()
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.cfg.Logger.Warn("raft mux accept failed", "err", err)
			// A transient accept error (e.g. EMFILE): back off briefly
			// rather than spin.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		select {
		case m.handshakes <- struct{}{}:
		default:
			m.handshakeRefuse.Add(1)
			_ = conn.Close()
			continue
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer func() { <-m.handshakes }()
			m.dispatch(conn)
		}()
	}
}

// dispatch reads conn's header and hands it to its shard.
func (m *Mux) dispatch(conn net.Conn) {
	if m.cfg.TLS != nil {
		tc := tls.Server(conn, m.cfg.TLS)
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			m.tlsRefused.Add(1)
			m.cfg.Logger.Debug("raft mux: TLS handshake refused", "remote", conn.RemoteAddr(), "err", err)
			_ = conn.Close()
			return
		}
		conn = tc
	}
	var hdr [muxHeaderLen]byte
	_ = conn.SetReadDeadline(time.Now().Add(m.cfg.HandshakeTimeout))
	if _, err := io.ReadFull(conn, hdr[:]); err != nil || Protocol(hdr[0]) != ProtoRaft {
		m.badHeader.Add(1)
		_ = conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	shard := binary.BigEndian.Uint32(hdr[1:])

	m.mu.Lock()
	s, ok := m.shards[shard]
	m.mu.Unlock()
	if !ok {
		m.unknownShard.Add(1)
		_ = conn.Close()
		return
	}
	select {
	case s.conns <- conn:
		m.accepted.Add(1)
	case <-s.done:
		m.unknownShard.Add(1)
		_ = conn.Close()
	default:
		m.backlogFull.Add(1)
		_ = conn.Close()
	}
}

// shardStream is one shard's raft.StreamLayer on the mux.
type shardStream struct {
	mux   *Mux
	shard uint32
	conns chan net.Conn

	closeOnce sync.Once
	done      chan struct{}

	// live holds every connection of this shard's raft transport: inbound
	// ones handed out by Accept and outbound ones made by Dial. raft's
	// NetworkTransport closes neither when it shuts down (an inbound
	// handler blocks reading until the peer hangs up; a replication
	// pipeline blocks waiting for responses), so the stream closes them:
	// a closed replica leaves no goroutine behind and its shutdown cannot
	// hang on a silent peer.
	liveMu sync.Mutex
	live   map[*trackedConn]struct{}
}

// trackedConn removes itself from its stream's live set when closed.
type trackedConn struct {
	net.Conn
	s    *shardStream
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.liveMu.Lock()
		delete(c.s.live, c)
		c.s.liveMu.Unlock()
	})
	return c.Conn.Close()
}

// Accept implements net.Listener for raft's NetworkTransport.
func (s *shardStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		s.liveMu.Lock()
		defer s.liveMu.Unlock()
		select {
		case <-s.done:
			_ = c.Close()
			return nil, net.ErrClosed
		default:
		}
		tc := &trackedConn{Conn: c, s: s}
		s.live[tc] = struct{}{}
		return tc, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

// Close unregisters the shard and closes its connections: those not yet
// accepted, those raft is serving and those it dialed.
func (s *shardStream) Close() error {
	s.closeOnce.Do(func() {
		s.mux.mu.Lock()
		if s.mux.shards[s.shard] == s {
			delete(s.mux.shards, s.shard)
		}
		s.mux.mu.Unlock()
		s.liveMu.Lock()
		close(s.done)
		live := s.live
		s.live = nil
		s.liveMu.Unlock()
		for c := range live {
			_ = c.Conn.Close()
		}
		for {
			select {
			case c := <-s.conns:
				_ = c.Close()
			default:
				return
			}
		}
	})
	return nil
}

// Addr is the mux's listener address: every shard shares it.
func (s *shardStream) Addr() net.Addr { return s.mux.addr }

// Dial opens a connection to the node at address and selects this shard.
func (s *shardStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := dialRaft(s.mux.cfg.Dial, address, s.shard, timeout)
	if err != nil {
		return nil, err
	}
	s.liveMu.Lock()
	defer s.liveMu.Unlock()
	select {
	case <-s.done:
		_ = c.Close()
		return nil, net.ErrClosed
	default:
	}
	tc := &trackedConn{Conn: c, s: s}
	s.live[tc] = struct{}{}
	return tc, nil
}

// DialRaft connects to a node's mux and selects shard's raft group.
func DialRaft(address raft.ServerAddress, shard uint32, timeout time.Duration) (net.Conn, error) {
	return dialRaft(nil, address, shard, timeout)
}

// dialRaft is DialRaft through dial (nil: plain TCP).
func dialRaft(dial func(context.Context, string) (net.Conn, error), address raft.ServerAddress, shard uint32, timeout time.Duration) (net.Conn, error) {
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	conn, err := dial(ctx, string(address))
	cancel()
	if err != nil {
		return nil, err
	}
	var hdr [muxHeaderLen]byte
	hdr[0] = byte(ProtoRaft)
	binary.BigEndian.PutUint32(hdr[1:], shard)
	_ = conn.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(hdr[:]); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("cluster: raft handshake with %s shard %d: %w", address, shard, err)
	}
	_ = conn.SetWriteDeadline(time.Time{})
	return conn, nil
}

// NewRaftTransport returns a raft transport over stream (a shard's stream
// layer from Mux.StreamLayer, possibly wrapped).
//
// It works around a deadlock in hashicorp/raft v1.7.3's pipelined
// replication: when the leader's pipeline decoder stops (a follower
// rejected an append, or answered with a newer term) it stops draining the
// pipeline's response channel; NetworkTransport's decoder then blocks
// handing over the next response, the next AppendEntries blocks handing
// its future to that decoder, and the replication goroutine — which would
// only now notice the decoder stopped — hangs for good, and with it the
// group's Shutdown. The returned transport drains every pipeline's
// responses into a buffer of pipelineBuffer futures, far more than the
// sends raft can make before it sees the decoder stopped.
func NewRaftTransport(stream raft.StreamLayer, timeout time.Duration, logger hclog.Logger) raft.Transport {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	return &raftTransport{NetworkTransport: raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: timeout,
		Logger:  logger,
	})}
}

// pipelineBuffer bounds the responses a drained pipeline holds for raft.
const pipelineBuffer = 256

// raftTransport is a NetworkTransport whose pipelines are drained and whose
// Close waits for the heartbeats being handled.
type raftTransport struct {
	*raft.NetworkTransport
	// hb is held shared by each heartbeat raft handles on the transport's
	// connection goroutine (NetworkTransport's fast path), and taken by
	// Close: raft checks that it is running only as a heartbeat starts,
	// so one that began before Shutdown could write the term to a log the
	// node has closed since ("failed to save current term": a panic).
	hb     sync.RWMutex
	closed bool
}

// SetHeartbeatHandler implements raft.Transport: cb runs under hb, and not
// at all once the transport is closed.
func (t *raftTransport) SetHeartbeatHandler(cb func(raft.RPC)) {
	if cb == nil {
		t.NetworkTransport.SetHeartbeatHandler(nil)
		return
	}
	t.NetworkTransport.SetHeartbeatHandler(func(rpc raft.RPC) {
		t.hb.RLock()
		defer t.hb.RUnlock()
		if t.closed {
			rpc.Respond(nil, raft.ErrTransportShutdown)
			return
		}
		cb(rpc)
	})
}

// Close implements raft.WithClose: it waits for the heartbeats under way
// and refuses later ones, then closes the transport.
func (t *raftTransport) Close() error {
	t.hb.Lock()
	t.closed = true
	t.hb.Unlock()
	return t.NetworkTransport.Close()
}

// AppendEntriesPipeline implements raft.Transport.
func (t *raftTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	p, err := t.NetworkTransport.AppendEntriesPipeline(id, target)
	if err != nil {
		return nil, err
	}
	d := &drainedPipeline{AppendPipeline: p, out: make(chan raft.AppendFuture, pipelineBuffer),
		stop: make(chan struct{}), done: make(chan struct{})}
	go d.drain()
	return d, nil
}

// drainedPipeline moves its pipeline's responses into a buffered channel
// so the pipeline never blocks on a consumer that went away.
type drainedPipeline struct {
	raft.AppendPipeline
	out        chan raft.AppendFuture
	stop, done chan struct{}
	once       sync.Once
}

func (d *drainedPipeline) drain() {
	defer close(d.done)
	in := d.AppendPipeline.Consumer()
	for {
		select {
		case f := <-in:
			select {
			case d.out <- f:
			case <-d.stop:
				return
			}
		case <-d.stop:
			return
		}
	}
}

// Consumer implements raft.AppendPipeline.
func (d *drainedPipeline) Consumer() <-chan raft.AppendFuture { return d.out }

// Close implements raft.AppendPipeline.
func (d *drainedPipeline) Close() error {
	d.once.Do(func() { close(d.stop) })
	err := d.AppendPipeline.Close()
	<-d.done
	return err
}
