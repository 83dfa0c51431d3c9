package cluster

import (
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
	"pgregory.net/rapid"
)

func span(from, to uint32) []uint32 {
	var out []uint32
	for s := from; s < to; s++ {
		out = append(out, s)
	}
	return out
}

// everyThird is a balanced node's share of a 3-node cluster, scattered:
// the worst case for every Led form.
func everyThird(shards uint32) []uint32 {
	var out []uint32
	for s := uint32(0); s < shards; s += 3 {
		out = append(out, s)
	}
	return out
}

func TestMetaRoundTrip(t *testing.T) {
	base := Meta{Name: "node-1", HTTPAddr: "10.0.0.1:7070", RaftAddr: "10.0.0.1:7071", Version: "v0.1.0"}
	with := func(shards uint32, led []uint32, ready bool) Meta {
		m := base
		m.Shards, m.Led, m.Ready = shards, led, ready
		return m
	}
	tests := []struct {
		name     string
		meta     Meta
		wantForm int
		partial  bool
	}{
		{"empty", Meta{}, ledList, false},
		{"no-led", with(16, nil, true), ledList, false},
		{"leaving", Meta{Name: "x", Shards: 1, Leaving: true}, ledList, false},
		{"sparse", with(256, []uint32{3, 70, 200}, false), ledList, false},
		{"all-16", with(16, span(0, 16), true), ledBitmap, false}, // ties go to the bitmap
		{"all-4096", with(4096, span(0, 4096), true), ledRanges, false},
		{"third-of-256", with(256, everyThird(256), true), ledBitmap, false},
		{"third-of-4096", with(4096, everyThird(4096), true), ledBitmap, true},
		{"all-but-one-of-4096", with(4096, append(span(0, 2000), span(2001, 4096)...), true), ledRanges, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.meta.Encode(memberlist.MetaMaxSize)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > memberlist.MetaMaxSize {
				t.Fatalf("encoded %d bytes, over memberlist's %d", len(b), memberlist.MetaMaxSize)
			}
			if form := int(b[1]&metaFormMask) >> metaFormShift; form != tt.wantForm {
				t.Fatalf("Led form %d, want %d (%d bytes)", form, tt.wantForm, len(b))
			}
			got, err := DecodeMeta(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.LedPartial != tt.partial {
				t.Fatalf("LedPartial = %v, want %v", got.LedPartial, tt.partial)
			}
			checkDecoded(t, tt.meta, got)
		})
	}
}

