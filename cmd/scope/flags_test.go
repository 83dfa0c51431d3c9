package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/elixirscope/scope/node"
	"github.com/elixirscope/scope/rpc"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

func TestAgentFlags(t *testing.T) {
	def := node.DefaultConfig("", "")
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string // substring; "" means valid
		check   func(t *testing.T, c *agentConfig)
	}{
		{name: "dev defaults", args: []string{"-dev"}, check: func(t *testing.T, c *agentConfig) {
			if c.name != "dev" || c.dataDir != filepath.Join("data", "dev") || c.httpAddr != "127.0.0.1:7070" ||
				c.raftAddr != "127.0.0.1:7071" || c.node.Shards != 16 || c.shardsSet {
				t.Errorf("dev config: %+v", c)
			}
			if c.node.ID != "dev" || c.node.DataDir != c.dataDir {
				t.Errorf("node config not derived: ID %q DataDir %q", c.node.ID, c.node.DataDir)
			}
			// Defaults come from the node and rpc packages.
			if c.node.Pool.RingCapacity != def.Pool.RingCapacity || c.node.CommitTimeout != def.CommitTimeout {
				t.Errorf("pool/commit defaults differ from node.DefaultConfig")
			}
			if c.rpc.Limits != c.node.Correlator.Limits {
				t.Errorf("rpc limits %+v differ from correlator limits %+v", c.rpc.Limits, c.node.Correlator.Limits)
			}
		}},
		{name: "no dev: host name, data/<name>", args: nil, check: func(t *testing.T, c *agentConfig) {
			if c.name == "" || c.name == "dev" || c.dataDir != filepath.Join("data", c.name) {
				t.Errorf("name %q dataDir %q", c.name, c.dataDir)
			}
		}},
		{name: "explicit everything", args: []string{"-dev", "-name", "n1", "-data-dir", "/tmp/x", "-http", ":0", "-insecure",
			"-raft", "127.0.0.1:0", "-shards", "8", "-ring-capacity", "1024", "-batch-size", "128",
			"-flush-interval", "5ms", "-writers", "3", "-commit-timeout", "2s", "-payload-limit", "100",
			"-retention-max-age", "1h", "-retention-max-events", "5000", "-log-level", "debug", "-log-format", "json"},
			check: func(t *testing.T, c *agentConfig) {
				p := c.node.Pool
				if c.name != "n1" || c.dataDir != "/tmp/x" || c.node.Shards != 8 || !c.shardsSet ||
					p.RingCapacity != 1024 || p.BatchSize != 128 || p.FlushInterval != 5*time.Millisecond ||
					p.Writers != 3 || c.node.CommitTimeout != 2*time.Second ||
					c.node.Correlator.Limits.MaxPayloadBytes != 100 || c.rpc.Limits.MaxPayloadBytes != 100 ||
					c.node.RetentionMaxAge != time.Hour || c.node.RetentionMaxEvents != 5000 {
					t.Errorf("config: %+v", c)
				}
			}},
		{name: "shards zero", args: []string{"-shards", "0"}, wantErr: "-shards 0: must be in 1..4096"},
		{name: "shards above the pool's default bound", args: []string{"-dev", "-shards", "2048"}, check: func(t *testing.T, c *agentConfig) {
			if c.node.Pool.MaxShards < 2048 {
				t.Fatalf("Pool.MaxShards %d with -shards 2048: the node would refuse to start", c.node.Pool.MaxShards)
			}
			if err := c.node.Pool.Validate(); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "shards too many", args: []string{"-shards", "5000"}, wantErr: "-shards 5000"},
		{name: "ring not power of two", args: []string{"-ring-capacity", "1000"}, wantErr: "-ring-capacity = 1000"},
		{name: "batch above ring", args: []string{"-ring-capacity", "1024", "-batch-size", "2048"}, wantErr: "-batch-size = 2048"},
		{name: "writers zero", args: []string{"-writers", "0"}, wantErr: "-writers = 0"},
		{name: "writers and writers-max", args: []string{"-writers", "2", "-writers-max", "4"}, wantErr: "-writers is a fixed count"},
		{name: "writers-min alone", args: []string{"-writers-min", "2"}, wantErr: "-writers-min needs -writers-max"},
		{name: "writers-min above max", args: []string{"-writers-min", "5", "-writers-max", "4"}, wantErr: "-writers-min = 5, want 1..-writers-max (4)"},
		{name: "scaling writers", args: []string{"-dev", "-writers-min", "2", "-writers-max", "6"}, check: func(t *testing.T, c *agentConfig) {
			if p := c.node.Pool; p.MinWriters != 2 || p.MaxWriters != 6 {
				t.Fatalf("pool writers %d..%d, want 2..6", p.MinWriters, p.MaxWriters)
			}
		}},
		{name: "bad http", args: []string{"-http", "7070"}, wantErr: `-http "7070": want host:port`},
		{name: "same addrs", args: []string{"-http", "127.0.0.1:9", "-raft", "127.0.0.1:9"}, wantErr: "must differ"},
		{name: "log level", args: []string{"-log-level", "loud"}, wantErr: `-log-level "loud"`},
		{name: "log format", args: []string{"-log-format", "xml"}, wantErr: `-log-format "xml"`},
		{name: "payload limit", args: []string{"-payload-limit", "0"}, wantErr: "-payload-limit 0"},
		{name: "commit timeout", args: []string{"-commit-timeout", "0s"}, wantErr: "-commit-timeout 0s"},
		{name: "negative age", args: []string{"-retention-max-age", "-1h"}, wantErr: "-retention-max-age"},
		{name: "disk guard defaults", args: []string{"-dev"}, check: func(t *testing.T, c *agentConfig) {
			if c.node.Disk.MinFree != 256<<20 || c.node.Disk.Reserve != 128<<20 || c.node.Store.MemTableSize != 64<<20 {
				t.Errorf("disk defaults: %+v, memtable %d", c.node.Disk, c.node.Store.MemTableSize)
			}
		}},
		{name: "disk guard sizes", args: []string{"-dev", "-min-free-disk", "1GiB", "-disk-reserve", "100MiB", "-memtable-size", "8MiB"},
			check: func(t *testing.T, c *agentConfig) {
				if c.node.Disk.MinFree != 1<<30 || c.node.Disk.Reserve != 100<<20 || c.node.Store.MemTableSize != 8<<20 {
					t.Errorf("disk config: %+v, memtable %d", c.node.Disk, c.node.Store.MemTableSize)
				}
			}},
		{name: "disk guard off", args: []string{"-dev", "-min-free-disk", "0", "-disk-reserve", "0"}, check: func(t *testing.T, c *agentConfig) {
			if c.node.Disk.MinFree != 0 || c.node.Disk.Reserve != 0 {
				t.Errorf("disk config: %+v", c.node.Disk)
			}
		}},
		{name: "disk size unit", args: []string{"-min-free-disk", "1GB"}, wantErr: `"1GB": want a byte count`},
		{name: "reserve without guard", args: []string{"-min-free-disk", "0"}, wantErr: "-disk-reserve 128MiB: needs -min-free-disk"},
		{name: "min free below margin", args: []string{"-min-free-disk", "100MiB"}, wantErr: "-min-free-disk 100MiB: must be 0 or at least 201.6 MiB with -memtable-size 64MiB"},
		{name: "memtable too small", args: []string{"-memtable-size", "4KiB"}, wantErr: "-memtable-size 4KiB"},
		{name: "raft log size", args: []string{"-dev", "-raft-log-size", "16MiB"}, check: func(t *testing.T, c *agentConfig) {
			if c.node.Raft.LogBytes != 16<<20 {
				t.Errorf("raft log bytes %d, want 16MiB", c.node.Raft.LogBytes)
			}
		}},
		{name: "raft log size default and off", args: []string{"-dev", "-raft-log-size", "0"}, check: func(t *testing.T, c *agentConfig) {
			if c.node.Raft.LogBytes != 0 || node.DefaultRaftTiming().LogBytes != 128<<20 {
				t.Errorf("raft log bytes %d (default %d)", c.node.Raft.LogBytes, node.DefaultRaftTiming().LogBytes)
			}
		}},
		{name: "block cache default", args: []string{"-dev"}, check: func(t *testing.T, c *agentConfig) {
			if want := int64(node.DefaultBlockCacheSize(1)); c.node.Store.CacheSize != want || want < 64<<20 {
				t.Errorf("block cache %d, want %d (a quarter of memory, at least 64MiB)", c.node.Store.CacheSize, want)
			}
		}},
		{name: "block cache size", args: []string{"-dev", "-block-cache-size", "1GiB"}, check: func(t *testing.T, c *agentConfig) {
			if c.node.Store.CacheSize != 1<<30 {
				t.Errorf("block cache %d, want 1GiB", c.node.Store.CacheSize)
			}
		}},
		{name: "block cache too small", args: []string{"-block-cache-size", "512KiB"}, wantErr: "-block-cache-size 512KiB: must be at least 1MiB"},
		{name: "raft log size too small", args: []string{"-raft-log-size", "64KiB"}, wantErr: "-raft-log-size 64KiB: must be 0 (entries only) or at least 1MiB"},
		{name: "stray argument", args: []string{"-dev", "extra"}, wantErr: "unexpected arguments"},
		{name: "unknown flag", args: []string{"-gossipp", "x"}, wantErr: "flag provided but not defined"},

		// Cluster mode.
		{name: "cluster defaults", args: []string{"-join", "10.0.0.1:7072"}, check: func(t *testing.T, c *agentConfig) {
			if c.dev || c.replicas != 3 || c.replicasSet || c.gossipAddr != "127.0.0.1:7072" || c.bootstrapExpect != 0 ||
				c.gossipProfile != "lan" || len(c.join) != 1 || c.join[0] != "10.0.0.1:7072" {
				t.Errorf("cluster config: %+v", c)
			}
		}},
		{name: "cluster everything", args: []string{"-name", "n2", "-gossip", "127.0.0.1:0", "-join", "127.0.0.1:1,127.0.0.1:2",
			"-join", "127.0.0.1:3", "-bootstrap-expect", "3", "-replicas", "5", "-gossip-key", "MDEyMzQ1Njc4OWFiY2RlZg==",
			"-gossip-key", "ZmVkY2JhOTg3NjU0MzIxMA==", "-gossip-profile", "local", "-http", "0.0.0.0:7070",
			"-advertise-http", "10.0.0.2:7070", "-raft", "0.0.0.0:7071", "-advertise-raft", "10.0.0.2:7071",
			"-advertise-gossip", "10.0.0.2:7072", "-insecure"},
			check: func(t *testing.T, c *agentConfig) {
				if c.replicas != 5 || !c.replicasSet || c.bootstrapExpect != 3 || len(c.join) != 3 || c.join[2] != "127.0.0.1:3" ||
					len(c.gossipKeys) != 2 || string(c.gossipKeys[0]) != "0123456789abcdef" || c.gossipProfile != "local" ||
					c.advertiseHTTP != "10.0.0.2:7070" || c.advertiseRaft != "10.0.0.2:7071" || c.advertiseGossip != "10.0.0.2:7072" {
					t.Errorf("cluster config: %+v", c)
				}
			}},
		{name: "dev is R=1", args: []string{"-dev"}, check: func(t *testing.T, c *agentConfig) {
			if c.replicas != 1 {
				t.Errorf("dev replicas %d", c.replicas)
			}
		}},
		{name: "dev with join", args: []string{"-dev", "-join", "127.0.0.1:7072"}, wantErr: "-join: -dev runs one node alone"},
		{name: "dev with expect", args: []string{"-dev", "-bootstrap-expect", "3"}, wantErr: "-bootstrap-expect: -dev runs one node alone"},
		{name: "dev with replicas", args: []string{"-dev", "-replicas", "3"}, wantErr: "-replicas: -dev"},
		{name: "dev with gossip key", args: []string{"-dev", "-gossip-key", "MDEyMzQ1Njc4OWFiY2RlZg=="}, wantErr: "-gossip-key: -dev"},
		// The Consul way: the first founder waits for the others to join it.
		{name: "expect without join", args: []string{"-bootstrap-expect", "3"}, check: func(t *testing.T, c *agentConfig) {
			if c.bootstrapExpect != 3 || len(c.join) != 0 {
				t.Errorf("expect %d, join %q", c.bootstrapExpect, c.join)
			}
		}},
		{name: "expect one alone", args: []string{"-bootstrap-expect", "1"}, check: func(t *testing.T, c *agentConfig) {
			if c.bootstrapExpect != 1 {
				t.Errorf("expect %d", c.bootstrapExpect)
			}
		}},
		{name: "negative expect", args: []string{"-bootstrap-expect", "-1"}, wantErr: "-bootstrap-expect -1: must be in 0..64"},
		{name: "replicas zero", args: []string{"-replicas", "0"}, wantErr: "-replicas 0: must be in 1..7"},
		{name: "replicas eight", args: []string{"-replicas", "8"}, wantErr: "-replicas 8: must be in 1..7"},
		{name: "gossip host name", args: []string{"-gossip", "localhost:7072"}, wantErr: `-gossip "localhost:7072": want ip:port with an IP address`},
		{name: "gossip equals http", args: []string{"-gossip", "127.0.0.1:7070"}, wantErr: "must differ from -http and -raft"},
		{name: "bad gossip key", args: []string{"-gossip-key", "c2hvcnQ="}, wantErr: "gossip key decodes to 5 bytes"},
		{name: "bad profile", args: []string{"-gossip-profile", "wan"}, wantErr: `-gossip-profile "wan": want lan or local`},
		{name: "negative stabilization", args: []string{"-stabilization-time", "-1s"}, wantErr: `-stabilization-time -1s: must not be negative`},
		{name: "bad join", args: []string{"-join", "nohost"}, wantErr: `-join "nohost": want the gossip address`},
		{name: "wildcard http needs advertise", args: []string{"-join", "127.0.0.1:1", "-http", "0.0.0.0:7070", "-insecure"},
			wantErr: `-http "0.0.0.0:7070" binds every interface: pass -advertise-http`},
		{name: "wildcard raft needs advertise", args: []string{"-join", "127.0.0.1:1", "-raft", ":7071", "-insecure"},
			wantErr: `-raft ":7071" binds every interface: pass -advertise-raft`},
		// Secure by default (agent_tls.go).
		{name: "plaintext on a public http address", args: []string{"-join", "127.0.0.1:1", "-http", "0.0.0.0:7070", "-advertise-http", "10.0.0.2:7070"},
			wantErr: "-http 0.0.0.0:7070 is not a loopback address and TLS is off: pass -tls-cert/-tls-key/-tls-ca to serve TLS, or -insecure to serve plaintext anyway"},
		{name: "plaintext on a public raft address", args: []string{"-join", "127.0.0.1:1", "-raft", "10.0.0.2:7071"},
			wantErr: "-raft 10.0.0.2:7071 is not a loopback address and TLS is off"},
		{name: "plaintext on a public gossip address", args: []string{"-join", "127.0.0.1:1", "-gossip", "10.0.0.2:7072"},
			wantErr: "-gossip 10.0.0.2:7072 is not a loopback address and TLS is off"},
		{name: "dev on a public address", args: []string{"-dev", "-http", "0.0.0.0:7070"}, wantErr: "-http 0.0.0.0:7070 is not a loopback address"},
		{name: "dev insecure on a public address", args: []string{"-dev", "-http", "0.0.0.0:7070", "-insecure"}, check: func(t *testing.T, c *agentConfig) {
			if !c.tls.insecure || c.tls.on() {
				t.Errorf("tls flags: %+v", c.tls)
			}
		}},
		{name: "localhost is loopback", args: []string{"-dev", "-http", "localhost:7070", "-raft", "[::1]:7071"}, check: func(t *testing.T, c *agentConfig) {}},
		{name: "tls flags go together", args: []string{"-dev", "-tls-cert", "c.crt", "-tls-ca", "ca.crt"}, wantErr: "-tls-cert, -tls-key and -tls-ca go together"},
		{name: "client auth needs tls", args: []string{"-dev", "-tls-client-auth"}, wantErr: "-tls-client-auth: needs -tls-cert"},
		{name: "insecure contradicts tls", args: []string{"-dev", "-insecure", "-tls-cert", "c", "-tls-key", "k", "-tls-ca", "ca"},
			wantErr: "-insecure: contradicts -tls-cert"},
		{name: "tls on a public address", args: []string{"-join", "127.0.0.1:1", "-http", "10.0.0.2:7070", "-raft", "10.0.0.2:7071",
			"-tls-cert", "c", "-tls-key", "k", "-tls-ca", "ca"}, check: func(t *testing.T, c *agentConfig) {
			if !c.tls.on() || c.tls.cert != "c" || c.tls.key != "k" || c.tls.ca != "ca" {
				t.Errorf("tls flags: %+v", c.tls)
			}
		}},
		{name: "advertise port zero", args: []string{"-advertise-http", "10.0.0.1:0"}, wantErr: "-advertise-http \"10.0.0.1:0\": want a reachable host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			c, _, err := parseAgentFlags(tc.args, &stderr)
			if tc.wantErr != "" {
				msg := ""
				if err != nil {
					msg = err.Error() + stderr.String()
				}
				if !strings.Contains(msg, tc.wantErr) {
					t.Fatalf("error %q (stderr %q), want %q", err, stderr.String(), tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			tc.check(t, c)
		})
	}
}

func TestPrepareDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	if n, err := prepareDataDir(dir, 8, true, "n1"); err != nil || n != 8 {
		t.Fatalf("new dir: %d, %v", n, err)
	}
	if n, err := prepareDataDir(dir, 8, true, "n1"); err != nil || n != 8 {
		t.Fatalf("same count: %d, %v", n, err)
	}
	// Not given: the stored count is adopted.
	if n, err := prepareDataDir(dir, 16, false, "n1"); err != nil || n != 8 {
		t.Fatalf("implicit count: %d, %v", n, err)
	}
	// Given and different: refused, naming both counts.
	_, err := prepareDataDir(dir, 16, true, "n1")
	if !errors.Is(err, errShardsMismatch) || !strings.Contains(err.Error(), "-shards 16") ||
		!strings.Contains(err.Error(), "created with 8 shards") {
		t.Fatalf("mismatch: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, metaFile), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := prepareDataDir(dir, 8, true, "n1"); !errors.Is(err, errBadMeta) {
		t.Fatalf("corrupt meta: %v", err)
	}
}

// TestClusterDataDir: the data directory's mode, shard count and R are
// fixed at creation; -join addresses are remembered.
func TestClusterDataDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	want := dataDirMeta{Format: metaFormat, Shards: 8, Node: "n1", Mode: modeCluster, Replicas: 3, Join: []string{"127.0.0.1:1"}}
	m, created, err := openDataDir(dir, want, true, false)
	if err != nil || !created || m.Replicas != 3 || m.Mode != modeCluster {
		t.Fatalf("new dir: %+v %v %v", m, created, err)
	}
	// R not given: adopted. Given and equal: fine. Given and different: refused.
	if m, _, err := openDataDir(dir, dataDirMeta{Format: metaFormat, Shards: 16, Mode: modeCluster, Replicas: 5}, false, false); err != nil ||
		m.Replicas != 3 || m.Shards != 8 {
		t.Fatalf("adopt: %+v %v", m, err)
	}
	_, _, err = openDataDir(dir, dataDirMeta{Format: metaFormat, Shards: 8, Mode: modeCluster, Replicas: 5}, false, true)
	if !errors.Is(err, errReplicasMismatch) || !strings.Contains(err.Error(), "-replicas 5") || !strings.Contains(err.Error(), "created with -replicas 3") {
		t.Fatalf("replicas mismatch: %v", err)
	}
	// -dev on a cluster directory, and a cluster node on a dev directory.
	if _, err := prepareDataDir(dir, 8, false, "n1"); !errors.Is(err, errModeMismatch) || !strings.Contains(err.Error(), "drop -dev") {
		t.Fatalf("dev on cluster dir: %v", err)
	}
	devDir := filepath.Join(t.TempDir(), "dev")
	if _, err := prepareDataDir(devDir, 8, false, "dev"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openDataDir(devDir, want, false, false); !errors.Is(err, errModeMismatch) || !strings.Contains(err.Error(), "run it with -dev") {
		t.Fatalf("cluster on dev dir: %v", err)
	}
	// Format 1 directories (before clustering) are dev directories.
	v1 := filepath.Join(t.TempDir(), "v1")
	if err := os.MkdirAll(v1, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(v1, metaFile), []byte(`{"format":1,"shards":4,"node":"dev"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := prepareDataDir(v1, 16, false, "dev"); err != nil || n != 4 {
		t.Fatalf("format 1: %d %v", n, err)
	}
	// updateMeta persists.
	if err := updateMeta(dir, &m, func(m *dataDirMeta) { m.Formed = true; m.Join = []string{"127.0.0.1:2"} }); err != nil {
		t.Fatal(err)
	}
	if m, _, err := openDataDir(dir, want, false, false); err != nil || !m.Formed || len(m.Join) != 1 || m.Join[0] != "127.0.0.1:2" {
		t.Fatalf("after update: %+v %v", m, err)
	}
}

// TestClusterStartNeedsAWay: a cluster node on a new data directory that is
// told neither to form nor to join a cluster is refused before anything is
// written, naming the flags to pass; the same directory then works with -dev.
func TestClusterStartNeedsAWay(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	cfg, _, err := parseAgentFlags([]string{"-data-dir", dir, "-http", "127.0.0.1:0", "-raft", "127.0.0.1:0", "-gossip", "127.0.0.1:0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, err = startAgent(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if !errors.Is(err, errNewDataDir) || !strings.Contains(err.Error(), "-bootstrap-expect N") || !strings.Contains(err.Error(), "-join") ||
		!strings.Contains(err.Error(), "-dev") {
		t.Fatalf("new dir without a way in: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, metaFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("metadata written for a refused start: %v", err)
	}
}

func TestQueryFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
		check   func(*scopev1.EventsRequest) bool
	}{
		{args: nil, check: func(r *scopev1.EventsRequest) bool { return r.Limit == 100 && r.Arity == nil }},
		{args: []string{"-kind", "call", "-kind", "RETURN,KIND_EXCEPTION"}, check: func(r *scopev1.EventsRequest) bool {
			return len(r.Kinds) == 3 && r.Kinds[0] == scopev1.Kind_KIND_CALL && r.Kinds[2] == scopev1.Kind_KIND_EXCEPTION
		}},
		{args: []string{"-module", "M", "-function", "f", "-arity", "0"}, check: func(r *scopev1.EventsRequest) bool {
			return r.Arity != nil && *r.Arity == 0 && r.Function == "f"
		}},
		{args: []string{"-from", "2024-05-01T12:00:00Z", "-to", "1714564800000000001"}, check: func(r *scopev1.EventsRequest) bool {
			return r.FromNs == 1714564800000000000 && r.ToNs == 1714564800000000001
		}},
		{args: []string{"-origin", "a", "-pid", "p", "-desc", "-limit", "7", "-cursor", "c", "-partial"},
			check: func(r *scopev1.EventsRequest) bool {
				return r.Origin == "a" && r.Pid == "p" && r.Descending && r.Limit == 7 && r.Cursor == "c" && r.AllowPartial
			}},
		{args: []string{"-kind", "NOPE"}, wantErr: `kind "NOPE"`},
		{args: []string{"-kind", "UNSPECIFIED"}, wantErr: `kind "UNSPECIFIED"`},
		{args: []string{"-pid", "p"}, wantErr: "-pid \"p\": needs -origin"},
		{args: []string{"-function", "f"}, wantErr: "needs -module"},
		{args: []string{"-module", "m", "-arity", "2"}, wantErr: "-arity 2: needs -function"},
		{args: []string{"-arity", "x"}, wantErr: `arity "x"`},
		{args: []string{"-from", "yesterday"}, wantErr: `-from "yesterday": want RFC 3339`},
		{args: []string{"-from", "20", "-to", "10"}, wantErr: "must be after -from"},
		{args: []string{"-limit", "0"}, wantErr: "-limit 0"},
		{args: []string{"-limit", "10001"}, wantErr: "-limit 10001"},
	} {
		var q queryFlags
		var stderr bytes.Buffer
		fs := newFlagSet("query", "", &stderr)
		q.register(fs)
		err := fs.Parse(tc.args)
		var req *scopev1.EventsRequest
		if err == nil {
			req, err = q.request()
		}
		msg := stderr.String()
		if err != nil {
			msg = err.Error() + " " + msg
		}
		switch {
		case tc.wantErr != "" && !strings.Contains(msg, tc.wantErr):
			t.Errorf("%q: error %q, want %q", tc.args, msg, tc.wantErr)
		case tc.wantErr == "" && err != nil:
			t.Errorf("%q: unexpected error %v", tc.args, err)
		case tc.wantErr == "" && !tc.check(req):
			t.Errorf("%q: request %v", tc.args, req)
		}
	}
}

func TestClientCommandUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"ingest", "-batch", "0"}, "-batch 0"},
		{[]string{"ingest", "-durability", "maybe"}, `-durability "maybe"`},
		{[]string{"ingest", "a", "b"}, "at most one file"},
		{[]string{"query", "-addr", "https://x:1", "-ca", "/nonexistent/ca.crt"}, "-ca: open /nonexistent/ca.crt"},
		{[]string{"query", "-addr", "x:1", "-cert", "c.crt"}, "-cert and -key go together"},
		{[]string{"query", "-addr", "http://x:1", "-cert", "c.crt", "-key", "k"}, `-cert: the address "http://x:1" is not https`},
		{[]string{"cert", "node", "-dir", "d"}, "-name: required"},
		{[]string{"cert", "node", "-dir", "d", "-name", "n1"}, "-host: required"},
		{[]string{"cert", "client", "-dir", "d"}, "-name: required"},
		{[]string{"cert", "nope"}, "usage: scope cert init"},
		{[]string{"query", "-addr", "nohost"}, `-addr "nohost"`},
		{[]string{"tree"}, "missing event id"},
		{[]string{"tree", "a", "b"}, "want one event id"},
		{[]string{"stack", "-origin", "o"}, "-pid: required"},
		{[]string{"state", "-origin", "o", "-pid", "p"}, "-at: required"},
		{[]string{"flow", "-a", "o/p", "-b", "nopid"}, `-b "nopid": want origin/pid`},
		{[]string{"trace", "-direction", "up", "X"}, `-direction "up"`},
		{[]string{"tail", "-from", "1"}, "flag provided but not defined: -from"},
		{[]string{"bench", "-procs", "3", "-concurrency", "2"}, "-procs 3"},
		{[]string{"bench", "-batch", "0"}, "-batch 0"},
		{[]string{"bench", "-durability", "x"}, `-durability "x"`},
		{[]string{"bench", "-payload-bytes", "70000"}, "-payload-bytes 70000: must be in 0..65536"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != exitUsage || !strings.Contains(stderr.String(), tc.wantErr) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr.String(), exitUsage, tc.wantErr)
		}
	}
}

func TestReadEventsReportsLineAndField(t *testing.T) {
	for _, tc := range []struct {
		input   string
		wantErr string
		batches []int
	}{
		{input: `{"origin":"a","pid":"p","kind":"KIND_CALL","timestampNs":"1","module":"m","function":"f"}` + "\n\n# comment\n" +
			`{"origin":"a","pid":"p","kind":"KIND_RETURN","timestampNs":"2"}` + "\n" +
			`{"origin":"a","pid":"p","kind":"KIND_EXIT","timestampNs":"3"}`, batches: []int{2, 1}},
		{input: `{"origin":"a","pid":"p","kind":"KIND_CALL","timestampNs":"1","function":"f"}`,
			wantErr: "line 1: event.module: required for CALL"},
		{input: "\n" + `{"origin":"a","pid":"p","kind":"KIND_CALL","timestampNs":"1","modul":"m"}`,
			wantErr: "line 2: not a scope.v1.Event"},
		{input: `{"origin":"a","pid":"p","kind":"KIND_BOGUS","timestampNs":"1"}`, wantErr: "line 1:"},
		{input: `{"origin":"a","pid":"p","kind":"KIND_EXIT","timestampNs":"1","eventId":"nope"}`,
			wantErr: "line 1: event.event_id"},
	} {
		var batches []int
		err := readEvents(strings.NewReader(tc.input), 2, func(ev []*scopev1.Event, _ int, _ int64) error {
			batches = append(batches, len(ev))
			return nil
		})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("input %q: error %v, want %q", tc.input, err, tc.wantErr)
			}
			continue
		}
		if err != nil || len(batches) != len(tc.batches) || batches[0] != tc.batches[0] {
			t.Errorf("input %q: batches %v err %v, want %v", tc.input, batches, err, tc.batches)
		}
	}
}

func TestParseTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"", 0, true}, {"123", 123, true}, {"-5", -5, true},
		{"1970-01-01T00:00:01Z", 1e9, true}, {"2024-05-01T12:00:00.5+02:00", 1714557600500000000, true},
		{"3000-01-01T00:00:00Z", 0, false}, {"soon", 0, false},
	} {
		got, err := parseTime("at", tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseTime(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseFlagsInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		addr     string
		json     bool
		position []string
	}{
		{[]string{"ID", "-addr", "h:1"}, "h:1", false, []string{"ID"}},
		{[]string{"-json", "A", "-addr", "h:2", "B"}, "h:2", true, []string{"A", "B"}},
		{[]string{"-addr", "h:3", "--", "-json"}, "h:3", false, []string{"-json"}},
		{nil, defaultAddr, false, nil},
	} {
		var cf clientFlags
		var stderr bytes.Buffer
		fs := newFlagSet("x", "", &stderr)
		cf.register(fs)
		if code, ok := parseFlags(fs, tc.args); !ok {
			t.Fatalf("%q: exit %d: %s", tc.args, code, stderr.String())
		}
		if cf.addr != tc.addr || cf.json != tc.json || strings.Join(fs.Args(), " ") != strings.Join(tc.position, " ") {
			t.Errorf("%q: addr %q json %v args %q", tc.args, cf.addr, cf.json, fs.Args())
		}
	}
}

func TestSecurityFlags(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tokens := file("tokens", "# ops\nadmin "+strings.Repeat("ab", 32)+" ops\n")
	badTokens := file("bad-tokens", "admin "+strings.Repeat("ab", 32)+"\nsuperuser "+strings.Repeat("cd", 32)+"\n")
	keyring := file("keyring", "# primary first\n"+base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"+
		base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 16))+"\n")
	badKeyring := file("bad-keyring", base64.StdEncoding.EncodeToString(make([]byte, 32))+"\nc2hvcnQ=\n")
	cluster := []string{"-join", "127.0.0.1:1"}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, c *agentConfig)
	}{
		{name: "defaults", args: []string{"-dev"}, check: func(t *testing.T, c *agentConfig) {
			if c.rpc.MaxRequestBytes != 16<<20 || c.rpc.MaxEventsPerRequest != 10_000 || c.rpc.QueryTimeout != time.Minute ||
				c.rpc.MaxQueries != 256 || c.rpc.MaxQueriesPerCaller != 64 || c.rpc.MaxTails != 256 || c.rpc.MaxTailsPerCaller != 16 || c.tokens != nil {
				t.Errorf("defaults: %+v", c.rpc)
			}
		}},
		{name: "limits", args: []string{"-dev", "-max-request-bytes", "1MiB", "-max-events-per-request", "100", "-query-timeout", "5s",
			"-max-queries", "10", "-max-queries-per-caller", "2", "-max-tails", "4", "-max-tails-per-caller", "1"},
			check: func(t *testing.T, c *agentConfig) {
				r := c.rpc
				if r.MaxRequestBytes != 1<<20 || r.MaxEventsPerRequest != 100 || r.QueryTimeout != 5*time.Second ||
					r.MaxQueries != 10 || r.MaxQueriesPerCaller != 2 || r.MaxTails != 4 || r.MaxTailsPerCaller != 1 {
					t.Errorf("limits: %+v", r)
				}
			}},
		{name: "tokens in dev", args: []string{"-dev", "-auth-tokens", tokens}, check: func(t *testing.T, c *agentConfig) {
			if c.tokens == nil || c.tokens.Len() != 1 {
				t.Errorf("tokens %v", c.tokens)
			}
		}},
		{name: "tokens and keyring in a cluster", args: append([]string{"-auth-tokens", tokens, "-gossip-keyring", keyring}, cluster...),
			check: func(t *testing.T, c *agentConfig) {
				if len(c.gossipKeys) != 2 || len(c.gossipKeys[0]) != 32 || c.tokens.Len() != 1 {
					t.Errorf("keys %d, tokens %v", len(c.gossipKeys), c.tokens)
				}
			}},
		{name: "tokens need a node credential", args: append([]string{"-auth-tokens", tokens}, cluster...),
			wantErr: "-auth-tokens: nodes call each other's node API, which accepts no client token: pass -gossip-keyring"},
		{name: "bad token line", args: []string{"-dev", "-auth-tokens", badTokens}, wantErr: `line 2: unknown role "superuser"`},
		{name: "missing token file", args: []string{"-dev", "-auth-tokens", filepath.Join(dir, "none")}, wantErr: "-auth-tokens open"},
		{name: "bad keyring line", args: append([]string{"-gossip-keyring", badKeyring}, cluster...), wantErr: "bad-keyring: line 2:"},
		{name: "keyring and key", args: append([]string{"-gossip-keyring", keyring, "-gossip-key", base64.StdEncoding.EncodeToString(make([]byte, 16))}, cluster...),
			wantErr: "-gossip-keyring and -gossip-key"},
		{name: "keyring in dev", args: []string{"-dev", "-gossip-keyring", keyring}, wantErr: "-gossip-keyring: -dev runs one node alone"},
		{name: "request bytes", args: []string{"-dev", "-max-request-bytes", "100"}, wantErr: "-max-request-bytes 100: must be in 1KiB..1GiB"},
		{name: "events per request", args: []string{"-dev", "-max-events-per-request", "0"}, wantErr: "-max-events-per-request 0: must be at least 1"},
		{name: "per caller above total", args: []string{"-dev", "-max-queries", "4", "-max-queries-per-caller", "5"},
			wantErr: "-max-queries-per-caller 5: must not exceed -max-queries 4"},
		{name: "tails per caller above total", args: []string{"-dev", "-max-tails", "1", "-max-tails-per-caller", "2"},
			wantErr: "-max-tails-per-caller 2: must not exceed -max-tails 1"},
		{name: "query timeout", args: []string{"-dev", "-query-timeout", "0s"}, wantErr: "-query-timeout 0s: must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			c, _, err := parseAgentFlags(tc.args, &stderr)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v (stderr %q), want %q", err, stderr.String(), tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			tc.check(t, c)
		})
	}
}

func TestTokenCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"token", "new", "-role", "ingest", "-name", "loader"}, &stdout, &stderr); code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	tok := strings.TrimPrefix(out[0], "token: ")
	if want := "ingest " + rpc.HashToken(tok) + " loader"; out[len(out)-1] != want {
		t.Fatalf("output %q: last line want %q", stdout.String(), want)
	}
	for _, args := range [][]string{{"token"}, {"token", "new"}, {"token", "new", "-role", "root"}, {"token", "new", "-role", "query", "-name", "a#b"}} {
		stderr.Reset()
		if code := run(args, io.Discard, &stderr); code != exitUsage {
			t.Errorf("%q: exit %d, want %d (%s)", args, code, exitUsage, stderr.String())
		}
	}
}

// TestAgentConfigSources: every agent flag may come from the command line,
// a SCOPE_* environment variable or a -config TOML file, in that order of
// precedence; a bad value or an unknown key in either names it.
func TestAgentConfigSources(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "agent.toml")
	writeFile(t, cfgFile, "dev = true\nshards = 8\nname = \"from-file\"\nhttp = \"127.0.0.1:7001\"\npayload-limit = 100\n")
	t.Setenv("SCOPE_SHARDS", "4")
	t.Setenv("SCOPE_PAYLOAD_LIMIT", "200")
	var stderr strings.Builder
	c, _, err := parseAgentFlags([]string{"-config", cfgFile, "-payload-limit", "300"}, &stderr)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if !c.dev || c.name != "from-file" || c.httpAddr != "127.0.0.1:7001" {
		t.Errorf("from the file: dev %v name %q http %q", c.dev, c.name, c.httpAddr)
	}
	if c.shards != 4 {
		t.Errorf("-shards %d: want 4, the environment over the file", c.shards)
	}
	if got := c.node.Correlator.Limits.MaxPayloadBytes; got != 300 {
		t.Errorf("-payload-limit %d: want 300, the command line over both", got)
	}

	for _, tc := range []struct {
		name, env, file, want string
	}{
		{"bad env value", "SCOPE_SHARDS=many", "", `"SCOPE_SHARDS"`},
		{"unknown file key", "", "bogus = 1\n", `config file flag "bogus" not defined`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"-dev"}
			if tc.env != "" {
				k, v, _ := strings.Cut(tc.env, "=")
				t.Setenv(k, v)
			}
			if tc.file != "" {
				f := filepath.Join(t.TempDir(), "bad.toml")
				writeFile(t, f, tc.file)
				args = append(args, "-config", f)
			}
			var stderr strings.Builder
			if _, _, err := parseAgentFlags(args, &stderr); err == nil || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("err %v, stderr %q: want an error naming %s", err, stderr.String(), tc.want)
			}
		})
	}
}
