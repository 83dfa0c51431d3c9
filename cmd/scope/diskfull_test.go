//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/oklog/ulid/v2"

	"github.com/elixirscope/scope/internal/testwait"
	scopev1 "github.com/elixirscope/scope/rpc/gen/scope/v1"
)

// TestDiskFull runs `scope agent -dev` on a 128 MiB tmpfs with a disk
// guard scaled to it (4 MiB memtables, -min-free-disk 48MiB, so 24 MiB is
// critical, and an 8 MiB reserve) and ingests until the disk fills: ingest must be refused with
// RESOURCE_EXHAUSTED naming the data directory while reads, /healthz and
// /readyz go on; it must resume by itself once space is freed; a restart
// while the disk is critically full must come up ready, serve reads and
// refuse writes; and every acknowledged event must be stored, no refused
// one. A filler file plays the other tenant of the disk that the test
// grows and deletes. Needs root (mount); skipped otherwise.
func TestDiskFull(t *testing.T) {
	mnt := mountTmpfs(t, 128<<20)
	dir := filepath.Join(mnt, "dev")
	httpAddr, raftAddr := freeAddr(t), freeAddr(t)
	flags := []string{"-memtable-size", "4MiB", "-min-free-disk", "48MiB", "-disk-reserve", "8MiB"}
	a := startAgentProc(t, dir, httpAddr, raftAddr, flags...)
	api, err := (&clientFlags{addr: httpAddr}).dial()
	if err != nil {
		t.Fatal(err)
	}
	defer api.hc.CloseIdleConnections()
	l := &diskLoader{t: t, api: api, payload: make([]byte, 3000)}
	start := time.Now()
	phase := func(what string) {
		t.Logf("%6.2fs %s (%d MiB free)", time.Since(start).Seconds(), what, freeMiB(t, mnt))
	}

	// Another tenant of the disk leaves 80 MiB free; then the node's own
	// data fills the disk until the guard refuses.
	filler := filepath.Join(mnt, "filler")
	fill(t, filler, mnt, 80)
	deadline := time.Now().Add(2 * time.Minute)
	for l.send() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("ingest not refused within 2m; %d events acknowledged, %d MiB free", len(l.acked), freeMiB(t, mnt))
		}
	}
	phase(fmt.Sprintf("refused after %d acknowledged events", len(l.acked)))

	// Hold the disk full (a flush or compaction finishing frees space, and
	// the refusal would clear by itself): another tenant takes space until
	// 28 MiB are free: 20 below the minimum, more than Pebble frees by
	// itself with 4 MiB memtables. The node may still dip below the
	// critical 24 MiB; it refuses writes either way.
	holdFull := func() { fill(t, filler, mnt, 28) }
	holdFull()
	testwait.For(t, "writes refused", 30*time.Second, func() bool { return strings.Contains(httpGet(t, "http://"+httpAddr+"/readyz"), "writes refused") })
	err = l.send()
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "disk full") ||
		!strings.Contains(err.Error(), dir) {
		t.Fatalf("ingest on a full disk: got %v, want RESOURCE_EXHAUSTED naming %s", err, dir)
	}
	l.checkReads()
	if got := httpGet(t, "http://"+httpAddr+"/healthz"); got != "ok\n" {
		t.Fatalf("/healthz on a full disk: %q", got)
	}
	if m := httpGet(t, "http://"+httpAddr+"/metrics"); !strings.Contains(m, "\nscope_disk_full 1\n") &&
		!strings.Contains(m, "\nscope_disk_full 2\n") {
		t.Fatalf("scope_disk_full is neither 1 nor 2 on a full disk:\n%s", grepLines(m, "scope_disk"))
	}

	phase("full: writes refused, reads served")
	// Space is freed (the other tenant's file is deleted): ingest resumes
	// by itself.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "ingest accepted after space was freed", 30*time.Second, func() bool { return l.send() == nil })
	phase("space freed: writes accepted")

	// Critically full (below half the minimum) while running: the node
	// releases its reserve file; then it is killed and restarted still
	// full.
	fill(t, filler, mnt, 12)
	testwait.For(t, "reserve released", 30*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(dir, "disk-reserve"))
		return errors.Is(err, os.ErrNotExist)
	})
	phase("critical: reserve released")
	if err := a.signal(t, syscall.SIGKILL); err == nil {
		t.Fatal("agent exited cleanly after SIGKILL?")
	}
	fill(t, filler, mnt, 12)
	a = startAgentProc(t, dir, httpAddr, raftAddr, flags...)
	holdFull() // opening may have freed space (obsolete logs)
	testwait.For(t, "writes refused after the restart", 30*time.Second, func() bool {
		return strings.Contains(httpGet(t, "http://"+httpAddr+"/readyz"), "writes refused")
	})
	if err := l.send(); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("ingest after a restart on a full disk: got %v, want RESOURCE_EXHAUSTED", err)
	}
	l.checkReads()
	phase("restarted while full: ready, writes refused, reads served")
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "ingest accepted after a restart and freed space", 30*time.Second, func() bool { return l.send() == nil })
	testwait.For(t, "reserve written back", 30*time.Second, func() bool {
		st, err := os.Stat(filepath.Join(dir, "disk-reserve"))
		return err == nil && st.Size() == 8<<20
	})
	phase("space freed: writes accepted, reserve written back")

	// A restart on a disk with no byte free: the reserve file is what
	// lets the store open.
	if err := a.signal(t, syscall.SIGINT); err != nil {
		t.Fatalf("agent exit after SIGINT: %v", err)
	}
	fill(t, filler, mnt, 0)
	a = startAgentProc(t, dir, httpAddr, raftAddr, flags...)
	if _, err := os.Stat(filepath.Join(dir, "disk-reserve")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reserve file after a start with 0 bytes free: %v, want it released", err)
	}
	holdFull()
	testwait.For(t, "writes refused after the restart", 30*time.Second, func() bool {
		return strings.Contains(httpGet(t, "http://"+httpAddr+"/readyz"), "writes refused")
	})
	if err := l.send(); connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("ingest after a restart on a disk without free space: got %v, want RESOURCE_EXHAUSTED", err)
	}
	l.checkReads()
	phase("restarted with 0 bytes free: reserve released, ready, writes refused, reads served")
	if err := a.signal(t, syscall.SIGINT); err != nil {
		t.Fatalf("agent exit after SIGINT: %v", err)
	}

	// Full again, and no reserve left: the agent exits at once, saying
	// what to do, rather than spinning on a flush it cannot write.
	fill(t, filler, mnt, 0)
	a = spawnAgent(t, httpAddr, append([]string{"agent", "-dev", "-data-dir", dir, "-http", httpAddr, "-raft", raftAddr,
		"-log-level", "warn"}, flags...))
	select {
	case <-a.done:
	case <-time.After(time.Minute):
		t.Fatal("agent on a full disk without a reserve neither exited nor became ready within 1m")
	}
	if a.waitErr == nil || !strings.Contains(a.stderr.String(), "no reserve file left to release") {
		t.Fatalf("agent on a full disk without a reserve: exit %v, want a failure naming the full disk; stderr:\n%s", a.waitErr, a.stderr)
	}
	phase("full without a reserve: agent exited with a clear error")
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	a = startAgentProc(t, dir, httpAddr, raftAddr, flags...)
	testwait.For(t, "ingest accepted after a restart with space", 30*time.Second, func() bool { return l.send() == nil })
	phase("space freed, restarted: writes accepted")
	l.checkStored()
	if err := a.signal(t, syscall.SIGINT); err != nil {
		t.Fatalf("agent exit after SIGINT: %v", err)
	}
}