// checkDecoded checks that got is want, except that a partial Led must be
// a non-empty prefix of want's (the bitmap is cut at a shard boundary).
func checkDecoded(t interface{ Fatalf(string, ...any) }, want, got Meta) {
	wantLed := slices.Sorted(slices.Values(want.Led))
	if got.LedPartial {
		if len(got.Led) == 0 || len(got.Led) >= len(wantLed) || !slices.Equal(got.Led, wantLed[:len(got.Led)]) {
			t.Fatalf("partial Led %v is not a proper non-empty prefix of %v", got.Led, wantLed)
		}
	} else if !slices.Equal(got.Led, wantLed) {
		t.Fatalf("Led = %v, want %v", got.Led, wantLed)
	}
	got.Led, want.Led, got.LedPartial = nil, nil, false
	if !metaEqualIgnoringLed(got, want) {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
}

func metaEqualIgnoringLed(a, b Meta) bool {
	return a.Name == b.Name && a.HTTPAddr == b.HTTPAddr && a.RaftAddr == b.RaftAddr &&
		a.Version == b.Version && a.Shards == b.Shards && a.Ready == b.Ready && a.Leaving == b.Leaving &&
		a.Formed == b.Formed && a.HoldsReplicas == b.HoldsReplicas &&
		a.NodeID == b.NodeID && a.ClusterID == b.ClusterID && a.Epoch == b.Epoch && a.Run == b.Run &&
		slices.Equal(a.Stale, b.Stale) && a.ReadsIdentity == b.ReadsIdentity && protocolOf(a) == protocolOf(b)
}

// protocolOf is m's protocol range as a decoder sees it: none sent is 1-1.
func protocolOf(m Meta) ProtocolRange {
	if m.Protocol == (ProtocolRange{}) {
		return legacyProtocol
	}
	return m.Protocol
}

// TestMetaWireFormatPinned pins the encoding: nodes of different versions
// read each other's metadata, so a change must be a new format version.
func TestMetaWireFormatPinned(t *testing.T) {
	m := Meta{Name: "n1", HTTPAddr: "h:1", RaftAddr: "r:2", Version: "v1", Shards: 16, Led: []uint32{9, 2}, Ready: true,
		Protocol: ProtocolRange{1, 3}, legacy: true}
	b, err := m.Encode(memberlist.MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	const want = "0101" + "026e31" + "03683a31" + "03723a32" + "027631" + "10" + "020207"
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("encoding %s, want %s", got, want)
	}
}

// TestMetaV2WireFormatPinned pins format 2: the fields of format 1, then
// the identity section (tag 1) and the protocol section (tag 2).
func TestMetaV2WireFormatPinned(t *testing.T) {
	m := Meta{Name: "n1", HTTPAddr: "h:1", RaftAddr: "r:2", Version: "v1", Shards: 16, Led: []uint32{9, 2}, Ready: true,
		Protocol: ProtocolRange{1, 3}, NodeID: 0x0102030405060708, ClusterID: 0xa0a1a2a3a4a5a6a7, Epoch: 300, Run: 0xff,
		ReadsIdentity: true}
	b, err := m.Encode(memberlist.MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	const want = "0281" + "026e31" + "03683a31" + "03723a32" + "027631" + "10" + "020207" +
		"01" + "1b" + "0102030405060708" + "a0a1a2a3a4a5a6a7" + "ac02" + "00000000000000ff" + "00" +
		"02" + "02" + "0103"
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("encoding %s, want %s", got, want)
	}
	// A section this node does not know is skipped: a newer node may add one.
	withUnknown := append(slices.Clone(b), 0x07, 0x03, 0xaa, 0xbb, 0xcc)
	got, err := DecodeMeta(withUnknown)
	if err != nil {
		t.Fatalf("with an unknown section: %v", err)
	}
	checkDecoded(t, m, got)
}

// TestMetaIdentityWireFormatPinned pins the identity section (D27): the
// fields of TestMetaWireFormatPinned, flag bit 7, then the section.
func TestMetaIdentityWireFormatPinned(t *testing.T) {
	m := Meta{Name: "n1", HTTPAddr: "h:1", RaftAddr: "r:2", Version: "v1", Shards: 16, Led: []uint32{9, 2}, Ready: true,
		NodeID: 0x0102030405060708, ClusterID: 0xa0a1a2a3a4a5a6a7, Epoch: 300, Run: 0xff, Stale: []StaleRun{{NodeID: 5, Epoch: 7}},
		legacy: true}
	b, err := m.Encode(memberlist.MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	const want = "0181" + "026e31" + "03683a31" + "03723a32" + "027631" + "10" + "020207" +
		"0102030405060708" + "a0a1a2a3a4a5a6a7" + "ac02" + "00000000000000ff" + "01" + "0000000000000005" + "07"
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("encoding %s, want %s", got, want)
	}
	// A node older than the section reads this as trailing bytes; the
	// encoding without it is the old one, with flag bit 7 (which such a
	// node ignores).
	m.omitIdentity = true
	if b, err = m.Encode(memberlist.MetaMaxSize); err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(b), "0181"+"026e31"+"03683a31"+"03723a32"+"027631"+"10"+"020207"; got != want {
		t.Fatalf("encoding without the section %s, want %s", got, want)
	}
	got, err := DecodeMeta(b)
	if err != nil || !got.ReadsIdentity || got.NodeID != 0 {
		t.Fatalf("decoded %+v, %v: want ReadsIdentity and no node id", got, err)
	}
}

// TestMembershipOmitsIdentityForOldReaders: a node sends its identity
// section only while every live member reads it (flag bit 7).
func TestMembershipOmitsIdentityForOldReaders(t *testing.T) {
	m := &Membership{cfg: MembershipConfig{Name: "self"}, members: map[string]*Member{
		"self": {Name: "self", State: MemberAlive},
		"new":  {Name: "new", State: MemberAlive, Meta: Meta{ReadsIdentity: true}},
	}}
	meta := Meta{Name: "self", Shards: 4, NodeID: 9, Epoch: 1, Run: 2}
	for _, tt := range []struct {
		name     string
		old      *Member
		sections bool
	}{
		{"all-read-it", nil, true},
		{"an-old-member-alive", &Member{Name: "old", State: MemberAlive}, false},
		{"an-old-member-dead", &Member{Name: "old", State: MemberDead}, true},
		{"an-undecodable-member", &Member{Name: "old", State: MemberAlive, MetaErr: ErrMetaVersion}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			delete(m.members, "old")
			if tt.old != nil {
				m.members["old"] = tt.old
			}
			b, err := m.encodeLocked(meta)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeMeta(b)
			if err != nil {
				t.Fatal(err)
			}
			if (got.NodeID == 9) != tt.sections || !got.ReadsIdentity {
				t.Fatalf("decoded %+v: identity section sent %v, want %v", got, got.NodeID == 9, tt.sections)
			}
		})
	}
}

