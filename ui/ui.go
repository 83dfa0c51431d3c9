// Package ui serves Scope's web UI at /ui/: a handful of static files,
// embedded in the binary, that run in the browser and read everything
// through the public QueryService and ClusterService over Connect's JSON
// protocol (docs/UI.md). The UI has no server-side state and no build
// step: what is in static/ is what the browser gets.
//
// Every path under /ui/ that is not an asset answers with the same page
// (index.html); the script reads the path to know what to show, so each
// view has a stable address a person can paste (/ui/tree/{eventId}, ...).
package ui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed static
var static embed.FS

// Prefix is the path the UI is served under.
const Prefix = "/ui/"

// file is one embedded file, read once.
type file struct {
	body        []byte
	etag        string
	contentType string
}

// Handler serves the UI under Prefix. Mount it at Prefix.
func Handler() http.Handler {
	files := make(map[string]file)
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		files[strings.TrimPrefix(p, "static/")] = file{body: body, etag: `"` + hex.EncodeToString(sum[:8]) + `"`,
			contentType: contentType(p)}
		return nil
	})
	if err != nil {
		panic("ui: reading the embedded files: " + err.Error()) // cannot happen: they are compiled in
	}
	index, ok := files["index.html"]
	if !ok {
		panic("ui: static/index.html is not embedded")
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "the UI answers GET and HEAD only", http.StatusMethodNotAllowed)
			return
		}
		f := index
		if rest, isAsset := strings.CutPrefix(r.URL.Path, Prefix+"assets/"); isAsset {
			af, ok := files["assets/"+rest] // only the embedded names: no path is ever opened
			if !ok {
				http.NotFound(w, r)
				return
			}
			f = af
		}
		h := w.Header()
		// The page loads nothing from elsewhere, runs no inline script and
		// may not be framed: a stored payload that a view shows as text
		// can never become code (the script also only ever sets text).
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Type", f.contentType)
		// Revalidated every time (cheap: the ETag), so that a browser never
		// runs a script of another build against this node's API.
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", f.etag)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
	})
}

func contentType(p string) string {
	switch path.Ext(p) {
	case ".html":
		return "text/html; charset=utf-8"
	case ".js":
		return "text/javascript; charset=utf-8"
	case ".css":
		return "text/css; charset=utf-8"
	case ".svg":
		return "image/svg+xml"
	}
	return "application/octet-stream"
}
