// The live view of pytrickle-worker: a grid of a label's cameras (push over
// /ws/labels/{label}) and one camera in pull mode (/ws/stream/{label}/{key}).
// Plain browser JavaScript: no build step, no dependency, nothing from another origin.
//
// The access token lives in sessionStorage only (never in the URL): REST calls send it as
// `Authorization: Bearer`, WebSockets (which cannot carry headers from a browser) as the
// second offered subprotocol `ptw.bearer.<base64url(token)>` next to `ptw.live`.
"use strict";

(() => {
  const TOKEN_KEY = "ptw.live.token";
  const DELIMITER = new TextEncoder().encode("--IMG--");
  const STALE_MS = 5000; // a camera with no new frame for this long is shown offline
  const BACKOFF_START_MS = 500;
  const BACKOFF_CAP_MS = 10000;
  const PULL_INTERVAL_MS = 500; // ~2 fps in the single-camera view
  const PULL_REPLY_TIMEOUT_MS = 10000; // no answer to a pull: the socket is dead, reconnect
  // /labels is rate limited per client address (60 a minute by default, shared by every tab
  // behind that address): the page asks for it 6 times a minute, and a 429 just waits.
  const LABELS_REFRESH_MS = 10000;
  const TOO_MANY_REQUESTS = 429;
  const TICK_MS = 1000;

  const byTestId = (id, root = document) => root.querySelector(`[data-testid="${id}"]`);
  const decoder = new TextDecoder();

  // ------------------------------------------------------------------ token and requests

  class AuthError extends Error {}

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function base64url(text) {
    let binary = "";
    for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  const auth = {
    get token() {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    },
    set token(value) {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    },
    headers() {
      return this.token ? { Authorization: `Bearer ${this.token}` } : {};
    },
    protocols() {
      return this.token ? ["ptw.live", `ptw.bearer.${base64url(this.token)}`] : ["ptw.live"];
    },
  };

  async function getJson(path) {
    const response = await fetch(path, { headers: auth.headers(), cache: "no-store" });
    if (response.status === 401) throw new AuthError("unauthorized");
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: the status line says enough
    }
    if (!response.ok) {
      const message = body && typeof body.message === "string" ? body.message : response.statusText;
      throw new HttpError(response.status, message);
    }
    return body;
  }

  const segment = (text) => encodeURIComponent(text);

  function wsUrl(path) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${path}`;
  }

  // One binary message: JSON header + "--IMG--" + JPEG. A label or key may itself contain
  // "--IMG--" (it is printable text), so the header ends at the first delimiter before
  // which a JSON object parses.
  function splitFrame(buffer) {
    const bytes = new Uint8Array(buffer);
    for (let at = indexOf(bytes, DELIMITER, 0); at >= 0; at = indexOf(bytes, DELIMITER, at + 1)) {
      let header;
      try {
        header = JSON.parse(decoder.decode(bytes.subarray(0, at)));
      } catch {
        continue;
      }
      if (header !== null && typeof header === "object" && !Array.isArray(header)) {
        return { header, jpeg: bytes.subarray(at + DELIMITER.length) };
      }
    }
    return null;
  }

  function indexOf(haystack, needle, from) {
    outer: for (let i = from; i <= haystack.length - needle.length; i++) {
      for (let j = 0; j < needle.length; j++) {
        if (haystack[i + j] !== needle[j]) continue outer;
      }
      return i;
    }
    return -1;
  }

  // ------------------------------------------------------------------ page chrome

  const ui = {
    picker: byTestId("label-picker"),
    connection: byTestId("connection"),
    forget: byTestId("forget-token"),
    tokenForm: byTestId("token-form"),
    tokenInput: byTestId("token-input"),
    authError: byTestId("auth-error"),
    error: byTestId("error"),
    gridView: byTestId("grid-view"),
    grid: byTestId("grid"),
    empty: byTestId("empty"),
    singleView: byTestId("single-view"),
    tileTemplate: document.getElementById("tile-template"),
  };

  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = text;
  }

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = !message;
  }

  function detectionText(item) {
    const confidence = Number(item.confidence).toFixed(2);
    const track = item.id === null || item.id === undefined ? "–" : `#${item.id}`;
    return `${item.class} ${confidence} ${track}`;
  }

  function renderDetections(list, items) {
    const rows = (Array.isArray(items) ? items : []).map((item) => {
      const row = document.createElement("li");
      row.dataset.testid = "detection";
      row.textContent = detectionText(item);
      return row;
    });
    list.replaceChildren(...rows);
    list.dataset.count = String(rows.length);
  }

  function setBadge(badge, state) {
    badge.dataset.state = state;
    badge.textContent = state;
  }

  // An <img> fed with Blob URLs; the previous URL is revoked as soon as it is replaced.
  class FrameImage {
    constructor(img) {
      this.img = img;
      this.url = "";
    }

    show(jpeg, header) {
      const url = URL.createObjectURL(new Blob([jpeg], { type: "image/jpeg" }));
      const previous = this.url;
      this.url = url;
      this.img.src = url;
      this.img.dataset.frameId = String(header.id ?? "");
      this.img.alt = `${header.label} / ${header.key}`;
      if (previous) URL.revokeObjectURL(previous);
    }

    clear() {
      if (this.url) URL.revokeObjectURL(this.url);
      this.url = "";
      this.img.removeAttribute("src");
      delete this.img.dataset.frameId;
    }
  }

  // ------------------------------------------------------------------ sockets

  // A WebSocket that reconnects with exponential backoff (capped) until closed. A socket that
  // never opened may have been refused for its token: the REST probe tells, and a 401 ends
  // the page's session (the token form shows) instead of retrying forever.
  class LiveSocket {
    constructor(path, handlers) {
      this.path = path;
      this.handlers = handlers;
      this.attempt = 0;
      this.ws = null;
      this.timer = 0;
      this.stopped = false;
    }

    connect() {
      if (this.stopped) return;
      setConnection(this.attempt ? "reconnecting" : "connecting", this.attempt ? "reconnecting…" : "connecting…");
      let opened = false;
      const ws = new WebSocket(wsUrl(this.path), auth.protocols());
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => {
        opened = true;
        setConnection("live", "live");
        this.handlers.open?.(ws);
      };
      ws.onmessage = (event) => {
        if (typeof event.data === "string") {
          let message = null;
          try {
            message = JSON.parse(event.data);
          } catch {
            // not JSON: ignored below
          }
          if (message !== null && typeof message === "object") this.handlers.text?.(message);
          return;
        }
        const frame = splitFrame(event.data);
        if (!frame) return;
        // Frames flow: the next drop starts the backoff afresh. (An error reply followed by
        // a close, e.g. an unknown label, keeps backing off.)
        this.attempt = 0;
        this.handlers.frame(frame.header, frame.jpeg);
      };
      ws.onclose = (event) => {
        if (this.ws !== ws) return;
        this.ws = null;
        this.handlers.closed?.(event);
        if (this.stopped) return;
        if (opened) this.retry();
        else probeAuth().then((ok) => ok && this.retry());
      };
    }

    retry() {
      if (this.stopped) return;
      const delay = Math.min(BACKOFF_CAP_MS, BACKOFF_START_MS * 2 ** this.attempt);
      this.attempt += 1;
      setConnection("reconnecting", `reconnecting in ${(delay / 1000).toFixed(1)} s…`);
      this.timer = setTimeout(() => this.connect(), delay);
    }

    send(message) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify(message));
        return true;
      }
      return false;
    }

    // Drop the connection and let the backoff open a new one.
    recycle() {
      this.ws?.close(4000, "no reply");
    }

    close() {
      this.stopped = true;
      clearTimeout(this.timer);
      const ws = this.ws;
      this.ws = null;
      ws?.close(1000, "view closed");
    }
  }

  // ------------------------------------------------------------------ the grid

  class Tile {
    constructor(grid, key) {
      this.key = key;
      this.element = ui.tileTemplate.content.firstElementChild.cloneNode(true);
      this.element.dataset.key = key;
      this.image = new FrameImage(byTestId("tile-image", this.element));
      this.badge = byTestId("tile-status", this.element);
      this.fps = byTestId("tile-fps", this.element);
      this.worker = byTestId("tile-worker", this.element);
      this.detections = byTestId("tile-detections", this.element);
      byTestId("tile-key", this.element).textContent = key;
      this.lastFrameAt = 0;
      this.online = false;
      const open = () => grid.openCamera(key);
      this.element.addEventListener("click", open);
      this.element.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") open();
      });
      this.describe({});
      this.refresh(performance.now());
    }

    describe(meta) {
      if (typeof meta.fps === "number") this.fps.textContent = `${meta.fps.toFixed(1)} fps`;
      if (meta.worker) this.worker.textContent = meta.worker;
      if (typeof meta.online === "boolean") this.online = meta.online;
    }

    // A key listed by /labels/{label}/keys: online only if its newest entry is recent.
    seed(meta, now) {
      this.describe(meta);
      const ageS = Date.now() / 1000 - Number(meta.capture_time || 0);
      if (meta.online && ageS * 1000 < STALE_MS) this.lastFrameAt = now;
      this.refresh(now);
    }

    update(header, jpeg, now) {
      this.image.show(jpeg, header);
      this.describe(header);
      this.online = header.online !== false;
      renderDetections(this.detections, header.detection_items);
      this.element.dataset.frameId = String(header.id ?? "");
      this.lastFrameAt = now;
      this.refresh(now);
    }

    refresh(now) {
      const online = this.online && this.lastFrameAt > 0 && now - this.lastFrameAt < STALE_MS;
      setBadge(this.badge, online ? "online" : "offline");
      this.element.dataset.online = String(online);
    }

    dispose() {
      this.image.clear();
      this.element.remove();
    }
  }

  class Grid {
    constructor(label) {
      this.label = label;
      this.tiles = new Map();
      this.ticker = setInterval(() => this.tick(), TICK_MS);
      this.socket = new LiveSocket(`/ws/labels/${segment(label)}`, {
        frame: (header, jpeg) => this.frame(header, jpeg),
        text: (message) => this.text(message),
      });
    }

    async open() {
      ui.gridView.hidden = false;
      ui.singleView.hidden = true;
      ui.empty.hidden = true;
      try {
        const listing = await getJson(`/labels/${segment(this.label)}/keys`);
        const now = performance.now();
        for (const meta of listing.keys || []) this.tile(meta.key).seed(meta, now);
      } catch (error) {
        if (error instanceof AuthError) return onUnauthorized();
        // 404: no camera under the label yet; 429: over the rate limit. Tiles come with the
        // pushed frames either way.
        const expected = error instanceof HttpError && [404, TOO_MANY_REQUESTS].includes(error.status);
        if (!expected) showError(`cannot list cameras: ${error.message}`);
      }
      this.showEmpty();
      this.socket.connect();
    }

    tile(key) {
      let tile = this.tiles.get(key);
      if (!tile) {
        tile = new Tile(this, key);
        this.tiles.set(key, tile);
        const after = [...this.tiles.keys()].sort().find((other) => other > key);
        ui.grid.insertBefore(tile.element, after === undefined ? null : this.tiles.get(after).element);
        this.showEmpty();
      }
      return tile;
    }

    frame(header, jpeg) {
      if (header.label !== undefined && header.label !== this.label) return;
      if (typeof header.key !== "string") return;
      this.tile(header.key).update(header, jpeg, performance.now());
    }

    text(message) {
      // e.g. the label has no camera (any more): the socket closes and the backoff retries.
      if (message.status === "error") ui.empty.textContent = `${message.message} — waiting for its cameras…`;
    }

    showEmpty() {
      ui.empty.hidden = this.tiles.size > 0;
      if (!ui.empty.hidden) ui.empty.textContent = `No camera under “${this.label}” yet.`;
    }

    tick() {
      const now = performance.now();
      for (const tile of this.tiles.values()) tile.refresh(now);
    }

    openCamera(key) {
      location.hash = new URLSearchParams({ label: this.label, key }).toString();
    }

    close() {
      clearInterval(this.ticker);
      this.socket.close();
      for (const tile of this.tiles.values()) tile.dispose();
      this.tiles.clear();
    }
  }

  // ------------------------------------------------------------------ one camera, pulled

  class Single {
    constructor(label, key) {
      this.label = label;
      this.key = key;
      this.paused = false;
      this.waiting = false;
      this.pullTimer = 0;
      this.replyTimer = 0;
      this.lastId = null;
      this.lastNewAt = 0;
      this.online = false;
      this.image = new FrameImage(byTestId("single-image"));
      this.badge = byTestId("single-status");
      this.meta = byTestId("single-meta");
      this.detections = byTestId("single-detections");
      this.pauseButton = byTestId("pause");
      this.onPause = () => this.togglePause();
      this.ticker = setInterval(() => this.refresh(), TICK_MS);
      this.socket = new LiveSocket(`/ws/stream/${segment(label)}/${segment(key)}`, {
        open: () => this.pull(),
        frame: (header, jpeg) => this.frame(header, jpeg),
        text: (message) => this.text(message),
        closed: () => this.settle(),
      });
    }

    open() {
      ui.gridView.hidden = true;
      ui.singleView.hidden = false;
      byTestId("single-title").textContent = `${this.label} / ${this.key}`;
      this.meta.textContent = "";
      renderDetections(this.detections, []);
      this.pauseButton.textContent = "Pause";
      this.pauseButton.addEventListener("click", this.onPause);
      this.refresh();
      this.socket.connect();
    }

    pull() {
      clearTimeout(this.pullTimer);
      if (this.paused || this.waiting) return;
      if (!this.socket.send({ action: "pull" })) return;
      this.waiting = true;
      this.replyTimer = setTimeout(() => this.socket.recycle(), PULL_REPLY_TIMEOUT_MS);
    }

    settle() {
      clearTimeout(this.replyTimer);
      this.waiting = false;
    }

    next() {
      this.settle();
      clearTimeout(this.pullTimer);
      this.pullTimer = setTimeout(() => this.pull(), PULL_INTERVAL_MS);
    }

    frame(header, jpeg) {
      this.next();
      if (this.paused) return;
      const now = performance.now();
      if (header.id !== this.lastId) {
        this.lastId = header.id;
        this.lastNewAt = now;
        this.image.show(jpeg, header);
        renderDetections(this.detections, header.detection_items);
      }
      this.online = header.online !== false;
      const fps = typeof header.fps === "number" ? `${header.fps.toFixed(1)} fps` : "";
      this.meta.textContent = [fps, header.worker, `${header.width}×${header.height}`].filter(Boolean).join(" · ");
      this.refresh();
    }

    text(message) {
      if (message.action === "pong") return;
      this.next(); // "no frame for label/key" and the like: ask again shortly
      if (message.status === "error") this.meta.textContent = message.message;
    }

    refresh() {
      if (this.paused) {
        setBadge(this.badge, "paused");
        return;
      }
      const online = this.online && this.lastNewAt > 0 && performance.now() - this.lastNewAt < STALE_MS;
      setBadge(this.badge, online ? "online" : "offline");
    }

    togglePause() {
      this.paused = !this.paused;
      this.pauseButton.textContent = this.paused ? "Resume" : "Pause";
      if (this.paused) {
        clearTimeout(this.pullTimer);
        setConnection("paused", "paused");
      } else {
        // time spent paused is not staleness
        this.lastNewAt = performance.now();
        if (this.socket.ws?.readyState === WebSocket.OPEN) setConnection("live", "live");
        this.pull();
      }
      this.refresh();
    }

    close() {
      clearInterval(this.ticker);
      clearTimeout(this.pullTimer);
      this.settle();
      this.pauseButton.removeEventListener("click", this.onPause);
      this.socket.close();
      this.image.clear();
    }
  }

  // ------------------------------------------------------------------ navigation

  const state = { labels: [], view: null, viewKey: "", labelsTimer: 0 };

  function route() {
    const params = new URLSearchParams(location.hash.slice(1));
    return { label: params.get("label") || "", key: params.get("key") || "" };
  }

  function renderPicker(selected) {
    const labels = [...state.labels];
    if (selected && !labels.includes(selected)) labels.unshift(selected);
    const current = [...ui.picker.options].map((option) => option.value);
    if (current.join("\n") !== labels.join("\n")) {
      ui.picker.replaceChildren(
        ...labels.map((label) => {
          const option = document.createElement("option");
          option.value = label;
          option.textContent = label;
          return option;
        }),
      );
    }
    ui.picker.value = selected;
    ui.picker.disabled = labels.length === 0;
  }

  async function refreshLabels() {
    const body = await getJson("/labels");
    state.labels = Array.isArray(body.labels) ? body.labels.filter((l) => typeof l === "string") : [];
    showError("");
  }

  function closeView() {
    state.view?.close();
    state.view = null;
    state.viewKey = "";
  }

  function applyRoute() {
    let { label, key } = route();
    if (!label && state.labels.length) {
      label = state.labels[0];
      history.replaceState(null, "", `#${new URLSearchParams({ label })}`);
    }
    renderPicker(label);
    const viewKey = JSON.stringify([label, key]);
    if (viewKey === state.viewKey) return;
    closeView();
    if (!label) {
      ui.gridView.hidden = false;
      ui.singleView.hidden = true;
      ui.grid.replaceChildren();
      ui.empty.hidden = false;
      ui.empty.textContent = "No camera is sending frames yet: subscribe one over the CMS WebSocket or start a stream.";
      setConnection("idle", "");
      return;
    }
    state.viewKey = viewKey;
    state.view = key ? new Single(label, key) : new Grid(label);
    state.view.open();
  }

  async function pollLabels() {
    try {
      await refreshLabels();
    } catch (error) {
      if (error instanceof AuthError) return onUnauthorized();
      if (!(error instanceof HttpError && error.status === TOO_MANY_REQUESTS)) {
        showError(`cannot reach the worker: ${error.message}`);
      }
    }
    applyRoute(); // the labels known so far, and the one in the URL
  }

  // Resolves true when the token (or no token) is accepted, so a failed socket may retry.
  async function probeAuth() {
    try {
      await getJson("/labels");
      return true;
    } catch (error) {
      if (error instanceof AuthError) {
        onUnauthorized();
        return false;
      }
      return true; // the worker is unreachable, not refusing: keep retrying
    }
  }

  function onUnauthorized() {
    const refused = Boolean(auth.token);
    auth.token = "";
    clearInterval(state.labelsTimer);
    state.labelsTimer = 0;
    closeView();
    ui.grid.replaceChildren();
    ui.gridView.hidden = true;
    ui.singleView.hidden = true;
    ui.forget.hidden = true;
    setConnection("unauthorized", "");
    ui.tokenForm.hidden = false;
    ui.authError.hidden = !refused;
    ui.authError.textContent = refused ? "The worker refused this token (wrong or expired)." : "";
    ui.tokenInput.focus();
  }

  async function start() {
    ui.tokenForm.hidden = true;
    ui.forget.hidden = !auth.token;
    await pollLabels();
    if (!ui.tokenForm.hidden) return;
    clearInterval(state.labelsTimer);
    state.labelsTimer = setInterval(pollLabels, LABELS_REFRESH_MS);
  }

  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    // A header carries Latin-1 at best and a bearer token is ASCII (RFC 6750): anything
    // else could never match, whatever the worker's token is.
    if (!/^[\x21-\x7e]+$/.test(token)) {
      ui.authError.textContent = "A token is printable ASCII without spaces.";
      ui.authError.hidden = false;
      return;
    }
    auth.token = token;
    ui.tokenInput.value = "";
    ui.authError.hidden = true;
    start();
  });
  ui.forget.addEventListener("click", () => {
    auth.token = "";
    location.reload();
  });
  ui.picker.addEventListener("change", () => {
    location.hash = new URLSearchParams({ label: ui.picker.value }).toString();
  });
  byTestId("back").addEventListener("click", () => {
    location.hash = new URLSearchParams({ label: route().label }).toString();
  });
  window.addEventListener("hashchange", applyRoute);
  start();
})();