func TestMetaEncodeErrors(t *testing.T) {
	tests := []struct {
		name string
		meta Meta
		want error
	}{
		{"led-beyond-shards", Meta{Shards: 4, Led: []uint32{4}}, ErrMetaInvalid},
		{"led-duplicate", Meta{Shards: 4, Led: []uint32{1, 1}}, ErrMetaInvalid},
		{"shards-too-many", Meta{Shards: MaxMetaShards + 1}, ErrMetaInvalid},
		{"fixed-part-too-large", Meta{Name: strings.Repeat("x", 400), HTTPAddr: strings.Repeat("y", 200)}, ErrMetaTooLarge},
		{"identity-too-large", Meta{Name: strings.Repeat("x", 440), NodeID: 1, Epoch: 1 << 60, Run: 1,
			Stale: []StaleRun{{1, 1 << 60}, {2, 1 << 60}, {3, 1 << 60}, {4, 1 << 60}}}, ErrMetaTooLarge},
		{"stale-too-many", Meta{NodeID: 1, Stale: make([]StaleRun, MaxStaleRuns+1)}, ErrMetaInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.meta.Encode(memberlist.MetaMaxSize); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDecodeMetaRejectsCorruption(t *testing.T) {
	good, err := Meta{Name: "n", Shards: 8, Led: []uint32{1, 5}}.Encode(memberlist.MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrMetaCorrupt},
		{"future-version", append([]byte{3}, good[1:]...), ErrMetaVersion},
		// format 2 sections: cut short, twice, a protocol range that is
		// empty or starts at 0, a known section with bytes left over.
		{"section-truncated", append(slices.Clone(good), metaSectionProtocol, 2, 1), ErrMetaCorrupt},
		{"section-twice", append(slices.Clone(good), metaSectionProtocol, 2, 1, 1, metaSectionProtocol, 2, 1, 1), ErrMetaCorrupt},
		{"protocol-empty", append(slices.Clone(good), metaSectionProtocol, 2, 2, 1), ErrMetaCorrupt},
		{"protocol-zero", append(slices.Clone(good), metaSectionProtocol, 2, 0, 1), ErrMetaCorrupt},
		{"protocol-long", append(slices.Clone(good), metaSectionProtocol, 3, 1, 1, 0), ErrMetaCorrupt},
		{"section-huge", append(slices.Clone(good), 9, 0xff, 0xff, 0x03), ErrMetaCorrupt},
		{"truncated", good[:len(good)-1], ErrMetaCorrupt},
		{"trailing", append(slices.Clone(good), 0), ErrMetaCorrupt},
		{"unknown-form", append([]byte{1, 3 << metaFormShift}, good[2:]...), ErrMetaCorrupt},
		// flag bit 7, an identity section cut short, with node id 0, or
		// with more stale entries than allowed.
		{"identity-truncated", append([]byte{1, metaFlagIdent}, append(good[2:], 0, 0, 0, 0, 0, 0, 0, 1, 0)...), ErrMetaCorrupt},
		{"identity-node-0", append([]byte{1, metaFlagIdent}, append(good[2:], make([]byte, 8+8+1+8+1)...)...), ErrMetaCorrupt},
		{"identity-stale-many", append([]byte{1, metaFlagIdent}, append(good[2:],
			append(append([]byte{0, 0, 0, 0, 0, 0, 0, 1}, make([]byte, 8+1+8)...), 5)...)...), ErrMetaCorrupt},
		// list form, 8 shards, Led {1, 1}: not ascending.
		{"list-repeat", []byte{1, 0, 0, 0, 0, 0, 8, 2, 1, 0}, ErrMetaCorrupt},
		// list form, 8 shards, Led {9}: beyond Shards.
		{"list-beyond", []byte{1, 0, 0, 0, 0, 0, 8, 1, 9}, ErrMetaCorrupt},
		// ranges form, 8 shards, one run 0..9: beyond Shards.
		{"range-beyond", []byte{1, ledRanges << metaFormShift, 0, 0, 0, 0, 8, 1, 0, 9}, ErrMetaCorrupt},
		// a count larger than the input cannot make the decoder allocate.
		{"huge-count", []byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}, ErrMetaCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if m, err := DecodeMeta(tt.b); !errors.Is(err, tt.want) {
				t.Fatalf("DecodeMeta = %+v, %v; want %v", m, err, tt.want)
			}
		})
	}
}

