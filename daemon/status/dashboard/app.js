// The seedswarm dashboard: short polling of this node's /status, /history?since=T and
// /log?last=N, and of every peer's /status and /history (the URL its presence advertises;
// the read-only JSON endpoints answer any origin). Plain browser JavaScript, no build step.
//
// What the page shows of /status is written by FORMATS into elements that carry data-path
// (the place in the JSON) and data-format; nothing else writes those elements. Text from the
// network only ever goes into textContent, and only http(s) URLs become links.
(() => {
  "use strict";

  const OWN_EVERY_MS = 2000; // this node: /status and /history
  const PEER_EVERY_MS = 2000; // each peer: /status and /history
  const LOG_EVERY_MS = 4000;
  const FETCH_TIMEOUT_MS = 3000;
  const MAX_PEERS = 16; // peers polled for the swarm view; the table lists them all
  const MAX_POINTS = 20000; // per curve, as the node keeps (daemon/node/progress.py HISTORY)
  const MAX_RATE_POINTS = 900; // 30 minutes of rate samples
  const LOG_ROWS = 12;
  const SMOOTH = 0.95; // the loss curve: an exponential moving average, debiased
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];

  const DASH = "–";
  const FORMATS = {
    text: (v) => String(v),
    int: (v) => String(v),
    limit: (v) => (v < 0 ? "no limit" : String(v)),
    f1: (v) => v.toFixed(1),
    f2: (v) => v.toFixed(2),
    f4: (v) => v.toFixed(4),
    pct: (v) => (v * 100).toFixed(1) + "%",
    secs: (v) => v.toFixed(1) + " s",
    hex16: (v) => v.slice(0, 16),
    yesno: (v) => (v ? "yes" : "no"),
    alive: (v) => (v ? "live" : "gone"),
    big: (v) => big(v),
  };

  // 1234 -> "1,234"; 2.8e14 -> "2.8 × 10^14": a count too large to read digit by digit
  function big(v) {
    if (v < 1e6) return Math.round(v).toLocaleString("en-US");
    const e = Math.floor(Math.log10(v));
    return `${(v / 10 ** e).toFixed(1)} × 10^${e}`;
  }

  function format(kind, v) {
    if (v === null || v === undefined || v === "") return DASH;
    return FORMATS[kind](v);
  }

  function at(obj, path) {
    let v = obj;
    for (const key of path) {
      if (v === null || v === undefined) return undefined;
      v = v[key];
    }
    return v;
  }

  // Fill every [data-path] element under root from obj.
  function fill(root, obj) {
    for (const el of root.querySelectorAll("[data-path]")) {
      el.textContent = format(el.dataset.format, at(obj, JSON.parse(el.dataset.path)));
    }
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  // A cell that shows obj at path: data-path, data-format, and its text.
  function cell(tag, obj, path, kind) {
    const c = el(tag, { "data-path": JSON.stringify(path), "data-format": kind });
    c.textContent = format(kind, at(obj, path));
    return c;
  }

  function httpUrl(text) {
    if (typeof text !== "string" || !/^https?:\/\//i.test(text)) return null;
    try {
      return new URL(text);
    } catch {
      return null;
    }
  }

  function endpoint(base, path) {
    return base.replace(/\/+$/, "") + "/" + path;
  }

  // fetch JSON with a deadline; throws an Error whose message is what the page shows
  async function getJson(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    let resp;
    try {
      resp = await fetch(url, { signal: ctl.signal, cache: "no-store" });
    } catch (e) {
      throw new Error(e.name === "AbortError" ? `no answer in ${FETCH_TIMEOUT_MS / 1000} s` : "cannot connect");
    } finally {
      clearTimeout(timer);
    }
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    try {
      return await resp.json();
    } catch {
      throw new Error("the answer is not JSON");
    }
  }

  function looksLikeStatus(st) {
    return st && typeof st === "object" && typeof st.node === "string" && st.records && st.steps && st.loss;
  }

  // -- curves ---------------------------------------------------------------------------------

  // What one node's /history gave so far: the loss of its own steps and its evaluations.
  class Curves {
    constructor() {
      this.since = 0;
      this.own = [];
      this.raw = [];
      this.smooth = [];
      this.ema = 0;
      this.n = 0;
      this.evals = [];
    }

    add(history) {
      for (const [t, own, loss] of history.steps || []) {
        if (t <= this.since || typeof loss !== "number") continue;
        this.since = t;
        this.n += 1;
        this.ema = SMOOTH * this.ema + (1 - SMOOTH) * loss;
        this.own.push(own);
        this.raw.push(loss);
        this.smooth.push(this.ema / (1 - Math.pow(SMOOTH, this.n)));
      }
      if (this.own.length > MAX_POINTS) {
        const cut = this.own.length - MAX_POINTS;
        for (const a of [this.own, this.raw, this.smooth]) a.splice(0, cut);
      }
      // evaluations after `since` come again while a node only applies (no new step moves
      // `since`); a point's record count grows from one to the next, so keep the new ones
      for (const p of history.evals || []) {
        const last = this.evals.length ? this.evals[this.evals.length - 1].records : -1;
        if (typeof p.records === "number" && p.records > last) this.evals.push(p);
      }
    }

    lossData() {
      return [this.own, this.smooth, this.raw];
    }

    evalData() {
      const e = this.evals;
      return [
        e.map((p) => p.records),
        e.map((p) => p.loss),
        e.map((p) => (p.accuracy === null || p.accuracy === undefined ? null : p.accuracy * 100)),
      ];
    }
  }

  // A uPlot chart that sizes itself to its box and says in data-points how many x it has.
  class Chart {
    constructor(box, opts, height) {
      this.box = box;
      this.opts = opts;
      this.height = height;
      this.plot = null;
      new ResizeObserver(() => this.resize()).observe(box);
    }

    width() {
      return Math.max(this.box.clientWidth, 120);
    }

    set(data) {
      this.box.dataset.points = String(data[0].length);
      if (!data[0].length) return;
      if (this.plot === null) {
        this.box.replaceChildren();
        this.plot = new uPlot({ ...this.opts, width: this.width(), height: this.height }, data, this.box);
      } else {
        this.plot.setData(data);
      }
    }

    resize() {
      if (this.plot !== null) this.plot.setSize({ width: this.width(), height: this.height });
    }
  }

  function lossOpts(color, legend) {
    return {
      legend: { show: legend },
      scales: { x: { time: false } },
      axes: [{ label: legend ? "own steps" : undefined }, { size: 56 }],
      series: [
        { label: "step" },
        { label: "loss (smoothed)", stroke: color, width: 2, points: { show: false }, value: (u, v) => (v == null ? DASH : v.toFixed(4)) },
        { label: "loss", stroke: color + "40", width: 1, points: { show: false }, value: (u, v) => (v == null ? DASH : v.toFixed(4)) },
      ],
    };
  }

  // accuracy in percent: a margin of 5 around what is shown, within 0..100
  function accRange(u, lo, hi) {
    if (lo === null || hi === null || !Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 100];
    return [Math.max(0, Math.floor(lo / 5) * 5 - 5), Math.min(100, Math.ceil(hi / 5) * 5 + 5)];
  }

  function evalOpts(color, legend) {
    return {
      legend: { show: legend },
      scales: { x: { time: false }, acc: { range: accRange } },
      axes: [
        { label: legend ? "records applied" : undefined },
        { scale: "y", size: 56 },
        { scale: "acc", side: 1, size: 48, grid: { show: false }, values: (u, vs) => vs.map((v) => v + "%") },
      ],
      series: [
        { label: "records" },
        { label: "eval loss", scale: "y", stroke: color, width: 2, spanGaps: true, points: { show: true, size: 6 }, value: (u, v) => (v == null ? DASH : v.toFixed(4)) },
        { label: "accuracy", scale: "acc", stroke: "#16a34a", width: 2, dash: [6, 3], spanGaps: true, points: { show: true, size: 6 }, value: (u, v) => (v == null ? DASH : v.toFixed(1) + "%") },
      ],
    };
  }

  function rateOpts() {
    return {
      scales: { x: { time: true } },
      axes: [{}, { size: 56 }],
      series: [
        {},
        { label: "steps/s", stroke: COLORS[0], width: 2, value: (u, v) => (v == null ? DASH : v.toFixed(2)) },
        { label: "records/s", stroke: COLORS[2], width: 2, value: (u, v) => (v == null ? DASH : v.toFixed(2)) },
      ],
    };
  }

  // -- state ----------------------------------------------------------------------------------

  const base = new URL(".", location.href).href;
  const state = {
    status: null, // the last /status of this node that the page shows
    error: "",
    curves: new Curves(),
    rates: [[], [], []],
    peers: new Map(), // node -> {http, status, error, curves, card, charts}
  };
  window.seedswarm = state; // for the browser test and for a curious person's console

  const charts = {
    loss: new Chart(document.getElementById("loss-chart"), lossOpts(COLORS[0], true), 240),
    eval: new Chart(document.getElementById("eval-chart"), evalOpts(COLORS[0], true), 240),
    rate: new Chart(document.getElementById("rate-chart"), rateOpts(), 240),
  };

  // -- this node ------------------------------------------------------------------------------

  async function pollOwn() {
    try {
      const [st, hist] = await Promise.all([
        getJson(endpoint(base, "status")),
        getJson(endpoint(base, `history?since=${state.curves.since}`)),
      ]);
      if (!looksLikeStatus(st)) throw new Error("the answer is not a seedswarm status");
      state.curves.add(hist);
      state.status = st;
      state.error = "";
      const r = state.rates;
      r[0].push(Date.now() / 1000);
      r[1].push(st.steps.per_s);
      r[2].push(st.records_per_s);
      if (r[0].length > MAX_RATE_POINTS) for (const a of r) a.shift();
      renderOwn();
    } catch (e) {
      state.error = e.message;
    }
    renderBanner();
  }

  function renderBanner() {
    const b = document.getElementById("banner");
    b.hidden = !state.error;
    if (state.error) {
      b.textContent = `cannot read this node's /status (${state.error}); the page shows what it last read and keeps trying`;
    }
    document.body.classList.toggle("offline", Boolean(state.error));
  }

  function renderOwn() {
    const st = state.status;
    fill(document.querySelector("header"), st);
    fill(document.querySelector(".tiles"), st);
    fill(document.querySelector(".pair .panel"), st);
    document.getElementById("stale").hidden = !st.fingerprint_stale;
    document.getElementById("headroom-tile").classList.toggle("warn", Boolean(st.headroom_warning));
    // the state is int64 grid steps: exact until the worst-case record count below runs out
    document.getElementById("headroom-words").textContent =
      st.headroom_records === null || st.headroom_records === undefined
        ? DASH
        : st.headroom_warning
          ? `${big(st.headroom_records)} records from its limit`
          : "exact, same records → same weights";
    document.getElementById("peers-live").textContent = `${st.peers.filter((p) => p.alive).length} live of ${st.peers.length}`;
    document.getElementById("eval-hint").textContent = evalHint(st.started_by);
    const words = document.getElementById("broker-words");
    const down = st.broker.state !== "connected" && st.broker.last_error;
    words.classList.toggle("bad", Boolean(down));
    words.textContent = down
      ? `not connected to ${st.broker.url}: ${st.broker.last_error} (retrying)`
      : "other nodes of this run this node hears from, and its link to the MQTT broker";

    const vv = document.querySelector("#vv-table tbody");
    vv.replaceChildren(
      ...Object.keys(st.version_vector).map((n) =>
        el("tr", {}, el("td", { text: n }), cell("td", st, ["version_vector", n], "int")),
      ),
    );

    const drops = [];
    for (const [reason, senders] of Object.entries(st.dropped)) {
      for (const sender of Object.keys(senders)) {
        drops.push(el("tr", {}, el("td", { text: reason }), el("td", { text: sender }), cell("td", st, ["dropped", reason, sender], "int")));
      }
    }
    document.querySelector("#drop-table tbody").replaceChildren(...drops);
    document.getElementById("no-drops").hidden = drops.length > 0;

    charts.loss.set(state.curves.lossData());
    if (state.curves.evals.length) charts.eval.set(state.curves.evalData());
    charts.rate.set(state.rates);

    syncPeers(st);
    renderPeerTable();
    renderAgreement();
    renderCard(st.node, { status: st, error: "", curves: state.curves, http: base });
  }

  // -- peers ----------------------------------------------------------------------------------

  function syncPeers(st) {
    const named = new Set(st.peers.map((p) => p.node));
    for (const name of state.peers.keys()) if (!named.has(name)) state.peers.delete(name);
    for (const p of st.peers) {
      let peer = state.peers.get(p.node);
      if (peer === undefined) {
        peer = { http: "", status: null, error: "", curves: new Curves(), polling: false };
        state.peers.set(p.node, peer);
      }
      if (peer.http !== p.http) {
        peer.http = p.http; // a new endpoint: a new history
        peer.curves = new Curves();
        peer.status = null;
      }
    }
  }

  function polled() {
    return state.status ? state.status.peers.slice(0, MAX_PEERS).map((p) => p.node) : [];
  }

  async function pollPeer(name) {
    const peer = state.peers.get(name);
    if (peer === undefined) return;
    const url = httpUrl(peer.http);
    if (url === null) {
      peer.status = null;
      peer.error = peer.http ? `its endpoint ${peer.http} is not an http URL` : "it advertises no status endpoint";
      return;
    }
    try {
      const [st, hist] = await Promise.all([
        getJson(endpoint(url.href, "status")),
        getJson(endpoint(url.href, `history?since=${peer.curves.since}`)),
      ]);
      if (!looksLikeStatus(st)) throw new Error("the answer is not a seedswarm status");
      if (st.node !== name) throw new Error(`the endpoint answers as ${st.node}`);
      peer.curves.add(hist);
      peer.status = st;
      peer.error = "";
    } catch (e) {
      peer.error = `cannot reach ${endpoint(url.href, "status")}: ${e.message}`;
    }
  }

  async function pollPeers() {
    const names = polled();
    await Promise.all(names.map((n) => pollPeer(n)));
    for (const n of names) {
      const peer = state.peers.get(n);
      if (peer !== undefined) renderCard(n, peer); // (a peer may have left meanwhile)
    }
    pruneCards();
    renderPeerTable();
    renderAgreement();
  }

  // same records, same weights? Only a fingerprint of the same version vector can tell; nodes
  // that hold other records have other weights for that reason alone, which is no disagreement.
  function weights(me, st) {
    if (!st) return ["unknown", ""];
    if (st.fingerprint_vv_digest !== me.fingerprint_vv_digest || !st.fingerprint || !me.fingerprint) {
      return ["other records (in flight)", ""];
    }
    if (st.fingerprint_stale || me.fingerprint_stale) return ["same records, not hashed yet", ""];
    return st.fingerprint === me.fingerprint ? ["same records, same weights", "ok"] : ["DIFFERENT weights for the same records", "bad"];
  }

  function renderPeerTable() {
    const st = state.status;
    if (!st) return;
    const rows = st.peers.map((p, i) => {
      const peer = state.peers.get(p.node);
      const [w, cls] = weights(st, peer && peer.status);
      const url = httpUrl(p.http);
      const link = url ? el("a", { href: url.href, text: p.http }) : el("span", { text: p.http || DASH });
      const reach = el("td", {}, link);
      if (peer && peer.error) reach.append(el("div", { class: "bad", text: "unreachable" }));
      const row = el(
        "tr",
        { "data-peer": p.node, class: p.alive ? "" : "gone" },
        el("td", { text: p.node }),
        cell("td", st, ["peers", i, "alive"], "alive"),
        cell("td", st, ["peers", i, "last_seen_s"], "secs"),
        cell("td", st, ["peers", i, "steps"], "int"),
        cell("td", st, ["peers", i, "records"], "int"),
        cell("td", st, ["peers", i, "lag"], "int"),
        cell("td", st, ["peers", i, "loss"], "f4"),
        el("td", { class: cls, text: w }),
        reach,
      );
      return row;
    });
    document.querySelector("#peer-table tbody").replaceChildren(...rows);
    document.getElementById("no-peers").hidden = rows.length > 0;
  }

  function renderAgreement() {
    const me = state.status;
    if (!me) return;
    const verdicts = [...state.peers.values()].filter((p) => p.status).map((p) => weights(me, p.status)[1]);
    const same = verdicts.filter((v) => v === "ok").length;
    const differ = verdicts.filter((v) => v === "bad").length;
    const out = document.getElementById("agreement");
    out.className = "verdict " + (differ ? "bad" : same ? "ok" : "");
    if (!same && !differ) out.textContent = "no reachable peer holds the same records right now (records are in flight): nothing to compare yet";
    else if (differ) out.textContent = `DIFFERENT weights from ${differ} of ${same + differ} peers that hold the same records: a bug worth a report`;
    else out.textContent = `✓ same records, same weights as ${same} of ${same} peers that hold the same records`;
  }

  // the eval chart's hint names the command this node was started with
  function evalHint(startedBy) {
    const cmd = startedBy === "swarm" ? "seedswarm swarm" : "seedswarm node";
    return `set with ${cmd} --eval FILE --eval-every N`;
  }
  state.evalHint = evalHint;

  // -- the swarm view: one card per node ------------------------------------------------------

  const cards = new Map(); // node -> {box, loss, eval, color}

  function renderCard(name, node) {
    let card = cards.get(name);
    if (card === undefined) {
      const color = COLORS[cards.size % COLORS.length];
      const box = el("div", { class: "card", "data-node": name });
      const lossBox = el("div", { class: "chart mini", "data-points": "0" });
      const evalBox = el("div", { class: "chart mini", "data-points": "0" }, el("p", { class: "empty", text: "no evaluation yet" }));
      box.append(
        el("h3", { text: name }),
        el("p", { class: "nums" }),
        el("p", { class: "error", hidden: "" }),
        el("div", { class: "minis" }, el("figure", {}, el("figcaption", { text: "training loss" }), lossBox), el("figure", {}, el("figcaption", { text: "eval" }), evalBox)),
      );
      document.getElementById("cards").append(box);
      card = { box, color, loss: new Chart(lossBox, lossOpts(color, false), 130), eval: new Chart(evalBox, evalOpts(color, false), 130) };
      cards.set(name, card);
    }
    const err = card.box.querySelector(".error");
    const minis = card.box.querySelector(".minis");
    err.hidden = !node.error;
    err.textContent = node.error ? `unreachable: ${node.error}` : "";
    card.box.classList.toggle("unreachable", Boolean(node.error));
    minis.hidden = Boolean(node.error) || !node.status;
    const st = node.status;
    const nums = card.box.querySelector(".nums");
    if (!st || node.error) {
      nums.replaceChildren(node.error ? "" : "waiting for its first /status…");
      return;
    }
    const me = state.status;
    const [w, cls] = me && st.node !== me.node ? weights(me, st) : ["this node", ""];
    nums.replaceChildren(
      cell("span", st, ["steps", "taken"], "int"), " steps · loss ",
      cell("span", st, ["loss", "recent"], "f4"), " · eval ",
      cell("span", st, ["eval", "accuracy"], "pct"), " · ",
      cell("span", st, ["records", "applied"], "int"), " records applied · weights: ",
      el("span", { class: "weights " + cls, text: w }),
    );
    card.loss.set(node.curves.lossData());
    if (node.curves.evals.length) card.eval.set(node.curves.evalData());
  }

  function pruneCards() {
    const keep = new Set([state.status ? state.status.node : "", ...polled()]);
    for (const [name, card] of cards) {
      if (!keep.has(name)) {
        card.box.remove();
        cards.delete(name);
      }
    }
  }

  // -- the log --------------------------------------------------------------------------------

  async function pollLog() {
    try {
      const page = await getJson(endpoint(base, `log?last=${LOG_ROWS}`));
      document.getElementById("log-total").textContent = String(page.total);
      const rows = page.records.slice().reverse().map((r) =>
        el("tr", {}, el("td", { text: String(r.clock) }), el("td", { text: r.node }), el("td", { text: String(r.seq) }), el("td", { text: String(r.q) })),
      );
      document.querySelector("#log-table tbody").replaceChildren(...rows);
    } catch {
      // the banner already says when this node cannot be read
    }
  }

  // -- loops: each waits for its last round before the next, so a slow node is never flooded --

  function every(ms, job, first) {
    const run = async () => {
      try {
        await job();
      } finally {
        setTimeout(run, ms);
      }
    };
    setTimeout(run, first);
  }

  every(OWN_EVERY_MS, pollOwn, 0);
  every(PEER_EVERY_MS, pollPeers, 700); // after the first /status has named the peers
  every(LOG_EVERY_MS, pollLog, 0);
})();
