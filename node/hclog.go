package node

import (
	"context"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter routes hashicorp/raft's hclog output into log/slog, so every
// component of a node logs through one handler. Raft is chatty at Info
// (elections, snapshots per group, times the number of shards), so the
// adapter has its own minimum level.
type hclogAdapter struct {
	l     *slog.Logger
	name  string
	level hclog.Level
	args  []any
}

// newHCLogger returns an hclog.Logger writing to l at level and above.
func newHCLogger(l *slog.Logger, name string, level hclog.Level) hclog.Logger {
	return &hclogAdapter{l: l.With("component", name), name: name, level: level}
}

func slogLevel(level hclog.Level) slog.Level {
	switch {
	case level <= hclog.Debug:
		return slog.LevelDebug
	case level == hclog.Info:
		return slog.LevelInfo
	case level == hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	level = routine(level, msg, args)
	if level == hclog.Off || level < a.level {
		return
	}
	a.l.Log(context.Background(), slogLevel(level), msg, args...)
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }
func (a *hclogAdapter) IsTrace() bool                 { return a.level <= hclog.Trace }
func (a *hclogAdapter) IsDebug() bool                 { return a.level <= hclog.Debug }
func (a *hclogAdapter) IsInfo() bool                  { return a.level <= hclog.Info }
func (a *hclogAdapter) IsWarn() bool                  { return a.level <= hclog.Warn }
func (a *hclogAdapter) IsError() bool                 { return a.level <= hclog.Error }
func (a *hclogAdapter) ImpliedArgs() []any            { return a.args }
func (a *hclogAdapter) Name() string                  { return a.name }
func (a *hclogAdapter) SetLevel(level hclog.Level)    { a.level = level }
func (a *hclogAdapter) GetLevel() hclog.Level         { return a.level }

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	c := *a
	c.l = a.l.With(args...)
	c.args = append(append([]any(nil), a.args...), args...)
	return &c
}

func (a *hclogAdapter) Named(name string) hclog.Logger {
	if a.name != "" {
		name = a.name + "." + name
	}
	return a.ResetNamed(name)
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *a
	c.name = name
	c.l = a.l.With("subsystem", name)
	return &c
}

func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

func (a *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return slogWriter{a}
}

// slogWriter turns lines written by a standard logger into Info records.
type slogWriter struct{ a *hclogAdapter }

func (w slogWriter) Write(p []byte) (int, error) {
	msg := string(p)
	if n := len(msg); n > 0 && msg[n-1] == '\n' {
		msg = msg[:n-1]
	}
	w.a.Log(hclog.Info, msg)
	return len(p), nil
}

// routine is the level of a raft message in Scope: hashicorp/raft logs at
// WARN or ERROR some events that are routine here — a new group's first
// election, a leader stepping down because the leadership moved (Scope
// balances leaders and transfers them on request), a restarting peer's
// pre-vote, a non-voter catching up — and an operator who learns to ignore
// WARN and ERROR misses the ones that matter. Those are logged at INFO;
// every other message keeps raft's level.
func routine(level hclog.Level, msg string, args []any) hclog.Level {
	if level < hclog.Warn {
		return level
	}
	if msg == "heartbeat timeout reached, starting election" {
		if argString(args, "last-leader-id") == "" {
			return hclog.Info // the group's first election: it never had a leader
		}
		return level
	}
	if routineRaft[msg] {
		return hclog.Info
	}
	return level
}

// routineRaft are raft's WARN and ERROR messages that describe the normal
// course of elections, leadership transfers and a new replica's catch-up.
var routineRaft = map[string]bool{
	// Elections: split votes, competing candidates, a leader found.
	"Election timeout reached, restarting election":              true,
	"new leader elected, stepping down":                          true,
	"duplicate requestVote from":                                 true,
	"rejecting vote request since we have a leader":              true,
	"rejecting vote request since our last term is greater":      true,
	"rejecting vote request since our last index is greater":     true,
	"rejecting pre-vote request since we have a leader":          true,
	"rejecting pre-vote request since our last term is greater":  true,
	"rejecting pre-vote request since our last index is greater": true,
	"peer has newer term, stopping replication":                  true, // the leadership moved
	// A non-voter (a new replica) waits for its promotion.
	"heartbeat timeout reached, not part of a stable configuration or a non-voter, not triggering a leader election": true,
	// A new or returning replica catching up.
	"failed to get previous log":                 true,
	"appendEntries rejected, sending older logs": true,
}

// argString is the string value of key in hclog's key/value args ("" if
// absent).
func argString(args []any, key string) string {
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok && k == key {
			if v, ok := args[i+1].(string); ok {
				return v
			}
			return ""
		}
	}
	return ""
}
