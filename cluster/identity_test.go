package cluster

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOpenIdentity: a directory gets a node id once (also one written
// before identities existed, which has no IdentityFile); every open counts
// a start; the cluster id and a pending resynchronization are kept.
func TestOpenIdentity(t *testing.T) {
	dir := t.TempDir()
	// A data directory from before D27: data, no identity file.
	if err := os.WriteFile(filepath.Join(dir, "scope-meta.json"), []byte("{}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := OpenIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	first := s.Get()
	if first.NodeID == 0 || first.ClusterID != 0 || first.Epoch != 1 || first.Resync {
		t.Fatalf("new identity %+v: want a node id, no cluster id, epoch 1", first)
	}
	if err := s.setClusterID(0xc1); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s2, err := OpenIdentity(dir)
		if err != nil {
			t.Fatal(err)
		}
		got := s2.Get()
		if got.NodeID != first.NodeID || got.ClusterID != 0xc1 || got.Epoch != uint64(i+2) {
			t.Fatalf("reopen %d: %+v; want node id %x, cluster id c1, epoch %d", i+1, got, first.NodeID, i+2)
		}
		if s2.Run() == s.Run() {
			t.Fatal("two starts share a run id")
		}
		s = s2
	}
	// An old copy learned of: epoch above the highest seen, resync kept
	// across a restart until it ends.
	if err := s.beginResync(10); err != nil {
		t.Fatal(err)
	}
	s, err = OpenIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Get(); !got.Resync || got.Epoch != 12 || got.NodeID != first.NodeID {
		t.Fatalf("after beginResync(10) and a restart: %+v; want resync pending, epoch 12", got)
	}
	if err := s.endResync(); err != nil {
		t.Fatal(err)
	}
	if s, err = OpenIdentity(dir); err != nil || s.Get().Resync {
		t.Fatalf("after endResync: %+v, %v", s.Get(), err)
	}
	// Another directory: another node id.
	other, err := OpenIdentity(t.TempDir())
	if err != nil || other.Get().NodeID == first.NodeID {
		t.Fatalf("second directory: %+v, %v", other.Get(), err)
	}
}

func TestOpenIdentityRejectsCorruptFile(t *testing.T) {
	for _, body := range []string{"{", `{"node_id":"xyz","epoch":1}`, `{"epoch":3}`, `{"node_id":"00000000000000ab","cluster_id":"1","epoch":1}`} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, IdentityFile), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenIdentity(dir); err == nil || !strings.Contains(err.Error(), IdentityFile) {
			t.Fatalf("%s: err %v, want one naming the file", body, err)
		}
	}
}

// TestEpochTable: the rules that tell a start from an old copy.
func TestEpochTable(t *testing.T) {
	mem := func(id, epoch, run uint64) Member {
		return Member{Name: "m", State: MemberAlive, Meta: Meta{NodeID: id, Epoch: epoch, Run: run}}
	}
	now := time.Now()
	tests := []struct {
		name      string
		seen      []Member // observed in order before m
		m         Member
		stale     bool
		wantEpoch uint64
	}{
		{"never-seen", nil, mem(1, 3, 30), false, 0},
		{"same-run", []Member{mem(1, 3, 30)}, mem(1, 3, 30), false, 3},
		{"next-start", []Member{mem(1, 3, 30)}, mem(1, 4, 40), false, 4},
		{"starts-missed", []Member{mem(1, 3, 30)}, mem(1, 9, 90), false, 9},
		{"old-copy-same-epoch", []Member{mem(1, 3, 30), mem(1, 4, 40)}, mem(1, 4, 41), true, 4},
		{"old-copy-lower-epoch", []Member{mem(1, 3, 30), mem(1, 5, 50)}, mem(1, 4, 41), true, 5},
		{"other-node", []Member{mem(1, 5, 50)}, mem(2, 1, 10), false, 1},
		{"resynchronized", []Member{mem(1, 4, 40), mem(1, 4, 41)}, mem(1, 5, 41), false, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tab epochTable
			for _, m := range tt.seen {
				tab.observe([]Member{m}, now)
			}
			newly, _ := tab.observe([]Member{tt.m}, now)
			stale, epoch := tab.stale(tt.m.Meta)
			if stale != tt.stale || (len(newly) == 1) != tt.stale {
				t.Fatalf("stale %v (newly %d), want %v", stale, len(newly), tt.stale)
			}
			if tt.wantEpoch != 0 && epoch != tt.wantEpoch {
				t.Fatalf("highest epoch %d, want %d", epoch, tt.wantEpoch)
			}
			// A stale run is reported once.
			if again, _ := tab.observe([]Member{tt.m}, now); len(again) != 0 {
				t.Fatalf("stale run reported again")
			}
		})
	}
}

func TestEpochTableBounded(t *testing.T) {
	var tab epochTable
	now := time.Now()
	for i := range maxEpochRecords {
		tab.observe([]Member{{Meta: Meta{NodeID: uint64(i + 1), Epoch: 1}}}, now.Add(time.Duration(i)))
	}
	live := Member{Meta: Meta{NodeID: 1, Epoch: 1}} // the oldest record, but alive
	_, evicted := tab.observe([]Member{live, {Meta: Meta{NodeID: 1 << 40, Epoch: 1}}}, now.Add(time.Hour))
	if evicted != 1 || len(tab.records) != maxEpochRecords {
		t.Fatalf("evicted %d, %d records; want 1, %d", evicted, len(tab.records), maxEpochRecords)
	}
	if _, ok := tab.records[1]; !ok {
		t.Fatal("the record of a live member was evicted")
	}
	if _, ok := tab.records[2]; ok {
		t.Fatal("the oldest record of a member not alive was kept")
	}
}

func TestBootstrapClusterID(t *testing.T) {
	m := func(name string, id uint64, reads bool) Member {
		return Member{Name: name, Meta: Meta{NodeID: id, ReadsIdentity: reads}}
	}
	a, ok := bootstrapClusterID([]Member{m("n1", 5, true), m("n2", 7, true), m("n3", 9, true)})
	b, ok2 := bootstrapClusterID([]Member{m("n3", 9, true), m("n1", 5, true), m("n2", 7, true)})
	if !ok || !ok2 || a == 0 || a != b {
		t.Fatalf("same founders in another order: %x, %x (%v %v): want one non-zero id", a, b, ok, ok2)
	}
	if c, _ := bootstrapClusterID([]Member{m("n1", 5, true), m("n2", 7, true), m("n3", 10, true)}); c == a {
		t.Fatal("other founders, same cluster id")
	}
	if _, ok := bootstrapClusterID([]Member{m("n1", 5, true), m("n2", 0, true)}); ok {
		t.Fatal("a founder's node id not known yet: want to wait")
	}
	if id, ok := bootstrapClusterID([]Member{m("n1", 0, true), m("n2", 0, false)}); !ok || id != 0 {
		t.Fatalf("a founder older than node ids: %x, %v; want no cluster id", id, ok)
	}
}
