// Scope web UI (docs/UI.md). Plain browser JavaScript, no build step and no
// third-party code. Every view reads the public API over Connect's JSON
// protocol from the node that served the page; that node scatters the
// query over the cluster. Text from events (payloads, names) is only ever
// set as text, never parsed as HTML.
"use strict";

(function () {
  // ---------------------------------------------------------------- basics

  const $app = () => document.getElementById("app");
  const TOKEN_KEY = "scope.token"; // sessionStorage: this tab only

  // h builds an element: h("a", {href: "/x", class: "y"}, "text", child...).
  // Attributes named on* are event handlers; strings become text nodes.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    append(el, children);
    return el;
  }
  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, String(v));
    }
    for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return el;
  }

  function notice(kind, ...text) {
    document.getElementById("notices").append(h("div", { class: "notice " + kind, role: kind === "error" ? "alert" : "status" }, ...text));
  }
  // clearNotices removes the notices of an earlier answer; a pending token
  // form stays.
  function clearNotices() {
    for (const el of [...document.getElementById("notices").children]) if (el.id !== "token-form") el.remove();
  }

  // ---------------------------------------------------------------- the API

  class APIError extends Error {
    constructor(code, message) { super(message); this.code = code; }
  }

  function headers(extra) {
    const hd = Object.assign({ "Connect-Protocol-Version": "1" }, extra);
    const tok = sessionStorage.getItem(TOKEN_KEY);
    if (tok) hd["Authorization"] = "Bearer " + tok;
    return hd;
  }

  // call runs one unary procedure, e.g. call("QueryService", "Events", {...}).
  async function call(service, method, body) {
    let resp;
    try {
      resp = await fetch(`/scope.v1.${service}/${method}`, {
        method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body || {}),
      });
    } catch (e) {
      throw new APIError("unavailable", "the node did not answer: " + e.message);
    }
    const text = await resp.text();
    let data = {};
    try { data = text ? JSON.parse(text) : {}; } catch (e) {
      throw new APIError("unknown", `HTTP ${resp.status}: ${text.slice(0, 200)}`);
    }
    if (!resp.ok) throw apiError(data, resp.status);
    return data;
  }

  function apiError(data, status) {
    const err = new APIError(data.code || "unknown", data.message || `HTTP ${status}`);
    if (err.code === "unauthenticated" || err.code === "permission_denied") askToken(err);
    return err;
  }

  // stream runs a server-streaming procedure over Connect's streaming JSON
  // protocol (enveloped messages), calling onMessage for each. It returns
  // when the stream ends; signal cancels it.
  async function stream(service, method, body, onMessage, signal) {
    const payload = new TextEncoder().encode(JSON.stringify(body || {}));
    const env = new Uint8Array(5 + payload.length);
    new DataView(env.buffer).setUint32(1, payload.length);
    env.set(payload, 5);
    const resp = await fetch(`/scope.v1.${service}/${method}`, {
      method: "POST", headers: headers({ "Content-Type": "application/connect+json" }), body: env, signal,
    });
    if (!resp.ok) {
      let data = {};
      try { data = await resp.json(); } catch (e) { /* not JSON */ }
      throw apiError(data, resp.status);
    }
    const reader = resp.body.getReader();
    let buf = new Uint8Array(0);
    const dec = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const joined = new Uint8Array(buf.length + value.length);
      joined.set(buf); joined.set(value, buf.length);
      buf = joined;
      while (buf.length >= 5) {
        const flags = buf[0];
        const len = new DataView(buf.buffer, buf.byteOffset + 1, 4).getUint32(0);
        if (buf.length < 5 + len) break;
        const msg = JSON.parse(dec.decode(buf.subarray(5, 5 + len)));
        buf = buf.slice(5 + len);
        if (flags & 2) { // end of stream
          if (msg.error) throw apiError(msg.error, 200);
          return;
        }
        onMessage(msg);
      }
    }
    throw new APIError("unavailable", "the stream ended without an end message (the node went away?)");
  }

  // askToken shows the token form once: tokens are kept for this tab only.
  function askToken(err) {
    if (document.getElementById("token-form")) return;
    const input = h("input", { type: "password", id: "token", placeholder: "token", autocomplete: "off", size: 40 });
    const form = h("form", { id: "token-form", class: "notice warn" },
      h("strong", {}, "This node needs a token. "), err.message, " ",
      input, " ", h("button", { type: "submit" }, "Use token"),
      h("div", { class: "muted" }, "Kept in this tab only (sessionStorage); a query token reads, an admin token also changes membership."));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      location.reload();
    });
    document.getElementById("notices").prepend(form);
  }

  // showPartial lists the shards that did not answer (allow_partial).
  function showPartial(resp) {
    const missing = resp.missing || [];
    if (!missing.length) return;
    notice("partial", h("strong", {}, `Partial answer: ${missing.length} shard(s) did not answer. `),
      missing.map((m) => `shard ${m.shard || 0} (${m.code}: ${m.reason})`).join("; "));
  }
  function showLag(resp) {
    const lag = resp.lag;
    if (!lag || !lag.shards || !lag.shards.length) return;
    notice("warn", `Read from replicas that lag: up to ${lag.maxEntries || 0} entries behind.`);
  }

  // ---------------------------------------------------------------- formats

  const kindName = (k) => (k || "KIND_UNSPECIFIED").replace(/^KIND_/, "");
  const outcomeName = (o) => (o || "OUTCOME_UNSPECIFIED").replace(/^OUTCOME_/, "");
  const big = (v) => BigInt(v || 0);

  // fmtTime prints Unix ns as local date-time with microseconds.
  function fmtTime(ns) {
    const n = big(ns);
    if (n === 0n) return "";
    const ms = Number(n / 1000000n);
    const d = new Date(ms);
    const pad = (x, w) => String(x).padStart(w, "0");
    const us = Number((n / 1000n) % 1000000n);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1, 2)}-${pad(d.getDate(), 2)} ${pad(d.getHours(), 2)}:${pad(d.getMinutes(), 2)}:${pad(d.getSeconds(), 2)}.${pad(us, 6)}`;
  }
  function fmtDur(ns) {
    const n = Number(ns || 0);
    if (n < 1e3) return `${n} ns`;
    if (n < 1e6) return `${(n / 1e3).toFixed(1)} µs`;
    if (n < 1e9) return `${(n / 1e6).toFixed(2)} ms`;
    return `${(n / 1e9).toFixed(3)} s`;
  }
  const mfa = (e) => (e.module || e.function ? `${e.module || "?"}.${e.function || "?"}/${e.arity || 0}` : "");
  const short = (id) => (id ? id.slice(-8) : "");
  const proc = (origin, pid) => `${origin}/${pid}`;

  // Links between views. Origins and pids are opaque strings: each is one
  // path segment, escaped.
  const enc = encodeURIComponent;
  const procURL = (origin, pid) => `/ui/process/${enc(origin)}/${enc(pid)}`;
  const procQuery = (e) => `origin=${enc(e.origin)}&pid=${enc(e.pid)}`;
  const treeURL = (e) => `/ui/tree/${enc(e.eventId)}?${procQuery(e)}`;
  const traceURL = (e) => `/ui/trace/${enc(e.eventId)}?${procQuery(e)}`;
  const eventURL = (e) => `/ui/event/${enc(e.eventId)}?${procQuery(e)}`;
  const flowURL = (a, b) => `/ui/flow?a=${enc(a)}&b=${enc(b)}`;
  function peerOf(e) {
    if (!e.peerPid) return null;
    return proc(e.peerOrigin || e.origin, e.peerPid);
  }

  function kindBadge(e) { const k = kindName(e.kind); return h("span", { class: "kind " + k }, k); }
  function what(e) {
    const k = kindName(e.kind);
    switch (k) {
      case "CALL": case "RETURN": return mfa(e);
      case "EXCEPTION": return [mfa(e), e.reason ? ` ${e.reason}` : ""];
      case "SEND": return e.peerPid ? `to ${peerOf(e)}` : "to an unnamed or registered receiver";
      case "RECEIVE": {
        const sent = linkOf(e, "LINK_TYPE_RECEIVED_FROM");
        if (e.peerPid) return [`from ${peerOf(e)}`, sent ? [" ", h("a", { href: `/ui/event/${enc(sent)}`, class: "send-link" }, "(its SEND)")] : ""];
        return sent ? h("a", { href: `/ui/event/${enc(sent)}`, class: "send-link" }, "from its SEND") : "from an unknown sender (no SEND matched)";
      }
      case "SPAWN": return `child ${peerOf(e) || "?"}`;
      case "EXIT": return e.reason || "";
      default: return "";
    }
  }

  function linkOf(e, type) { const l = (e.links || []).find((x) => x.type === type); return l ? l.targetEventId : ""; }

  // eventLinks: where one can go from an event.
  function eventLinks(e) {
    const k = kindName(e.kind);
    const out = [h("a", { href: procURL(e.origin, e.pid), title: "the process timeline" }, "process")];
    if (k === "CALL" || k === "RETURN" || k === "EXCEPTION") out.push(h("a", { href: treeURL(e) }, "tree"));
    const peer = peerOf(e);
    if ((k === "SEND" || k === "RECEIVE") && peer) out.push(h("a", { href: flowURL(proc(e.origin, e.pid), peer) }, "flow"));
    if (k === "SPAWN" && peer) out.push(h("a", { href: procURL(e.peerOrigin || e.origin, e.peerPid) }, "child"));
    out.push(h("a", { href: traceURL(e) }, "trace"));
    out.push(h("a", { href: eventURL(e) }, "event"));
    return h("span", { class: "links" }, out);
  }

  // eventRow is one event as a table row; the process column is left out
  // where every row is of one process.
  function eventRow(e, extra, oneProcess) {
    return h("tr", { id: "ev-" + e.eventId, "data-event": e.eventId, "data-kind": kindName(e.kind) },
      h("td", { class: "mono time" }, fmtTime(e.timestampNs)),
      h("td", {}, kindBadge(e)),
      oneProcess ? null : h("td", { class: "mono" }, `${e.origin} ${e.pid}`),
      h("td", {}, what(e)),
      h("td", {}, e.outcome ? h("span", { class: "outcome " + outcomeName(e.outcome) }, outcomeName(e.outcome)) : "",
        e.durationNs ? ` ${fmtDur(e.durationNs)}` : ""),
      h("td", { class: "payload", title: e.payload || "" }, e.payload || ""),
      h("td", {}, eventLinks(e)),
      extra || null);
  }
  function eventTable(events) {
    return h("table", { class: "grid events" },
      h("thead", {}, h("tr", {}, ["time", "kind", "process", "what", "outcome", "payload", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, events.map((e) => eventRow(e))));
  }

  const KINDS = ["CALL", "RETURN", "EXCEPTION", "SEND", "RECEIVE", "SPAWN", "EXIT", "STATE_CHANGE"];

  // datetime-local value <-> Unix ns string.
  function toNs(v) { if (!v) return ""; const ms = Date.parse(v); return isNaN(ms) ? "" : (BigInt(ms) * 1000000n).toString(); }
  function fromNs(ns) {
    if (!ns) return "";
    const d = new Date(Number(big(ns) / 1000000n));
    const pad = (x) => String(x).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  // filterForm builds the filter fields shared by search and tail; values
  // come from and go to the URL, so a filtered view is a link.
  function filterForm(q, opts) {
    const field = (name, label, attrs) => h("label", {}, label, h("input", Object.assign({ name, value: q.get(name) || "" }, attrs)));
    const kind = h("select", { name: "kind" }, h("option", { value: "" }, "any kind"),
      KINDS.map((k) => h("option", { value: k, selected: q.get("kind") === k }, k)));
    const form = h("form", { class: "filters", method: "get" },
      field("origin", "origin", { placeholder: "app@host" }),
      field("pid", "pid", { placeholder: "<0.123.0>" }),
      field("module", "module"),
      field("function", "function"),
      h("label", {}, "kind", kind),
      opts.time ? [
        h("label", {}, "from", h("input", { type: "datetime-local", step: 1, name: "from_local", value: fromNs(q.get("from")) })),
        h("label", {}, "to", h("input", { type: "datetime-local", step: 1, name: "to_local", value: fromNs(q.get("to")) })),
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "exceptions", value: "1", checked: q.get("exceptions") === "1" }), "exceptions only"),
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "desc", value: "1", checked: q.get("desc") === "1" }), "newest first"),
      ] : null,
      h("button", { type: "submit" }, opts.submit));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const out = new URLSearchParams();
      for (const [k, v] of new FormData(form)) {
        if (!v) continue;
        if (k === "from_local") out.set("from", toNs(v));
        else if (k === "to_local") out.set("to", toNs(v));
        else out.set(k, v);
      }
      location.search = out.toString();
    });
    return form;
  }

  // filterRequest turns URL filters into EventsRequest/TailRequest fields.
  function filterRequest(q) {
    const req = {};
    for (const k of ["origin", "pid", "module", "function"]) if (q.get(k)) req[k] = q.get(k);
    if (q.get("exceptions") === "1") req.kinds = ["KIND_EXCEPTION"];
    else if (q.get("kind")) req.kinds = ["KIND_" + q.get("kind")];
    return req;
  }

  // ---------------------------------------------------------------- pages

  // search: /ui/?origin=&pid=&module=&function=&kind=&from=&to=&exceptions=1&desc=1&cursor=
  async function pageSearch(q) {
    const app = $app();
    app.replaceChildren(h("h1", {}, "Search events"), filterForm(q, { time: true, submit: "Search" }));
    const req = Object.assign(filterRequest(q), { limit: 100, allowPartial: true, descending: q.get("desc") === "1" });
    if (q.get("from")) req.fromNs = q.get("from");
    if (q.get("to")) req.toNs = q.get("to");
    if (q.get("cursor")) req.cursor = q.get("cursor");
    if (req.pid && !req.origin) { notice("error", "A pid needs its origin (a pid is only unique on its node)."); return; }
    const resp = await call("QueryService", "Events", req);
    showPartial(resp); showLag(resp);
    const events = resp.events || [];
    app.append(events.length ? eventTable(events) : h("p", { class: "muted" }, "No events match."));
    const pager = h("div", { class: "pager" });
    if (q.get("cursor")) { const first = new URLSearchParams(q); first.delete("cursor"); pager.append(h("a", { href: "?" + first }, "« first page")); }
    if (resp.nextCursor) { const next = new URLSearchParams(q); next.set("cursor", resp.nextCursor); pager.append(h("a", { href: "?" + next, id: "next-page" }, "next page »")); }
    pager.append(h("span", { class: "muted" }, `${events.length} event(s) on this page`));
    app.append(pager);
  }

  // process: /ui/process/{origin}/{pid}?cursor=
  async function pageProcess(origin, pid, q) {
    const app = $app();
    app.replaceChildren(h("h1", {}, "Process ", h("span", { class: "mono" }, `${pid} on ${origin}`)));
    const req = { origin, pid, limit: 1000 };
    if (q.get("cursor")) req.cursor = q.get("cursor");
    const resp = await call("QueryService", "Events", req);
    showLag(resp);
    const events = resp.events || [];
    // Nest by call depth: a CALL sits one below its caller's CALL; any
    // other event one below the frame it happened in.
    const depth = new Map();
    const depthOf = (id) => (id && depth.has(id) ? depth.get(id) : -1);
    const rows = events.map((e) => {
      const k = kindName(e.kind);
      let d;
      if (k === "CALL") { d = depthOf(e.parentId) + 1; depth.set(e.eventId, d); if (e.correlationId) depth.set(e.correlationId, d); }
      else if (k === "RETURN" || k === "EXCEPTION") d = Math.max(depthOf(e.correlationId), 0);
      else d = depthOf(e.parentId) + 1;
      const row = eventRow(e, h("td", {}, h("button", { class: "plain stack", "data-at": e.timestampNs, onclick: () => showStack(origin, pid, e.timestampNs) }, "stack")), true);
      row.dataset.depth = String(d);
      row.children[2].style.paddingLeft = `${0.5 + 1.2 * d}em`;
      return row;
    });
    const summary = h("p", { class: "muted" }, `${events.length} event(s)`,
      events.length ? ` from ${fmtTime(events[0].timestampNs)} to ${fmtTime(events[events.length - 1].timestampNs)}` : "");
    app.append(summary, events.length ? h("table", { class: "grid events timeline" },
      h("thead", {}, h("tr", {}, ["time", "kind", "what", "outcome", "payload", "", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)) : h("p", { class: "muted" }, "No events stored for this process."));
    if (resp.nextCursor) { const next = new URLSearchParams(q); next.set("cursor", resp.nextCursor); app.append(h("div", { class: "pager" }, h("a", { href: "?" + next }, "later events »"))); }
    app.append(h("div", { id: "detail" }));
  }

  async function showStack(origin, pid, at) {
    const detail = document.getElementById("detail");
    detail.replaceChildren(h("p", { class: "muted" }, "Loading the call stack…"));
    try {
      const resp = await call("QueryService", "CallStackAt", { origin, pid, atNs: at });
      const frames = resp.frames || [];
      detail.replaceChildren(h("h2", {}, `Call stack at ${fmtTime(at)}`),
        frames.length ? h("ol", { class: "stack" }, frames.map((f) => h("li", {}, h("a", { href: treeURL(f.call) }, mfa(f.call)),
          " ", h("span", { class: "outcome " + (f.open ? "OPEN" : outcomeName(f.outcome)) }, f.open ? "open" : outcomeName(f.outcome)))))
          : h("p", { class: "muted" }, "No frame was open then."));
    } catch (e) { detail.replaceChildren(h("p", { class: "notice error" }, e.message)); }
  }

  // tree: /ui/tree/{eventId}?origin=&pid=&view=flame
  async function pageTree(id, q) {
    const app = $app();
    app.replaceChildren(h("h1", {}, "Call tree"));
    // summary: about half the bytes; the process is on the root's CALL
    // only (a tree is one process's), and is copied to every frame here.
    const req = { eventId: id, maxFrames: 100000, summary: true };
    if (q.get("origin") && q.get("pid")) { req.origin = q.get("origin"); req.pid = q.get("pid"); }
    const t0 = performance.now();
    const resp = await call("QueryService", "CallTree", req);
    const t1 = performance.now();
    showLag(resp);
    if (resp.truncated) notice("warn", "The tree has more frames than were read (100 000); the deepest ones are left out.");
    const root = resp.root;
    const { origin, pid } = root.call;
    const own = (f) => {
      f.call.origin = origin; f.call.pid = pid;
      if (f.end) { f.end.origin = origin; f.end.pid = pid; }
      for (const c of f.children || []) own(c);
    };
    own(root);
    const count = countFrames(root);
    const call0 = root.call;
    app.append(h("p", {}, h("span", { class: "mono" }, `${call0.origin} ${call0.pid}`), " · ",
      h("a", { href: procURL(call0.origin, call0.pid) }, "process"), " · ",
      `${count} frame(s)`, " · ", root.open ? "still open" : fmtDur(root.durationNs)));
    const treeBtn = h("button", { "aria-selected": "true", id: "view-tree" }, "Tree");
    const flameBtn = h("button", { "aria-selected": "false", id: "view-flame" }, "Flame graph");
    const expand = h("button", { class: "plain", id: "expand-all" }, "Expand all");
    const collapse = h("button", { class: "plain", id: "collapse-all" }, "Collapse all");
    const treeView = h("div", { id: "tree-view" });
    const flameView = h("div", { id: "flame-view", hidden: true });
    const detail = h("div", { id: "detail" });
    app.append(h("div", { class: "tabs" }, treeBtn, flameBtn, expand, collapse), treeView, flameView, detail);

    const select = (f, el) => {
      document.querySelectorAll(".frame.selected").forEach((x) => x.classList.remove("selected"));
      if (el) el.classList.add("selected");
      frameDetail(detail, f);
    };
    const open = initiallyExpanded(root, id);
    treeView.append(h("ul", { class: "tree" }, frameItem(root, open, select, id)));
    if (count > TREE_ROWS) {
      treeView.prepend(h("p", { class: "muted", id: "tree-lazy" }, `A large tree: the frames nearest the root are expanded; the others open with their toggle.`));
    }
    const t2 = performance.now();
    let flameDrawn = false;
    const show = (flame) => {
      treeBtn.setAttribute("aria-selected", String(!flame)); flameBtn.setAttribute("aria-selected", String(flame));
      treeView.hidden = flame; flameView.hidden = !flame; expand.hidden = flame; collapse.hidden = flame;
      if (flame && !flameDrawn) { drawFlame(flameView, root, select); flameDrawn = true; }
      const u = new URL(location.href);
      if (flame) u.searchParams.set("view", "flame"); else u.searchParams.delete("view");
      history.replaceState(null, "", u);
    };
    treeBtn.addEventListener("click", () => show(false));
    flameBtn.addEventListener("click", () => show(true));
    // Expanding all builds every frame (and the callees of the frames it
    // builds: the loop runs until nothing is collapsed).
    expand.addEventListener("click", () => {
      for (let more = true; more;) {
        const closed = treeView.querySelectorAll("li.collapsed");
        closed.forEach((li) => setCollapsed(li, false));
        more = closed.length > 0;
      }
    });
    collapse.addEventListener("click", () => treeView.querySelectorAll("li.has-children").forEach((li) => setCollapsed(li, true)));
    show(q.get("view") === "flame");
    // For the benchmark (ui/tree_bench_test.go): the call, then building.
    document.body.dataset.fetchMs = String(Math.round(t1 - t0));
    document.body.dataset.buildMs = String(Math.round(t2 - t1));
  }

  function countFrames(f) { let n = 1; for (const c of f.children || []) n += countFrames(c); return n; }

  function frameOutcome(f) { return f.open ? "OPEN" : outcomeName(f.outcome); }

  // A tree of thousands of frames is laid out lazily: a frame's callees
  // are built the first time it is expanded. At first the frames nearest
  // the root are expanded, breadth-first, until TREE_ROWS rows show, and
  // so is the path to the frame the address names.
  const TREE_ROWS = 2000;

  function initiallyExpanded(root, focusId) {
    const open = new Set();
    let rows = 1;
    const queue = [root];
    while (queue.length) {
      const f = queue.shift();
      const kids = f.children || [];
      if (!kids.length) continue;
      if (rows + kids.length > TREE_ROWS) break;
      open.add(f);
      rows += kids.length;
      queue.push(...kids);
    }
    const path = [];
    const find = (f) => {
      if (f.call.eventId === focusId || (f.end && f.end.eventId === focusId)) return true;
      for (const c of f.children || []) if (find(c)) { path.push(f); return true; }
      return false;
    };
    find(root);
    for (const f of path) open.add(f);
    return open;
  }

  // setCollapsed opens or closes a frame, building its callees on first
  // opening.
  function setCollapsed(li, collapsed) {
    if (!collapsed && li.buildChildren) { li.buildChildren(); li.buildChildren = null; }
    li.classList.toggle("collapsed", collapsed);
    const t = li.firstChild.firstChild;
    t.textContent = collapsed ? "▸" : "▾";
    t.setAttribute("aria-expanded", String(!collapsed));
  }

  // frameItem renders a frame and, if it is in open, its callees.
  // Recursion depth is the tree's depth, which the correlator bounds.
  function frameItem(f, open, select, focusId) {
    const out = frameOutcome(f);
    const kids = f.children || [];
    const expanded = kids.length > 0 && open.has(f);
    const toggle = h("button", { class: "toggle", "aria-expanded": String(expanded), disabled: !kids.length, title: "expand or collapse" },
      kids.length ? (expanded ? "▾" : "▸") : "·");
    const label = h("span", { class: "mfa" }, mfa(f.call));
    const row = h("div", { class: "frame " + out, id: "frame-" + f.call.eventId, "data-event": f.call.eventId },
      toggle, label,
      h("span", { class: "outcome " + out }, out === "OPEN" ? "open" : out),
      h("span", { class: "dur" }, f.open ? "" : fmtDur(f.durationNs)),
      f.end && f.end.reason ? h("span", { class: "muted" }, f.end.reason) : null,
      kids.length ? h("span", { class: "muted" }, `${kids.length} call(s)`) : null);
    const li = h("li", { class: kids.length ? "has-children" + (expanded ? "" : " collapsed") : "" }, row);
    toggle.addEventListener("click", () => setCollapsed(li, !li.classList.contains("collapsed")));
    label.addEventListener("click", () => select(f, row));
    if (f.call.eventId === focusId || (f.end && f.end.eventId === focusId)) row.classList.add("selected");
    if (kids.length) {
      li.buildChildren = () => li.append(h("ul", {}, kids.map((c) => frameItem(c, open, select, focusId))));
      if (expanded) { li.buildChildren(); li.buildChildren = null; }
    }
    return li;
  }

  function frameDetail(detail, f) {
    const c = f.call, e = f.end;
    detail.replaceChildren(h("h2", {}, mfa(c)), h("dl", { class: "fields" },
      h("dt", {}, "called"), h("dd", { class: "mono" }, fmtTime(c.timestampNs)),
      h("dt", {}, "outcome"), h("dd", {}, h("span", { class: "outcome " + frameOutcome(f) }, frameOutcome(f)),
        f.abandonReason && f.abandonReason !== "ABANDON_REASON_UNSPECIFIED" ? ` (${f.abandonReason.replace(/^ABANDON_REASON_/, "").toLowerCase()})` : ""),
      h("dt", {}, "duration"), h("dd", {}, f.open ? "open" : fmtDur(f.durationNs)),
      h("dt", {}, "arguments"), h("dd", { class: "mono" }, c.payload || ""),
      e ? [h("dt", {}, kindName(e.kind) === "EXCEPTION" ? "exception" : "returned"), h("dd", { class: "mono" }, e.reason || e.payload || "")] : null,
      h("dt", {}, "links"), h("dd", {}, eventLinks(c))));
  }

  // drawFlame lays frames out by time (x) and depth (y).
  function drawFlame(el, root, select) {
    const start = big(root.call.timestampNs);
    // Open frames last until the latest time seen in the tree.
    let last = start;
    const scan = (f, d) => {
      const t = big(f.call.timestampNs) + big(f.durationNs);
      if (t > last) last = t;
      for (const c of f.children || []) scan(c, d + 1);
    };
    scan(root, 0);
    const total = Number(last - start) || 1;
    let maxDepth = 0, hidden = 0;
    const bars = [];
    const walk = (f, d) => {
      const from = Number(big(f.call.timestampNs) - start);
      const dur = f.open ? total - from : Number(f.durationNs || 0);
      // A frame narrower than a thousandth of the width (its callees
      // too) cannot be seen or clicked: it is counted, not drawn.
      if (d > 0 && dur / total < 0.001) { hidden += countFrames(f); return; }
      maxDepth = Math.max(maxDepth, d);
      const bar = document.createElement("div");
      bar.className = "bar " + frameOutcome(f);
      bar.dataset.event = f.call.eventId;
      bar.style.left = `${(100 * from) / total}%`;
      bar.style.width = `max(2px, ${(100 * dur) / total}%)`;
      bar.style.top = `${d * 19}px`;
      bar.textContent = mfa(f.call);
      bar.title = `${mfa(f.call)} · ${f.open ? "open" : fmtDur(f.durationNs)} · ${frameOutcome(f)}`;
      bar.addEventListener("click", () => select(f, null));
      bars.push(bar);
      for (const c of f.children || []) walk(c, d + 1);
    };
    walk(root, 0);
    const box = h("div", { class: "flame" });
    box.style.height = `${(maxDepth + 1) * 19 + 2}px`;
    box.append(...bars);
    el.replaceChildren(h("p", { class: "muted" }, `Time runs left to right over ${fmtDur(total)}; each row is one call depth. Click a frame for its details.`,
      hidden ? ` ${hidden} frame(s) too short to draw at this scale are left out (the tree view has them).` : ""), box);
  }

  // flow: /ui/flow?a={origin}/{pid}&b={origin}/{pid}
  async function pageFlow(q) {
    const app = $app();
    app.replaceChildren(h("h1", {}, "Message flow"));
    const a = splitProc(q.get("a")), b = splitProc(q.get("b"));
    if (!a || !b) {
      app.append(h("p", {}, "Name two processes as ", h("code", {}, "?a=origin/pid&b=origin/pid"), ", or follow a flow link from a SEND or RECEIVE."));
      return;
    }
    const resp = await call("QueryService", "MessageFlow", { a, b, limit: 1000, allowPartial: true });
    showPartial(resp); showLag(resp);
    const msgs = resp.messages || [];
    if (resp.truncated) notice("warn", "More messages exist than the 1 000 shown.");
    app.append(h("p", {}, h("a", { href: procURL(a.origin, a.pid) }, proc(a.origin, a.pid)), " ⇄ ",
      h("a", { href: procURL(b.origin, b.pid) }, proc(b.origin, b.pid)), ` · ${msgs.length} message(s)`,
      h("span", { class: "muted" }, " · click either end of an arrow to jump to the other end")));
    if (!msgs.length) { app.append(h("p", { class: "muted" }, "No messages between these processes.")); return; }
    const isA = (e) => e.origin === a.origin && e.pid === a.pid;
    const W = 760, xa = 140, xb = W - 140, top = 50, step = 34;
    const H = top + msgs.length * step + 20;
    const svg = s("svg", { class: "flow", width: W, height: H, viewBox: `0 0 ${W} ${H}` },
      s("defs", {}, s("marker", { id: "head", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
        s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#2b6cb0" }))),
      s("text", { x: xa, y: 20, "text-anchor": "middle" }, proc(a.origin, a.pid)),
      s("text", { x: xb, y: 20, "text-anchor": "middle" }, proc(b.origin, b.pid)),
      s("line", { class: "lifeline", x1: xa, y1: 30, x2: xa, y2: H }),
      s("line", { class: "lifeline", x1: xb, y1: 30, x2: xb, y2: H }));
    const focus = (id) => {
      document.querySelectorAll(".focus").forEach((x) => x.classList.remove("focus"));
      const el = document.getElementById("ev-" + id);
      if (!el) return;
      el.classList.add("focus");
      el.scrollIntoView({ block: "center" });
      history.replaceState(null, "", "#ev-" + id);
    };
    msgs.forEach((m, i) => {
      const y = top + i * step;
      const fromA = m.send ? isA(m.send) : !isA(m.receive);
      const x1 = fromA ? xa : xb, x2 = fromA ? xb : xa;
      const g = s("g", { class: "msg" });
      if (m.send && m.receive) {
        g.append(s("line", { class: "arrow", x1, y1: y, x2: x2 + (fromA ? -8 : 8), y2: y + 14, "marker-end": "url(#head)" }));
        g.append(s("text", { x: (x1 + x2) / 2, y: y - 3, "text-anchor": "middle" }, `${fmtDur(m.latencyNs)} ${trim(m.send.payload, 40)}`));
      } else if (m.send) {
        const mid = (x1 + x2) / 2;
        g.append(s("line", { class: "arrow unreceived", x1, y1: y, x2: mid, y2: y + 7 }));
        g.append(s("text", { class: "lost", x: mid + 4, y: y + 11 }, "✕ not received"));
        g.append(s("text", { x: (x1 + mid) / 2, y: y - 3, "text-anchor": "middle" }, trim(m.send.payload, 30)));
      } else {
        g.append(s("line", { class: "arrow unsent", x1: (x1 + x2) / 2, y1: y, x2, y2: y + 14 }));
        g.append(s("text", { class: "lost", x: (x1 + x2) / 2 - 60, y: y + 4 }, "? no SEND"));
      }
      if (m.send) g.append(endpoint(m.send, x1, y, m.receive && m.receive.eventId, focus));
      if (m.receive) g.append(endpoint(m.receive, x2, y + 14, m.send && m.send.eventId, focus));
      svg.append(g);
    });
    app.append(svg, h("h2", {}, "Messages"), h("table", { class: "grid messages" },
      h("thead", {}, h("tr", {}, ["sent", "from", "received", "latency", "payload"].map((t) => h("th", {}, t)))),
      h("tbody", {}, msgs.map((m) => h("tr", {},
        h("td", { class: "mono" }, m.send ? h("a", { href: eventURL(m.send) }, fmtTime(m.send.timestampNs)) : "—"),
        h("td", { class: "mono" }, m.send ? proc(m.send.origin, m.send.pid) : proc(m.receive.peerOrigin || "?", m.receive.peerPid || "?")),
        h("td", { class: "mono" }, m.receive ? h("a", { href: eventURL(m.receive) }, fmtTime(m.receive.timestampNs)) : h("span", { class: "outcome EXCEPTION" }, "not received")),
        h("td", {}, m.send && m.receive ? fmtDur(m.latencyNs) : ""),
        h("td", { class: "payload" }, (m.send || m.receive).payload || ""))))));
    if (location.hash.startsWith("#ev-")) focus(location.hash.slice(4));
  }

  function endpoint(e, x, y, otherId, focus) {
    const k = kindName(e.kind);
    const c = s("circle", { class: "end " + k, id: "ev-" + e.eventId, "data-event": e.eventId, "data-kind": k, cx: x, cy: y, r: 5 },
      s("title", {}, `${k} at ${fmtTime(e.timestampNs)}${otherId ? " — click for the other end" : ""}`));
    if (otherId) c.addEventListener("click", () => focus(otherId));
    return c;
  }

  function trim(t, n) { t = t || ""; return t.length > n ? t.slice(0, n - 1) + "…" : t; }

  // splitProc reads "origin/pid": the pid is after the last slash.
  function splitProc(v) {
    if (!v) return null;
    const i = v.lastIndexOf("/");
    if (i <= 0 || i === v.length - 1) return null;
    return { origin: v.slice(0, i), pid: v.slice(i + 1) };
  }

  // trace: /ui/trace/{eventId}?origin=&pid=&order=1&direction=backward|forward
  async function pageTrace(id, q) {
    const app = $app();
    const order = q.get("order") === "1";
    const dir = (q.get("direction") || "both").toUpperCase();
    app.replaceChildren(h("h1", {}, "Causal trace"));
    const req = { eventId: id, allowPartial: true, processOrder: order, direction: "TRACE_DIRECTION_" + dir, maxEvents: 2000 };
    if (q.get("origin") && q.get("pid")) { req.origin = q.get("origin"); req.pid = q.get("pid"); }
    const resp = await call("QueryService", "Trace", req);
    showPartial(resp); showLag(resp);
    if (resp.truncated) notice("warn", "The walk stopped at its bound (2 000 events or depth 32); the trace is longer.");
    const nodes = resp.nodes || [], edges = resp.edges || [];
    const toggle = new URLSearchParams(q);
    if (order) toggle.delete("order"); else toggle.set("order", "1");
    app.append(h("p", {}, `${nodes.length} event(s), ${edges.length} link(s) · `,
      h("a", { href: "?" + toggle, id: "toggle-order" }, order ? "follow links only" : "also follow each process's order"),
      " · direction: ", ["both", "backward", "forward"].map((d) => {
        const u = new URLSearchParams(q); u.set("direction", d);
        return d === dir.toLowerCase() ? h("strong", {}, d + " ") : h("a", { href: "?" + u }, d + " ");
      })));
    // Lanes: one column per process, rows in time order.
    const lanes = [];
    const laneOf = new Map();
    for (const n of nodes) {
      const p = proc(n.origin, n.pid);
      if (!laneOf.has(p)) { laneOf.set(p, lanes.length); lanes.push(n); }
    }
    const out = new Map();
    for (const e of edges) { if (!out.has(e.fromEventId)) out.set(e.fromEventId, []); out.get(e.fromEventId).push(e); }
    const byId = new Map(nodes.map((n) => [n.eventId, n]));
    const focus = (tid) => {
      document.querySelectorAll(".focus").forEach((x) => x.classList.remove("focus"));
      const row = document.getElementById("ev-" + tid);
      if (row) { row.classList.add("focus"); row.scrollIntoView({ block: "center" }); history.replaceState(null, "", "#ev-" + tid); }
    };
    const rows = nodes.map((n) => {
      const cells = lanes.map(() => h("td", {}));
      const cell = cells[laneOf.get(proc(n.origin, n.pid))];
      cell.classList.add("hit");
      append(cell, [kindBadge(n), " ", what(n), " ", eventLinks(n),
        h("div", { class: "edges" }, (out.get(n.eventId) || []).map((e) => {
          const t = byId.get(e.toEventId);
          return h("a", { href: "#ev-" + e.toEventId, class: "edge", onclick: (ev) => { ev.preventDefault(); focus(e.toEventId); } },
            `${e.type.replace(/^LINK_TYPE_/, "").toLowerCase()} → ${t ? kindName(t.kind) : short(e.toEventId)}`);
        }))]);
      return h("tr", { id: "ev-" + n.eventId, class: n.eventId === id ? "start" : "" }, h("td", { class: "mono" }, fmtTime(n.timestampNs)), cells);
    });
    app.append(h("table", { class: "grid lanes" },
      h("thead", {}, h("tr", {}, h("th", {}, "time"), lanes.map((n) => h("th", {}, h("a", { href: procURL(n.origin, n.pid) }, proc(n.origin, n.pid)))))),
      h("tbody", {}, rows)));
    focus(location.hash.startsWith("#ev-") ? location.hash.slice(4) : id);
  }

  // event: /ui/event/{eventId}?origin=&pid=
  async function pageEvent(id, q) {
    const app = $app();
    app.replaceChildren(h("h1", {}, "Event ", h("span", { class: "mono" }, id)));
    const req = { eventId: id };
    if (q.get("origin") && q.get("pid")) { req.origin = q.get("origin"); req.pid = q.get("pid"); }
    const resp = await call("QueryService", "GetEvent", req);
    showLag(resp);
    const e = resp.event;
    const linkTo = (lid) => h("a", { href: `/ui/event/${enc(lid)}` }, lid);
    const rows = [["time", fmtTime(e.timestampNs)], ["kind", kindBadge(e)], ["process", h("a", { href: procURL(e.origin, e.pid) }, proc(e.origin, e.pid))],
      ["function", mfa(e)], ["seq", e.seq], ["call id", e.callId], ["correlation", e.correlationId], ["caller", e.parentId ? linkTo(e.parentId) : ""],
      ["root", e.rootId ? linkTo(e.rootId) : ""], ["peer", peerOf(e)], ["outcome", e.outcome ? outcomeName(e.outcome) : ""],
      ["duration", e.durationNs ? fmtDur(e.durationNs) : ""], ["reason", e.reason], ["payload", e.payload],
      ["orphan", e.orphan ? "yes: it matched nothing" : ""], ["shard", String(e.shard || 0)],
      ["attributes", Object.entries(e.attributes || {}).map(([k, v]) => `${k}=${v}`).join(", ")]];
    app.append(h("dl", { class: "fields" }, rows.filter(([, v]) => v !== undefined && v !== "" && v !== null)
      .map(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono" }, v)])),
    h("h2", {}, "Links"), (e.links || []).length ? h("ul", {}, e.links.map((l) => h("li", {}, l.type.replace(/^LINK_TYPE_/, "").toLowerCase(), " → ", linkTo(l.targetEventId))))
      : h("p", { class: "muted" }, "none"), h("p", {}, eventLinks(e)));
  }

  // tail: /ui/tail?origin=&pid=&module=&function=&kind=&backfill=
  const TAIL_ROWS = 2000, TAIL_HELD = 5000;
  async function pageTail(q) {
    const app = $app();
    const req = filterRequest(q);
    if (q.get("correlation_id")) req.correlationId = q.get("correlation_id");
    req.backfill = Number(q.get("backfill") || 20);
    const state = h("span", { id: "tail-state", class: "muted" }, "connecting…");
    const pause = h("button", { id: "pause" }, "Pause");
    const body = h("tbody", {});
    app.replaceChildren(h("h1", {}, "Live tail"), filterForm(q, { time: false, submit: "Follow" }),
      h("div", { class: "pager" }, pause, state, h("span", { id: "tail-count", class: "muted" })),
      h("table", { class: "grid events tail" },
        h("thead", {}, h("tr", {}, ["time", "kind", "process", "what", "outcome", "payload", ""].map((t) => h("th", {}, t)))), body));
    let paused = false, held = [], heldDropped = 0, shown = 0, removed = 0;
    const count = () => { document.getElementById("tail-count").textContent = ` · ${shown} event(s) shown${removed ? `, ${removed} older row(s) removed from view` : ""}${paused ? ` · ${held.length} held while paused` : ""}`; };
    const addRow = (row) => {
      body.prepend(row);
      while (body.children.length > TAIL_ROWS) { body.lastChild.remove(); removed++; }
    };
    const gap = (text) => addRow(h("tr", { class: "gap" }, h("td", { colspan: 7 }, "⚠ ", text)));
    const show = (item) => {
      if (item.event) { addRow(eventRow(item.event)); shown++; }
      else if (item.lagged) {
        const l = item.lagged;
        const where = l.shard !== undefined ? ` on shard ${l.shard}` : "";
        gap(l.dropped && l.dropped !== "0" ? `${l.dropped} event(s) dropped${where} (${l.reason || "lagged"}): this view has a gap here`
          : `events may be missing${where} (${l.reason || "lagged"}): this view has a gap here`);
      }
    };
    pause.addEventListener("click", () => {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        for (const it of held) show(it);
        if (heldDropped) gap(`${heldDropped} event(s) not kept while paused (at most ${TAIL_HELD} are held): this view has a gap here`);
        held = []; heldDropped = 0;
      }
      count();
    });
    const ctl = new AbortController();
    window.addEventListener("pagehide", () => ctl.abort());
    follow(req, state, show, () => paused, (item) => { if (held.length < TAIL_HELD) held.push(item); else heldDropped++; }, count, gap, ctl.signal);
  }

  // follow runs the tail stream in the background: the view is ready as
  // soon as it is laid out.
  async function follow(req, state, show, paused, hold, count, gap, signal) {
    try {
      await stream("QueryService", "Tail", req, (item) => {
        if (item.started) {
          const st = item.started;
          state.textContent = `following ${(st.shards || []).length} shard(s)` + ((st.pending || []).length ? `, ${st.pending.length} pending (no replica yet)` : "");
          state.dataset.started = "1";
          return;
        }
        if (paused()) hold(item);
        else show(item);
        count();
      }, signal);
      state.textContent = "the stream ended";
    } catch (e) {
      if (e.name === "AbortError") return;
      state.textContent = "stopped";
      gap(`the stream failed: ${e.message} — reload to follow again`);
    }
  }

  // cluster: /ui/cluster
  async function pageCluster() {
    const app = $app();
    app.replaceChildren(h("h1", {}, "Cluster"), h("div", { id: "cluster-body" }, h("p", { class: "muted" }, "Loading…")));
    let prev = null;
    const refresh = async () => {
      const [members, shards, stats] = await Promise.all([
        call("ClusterService", "Members", {}),
        call("ClusterService", "Shards", {}),
        call("QueryService", "Stats", { topN: 5, allowPartial: true }).catch((e) => ({ error: e })),
      ]);
      const now = performance.now();
      const rate = new Map();
      if (prev && !stats.error) {
        const dt = (now - prev.at) / 1000;
        for (const n of stats.nodes || []) {
          const before = prev.ingested.get(n.name);
          if (before !== undefined && dt > 0) rate.set(n.name, Math.max(0, Number(big(n.ingested) - before)) / dt);
        }
      }
      if (!stats.error) prev = { at: now, ingested: new Map((stats.nodes || []).map((n) => [n.name, big(n.ingested)])) };
      renderCluster(members, shards, stats, rate);
    };
    const loop = async () => {
      try { await refresh(); } catch (e) { showError(e); }
      setTimeout(loop, 2000);
    };
    loop();
  }

  function renderCluster(members, shards, stats, rate) {
    clearNotices();
    const ms = members.members || [];
    const alive = new Set(ms.filter((m) => m.status === "MEMBER_STATUS_ALIVE").map((m) => m.name));
    const status = (m) => (m.status || "MEMBER_STATUS_UNSPECIFIED").replace(/^MEMBER_STATUS_/, "");
    const nodeStats = new Map(((stats.nodes) || []).map((n) => [n.name, n]));
    const down = ms.filter((m) => !alive.has(m.name));
    if (down.length) notice("warn", `${down.length} member(s) not alive: ${down.map((m) => `${m.name} (${status(m).toLowerCase()})`).join(", ")}`);
    if (stats.error) notice("error", "Stats failed: " + stats.error.message);
    else showPartial(stats);
    const sh = shards.shards || [];
    const affected = sh.filter((x) => !x.leader || (x.replicas || []).some((r) => !alive.has(r.node)));
    const body = h("div", { id: "cluster-body" },
      h("p", {}, `${ms.length} member(s), ${alive.size} alive · ${shards.shardCount || sh.length} shard(s), ${shards.replicationFactor || "?"} replica(s) each`,
        members.protocol ? ` · protocol ${members.protocol}` : "",
        stats.error ? "" : ` · ${stats.events || 0} event(s) stored`),
      h("h2", {}, "Members"),
      h("table", { class: "grid members" }, h("thead", {}, h("tr", {}, ["name", "status", "http", "version", "leads", "replicas", "stored", "ingest/s", "excluded"].map((t) => h("th", {}, t)))),
        h("tbody", {}, ms.map((m) => {
          const n = nodeStats.get(m.name) || {};
          return h("tr", { "data-member": m.name, "data-status": status(m) },
            h("td", {}, m.name), h("td", {}, h("span", { class: "status " + status(m) }, status(m))),
            h("td", { class: "mono" }, m.httpAddr ? h("a", { href: `http://${m.httpAddr}/ui/cluster` }, m.httpAddr) : ""),
            h("td", {}, m.version || ""), h("td", {}, String((m.shardsLed || []).length)),
            h("td", {}, n.replicas !== undefined ? String(n.replicas) : ""),
            h("td", {}, n.storeBytes ? fmtBytes(n.storeBytes) : ""),
            h("td", {}, rate.has(m.name) ? rate.get(m.name).toFixed(0) : ""),
            h("td", { class: m.excluded ? "bad" : "" }, m.excluded || ""));
        }))),
      h("h2", {}, "Shards", affected.length ? h("span", { class: "muted" }, ` · ${affected.length} affected by a member that is down or without leader`) : ""),
      h("table", { class: "grid shards" }, h("thead", {}, h("tr", {}, ["shard", "leader", "term", "events", "replicas"].map((t) => h("th", {}, t)))),
        h("tbody", {}, sh.map((x) => h("tr", { "data-shard": x.shard || 0, class: affected.includes(x) ? "affected" : "" },
          h("td", {}, String(x.shard || 0)),
          h("td", { class: x.leader ? "" : "bad" }, x.leader || "no leader"),
          h("td", {}, x.term || ""), h("td", {}, x.events || "0"),
          h("td", {}, (x.replicas || []).map((r) => h("span", { class: alive.has(r.node) ? "" : "bad", title: `applied ${r.appliedIndex || 0}` },
            `${r.node}${r.suffrage === "SUFFRAGE_NONVOTER" ? " (non-voter)" : ""}${Number(r.lag || 0) ? ` lag ${r.lag}` : ""}${alive.has(r.node) ? "" : " (down)"} `))))))));
    document.getElementById("cluster-body").replaceWith(body);
  }

  function fmtBytes(b) {
    const n = Number(b);
    if (n < 1024) return `${n} B`;
    if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
    if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
    return `${(n / (1 << 30)).toFixed(2)} GiB`;
  }

  // ---------------------------------------------------------------- router

  function showError(e) {
    clearNotices();
    notice("error", h("strong", {}, e.code ? `${e.code}: ` : "error: "), e.message);
  }

  const routes = [
    [/^\/ui\/?$/, (m, q) => pageSearch(q), "search"],
    [/^\/ui\/process\/([^/]+)\/([^/]+)$/, (m, q) => pageProcess(decodeURIComponent(m[1]), decodeURIComponent(m[2]), q), "search"],
    [/^\/ui\/tree\/([^/]+)$/, (m, q) => pageTree(decodeURIComponent(m[1]), q), "search"],
    [/^\/ui\/trace\/([^/]+)$/, (m, q) => pageTrace(decodeURIComponent(m[1]), q), "search"],
    [/^\/ui\/event\/([^/]+)$/, (m, q) => pageEvent(decodeURIComponent(m[1]), q), "search"],
    [/^\/ui\/flow$/, (m, q) => pageFlow(q), "search"],
    [/^\/ui\/tail$/, (m, q) => pageTail(q), "tail"],
    [/^\/ui\/cluster$/, () => pageCluster(), "cluster"],
  ];

  async function route() {
    const path = location.pathname;
    const q = new URLSearchParams(location.search);
    if (sessionStorage.getItem(TOKEN_KEY)) {
      document.getElementById("auth").append(h("button", { class: "plain", id: "forget-token", onclick: () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); } }, "Forget token"));
    }
    for (const [re, page, nav] of routes) {
      const m = path.match(re);
      if (!m) continue;
      document.querySelectorAll(`header nav a[data-page="${nav}"]`).forEach((a) => a.classList.add("current"));
      try {
        await page(m, q);
      } catch (e) {
        showError(e);
      } finally {
        document.body.dataset.ready = "1";
      }
      return;
    }
    $app().replaceChildren(h("h1", {}, "Not found"), h("p", {}, "No view at this address. ", h("a", { href: "/ui/" }, "Search events")));
    document.body.dataset.ready = "1";
  }

  document.addEventListener("DOMContentLoaded", route);
})();
