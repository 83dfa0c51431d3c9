package cluster

import (
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/elixirscope/scope/internal/testwait"
)

func TestClusterProtocol(t *testing.T) {
	member := func(name string, lo, hi uint8, holds bool) Member {
		return Member{Name: name, State: MemberAlive, Meta: Meta{Protocol: ProtocolRange{lo, hi}, HoldsReplicas: holds}}
	}
	dead := member("dead", 9, 9, true)
	dead.State = MemberDead
	leaving := member("leaving", 9, 9, true)
	leaving.Meta.Leaving = true
	undecodable := Member{Name: "bad", State: MemberAlive, MetaErr: ErrMetaVersion}
	tests := []struct {
		name    string
		members []Member
		want    uint8
	}{
		{"none", nil, 0},
		{"one-version", []Member{member("a", 1, 1, true), member("b", 1, 1, true)}, 1},
		// A rolling upgrade: the version moves once every holder reads it.
		{"upgrade-started", []Member{member("a", 1, 2, true), member("b", 1, 1, true), member("c", 1, 1, true)}, 1},
		{"upgrade-done", []Member{member("a", 1, 2, true), member("b", 1, 2, true), member("c", 1, 2, true)}, 2},
		{"next-release", []Member{member("a", 2, 3, true), member("b", 1, 2, true), member("c", 1, 2, true)}, 2},
		// A newcomer holds nothing: it cannot move the version, either way.
		{"newer-newcomer", []Member{member("a", 1, 1, true), member("b", 1, 1, true), member("n", 2, 2, false)}, 1},
		{"older-newcomer", []Member{member("a", 2, 2, true), member("b", 2, 2, true), member("n", 1, 1, false)}, 2},
		// A holder restarted with a build that skipped a release is the
		// one left out; the most holders decide.
		{"skipped-release", []Member{member("a", 1, 1, true), member("b", 1, 1, true), member("c", 3, 3, true)}, 1},
		// No holder yet (a forming cluster): every live member counts.
		{"forming", []Member{member("a", 1, 2, false), member("b", 2, 3, false)}, 2},
		// Only live, decodable members that stay count.
		{"ignores-gone", []Member{member("a", 1, 1, true), dead, leaving, undecodable}, 1},
		// Metadata from before protocol versions decodes as 1-1.
		{"legacy", []Member{{Name: "old", State: MemberAlive, Meta: Meta{Protocol: legacyProtocol, HoldsReplicas: true}},
			member("a", 1, 2, true)}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := clusterProtocol(tt.members); got != tt.want {
				t.Fatalf("clusterProtocol = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestProtocolRangeWrites(t *testing.T) {
	r := ProtocolRange{2, 3}
	for v, want := range map[uint8]uint8{0: 2, 1: 2, 2: 2, 3: 3, 4: 3} {
		if got := r.writes(v); got != want {
			t.Errorf("range 2-3, cluster %d: writes %d, want %d", v, got, want)
		}
	}
}

// TestMembershipSendsFormat2WhenAllReadIt: a node sends metadata format 2
// (with its protocol range) only while every live member reads it
// (memberlist's delegate protocol maximum); otherwise format 1, which a
// node from before format 2 reads and which says protocol 1 — unless this
// node does not speak 1, when older nodes must refuse it.
func TestMembershipSendsFormat2WhenAllReadIt(t *testing.T) {
	m := &Membership{cfg: MembershipConfig{Name: "self"}, members: map[string]*Member{
		"self": {Name: "self", State: MemberAlive, readsMeta: metaFormatRead},
		"new":  {Name: "new", State: MemberAlive, readsMeta: metaFormatRead, Meta: Meta{ReadsIdentity: true}},
	}}
	for _, tt := range []struct {
		name     string
		self     ProtocolRange
		old      *Member
		wantFmt  byte
		wantProt ProtocolRange
	}{
		{"all-read-it", ProtocolRange{1, 2}, nil, metaFormatV2, ProtocolRange{1, 2}},
		{"an-old-member-alive", ProtocolRange{1, 2}, &Member{Name: "old", State: MemberAlive, Meta: Meta{ReadsIdentity: true}},
			metaFormatV1, legacyProtocol},
		{"an-old-member-dead", ProtocolRange{1, 2}, &Member{Name: "old", State: MemberDead}, metaFormatV2, ProtocolRange{1, 2}},
		{"without-protocol-1", ProtocolRange{2, 2}, &Member{Name: "old", State: MemberAlive, Meta: Meta{ReadsIdentity: true}},
			metaFormatV2, ProtocolRange{2, 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			delete(m.members, "old")
			if tt.old != nil {
				m.members["old"] = tt.old
			}
			b, err := m.encodeLocked(Meta{Name: "self", Shards: 4, Protocol: tt.self, NodeID: 7, Run: 1})
			if err != nil {
				t.Fatal(err)
			}
			if b[0] != tt.wantFmt {
				t.Fatalf("format %d, want %d", b[0], tt.wantFmt)
			}
			got, err := DecodeMeta(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Protocol != tt.wantProt || got.NodeID != 7 {
				t.Fatalf("decoded protocol %s, node id %d; want %s, 7", got.Protocol, got.NodeID, tt.wantProt)
			}
		})
	}
}

// TestMembershipAdvertisesMetaFormat: memberlist carries the metadata
// format a node reads as its delegate protocol maximum, with minimum and
// current 0 so that memberlist's own version check never refuses a peer;
// a member that reads only format 1 (a build from before format 2, whose
// maximum is 0) makes the others send format 1 until it is gone.
func TestMembershipAdvertisesMetaFormat(t *testing.T) {
	ms := formClusterWith(t, 3, func(c *MembershipConfig) {
		if c.Name == "m3" {
			tune := c.Tune
			c.Tune = func(mc *memberlist.Config) { tune(mc); mc.DelegateProtocolMax = 0 }
		}
	})
	sent := func(m *Membership) byte {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.metaBytes[0]
	}
	mc, err := testMembershipConfig("x").memberlistConfig()
	if err != nil {
		t.Fatal(err)
	}
	if mc.DelegateProtocolMin != 0 || mc.DelegateProtocolVersion != 0 || mc.DelegateProtocolMax != metaFormatRead {
		t.Fatalf("delegate versions min %d cur %d max %d; want 0, 0, %d",
			mc.DelegateProtocolMin, mc.DelegateProtocolVersion, mc.DelegateProtocolMax, metaFormatRead)
	}
	for name, want := range map[string]uint8{"m2": metaFormatRead, "m3": 0} {
		if mem, _ := memberView(ms[0], name); mem.readsMeta != want {
			t.Fatalf("m1 sees %s read metadata format %d, want %d", name, mem.readsMeta, want)
		}
	}
	testwait.For(t, "m1 sends format 1 while m3 is alive", 10*time.Second, func() bool { return sent(ms[0]) == metaFormatV1 })
	if mem, _ := memberView(ms[1], "m1"); mem.MetaErr != nil || mem.Meta.Protocol != legacyProtocol {
		t.Fatalf("m2 sees m1 as %+v", mem)
	}
	if err := ms[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "m1 sends format 2 once m3 is dead", 10*time.Second, func() bool { return sent(ms[0]) == metaFormatV2 })
	testwait.For(t, "m2 reads m1's protocol range", 10*time.Second, func() bool {
		mem, ok := memberView(ms[1], "m1")
		return ok && mem.MetaErr == nil && mem.Meta.Protocol == BuildProtocol && mem.readsMeta == metaFormatRead
	})
}
