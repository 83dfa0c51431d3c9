package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// The network the agents talk over. In netns mode every agent runs in a
// network namespace of its own, with one veth into a bridge in the
// harness's namespace; the harness's clients reach every agent through the
// bridge. A partition is a set of blackhole routes inside the namespaces:
// packets from one agent to another are dropped silently, as a cut cable
// or a dead switch port would, for every protocol (raft, gossip over TCP
// and UDP, node-to-node HTTP), while clients still reach every agent (as
// in Jepsen, clients sit outside the partition). Namespaces need root and
// iproute2; loopback mode runs every agent on 127.0.0.1 and has no
// partitions.

// Network names.
const (
	NetNetns    = "netns"
	NetLoopback = "loopback"
)

// nsPrefix starts the name of every namespace the harness creates; the
// harness's pid follows, so leftovers of a killed run can be recognised
// (their pid is no longer alive) and removed.
const nsPrefix = "scope-chaos-"

// network places agents and cuts links between them.
type network interface {
	// host returns the IP agent i (from 0) binds to.
	host(i int) string
	// command returns the argv that runs argv inside agent i's network.
	command(i int, argv []string) []string
	// partition makes every link between two different groups drop
	// packets; agents in no group keep every link. It replaces the
	// current partition.
	partition(groups [][]int) error
	// heal removes the partition.
	heal() error
	// canPartition reports whether partition works.
	canPartition() bool
	close() error
}

// loopbackNet runs every agent on 127.0.0.1 (ports differ per agent).
type loopbackNet struct{}

func (loopbackNet) host(int) string                       { return "127.0.0.1" }
func (loopbackNet) command(_ int, argv []string) []string { return argv }
func (loopbackNet) partition([][]int) error {
	return errors.New("chaos: partitions need the netns network")
}
func (loopbackNet) heal() error        { return nil }
func (loopbackNet) canPartition() bool { return false }
func (loopbackNet) close() error       { return nil }

// netnsNet is n namespaces on one bridge, on a /24 of 198.18.0.0/15 (the
// block reserved for network benchmarks, RFC 2544, so it collides with no
// real network the machine is on): agent i is .(i+1), the bridge (the
// harness's side) .254.
type netnsNet struct {
	n      int
	tag    string // unique per run: namespace and interface names
	subnet string // "198.x.y."
	bridge string

	mu      sync.Mutex
	blocked map[[2]int]bool // routes added: from agent [0] to agent [1]
}

// newNetns creates the namespaces and the bridge. It fails when not run as
// root or without iproute2, with what to do.
func newNetns(n int, rnd *rand.Rand) (*netnsNet, error) {
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("chaos: netns network: %w (install iproute2, or use the loopback network)", err)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("chaos: netns network: network namespaces need root (or use the loopback network, which has no partitions)")
	}
	removeStaleNamespaces()
	// Interface names are limited to 15 bytes: "sc" + 5 hex + role + index.
	tag := fmt.Sprintf("%05x", rnd.IntN(1<<20))
	subnet, err := freeSubnet(rnd)
	if err != nil {
		return nil, err
	}
	nw := &netnsNet{n: n, tag: tag, subnet: subnet, bridge: "sc" + tag + "br", blocked: make(map[[2]int]bool)}
	if err := nw.setup(); err != nil {
		_ = nw.close()
		return nil, err
	}
	return nw, nil
}

// freeSubnet picks a /24 of 198.18.0.0/15 that no interface of this
// namespace has an address in (another run's bridge, say).
func freeSubnet(rnd *rand.Rand) (string, error) {
	out, err := exec.Command("ip", "-o", "-4", "addr", "show").Output()
	if err != nil {
		return "", fmt.Errorf("chaos: netns network: ip addr: %w", err)
	}
	for range 64 {
		id := rnd.IntN(512)
		subnet := fmt.Sprintf("198.%d.%d.", 18+id/256, id%256)
		if !strings.Contains(string(out), " "+subnet) {
			return subnet, nil
		}
	}
	return "", errors.New("chaos: netns network: no free /24 in 198.18.0.0/15")
}

