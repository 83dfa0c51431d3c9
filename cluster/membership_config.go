package cluster

import (
	"context"
	"encoding/base64"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// Gossip timing profiles: memberlist's own presets.
const (
	// ProfileLAN is memberlist.DefaultLANConfig: production on a LAN.
	ProfileLAN = "lan"
	// ProfileLocal is memberlist.DefaultLocalConfig: loopback clusters
	// (tests, dev-cluster), where failures are detected within seconds.
	ProfileLocal = "local"
)

// MembershipConfig configures a Membership. Start from
// DefaultMembershipConfig; it is validated by NewMembership.
type MembershipConfig struct {
	// Name is the node name, unique in the cluster (the -name flag). It is
	// also the name placement hashes.
	Name string
	// BindAddr is the gossip listener, ip:port (the -gossip flag). Port 0
	// picks a free port; Membership.Addr reports the one bound.
	BindAddr string
	// AdvertiseAddr is the ip:port other members reach this node at; empty
	// means derived from BindAddr (a private address if BindAddr is
	// 0.0.0.0).
	AdvertiseAddr string
	// Seeds are gossip addresses (host:port) of members to rejoin when this
	// node sees fewer members alive than it has known (the -join flags).
	Seeds []string
	// GossipKeys enable encryption (memberlist keyring, AES-GCM): the first
	// key encrypts, all of them decrypt, which allows a rolling key
	// rotation. Each is 16, 24 or 32 bytes (see ParseGossipKey). Empty:
	// gossip is plaintext. An encrypted node refuses plaintext gossip.
	GossipKeys [][]byte
	// Profile selects memberlist's timings: ProfileLAN or ProfileLocal.
	Profile string
	// RejoinInterval is how often the rejoin loop checks whether a known
	// member is missing and, if so, rejoins the seeds and the last known
	// addresses of the missing members.
	RejoinInterval time.Duration
	// MaxRejoinTargets bounds the addresses contacted per rejoin attempt
	// (each may take up to memberlist's TCPTimeout if unreachable).
	MaxRejoinTargets int
	// MaxSeeds bounds the seed list, which grows with addresses passed to
	// Join.
	MaxSeeds int
	// ForgetAfter is how long a dead or departed member stays listed (and
	// is tried by the rejoin loop) before it is forgotten.
	ForgetAfter time.Duration
	// MaxMembers bounds the member table. When it is full, the oldest
	// dead or departed member is forgotten first; a new member that finds
	// only live ones is not listed and is counted in
	// MembershipStats.MembersOverflow.
	MaxMembers int
	// DeadNodeReclaimTime is how long a member must have been dead before
	// its name may come back from a different address (a restart on a new
	// IP or port). Until then memberlist rejects the newcomer as a name
	// conflict; 0 means only after memberlist forgets the dead member
	// (GossipToTheDeadTime: 30 s on a LAN).
	DeadNodeReclaimTime time.Duration
	// MaxSubscribers bounds Subscribe.
	MaxSubscribers int
	// UpdateTimeout bounds how long publishing new metadata waits for
	// memberlist to hand the broadcast to a peer. It never blocks
	// UpdateMeta's caller: publishing runs in the background.
	UpdateTimeout time.Duration
	// Logger receives memberlist's log lines, levels preserved.
	Logger *slog.Logger
	// Tune, if set, adjusts the memberlist configuration after the profile
	// and the fields above are applied (tests shorten timings with it).
	// It must not set Delegate, Events, Logger or LogOutput.
	Tune func(*memberlist.Config)
}

// DefaultMembershipConfig returns production defaults: LAN timings, gossip
// on 127.0.0.1:7072, a rejoin check every 30 s.
func DefaultMembershipConfig() MembershipConfig {
	return MembershipConfig{
		BindAddr:            "127.0.0.1:7072",
		Profile:             ProfileLAN,
		RejoinInterval:      30 * time.Second,
		MaxRejoinTargets:    8,
		MaxSeeds:            64,
		ForgetAfter:         24 * time.Hour,
		MaxMembers:          1024,
		MaxSubscribers:      16,
		DeadNodeReclaimTime: 5 * time.Second,
		UpdateTimeout:       5 * time.Second,
		Logger:              slog.Default(),
	}
}

// Validate reports the first invalid field, naming it, its value and what
// is allowed.
func (c MembershipConfig) Validate() error {
	switch {
	case c.Name == "":
		return fmt.Errorf("%w: Name is empty: every node needs a unique name", ErrMembershipConfig)
	case len(c.Name) > 128:
		return fmt.Errorf("%w: Name %q is %d bytes: at most 128", ErrMembershipConfig, c.Name, len(c.Name))
	case c.Profile != ProfileLAN && c.Profile != ProfileLocal:
		return fmt.Errorf("%w: Profile %q: want %q or %q", ErrMembershipConfig, c.Profile, ProfileLAN, ProfileLocal)
	case c.RejoinInterval <= 0:
		return fmt.Errorf("%w: RejoinInterval %v: must be positive", ErrMembershipConfig, c.RejoinInterval)
	case c.MaxRejoinTargets <= 0:
		return fmt.Errorf("%w: MaxRejoinTargets %d: must be positive", ErrMembershipConfig, c.MaxRejoinTargets)
	case c.MaxSeeds <= 0:
		return fmt.Errorf("%w: MaxSeeds %d: must be positive", ErrMembershipConfig, c.MaxSeeds)
	case len(c.Seeds) > c.MaxSeeds:
		return fmt.Errorf("%w: %d Seeds: at most MaxSeeds (%d)", ErrMembershipConfig, len(c.Seeds), c.MaxSeeds)
	case c.ForgetAfter <= 0:
		return fmt.Errorf("%w: ForgetAfter %v: must be positive", ErrMembershipConfig, c.ForgetAfter)
	case c.MaxMembers <= 0:
		return fmt.Errorf("%w: MaxMembers %d: must be positive", ErrMembershipConfig, c.MaxMembers)
	case c.MaxSubscribers <= 0:
		return fmt.Errorf("%w: MaxSubscribers %d: must be positive", ErrMembershipConfig, c.MaxSubscribers)
	case c.DeadNodeReclaimTime < 0:
		return fmt.Errorf("%w: DeadNodeReclaimTime %v: must not be negative", ErrMembershipConfig, c.DeadNodeReclaimTime)
	case c.UpdateTimeout <= 0:
		return fmt.Errorf("%w: UpdateTimeout %v: must be positive", ErrMembershipConfig, c.UpdateTimeout)
	}
	if _, _, err := splitIPPort("BindAddr", c.BindAddr); err != nil {
		return err
	}
	if c.AdvertiseAddr != "" {
		if _, _, err := splitIPPort("AdvertiseAddr", c.AdvertiseAddr); err != nil {
			return err
		}
	}
	for _, s := range c.Seeds {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return fmt.Errorf("%w: Seeds entry %q: want host:port", ErrMembershipConfig, s)
		}
	}
	for i, k := range c.GossipKeys {
		if n := len(k); n != 16 && n != 24 && n != 32 {
			return fmt.Errorf("%w: GossipKeys[%d] is %d bytes: want 16, 24 or 32", ErrMembershipConfig, i, n)
		}
	}
	return nil
}

