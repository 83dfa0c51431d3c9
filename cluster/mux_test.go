package cluster

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/elixirscope/scope/internal/testwait"
)

func newTestMux(t *testing.T) *Mux {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMux(ln, DefaultMuxConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func TestMuxDispatchesByShard(t *testing.T) {
	m := newTestMux(t)
	s3, err := m.StreamLayer(3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.StreamLayer(3); err == nil {
		t.Fatal("registering shard 3 twice succeeded")
	}

	c, err := s3.Dial(raft.ServerAddress(m.Addr().String()), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	srv, err := s3.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	buf := make([]byte, 5)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v: the header leaked into the stream or data was lost", buf, err)
	}

	// Unknown shard and garbage headers are closed and counted.
	unknown, err := DialRaft(raft.ServerAddress(m.Addr().String()), 99, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer unknown.Close()
	garbage, err := net.Dial("tcp", m.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer garbage.Close()
	_, _ = garbage.Write([]byte{0xff, 0, 0, 0, 1})
	testwait.For(t, "refusals counted", 5*time.Second, func() bool {
		st := m.Stats()
		return st.UnknownShard == 1 && st.BadHeader == 1
	})
	if st := m.Stats(); st.Accepted != 1 {
		t.Fatalf("stats %+v: want exactly one accepted connection", st)
	}

	// Closing a stream layer unregisters the shard: Accept fails, and the
	// shard can be registered again (a replica reopened).
	if err := s3.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s3.Accept(); err == nil {
		t.Fatal("Accept after Close succeeded")
	}
	if _, err := m.StreamLayer(3); err != nil {
		t.Fatalf("re-registering shard 3 after close: %v", err)
	}
}

type countingFSM struct {
	mu      sync.Mutex
	applied []string
}

func (f *countingFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, string(l.Data))
	return nil
}
func (f *countingFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, fmt.Errorf("not used") }
func (f *countingFSM) Restore(io.ReadCloser) error         { return fmt.Errorf("not used") }

// count is the number of distinct entries applied: an apply retried after
// a lost leadership may have committed twice.
func (f *countingFSM) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := make(map[string]bool, len(f.applied))
	for _, a := range f.applied {
		seen[a] = true
	}
	return len(seen)
}

// TestMuxCarriesRealRaftGroups runs two independent three-voter raft groups
// (shards 0 and 1) over three muxes, one listener per node, and checks that
// each group elects a leader and replicates to all of its members.
func TestMuxCarriesRealRaftGroups(t *testing.T) {
	const nodes, shards = 3, 2
	muxes := make([]*Mux, nodes)
	for i := range muxes {
		muxes[i] = newTestMux(t)
	}
	var servers []raft.Server
	for i, m := range muxes {
		servers = append(servers, raft.Server{ID: raft.ServerID(fmt.Sprint("n", i)),
			Address: raft.ServerAddress(m.Addr().String())})
	}
	fsms := make([][]*countingFSM, shards)
	rafts := make([][]*raft.Raft, shards)
	for shard := range shards {
		for i, m := range muxes {
			stream, err := m.StreamLayer(uint32(shard))
			if err != nil {
				t.Fatal(err)
			}
			trans := raft.NewNetworkTransportWithLogger(stream, 2, time.Second, hclog.NewNullLogger())
			conf := raft.DefaultConfig()
			conf.LocalID = servers[i].ID
			conf.Logger = hclog.NewNullLogger()
			conf.HeartbeatTimeout = 200 * time.Millisecond
			conf.ElectionTimeout = 200 * time.Millisecond
			conf.LeaderLeaseTimeout = 100 * time.Millisecond
			store := raft.NewInmemStore()
			fsm := &countingFSM{}
			r, err := raft.NewRaft(conf, fsm, store, store, raft.NewInmemSnapshotStore(), trans)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Shutdown().Error() })
			if i == 0 {
				if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
					t.Fatal(err)
				}
			}
			fsms[shard] = append(fsms[shard], fsm)
			rafts[shard] = append(rafts[shard], r)
		}
	}
	for shard := range shards {
		for k := range 3 {
			// A leadership can move right after an election on a loaded
			// machine: the apply goes to the new leader (the same entry,
			// so one that committed after all is counted once).
			for {
				var leader *raft.Raft
				testwait.For(t, fmt.Sprintf("shard %d leader", shard), 10*time.Second, func() bool {
					for _, r := range rafts[shard] {
						if r.State() == raft.Leader {
							leader = r
							return true
						}
					}
					return false
				})
				err := leader.Apply([]byte(fmt.Sprint("s", shard, "-", k)), 5*time.Second).Error()
				if err == nil {
					break
				}
				if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) {
					t.Fatalf("shard %d apply: %v", shard, err)
				}
			}
		}
		for i, f := range fsms[shard] {
			testwait.For(t, fmt.Sprintf("shard %d node %d applied", shard, i), 10*time.Second,
				func() bool { return f.count() == 3 })
		}
	}
}

// TestRaftTransportCloseWaitsForHeartbeats: raft handles a heartbeat on the
// transport's connection goroutine and checks that it runs only as the
// heartbeat starts; the node closes the raft log after closing the
// transport, so Close must wait for a heartbeat under way (one that wrote
// the term to the closed log panicked: "failed to save current term", seen
// in a 5-run check of the cluster tests).
func TestRaftTransportCloseWaitsForHeartbeats(t *testing.T) {
	server, client := newTestMux(t), newTestMux(t)
	ss, err := server.StreamLayer(0)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := client.StreamLayer(0)
	if err != nil {
		t.Fatal(err)
	}
	st := NewRaftTransport(ss, time.Second, nil)
	ct := NewRaftTransport(cs, time.Second, nil)
	defer ct.(raft.WithClose).Close()
	entered, release, handled := make(chan struct{}), make(chan struct{}), make(chan struct{})
	st.SetHeartbeatHandler(func(rpc raft.RPC) {
		close(entered)
		<-release
		close(handled)
		rpc.Respond(&raft.AppendEntriesResponse{Term: 1, Success: true}, nil)
	})
	go func() {
		var resp raft.AppendEntriesResponse
		_ = ct.AppendEntries("server", raft.ServerAddress(server.Addr().String()), &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ID: []byte("client"), Addr: []byte("client")}, Term: 1}, &resp)
	}()
	<-entered
	closed := make(chan struct{})
	go func() {
		_ = st.(raft.WithClose).Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("Close returned while a heartbeat was being handled")
	case <-time.After(200 * time.Millisecond): // Close is waiting, as it must
	}
	close(release)
	<-closed
	select {
	case <-handled:
	default:
		t.Fatal("Close returned before the heartbeat was handled")
	}
}