// mountTmpfs mounts a tmpfs of size bytes on a new temporary directory,
// unmounted at cleanup (after the agents registered later are killed). It
// skips the test when mounting is not allowed.
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.Itoa(size), "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// fill (re)writes path so that at most free MiB remain free on mnt (none
// is written if less is free already); free 0 fills the filesystem to its
// last byte.
func fill(t *testing.T, path, mnt string, free int) {
	t.Helper()
	_ = os.Remove(path)
	n := freeMiB(t, mnt) - free
	if n <= 0 && free > 0 {
		return
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	mib := make([]byte, 1<<20)
	for range max(n, 0) {
		if _, err := f.Write(mib); err != nil {
			t.Fatal(err)
		}
	}
	if free == 0 {
		// What is left is under a MiB: fill it a page at a time.
		page := mib[:4096]
		for {
			if _, err := f.Write(page); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func freeMiB(t *testing.T, mnt string) int {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	return int(st.Bavail * uint64(st.Bsize) >> 20)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// diskLoader sends COMMITTED ingest requests of 64 events with unique ids
// and ~4 KiB incompressible payloads, one at a time, and remembers what was
// acknowledged and what was refused.
type diskLoader struct {
	t       *testing.T
	api     *api
	payload []byte
	seq     int
	acked   []string
	refused []string
}

// send sends one request. nil: every event acknowledged. A refusal for a
// full disk returns the error after checking that every event of the
// request was reported refused. Anything else fails the test.
func (l *diskLoader) send() error {
	l.t.Helper()
	req := &scopev1.IngestRequest{Durability: scopev1.Durability_DURABILITY_COMMITTED}
	for range 64 {
		l.seq++
		_, _ = rand.Read(l.payload)
		req.Events = append(req.Events, &scopev1.Event{EventId: ulid.Make().String(), Origin: "disk@h",
			Pid: fmt.Sprintf("<0.%d.0>", l.seq%97), Kind: scopev1.Kind_KIND_STATE_CHANGE,
			TimestampNs: 1_700_000_000_000_000_000 + int64(l.seq)*1000,
			Payload:     base64.StdEncoding.EncodeToString(l.payload)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := l.api.ingest.Ingest(ctx, connect.NewRequest(req))
	ids := make([]string, len(req.Events))
	for i, e := range req.Events {
		ids[i] = e.EventId
	}
	if err == nil {
		l.acked = append(l.acked, ids...)
		return nil
	}
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted {
		l.t.Fatalf("ingest: %v (want success or RESOURCE_EXHAUSTED)", err)
	}
	var resp *scopev1.IngestResponse
	for _, d := range ce.Details() {
		if v, derr := d.Value(); derr == nil {
			if r, ok := v.(*scopev1.IngestResponse); ok {
				resp = r
			}
		}
	}
	if resp == nil || int(resp.GetRefused()) != len(ids) {
		l.t.Fatalf("ingest refused on a full disk: want all %d events refused, got %v", len(ids), resp)
	}
	l.refused = append(l.refused, ids...)
	return err
}

// checkReads reads an acknowledged event and a page of events, LEADER.
func (l *diskLoader) checkReads() {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := l.acked[len(l.acked)-1]
	resp, err := l.api.query.GetEvent(ctx, connect.NewRequest(&scopev1.GetEventRequest{EventId: id}))
	if err != nil || resp.Msg.GetEvent().GetEventId() != id {
		l.t.Fatalf("GetEvent %s on a full disk: %v", id, err)
	}
	page, err := l.api.query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Limit: 100}))
	if err != nil || len(page.Msg.GetEvents()) == 0 {
		l.t.Fatalf("Events on a full disk: %v", err)
	}
}

// checkStored reads every stored event: each acknowledged id must be
// there, no refused one.
func (l *diskLoader) checkStored() {
	l.t.Helper()
	stored := make(map[string]bool)
	cursor := ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		page, err := l.api.query.Events(ctx, connect.NewRequest(&scopev1.EventsRequest{Limit: 10_000, Cursor: cursor}))
		cancel()
		if err != nil {
			l.t.Fatalf("Events: %v", err)
		}
		for _, e := range page.Msg.GetEvents() {
			stored[e.GetEventId()] = true
		}
		if cursor = page.Msg.GetNextCursor(); cursor == "" {
			break
		}
	}
	lost := 0
	for _, id := range l.acked {
		if !stored[id] {
			lost++
		}
	}
	wrong := 0
	for _, id := range l.refused {
		if stored[id] {
			wrong++
		}
	}
	if lost > 0 || wrong > 0 {
		l.t.Fatalf("%d of %d acknowledged events lost; %d of %d refused events stored", lost, len(l.acked), wrong, len(l.refused))
	}
	l.t.Logf("%d acknowledged events stored, %d refused not stored", len(l.acked), len(l.refused))
}