func (nw *netnsNet) ns(i int) string {
	return fmt.Sprintf("%s%d-%s-n%d", nsPrefix, os.Getpid(), nw.tag, i+1)
}

func (nw *netnsNet) host(i int) string { return nw.subnet + strconv.Itoa(i+1) }

func (nw *netnsNet) setup() error {
	cmds := [][]string{
		{"link", "add", nw.bridge, "type", "bridge"},
		{"addr", "add", nw.subnet + "254/24", "dev", nw.bridge},
		{"link", "set", nw.bridge, "up"},
	}
	for i := range nw.n {
		ns := nw.ns(i)
		inner, outer := fmt.Sprintf("sc%sn%d", nw.tag, i+1), fmt.Sprintf("sc%sh%d", nw.tag, i+1)
		cmds = append(cmds,
			[]string{"netns", "add", ns},
			[]string{"link", "add", inner, "type", "veth", "peer", "name", outer},
			[]string{"link", "set", inner, "netns", ns},
			[]string{"link", "set", outer, "master", nw.bridge},
			[]string{"link", "set", outer, "up"},
			[]string{"-n", ns, "addr", "add", nw.host(i) + "/24", "dev", inner},
			[]string{"-n", ns, "link", "set", inner, "up"},
			[]string{"-n", ns, "link", "set", "lo", "up"},
		)
	}
	for _, c := range cmds {
		if err := ip(c...); err != nil {
			return fmt.Errorf("chaos: netns network: %w", err)
		}
	}
	return nil
}

func (nw *netnsNet) command(i int, argv []string) []string {
	return append([]string{"ip", "netns", "exec", nw.ns(i)}, argv...)
}

func (nw *netnsNet) canPartition() bool { return true }

func (nw *netnsNet) partition(groups [][]int) error {
	if err := nw.heal(); err != nil {
		return err
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	for gi, g := range groups {
		for gj, h := range groups {
			if gi == gj {
				continue
			}
			for _, a := range g {
				for _, b := range h {
					if err := ip("-n", nw.ns(a), "route", "add", "blackhole", nw.host(b)+"/32"); err != nil {
						return fmt.Errorf("chaos: partition: %w", err)
					}
					nw.blocked[[2]int{a, b}] = true
				}
			}
		}
	}
	return nil
}

func (nw *netnsNet) heal() error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	var errs []error
	for l := range nw.blocked {
		if err := ip("-n", nw.ns(l[0]), "route", "del", "blackhole", nw.host(l[1])+"/32"); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(nw.blocked, l)
	}
	return errors.Join(errs...)
}

func (nw *netnsNet) close() error {
	var errs []error
	for i := range nw.n {
		if err := ip("netns", "del", nw.ns(i)); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err)
		}
	}
	if err := ip("link", "del", nw.bridge); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeStaleNamespaces deletes the namespaces of harness runs whose
// process is gone (a killed test leaves them behind); their veths go with
// them, and then the bridges of this harness with no port left.
func removeStaleNamespaces() {
	defer removeEmptyBridges()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		_ = ip("netns", "del", name)
	}
}

// removeEmptyBridges deletes the harness's bridges ("sc" + 5 hex + "br")
// that no veth is attached to any more.
func removeEmptyBridges() {
	names, err := filepath.Glob("/sys/class/net/sc*br")
	if err != nil {
		return
	}
	for _, path := range names {
		name := filepath.Base(path)
		if len(name) != 9 {
			continue
		}
		if ports, err := os.ReadDir(filepath.Join(path, "brif")); err == nil && len(ports) == 0 {
			_ = ip("link", "del", name)
		}
	}
}

// ip runs the ip command.
func ip(args ...string) error {
	var stderr bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