// TestMetaRoundTripProperty: any valid metadata encodes within the gossip
// limit (Led cut only when no form fits) and decodes back.
func TestMetaRoundTripProperty(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		shards := rapid.Uint32Range(1, 4096).Draw(t, "shards")
		density := rapid.IntRange(0, 100).Draw(t, "density%")
		var led []uint32
		for s := range shards {
			if rapid.IntRange(0, 99).Draw(t, "pick") < density {
				led = append(led, s)
			}
		}
		m := Meta{
			Name:     genName.Draw(t, "name"),
			HTTPAddr: rapid.StringMatching(`[0-9.]{7,15}:[0-9]{1,5}`).Draw(t, "http"),
			RaftAddr: rapid.StringMatching(`[0-9.]{7,15}:[0-9]{1,5}`).Draw(t, "raft"),
			Version:  rapid.StringMatching(`v[0-9]\.[0-9]{1,2}\.[0-9]`).Draw(t, "version"),
			Shards:   shards, Led: rapid.Permutation(led).Draw(t, "order"), Ready: rapid.Bool().Draw(t, "ready"),
			Leaving: rapid.Bool().Draw(t, "leaving"), Formed: rapid.Bool().Draw(t, "formed"),
			HoldsReplicas: rapid.Bool().Draw(t, "holds"),
		}
		// Identity (D27): absent (a node older than it), or present with
		// any epoch and up to MaxStaleRuns stale entries; sent or left out
		// (a live member cannot read it).
		if rapid.Bool().Draw(t, "identity") {
			m.NodeID = rapid.Uint64Min(1).Draw(t, "node id")
			m.ClusterID, m.Epoch, m.Run = rapid.Uint64().Draw(t, "cluster id"), rapid.Uint64().Draw(t, "epoch"), rapid.Uint64().Draw(t, "run")
			for range rapid.IntRange(0, MaxStaleRuns).Draw(t, "stale") {
				m.Stale = append(m.Stale, StaleRun{NodeID: rapid.Uint64().Draw(t, "stale id"), Epoch: rapid.Uint64().Draw(t, "stale epoch")})
			}
			m.ReadsIdentity = true
		}
		// Format 1 (a member reads no other; identity left out if a
		// member cannot read it) or 2, with or without a protocol range.
		m.legacy = rapid.Bool().Draw(t, "format 1")
		m.omitIdentity = m.legacy && rapid.Bool().Draw(t, "omit")
		if rapid.Bool().Draw(t, "protocol") {
			lo := rapid.Uint8Min(1).Draw(t, "protocol min")
			m.Protocol = ProtocolRange{lo, rapid.Uint8Min(lo).Draw(t, "protocol max")}
		}
		b, err := m.Encode(memberlist.MetaMaxSize)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > memberlist.MetaMaxSize {
			t.Fatalf("%d bytes", len(b))
		}
		got, err := DecodeMeta(b)
		if err != nil {
			t.Fatal(err)
		}
		if m.omitIdentity {
			m.NodeID, m.ClusterID, m.Epoch, m.Run, m.Stale = 0, 0, 0, 0, nil
		}
		if m.legacy {
			m.Protocol = ProtocolRange{} // format 1 carries none: 1-1
		}
		checkDecoded(t, m, got)
	})
}

func FuzzDecodeMeta(f *testing.F) {
	for _, m := range []Meta{{}, {Name: "a", Shards: 4096, Led: span(0, 4096)}, {Shards: 300, Led: everyThird(300)},
		{Shards: 4, Protocol: ProtocolRange{1, 2}, NodeID: 3}, {Shards: 4, legacy: true, NodeID: 3}} {
		b, err := m.Encode(memberlist.MetaMaxSize)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMeta(b)
		if err != nil {
			return
		}
		// Whatever decodes is valid metadata: it re-encodes, and that
		// encoding decodes to the same value.
		b2, err := m.Encode(1 << 20)
		if err != nil {
			t.Fatalf("decoded %+v does not re-encode: %v", m, err)
		}
		m2, err := DecodeMeta(b2)
		if err != nil || !slices.Equal(m.Led, m2.Led) || !metaEqualIgnoringLed(m, m2) {
			t.Fatalf("re-decoded %+v, %v; want %+v", m2, err, m)
		}
	})
}

func BenchmarkMetaEncode(b *testing.B) {
	for _, shards := range []uint32{16, 256, 4096} {
		m := Meta{Name: "node-1", HTTPAddr: "10.0.0.1:7070", RaftAddr: "10.0.0.1:7071", Version: "v0.1.0",
			Shards: shards, Led: everyThird(shards), Ready: true}
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := m.Encode(memberlist.MetaMaxSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