// ParseGossipKey decodes a -gossip-key value: standard base64 of 16, 24 or
// 32 bytes (AES-128/192/256), e.g. the output of `openssl rand -base64 32`.
func ParseGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: gossip key is not standard base64: %v", ErrMembershipConfig, err)
	}
	if n := len(k); n != 16 && n != 24 && n != 32 {
		return nil, fmt.Errorf("%w: gossip key decodes to %d bytes: want 16, 24 or 32", ErrMembershipConfig, n)
	}
	return k, nil
}

// encodeGossipKey is ParseGossipKey's inverse.
func encodeGossipKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// splitIPPort parses an ip:port that memberlist can bind or advertise
// (memberlist wants IP literals there, not host names).
func splitIPPort(field, addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %s %q: want ip:port", ErrMembershipConfig, field, addr)
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%w: %s %q: the host must be an IP address", ErrMembershipConfig, field, addr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%w: %s %q: the port must be 0..65535", ErrMembershipConfig, field, addr)
	}
	return host, port, nil
}

// memberlistConfig builds the memberlist configuration for c, which must be
// valid.
func (c MembershipConfig) memberlistConfig() (*memberlist.Config, error) {
	var mc *memberlist.Config
	if c.Profile == ProfileLocal {
		mc = memberlist.DefaultLocalConfig()
	} else {
		mc = memberlist.DefaultLANConfig()
	}
	mc.Name = c.Name
	// The delegate protocol maximum says which gossip metadata formats this
	// node reads (Membership.encodeLocked). Minimum and current stay 0, as
	// every Scope node has them: memberlist refuses a push-pull when a
	// node's current version is outside every node's [min, max], a check
	// Scope leaves to its own protocol versions (protocol.go).
	mc.DelegateProtocolMin, mc.DelegateProtocolVersion, mc.DelegateProtocolMax = 0, 0, metaFormatRead
	mc.DeadNodeReclaimTime = c.DeadNodeReclaimTime
	host, port, _ := splitIPPort("BindAddr", c.BindAddr)
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = "", port
	if c.AdvertiseAddr != "" {
		mc.AdvertiseAddr, mc.AdvertisePort, _ = splitIPPort("AdvertiseAddr", c.AdvertiseAddr)
	}
	if len(c.GossipKeys) > 0 {
		kr, err := memberlist.NewKeyring(c.GossipKeys, c.GossipKeys[0])
		if err != nil {
			return nil, fmt.Errorf("%w: GossipKeys: %v", ErrMembershipConfig, err)
		}
		mc.Keyring = kr
	}
	if c.Tune != nil {
		c.Tune(mc)
	}
	logger := c.Logger
	if logger == nil {
		logger = slog.Default()
	}
	mc.LogOutput = nil
	mc.Logger = log.New(&slogWriter{l: logger.With("component", "memberlist")}, "", 0)
	return mc, nil
}

// slogWriter adapts memberlist's "[LEVEL] memberlist: message" log lines
// into slog records at the matching level.
type slogWriter struct{ l *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	if rest, ok := strings.CutPrefix(line, "["); ok {
		if tag, msg, ok := strings.Cut(rest, "]"); ok {
			switch tag {
			case "DEBUG", "TRACE":
				level = slog.LevelDebug
			case "INFO":
				level = slog.LevelInfo
			case "WARN":
				level = slog.LevelWarn
			case "ERR", "ERROR":
				level = slog.LevelError
			}
			line = strings.TrimSpace(msg)
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	w.l.Log(context.Background(), level, line)
	return len(p), nil
}
