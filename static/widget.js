/*
 * chat-widget: a dependency-free browser client for the chat.v1 protocol (docs/protocol.md).
 *
 * Embed it with one tag; the server defaults to the one the script comes from:
 *
 *   <script src="https://chat.example.com/static/widget.js" data-target="#chat"></script>
 *   <script src="https://chat.example.com/static/widget.js" data-server="https://chat.example.com"></script>
 *
 * With data-target it fills that element; without, it adds a floating "Chat" button. With
 * data-mount="manual" it only defines ChatWidget.mount(element, {server, token}) for the page to
 * call. Other data-* attributes: data-token (a token issued by the host site; otherwise the widget
 * keeps the one the server mints in localStorage), data-title.
 *
 * How it keeps its promises:
 * - The socket carries turns (message, cancel and their frames). Reads that are request/response
 *   (the conversation list, history pages, delete) go over the HTTP API with the same token, so
 *   an answer can never be mistaken for a frame of the turn in progress.
 * - Every message gets a client_id when it is typed and goes into an outbox kept in localStorage.
 *   It leaves the outbox only when its turn's `done` arrives, so after a reconnect or a reload it
 *   is sent again with the same client_id: the server stores it once and answers the duplicate.
 * - One message is on the wire at a time; later ones wait in the outbox ("queued"), so the server's
 *   waiting line is never overrun and a dropped socket loses nothing.
 * - Text from messages only ever reaches the page through textContent / text nodes.
 */
(function () {
  "use strict";

  if (window.ChatWidget) return; // the script was included twice: keep the first

  var PROTOCOL = "chat.v1";
  var DEFAULTS = {
    pageSize: 30, // history messages per page
    maxChars: 32000, // the server's CHAT_MAX_MESSAGE_CHARS, in code points
    backoffBaseMs: 500,
    backoffMaxMs: 10000,
    readyTimeoutMs: 15000,
    confirmDelete: true,
    title: "Chat",
  };
  var instances = 0;

  // -- small helpers -------------------------------------------------------------------------------

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  /** h("li", {class: "x", "aria-label": "y"}, child, "text"): attributes only, text as text nodes. */
  function h(tag, attrs) {
    var node = document.createElement(tag);
    for (var name in attrs || {}) {
      var value = attrs[name];
      if (value === null || value === undefined || value === false) continue;
      if (name === "on") {
        for (var ev in value) node.addEventListener(ev, value[ev]);
      } else {
        node.setAttribute(name, value === true ? "" : String(value));
      }
    }
    for (var i = 2; i < arguments.length; i++) append(node, arguments[i]);
    return node;
  }

  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) child.forEach(function (c) { append(node, c); });
    else node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }

  function codePoints(s) { return Array.from(s).length; }

  function isNewKey(key) { return typeof key === "string" && key.indexOf("new:") === 0; }

  /** Exponential backoff with jitter: half fixed, half random, so clients don't retry in step. */
  function backoff(attempt, base, max) {
    var cap = Math.min(max, base * Math.pow(2, attempt));
    return Math.round(cap / 2 + Math.random() * cap / 2);
  }

  /** localStorage that never throws (private mode, full quota, disabled storage). */
  function Store(prefix) {
    this.prefix = prefix;
  }
  Store.prototype.get = function (key) {
    try { return window.localStorage.getItem(this.prefix + key); } catch (e) { return null; }
  };
  Store.prototype.set = function (key, value) {
    try {
      if (value === null || value === undefined) window.localStorage.removeItem(this.prefix + key);
      else window.localStorage.setItem(this.prefix + key, value);
    } catch (e) { /* the session still works, it just won't survive a reload */ }
  };
  Store.prototype.getJSON = function (key, fallback) {
    try { return JSON.parse(this.get(key)) || fallback; } catch (e) { return fallback; }
  };
  Store.prototype.setJSON = function (key, value) { this.set(key, JSON.stringify(value)); };

  // -- Markdown subset: paragraphs, lists, headings, fenced code, `code`, **bold**, *em* -------------
  // Built from DOM nodes only: whatever a message holds ends up as text, never as markup.

  var FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w.+#-]*)[^`]*$/;
  var LIST_ITEM = /^\s{0,6}([-*+]|\d{1,9}[.)])\s+(.*)$/;
  var HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  var INLINE = /`([^`\n]+)`|\*\*(?=\S)([\s\S]*?\S)\*\*|(^|[^\w*])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![\w*])/g;

  function renderMarkdown(text) {
    var frag = document.createDocumentFragment();
    var lines = String(text).replace(/\r\n?/g, "\n").split("\n");
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      var fence = FENCE.exec(line);
      if (fence) {
        i = renderFence(frag, lines, i, fence);
      } else if (!line.trim()) {
        i++;
      } else if (LIST_ITEM.test(line)) {
        i = renderList(frag, lines, i);
      } else if (HEADING.test(line)) {
        frag.appendChild(h("p", { class: "cw-md-h" }, h("strong", null, inline(HEADING.exec(line)[2]))));
        i++;
      } else {
        i = renderParagraph(frag, lines, i);
      }
    }
    return frag;
  }

  function renderFence(frag, lines, i, fence) {
    var marker = fence[1];
    var body = [];
    i++;
    // An unclosed fence (a reply still streaming) runs to the end: it is code so far.
    while (i < lines.length && !(lines[i].trim().indexOf(marker[0].repeat(marker.length)) === 0 &&
                                 /^\s*[`~]+\s*$/.test(lines[i]))) {
      body.push(lines[i]);
      i++;
    }
    var code = h("code", fence[2] ? { "data-lang": fence[2] } : null);
    code.textContent = body.join("\n");
    frag.appendChild(h("pre", { class: "cw-md-pre", tabindex: "0" }, code));
    return i + 1;
  }

  function renderList(frag, lines, i) {
    var ordered = /\d/.test(LIST_ITEM.exec(lines[i])[1]);
    var start = ordered ? parseInt(LIST_ITEM.exec(lines[i])[1], 10) : null;
    var list = h(ordered ? "ol" : "ul", { class: "cw-md-list", start: start !== 1 ? start : null });
    var item = null;
    while (i < lines.length) {
      var line = lines[i];
      var m = LIST_ITEM.exec(line);
      if (m && /\d/.test(m[1]) === ordered) {
        item = [m[2]];
        list.appendChild(h("li"));
        list.lastChild.__lines = item;
      } else if (line.trim() && /^\s+/.test(line) && item) {
        item.push(line.trim()); // an indented continuation of the item above
      } else if (!line.trim() && i + 1 < lines.length && LIST_ITEM.test(lines[i + 1]) &&
                 /\d/.test(LIST_ITEM.exec(lines[i + 1])[1]) === ordered) {
        // a blank line between two items of the same list: a loose list, still one list
      } else {
        break;
      }
      i++;
    }
    Array.prototype.forEach.call(list.children, function (li) {
      li.__lines.forEach(function (text, n) {
        if (n) li.appendChild(h("br"));
        append(li, inline(text));
      });
      delete li.__lines;
    });
    frag.appendChild(list);
    return i;
  }

  function renderParagraph(frag, lines, i) {
    var p = h("p");
    var first = true;
    while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) &&
           !(LIST_ITEM.test(lines[i]) && !first) && !HEADING.test(lines[i])) {
      if (!first) p.appendChild(h("br"));
      append(p, inline(lines[i]));
      first = false;
      i++;
    }
    frag.appendChild(p);
    return i;
  }

  function inline(text) {
    var out = [];
    var last = 0;
    var m;
    var re = new RegExp(INLINE.source, "g"); // its own lastIndex: inline() recurses for **bold**
    while ((m = re.exec(text)) !== null) {
      var at = m.index;
      if (m[1] !== undefined) {
        out.push(text.slice(last, at), h("code", { class: "cw-md-code" }, m[1]));
      } else if (m[2] !== undefined) {
        out.push(text.slice(last, at), h("strong", null, inline(m[2])));
      } else {
        out.push(text.slice(last, at) + m[3], h("em", null, m[4]));
      }
      last = re.lastIndex;
    }
    out.push(text.slice(last));
    return out.filter(function (x) { return x !== ""; });
  }

  // -- the widget -----------------------------------------------------------------------------------

  var STATE_LABELS = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    offline: "Offline",
    unauthorized: "Not signed in",
    incompatible: "Incompatible server",
  };

  var REPLY_STATUS = {
    streaming: "Replying…",
    complete: "Complete",
    cancelled: "Cancelled",
    error: "Error",
    interrupted: "Interrupted",
  };

  function Widget(host, options) {
    this.opts = Object.assign({}, DEFAULTS, options || {});
    this.id = "cw" + (++instances);
    var server = this.opts.server || window.location.origin;
    this.base = String(server).replace(/\/+$/, "");
    this.wsUrl = this.base.replace(/^http/i, "ws") + "/ws"; // http→ws, https→wss
    this.store = new Store("chat-widget:" + this.base + ":");

    // A token from the host page wins and is kept, so the next page load is the same user too.
    this.tokenFromHost = !!this.opts.token;
    if (this.opts.token) this.store.set("token", this.opts.token);
    this.token = this.store.get("token");
    this.outbox = this.store.getJSON("outbox", []);
    this.current = this.store.get("conversation") || this.newKey();
    if (isNewKey(this.current) && !this.outbox.some(this.inConversation(this.current))) this.current = this.newKey();

    this.convs = [];
    this.view = { key: this.current, messages: [], hasMore: false, loadingOlder: false, gen: 0 };
    this.turn = null; // the turn in progress on this socket: {clientId, conv, userMessageId, replyId, text}
    this.inflight = null; // client_id of the message on the wire, until its turn ends
    this.ws = null;
    this.ready = false;
    this.attempt = 0;
    this.state = "connecting";

    this.buildDom(host);
    this.bindGlobal();
    this.render();
    // Show the saved conversation at once, before the socket is up (it reloads again when it is).
    if (this.token && !isNewKey(this.current)) this.reloadView().catch(function () {});
    this.connect();
  }

  Widget.prototype.newKey = function () { return "new:" + uuid(); };

  Widget.prototype.inConversation = function (key) {
    return function (entry) { return entry.conv === key; };
  };

  // -- DOM ----------------------------------------------------------------------------------------

  Widget.prototype.buildDom = function (host) {
    var self = this;
    var id = this.id;
    this.host = host;
    this.root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
    this.root.appendChild(h("style", null, STYLES));

    this.newBtn = h("button", { type: "button", class: "cw-new", on: { click: function () { self.newChat(); } } },
                    h("span", { "aria-hidden": "true" }, "+ "), "New chat");
    this.convList = h("ul", { class: "cw-convs", role: "list" });
    this.emptyList = h("p", { class: "cw-empty" }, "No conversations yet.");
    this.side = h("aside", { class: "cw-side", id: id + "-side", "aria-label": "Conversations" },
      h("div", { class: "cw-side-head" },
        h("h2", { class: "cw-side-title" }, "Conversations"),
        h("button", { type: "button", class: "cw-icon cw-close-side", "aria-label": "Close conversations",
                      on: { click: function () { self.toggleDrawer(false); } } }, "×")),
      this.newBtn,
      h("nav", { "aria-label": "Your conversations" }, this.convList, this.emptyList));

    this.menuBtn = h("button", { type: "button", class: "cw-icon cw-menu", "aria-label": "Conversations",
                                 "aria-expanded": "false", "aria-controls": id + "-side",
                                 on: { click: function () { self.toggleDrawer(); } } }, "☰");
    this.titleEl = h("h2", { class: "cw-title", id: id + "-title" });
    this.connLabel = h("span", { class: "cw-conn-label", role: "status" });
    this.connRetry = h("span", { class: "cw-conn-when", "aria-hidden": "true" });
    this.retryBtn = h("button", { type: "button", class: "cw-link", on: { click: function () { self.retryNow(); } } },
                      "Retry now");
    this.conn = h("div", { class: "cw-conn" }, h("span", { class: "cw-dot", "aria-hidden": "true" }),
                  this.connLabel, this.connRetry, this.retryBtn);
    var head = h("header", { class: "cw-head" }, this.menuBtn, this.titleEl, this.conn);
    if (this.opts.onClose) {
      head.appendChild(h("button", { type: "button", class: "cw-icon", "aria-label": "Close chat",
                                     on: { click: this.opts.onClose } }, "×"));
    }

    this.olderBtn = h("button", { type: "button", class: "cw-older", on: { click: function () { self.loadOlder(); } } },
                      "Load earlier messages");
    this.msgList = h("ol", { class: "cw-msgs", "aria-labelledby": id + "-title" });
    this.placeholder = h("p", { class: "cw-hello" }, "Send a message to start the conversation.");
    this.thread = h("div", { class: "cw-thread", tabindex: "0", role: "region", "aria-label": "Messages",
                             on: { scroll: function () { self.onScroll(); } } },
                    this.olderBtn, this.placeholder, this.msgList);
    // Screen readers hear the reply as it streams; the visible bubble is re-rendered as Markdown.
    this.live = h("div", { class: "cw-sr cw-live", "aria-live": "polite", "aria-atomic": "false" });

    this.input = h("textarea", { id: id + "-input", class: "cw-input", rows: "1", autocomplete: "off",
                                 placeholder: "Type a message…", "aria-describedby": id + "-hint",
                                 on: { keydown: function (e) { self.onKey(e); },
                                       input: function () { self.autosize(); } } });
    this.stopBtn = h("button", { type: "button", class: "cw-stop", hidden: true,
                                 on: { click: function () { self.stop(); } } }, "Stop");
    this.sendBtn = h("button", { type: "submit", class: "cw-send" }, "Send");
    this.notice = h("p", { class: "cw-notice", role: "alert" });
    this.form = h("form", { class: "cw-composer", on: { submit: function (e) { e.preventDefault(); self.submit(); } } },
      h("label", { for: id + "-input", class: "cw-sr" }, "Message"),
      h("div", { class: "cw-box" }, this.input, this.stopBtn, this.sendBtn),
      h("p", { id: id + "-hint", class: "cw-hint" }, "Enter to send · Shift+Enter for a new line"),
      this.notice);

    this.main = h("section", { class: "cw-main", "aria-labelledby": id + "-title" }, head, this.thread, this.live,
                  this.form);
    this.backdrop = h("div", { class: "cw-backdrop", on: { click: function () { self.toggleDrawer(false); } } });
    this.app = h("div", { class: "cw-app", "data-drawer": "closed",
                          on: { keydown: function (e) { if (e.key === "Escape") self.toggleDrawer(false); } } },
                 this.side, this.backdrop, this.main);
    this.root.appendChild(h("div", { class: "cw-wrap" }, this.app));
  };

  Widget.prototype.bindGlobal = function () {
    var self = this;
    this.onOnline = function () { self.retryNow(); };
    // The browser lost the network: the socket is dead even if it has not noticed yet. Close it
    // now and show "offline"; the "online" event reconnects at once instead of after a backoff.
    this.onOffline = function () {
      if (self.ws) self.ws.close();
      else self.setState("offline");
    };
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
  };

  Widget.prototype.toggleDrawer = function (open) {
    var isOpen = this.app.getAttribute("data-drawer") === "open";
    if (open === undefined) open = !isOpen;
    if (open === isOpen) return;
    this.app.setAttribute("data-drawer", open ? "open" : "closed");
    this.menuBtn.setAttribute("aria-expanded", String(open));
    // Focus goes into the drawer and back to the button that opened it.
    if (open) this.newBtn.focus();
    else if (this.drawerIsOverlay()) this.menuBtn.focus();
  };

  Widget.prototype.drawerIsOverlay = function () {
    return window.getComputedStyle(this.menuBtn).display !== "none";
  };

  // -- connection -----------------------------------------------------------------------------------

  Widget.prototype.connect = function () {
    if (this.destroyed || this.ws) return;
    clearTimeout(this.retryTimer);
    clearInterval(this.countdown);
    var url = this.wsUrl + (this.token ? "?token=" + encodeURIComponent(this.token) : "");
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    var self = this;
    this.ws = ws;
    this.ready = false;
    this.setState(this.attempt ? "reconnecting" : "connecting");
    ws.onmessage = function (ev) { if (self.ws === ws) self.onFrame(ev.data); };
    ws.onclose = function (ev) { self.onClose(ws, ev); };
    // A handshake that hangs (a proxy, a half-open network) must not stall us forever.
    this.readyTimer = setTimeout(function () { if (self.ws === ws && !self.ready) ws.close(); },
                                 this.opts.readyTimeoutMs);
  };

  Widget.prototype.onClose = function (ws, ev) {
    if (this.ws !== ws) return;
    clearTimeout(this.readyTimer);
    var wasReady = this.ready;
    this.ws = null;
    this.ready = false;
    this.dropTurn();
    if (this.destroyed) return;
    if (ev.code === 1008 && !wasReady) {
      this.refused();
    } else if (!wasReady && this.token) {
      // A refused handshake (HTTP 403) looks like any failure to a browser: ask the HTTP API
      // whether the token is still good before deciding it was the network.
      var self = this;
      this.api("GET", "/api/conversations").then(function (r) {
        if (r.status === 401) self.refused();
        else self.scheduleReconnect();
      }, function () { self.scheduleReconnect(); });
    } else {
      if (ev.code === 1013) this.attempt = Math.max(this.attempt, 4); // too many sockets: wait longer
      this.scheduleReconnect();
    }
  };

  /** The socket's turn is gone with it: the server keeps what was committed, the outbox the rest. */
  Widget.prototype.dropTurn = function () {
    var turn = this.turn;
    if (turn && turn.replyId && turn.conv === this.view.key) {
      // Shown as it stopped until the history reload brings what the server stored.
      this.upsert({ id: turn.replyId, role: "assistant", content: turn.text, status: "interrupted",
                    reply_to: turn.userMessageId });
    }
    this.live.textContent = "";
    this.turn = null;
    this.inflight = null;
    this.render();
  };

  Widget.prototype.refused = function () {
    if (!this.tokenFromHost && this.token) {
      // The saved identity is no longer accepted (the server's data was reset): start afresh.
      this.token = null;
      this.store.set("token", null);
      this.showNotice("Your saved session was not accepted by the server; a new one was started.");
      this.connect();
    } else {
      this.setState("unauthorized");
      this.attempt = Math.max(this.attempt, 5);
      this.scheduleReconnect("unauthorized");
    }
  };

  Widget.prototype.scheduleReconnect = function (state) {
    if (this.destroyed) return;
    var self = this;
    clearTimeout(this.retryTimer);
    clearInterval(this.countdown);
    if (navigator.onLine === false) {
      this.setState("offline"); // the "online" event brings us back
      return;
    }
    var delay = backoff(this.attempt++, this.opts.backoffBaseMs, this.opts.backoffMaxMs);
    this.retryAt = Date.now() + delay;
    this.setState(state || "reconnecting");
    this.retryTimer = setTimeout(function () { self.connect(); }, delay);
    this.countdown = setInterval(function () { self.renderConn(); }, 1000);
  };

  Widget.prototype.retryNow = function () {
    if (this.ws || this.destroyed) return;
    this.connect();
  };

  Widget.prototype.setState = function (state) {
    this.state = state;
    this.renderConn();
  };

  Widget.prototype.send = function (frame) {
    if (!this.ws || !this.ready) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  };

  /** The HTTP API beside the socket, with the same token. */
  Widget.prototype.api = function (method, path) {
    var headers = this.token ? { Authorization: "Bearer " + this.token } : {};
    // A request that never answers must not hold up the resend of the outbox behind it.
    var abort = new AbortController();
    var timer = setTimeout(function () { abort.abort(); }, 15000);
    return fetch(this.base + path, { method: method, headers: headers, mode: "cors", cache: "no-store",
                                     signal: abort.signal })
      .finally(function () { clearTimeout(timer); });
  };

  // -- frames from the server ---------------------------------------------------------------------

  Widget.prototype.onFrame = function (data) {
    var frame;
    try { frame = JSON.parse(data); } catch (e) { return; }
    if (!frame || typeof frame.type !== "string") return;
    switch (frame.type) {
      case "ready": this.onReady(frame); break;
      case "ack": this.onAck(frame); break;
      case "start": this.onStart(frame); break;
      case "delta": this.onDelta(frame); break;
      case "done": this.onDone(frame); break;
      case "error": this.onError(frame); break;
      default: break; // frames added to the protocol later are ignored, as the contract asks
    }
  };

  Widget.prototype.onReady = function (frame) {
    clearTimeout(this.readyTimer);
    if (frame.protocol !== PROTOCOL) {
      this.setState("incompatible");
      this.destroyed = true; // retrying cannot help
      this.ws.close(1000);
      return;
    }
    this.ready = true;
    this.attempt = 0;
    if (frame.token && !this.tokenFromHost) {
      this.token = frame.token;
      this.store.set("token", frame.token);
    }
    if (this.store.get("user") && this.store.get("user") !== frame.user_id) {
      this.switchTo(this.newKey()); // another identity: the saved conversation is not ours
    }
    // Messages typed as someone else (the host page signed another user in) are not sent as this one.
    this.outbox = this.outbox.filter(function (e) { return !e.user || e.user === frame.user_id; });
    this.saveOutbox();
    this.store.set("user", frame.user_id);
    this.setState("connected");
    this.sync();
  };

  /** After (re)connecting: refresh the list and the history, then send what is still unconfirmed. */
  Widget.prototype.sync = function () {
    var self = this;
    var ws = this.ws;
    this.syncing = true;
    var done = function () {
      if (self.ws !== ws) return;
      self.syncing = false;
      self.pump();
    };
    Promise.all([this.refreshConversations(), this.reloadView()]).then(done, done);
  };

  Widget.prototype.onAck = function (frame) {
    var entry = this.findEntry(frame.client_id);
    if (entry) {
      if (isNewKey(entry.conv)) this.retarget(entry.conv, frame.conversation_id);
      entry.acked = true;
      this.saveOutbox();
    }
    this.turn = { clientId: frame.client_id, conv: frame.conversation_id, userMessageId: frame.message_id,
                  replyId: null, text: "" };
    if (entry && this.view.key === frame.conversation_id && !this.hasMessage(frame.message_id)) {
      this.view.messages.push({ id: frame.message_id, role: "user", content: entry.content, status: "complete",
                                client_id: entry.client_id });
    }
    if (entry && entry.stopRequested) {
      entry.stopRequested = false;
      this.send({ type: "cancel" });
    }
    if (!this.convs.some(function (c) { return c.id === frame.conversation_id; })) this.refreshConversationsSoon();
    this.render();
  };

  Widget.prototype.onStart = function (frame) {
    if (!this.turn) return;
    this.turn.replyId = frame.message_id;
    this.turn.text = "";
    this.live.textContent = "";
    this.renderThread();
  };

  Widget.prototype.onDelta = function (frame) {
    var turn = this.turn;
    if (!turn || frame.message_id !== turn.replyId || typeof frame.content !== "string") return;
    turn.text += frame.content;
    if (turn.conv === this.view.key) {
      this.live.appendChild(document.createTextNode(frame.content));
      this.scheduleStreamRender();
    }
  };

  Widget.prototype.onDone = function (frame) {
    var turn = this.turn;
    var reply = { id: frame.message_id, role: "assistant", content: String(frame.content || ""),
                  status: frame.status, error: frame.error, reply_to: turn ? turn.userMessageId : undefined };
    if (this.view.key === frame.conversation_id) this.upsert(reply);
    if (turn) this.removeEntry(turn.clientId);
    this.turn = null;
    this.inflight = null;
    this.live.textContent = "";
    this.refreshConversationsSoon();
    this.render();
    this.pump();
  };

  Widget.prototype.onError = function (frame) {
    var detail = String(frame.detail || frame.code || "error");
    if (frame.client_id !== undefined && frame.client_id !== null) {
      this.messageFailed(frame.client_id, frame.code, detail);
    } else if (this.turn && frame.code === "not_found") {
      // The conversation of the turn in progress was deleted (here or elsewhere): the turn is over.
      var conv = this.turn.conv;
      this.removeEntry(this.turn.clientId);
      this.turn = null;
      this.inflight = null;
      this.forgetConversation(conv);
      this.pump();
    } else {
      this.showNotice(detail);
    }
  };

  Widget.prototype.messageFailed = function (clientId, code, detail) {
    var entry = this.findEntry(clientId);
    var wasTurn = this.turn && this.turn.clientId === clientId;
    if (clientId === this.inflight || wasTurn) {
      this.inflight = null;
      this.turn = null;
    }
    if (entry) {
      if (!wasTurn && (code === "invalid" || code === "too_large" || code === "not_found")) {
        // Nothing was stored and sending it unchanged cannot work: show it with Retry / Discard.
        entry.failed = { code: code, detail: detail };
      } else {
        // busy, rate_limited, unavailable, internal: not stored (or not answered); the same
        // client_id is safe to send again after a pause.
        entry.tries = (entry.tries || 0) + 1;
        entry.retryAt = Date.now() + backoff(entry.tries, 1000, 30000);
        entry.note = detail;
      }
      this.saveOutbox();
    }
    this.render();
    this.pump();
  };

  // -- outbox -----------------------------------------------------------------------------------------

  Widget.prototype.findEntry = function (clientId) {
    for (var i = 0; i < this.outbox.length; i++) if (this.outbox[i].client_id === clientId) return this.outbox[i];
    return null;
  };

  Widget.prototype.removeEntry = function (clientId) {
    this.outbox = this.outbox.filter(function (e) { return e.client_id !== clientId; });
    this.saveOutbox();
  };

  Widget.prototype.saveOutbox = function () { this.store.setJSON("outbox", this.outbox); };

  /** A new conversation got its id: every message typed into it follows, and so does the view. */
  Widget.prototype.retarget = function (key, conversationId) {
    this.outbox.forEach(function (e) { if (e.conv === key) e.conv = conversationId; });
    this.saveOutbox();
    if (this.current === key) {
      this.current = conversationId;
      this.view.key = conversationId;
      this.store.set("conversation", conversationId);
    }
  };

  /** Send the oldest unconfirmed message, if the socket is free. Strict order: none overtakes. */
  Widget.prototype.pump = function () {
    clearTimeout(this.pumpTimer);
    if (!this.ready || this.syncing || this.inflight || this.turn) return;
    var entry = this.outbox.find(function (e) { return !e.failed; });
    if (!entry) return;
    var wait = (entry.retryAt || 0) - Date.now();
    if (wait > 0) {
      var self = this;
      this.pumpTimer = setTimeout(function () { self.pump(); }, wait);
      return;
    }
    this.inflight = entry.client_id;
    this.send({ type: "message", content: entry.content, client_id: entry.client_id,
                conversation_id: isNewKey(entry.conv) ? null : entry.conv });
    this.render();
  };

  Widget.prototype.submit = function () {
    var content = this.input.value;
    if (!content.trim()) return;
    if (codePoints(content) > this.opts.maxChars) {
      this.showNotice("This message is too long (" + codePoints(content) + " characters; the limit is " +
                      this.opts.maxChars + ").");
      return;
    }
    this.outbox.push({ client_id: uuid(), content: content, conv: this.current, user: this.store.get("user"),
                       at: Date.now() });
    this.saveOutbox();
    this.store.set("conversation", this.current);
    this.input.value = "";
    this.autosize();
    this.input.focus(); // after a click on Send too: the next message is typed right away
    this.showNotice("");
    this.render();
    this.scrollToBottom();
    this.pump();
  };

  Widget.prototype.stop = function () {
    if (this.turn) {
      this.send({ type: "cancel" });
    } else if (this.inflight) {
      // Sent but not acknowledged yet: cancel as soon as its turn begins.
      var entry = this.findEntry(this.inflight);
      if (entry) entry.stopRequested = true;
    }
    this.input.focus();
  };

  Widget.prototype.retry = function (clientId) {
    var entry = this.findEntry(clientId);
    if (!entry) return;
    if (entry.failed && entry.failed.code === "not_found") {
      // Its conversation is gone: send it as the start of a new one, and go there.
      entry.conv = this.newKey();
      this.switchTo(entry.conv);
    }
    entry.failed = null;
    entry.retryAt = 0;
    this.saveOutbox();
    this.render();
    this.pump();
  };

  Widget.prototype.discard = function (clientId) {
    this.removeEntry(clientId);
    this.render();
    this.input.focus();
  };

  Widget.prototype.onKey = function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      this.submit();
    } else if (e.key === "Escape" && (this.turn || this.inflight)) {
      this.stop();
    }
  };

  Widget.prototype.autosize = function () {
    this.input.style.height = "auto";
    this.input.style.height = Math.min(this.input.scrollHeight, 200) + "px";
  };

  // -- conversations and history ------------------------------------------------------------------

  Widget.prototype.refreshConversations = function () {
    var self = this;
    if (!this.token) return Promise.resolve();
    return this.api("GET", "/api/conversations").then(function (r) {
      if (!r.ok) return;
      return r.json().then(function (body) {
        self.convs = Array.isArray(body.items) ? body.items : [];
        self.renderList();
        self.renderTitle();
      });
    }).catch(function () { /* offline: the list stays as it was */ });
  };

  /** Throttled, not debounced: a quick run of turns must not keep postponing the refresh. */
  Widget.prototype.refreshConversationsSoon = function () {
    var self = this;
    if (this.listTimer) return;
    this.listTimer = setTimeout(function () {
      self.listTimer = null;
      self.refreshConversations();
    }, 200);
  };

  /** The newest page of the current conversation, replacing the view (after a reconnect too). */
  Widget.prototype.reloadView = function () {
    var self = this;
    var view = this.view;
    var gen = ++view.gen;
    if (isNewKey(view.key)) {
      view.messages = [];
      view.hasMore = false;
      this.render();
      return Promise.resolve();
    }
    this.thread.setAttribute("aria-busy", "true");
    return this.fetchPage(view.key, null).then(function (page) {
      if (self.view !== view || view.gen !== gen) return;
      if (page === null) {
        self.forgetConversation(view.key);
        return;
      }
      view.messages = page.messages;
      view.hasMore = page.has_more;
      self.render();
      self.scrollToBottom();
      self.fillViewport();
    }).finally(function () { self.thread.removeAttribute("aria-busy"); });
  };

  /** One page of history over HTTP; null when the conversation does not exist (any more). */
  Widget.prototype.fetchPage = function (conversationId, before) {
    var q = "?limit=" + this.opts.pageSize + (before ? "&before=" + encodeURIComponent(before) : "");
    return this.api("GET", "/api/conversations/" + encodeURIComponent(conversationId) + "/messages" + q)
      .then(function (r) {
        if (r.status === 404) return null;
        if (!r.ok) throw new Error("history: HTTP " + r.status);
        return r.json();
      });
  };

  Widget.prototype.loadOlder = function () {
    var self = this;
    var view = this.view;
    if (!view.hasMore || view.loadingOlder || !view.messages.length) return;
    view.loadingOlder = true;
    this.olderBtn.textContent = "Loading…";
    var gen = view.gen;
    this.fetchPage(view.key, view.messages[0].id).then(function (page) {
      if (self.view !== view || view.gen !== gen || !page) return;
      var known = {};
      view.messages.forEach(function (m) { known[m.id] = true; });
      var older = page.messages.filter(function (m) { return !known[m.id]; });
      view.messages = older.concat(view.messages);
      view.hasMore = page.has_more;
      self.keepScrollFromBottom(function () { self.render(); });
      self.fillViewport();
    }).catch(function () {
      self.showNotice("Could not load earlier messages.");
    }).finally(function () {
      view.loadingOlder = false;
      self.olderBtn.textContent = "Load earlier messages";
    });
  };

  /** Until the thread can scroll, scrolling up cannot ask for more: keep loading. */
  Widget.prototype.fillViewport = function () {
    if (this.view.hasMore && this.thread.scrollHeight <= this.thread.clientHeight + 10) this.loadOlder();
  };

  Widget.prototype.onScroll = function () {
    if (this.thread.scrollTop < 120) this.loadOlder();
  };

  Widget.prototype.switchTo = function (key) {
    this.current = key;
    this.store.set("conversation", isNewKey(key) && !this.outbox.some(this.inConversation(key)) ? null : key);
    this.view = { key: key, messages: [], hasMore: false, loadingOlder: false, gen: 0 };
    this.render();
    if (this.ready || !isNewKey(key)) this.reloadView();
  };

  Widget.prototype.newChat = function () {
    this.switchTo(this.newKey());
    this.toggleDrawer(false);
    this.input.focus();
  };

  Widget.prototype.open = function (key) {
    if (key !== this.current) this.switchTo(key);
    this.toggleDrawer(false);
    this.input.focus();
  };

  Widget.prototype.remove = function (conv) {
    var self = this;
    var title = conv.title || "this conversation";
    if (this.opts.confirmDelete && !window.confirm("Delete “" + title + "”? This cannot be undone.")) return;
    if (isNewKey(conv.id)) { // typed but never sent: nothing on the server yet
      this.forgetConversation(conv.id, true);
      this.newBtn.focus();
      return;
    }
    this.api("DELETE", "/api/conversations/" + encodeURIComponent(conv.id)).then(function (r) {
      if (r.status === 204 || r.status === 404) {
        self.forgetConversation(conv.id, true);
        self.newBtn.focus(); // its button is gone; keep the keyboard user in the list
      } else self.showNotice("Could not delete the conversation (HTTP " + r.status + ").");
    }, function () {
      self.showNotice("Could not delete the conversation: the server cannot be reached.");
    });
  };

  /**
   * The conversation is gone. Deleted here: what was typed into it goes too. Deleted elsewhere:
   * messages typed here and never stored move to a new chat, marked not sent, to retry or discard.
   */
  Widget.prototype.forgetConversation = function (id, deletedHere) {
    this.convs = this.convs.filter(function (c) { return c.id !== id; });
    var orphans = this.outbox.filter(function (e) { return e.conv === id && !e.acked; });
    this.outbox = this.outbox.filter(function (e) { return e.conv !== id; });
    if (!deletedHere && orphans.length) {
      var key = this.newKey();
      orphans.forEach(function (e) {
        e.conv = key;
        e.failed = { code: "not_found", detail: "its conversation was deleted" };
      });
      this.outbox = this.outbox.concat(orphans);
      if (this.current === id) this.current = key;
    }
    this.saveOutbox();
    if (this.current === id) this.switchTo(this.newKey());
    else if (this.view.key !== this.current) this.switchTo(this.current);
    this.render();
  };

  Widget.prototype.hasMessage = function (id) {
    return this.view.messages.some(function (m) { return m.id === id; });
  };

  Widget.prototype.upsert = function (message) {
    var list = this.view.messages;
    for (var i = 0; i < list.length; i++) {
      if (list[i].id === message.id) {
        list[i] = message;
        return;
      }
    }
    list.push(message);
  };

  // -- rendering ------------------------------------------------------------------------------------

  Widget.prototype.render = function () {
    this.renderConn();
    this.renderList();
    this.renderTitle();
    this.renderThread();
    var busy = !!(this.turn || this.inflight);
    if (!busy && this.root.activeElement === this.stopBtn) this.input.focus(); // don't drop focus to <body>
    this.stopBtn.hidden = !busy;
  };

  Widget.prototype.renderConn = function () {
    var state = this.state;
    this.conn.setAttribute("data-state", state);
    this.app.setAttribute("data-state", state);
    if (this.connLabel.textContent !== STATE_LABELS[state]) this.connLabel.textContent = STATE_LABELS[state];
    var waiting = (state === "reconnecting" || state === "unauthorized") && !this.ws;
    var secs = waiting ? Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000)) : 0;
    this.connRetry.textContent = waiting && secs > 0 ? "retry in " + secs + " s" : "";
    this.retryBtn.hidden = !(waiting || state === "offline");
  };

  Widget.prototype.renderTitle = function () {
    var key = this.current;
    var conv = this.convs.find(function (c) { return c.id === key; });
    var title = conv ? conv.title || "Untitled" : "New chat";
    if (this.titleEl.textContent !== title) this.titleEl.textContent = title;
  };

  Widget.prototype.listItems = function () {
    // Chats typed offline and never sent have no id yet; list them first, they are the newest.
    var pending = [];
    var seen = {};
    for (var i = this.outbox.length - 1; i >= 0; i--) {
      var e = this.outbox[i];
      if (isNewKey(e.conv) && !seen[e.conv]) {
        seen[e.conv] = true;
        pending.push({ id: e.conv, title: e.content.slice(0, 60), pending: true });
      }
    }
    return pending.concat(this.convs);
  };

  Widget.prototype.renderList = function () {
    var self = this;
    var items = this.listItems();
    var sig = JSON.stringify([this.current, items.map(function (c) { return [c.id, c.title, c.updated_at]; })]);
    if (sig === this.listSig) return;
    this.listSig = sig;
    var focused = this.root.activeElement && this.root.activeElement.getAttribute("data-conv");
    this.convList.textContent = "";
    items.forEach(function (conv) {
      var title = conv.title || "Untitled";
      var openBtn = h("button", { type: "button", class: "cw-conv", "data-conv": conv.id,
                                  "aria-current": conv.id === self.current ? "page" : null,
                                  on: { click: function () { self.open(conv.id); } } },
        h("span", { class: "cw-conv-title" }, title),
        h("span", { class: "cw-conv-time" }, conv.pending ? "not sent yet" : shortTime(conv.updated_at)));
      var delBtn = h("button", { type: "button", class: "cw-icon cw-del", "aria-label": "Delete “" + title + "”",
                                 title: "Delete", on: { click: function () { self.remove(conv); } } }, TRASH());
      self.convList.appendChild(h("li", { class: "cw-conv-item" }, openBtn, delBtn));
    });
    this.emptyList.hidden = items.length > 0;
    if (focused) {
      var again = this.convList.querySelector('[data-conv="' + cssEscape(focused) + '"]');
      if (again) again.focus();
    }
  };

  /** The thread as keyed items: history, the reply streaming, then messages not yet confirmed. */
  Widget.prototype.threadItems = function () {
    var key = this.view.key;
    var items = this.view.messages.map(function (m) { return { key: "m:" + m.id, msg: m }; });
    var turn = this.turn;
    if (turn && turn.conv === key && turn.replyId && !this.hasMessage(turn.replyId)) {
      items.push({ key: "m:" + turn.replyId, live: true,
                   msg: { id: turn.replyId, role: "assistant", content: turn.text, status: "streaming" } });
    }
    var confirmed = {};
    this.view.messages.forEach(function (m) { if (m.client_id) confirmed[m.client_id] = true; });
    var self = this;
    this.outbox.forEach(function (e) {
      if (e.conv === key && !confirmed[e.client_id]) {
        items.push({ key: "c:" + e.client_id, entry: e, state: self.entryState(e) });
      }
    });
    return items;
  };

  Widget.prototype.entryState = function (e) {
    if (e.failed) return "failed";
    if (e.client_id === this.inflight) return "sending";
    if (!this.ready) return "waiting";
    return "queued";
  };

  Widget.prototype.renderThread = function () {
    var self = this;
    var items = this.threadItems();
    var stick = this.nearBottom();
    var keep = {};
    var prev = null;
    this.streamEl = null;
    items.forEach(function (item) {
      keep[item.key] = true;
      var sig = itemSignature(item);
      var el = self.msgList.querySelector('[data-key="' + cssEscape(item.key) + '"]');
      if (!el || el.__sig !== sig) {
        var fresh = self.renderItem(item);
        fresh.__sig = sig;
        if (el) el.replaceWith(fresh);
        el = fresh;
      }
      if (item.live) self.streamEl = el;
      var want = prev ? prev.nextSibling : self.msgList.firstChild;
      if (want !== el) self.msgList.insertBefore(el, want);
      prev = el;
    });
    Array.prototype.slice.call(this.msgList.children).forEach(function (el) {
      if (!keep[el.getAttribute("data-key")]) el.remove();
    });
    this.placeholder.hidden = items.length > 0 || this.view.hasMore;
    this.olderBtn.hidden = !this.view.hasMore;
    if (stick) this.scrollToBottom();
  };

  Widget.prototype.renderItem = function (item) {
    var self = this;
    var m = item.msg;
    if (item.entry) {
      var e = item.entry;
      var meta = h("div", { class: "cw-meta" }, h("span", null, ENTRY_LABELS[item.state](e)));
      if (e.failed) {
        meta.appendChild(h("button", { type: "button", class: "cw-link",
                                       on: { click: function () { self.retry(e.client_id); } } }, "Retry"));
        meta.appendChild(h("button", { type: "button", class: "cw-link",
                                       on: { click: function () { self.discard(e.client_id); } } }, "Discard"));
      }
      return h("li", { class: "cw-msg cw-user cw-pending", "data-key": item.key, "data-client-id": e.client_id,
                       "data-state": item.state },
               h("span", { class: "cw-sr" }, "You: "), h("div", { class: "cw-bubble cw-plain" }, e.content), meta);
    }
    if (m.role === "user") {
      return h("li", { class: "cw-msg cw-user", "data-key": item.key, "data-id": m.id,
                       "data-client-id": m.client_id || null },
               h("span", { class: "cw-sr" }, "You: "), h("div", { class: "cw-bubble cw-plain" }, m.content));
    }
    var status = m.status || "complete";
    var body = h("div", { class: "cw-bubble cw-md" }, renderMarkdown(m.content));
    if (status === "streaming") body.appendChild(h("span", { class: "cw-caret", "aria-hidden": "true" }));
    var label = REPLY_STATUS[status] || status;
    var metaChildren = [h("span", { class: "cw-status-dot", "aria-hidden": "true" }), label];
    if (status === "error" && m.error) metaChildren.push(": " + m.error);
    return h("li", { class: "cw-msg cw-assistant", "data-key": item.key, "data-id": m.id, "data-status": status,
                     "aria-busy": status === "streaming" ? "true" : null },
             h("span", { class: "cw-sr" }, "Assistant: "), body,
             h("div", { class: "cw-meta cw-status" }, metaChildren));
  };

  /** Deltas arrive faster than it is worth re-rendering Markdown: at most every 50 ms. */
  Widget.prototype.scheduleStreamRender = function () {
    var self = this;
    if (this.streamTimer) return;
    this.streamTimer = setTimeout(function () {
      self.streamTimer = null;
      var turn = self.turn;
      if (!turn || !self.streamEl) return self.renderThread();
      var stick = self.nearBottom();
      var bubble = self.streamEl.querySelector(".cw-bubble");
      bubble.textContent = "";
      bubble.appendChild(renderMarkdown(turn.text));
      bubble.appendChild(h("span", { class: "cw-caret", "aria-hidden": "true" }));
      self.streamEl.__sig = null; // the next full render rebuilds it
      if (stick) self.scrollToBottom();
    }, 50);
  };

  Widget.prototype.nearBottom = function () {
    var t = this.thread;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 60;
  };

  Widget.prototype.scrollToBottom = function () { this.thread.scrollTop = this.thread.scrollHeight; };

  Widget.prototype.keepScrollFromBottom = function (fn) {
    var fromBottom = this.thread.scrollHeight - this.thread.scrollTop;
    fn();
    this.thread.scrollTop = this.thread.scrollHeight - fromBottom;
  };

  Widget.prototype.showNotice = function (text) {
    this.notice.textContent = text;
    clearTimeout(this.noticeTimer);
    var self = this;
    if (text) this.noticeTimer = setTimeout(function () { self.notice.textContent = ""; }, 8000);
  };

  Widget.prototype.destroy = function () {
    this.destroyed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.readyTimer);
    clearTimeout(this.listTimer);
    clearTimeout(this.pumpTimer);
    clearInterval(this.countdown);
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    if (this.ws) this.ws.close(1000);
    this.root.textContent = "";
  };

  var ENTRY_LABELS = {
    sending: function () { return "Sending…"; },
    queued: function (e) { return e.note ? "Will retry: " + e.note : "Queued"; },
    waiting: function () { return "Not sent yet — waiting for the connection"; },
    failed: function (e) { return "Not sent: " + e.failed.detail; },
  };

  function itemSignature(item) {
    if (item.entry) return JSON.stringify([item.state, item.entry.content, item.entry.note || ""]);
    var m = item.msg;
    return JSON.stringify([m.role, m.status, m.content, m.error || ""]);
  }

  function shortTime(iso) {
    var d = new Date(iso);
    if (isNaN(d)) return "";
    var now = new Date();
    var sameDay = d.toDateString() === now.toDateString();
    return sameDay ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
                   : d.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  function cssEscape(s) {
    return window.CSS && window.CSS.escape ? window.CSS.escape(s) : String(s).replace(/["\\]/g, "\\$&");
  }

  function TRASH() {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("d", "M9 3h6l1 2h4v2H4V5h4l1-2zm-3 6h12l-1 12H7L6 9zm4 2v8h2v-8h-2zm4 0v8h2v-8h-2z");
    svg.appendChild(path);
    return svg;
  }

  // -- styles (in the shadow root: the host page's CSS and ours never meet) -----------------------

  var STYLES = [
    ":host{display:block;height:100%;min-height:320px;color-scheme:light dark;",
    "--bg:#fff;--side:#f5f6f8;--line:#e2e5ea;--text:#1c2230;--muted:#5d6676;--accent:#2563eb;",
    "--accent-text:#fff;--user:#2563eb;--user-text:#fff;--bot:#f2f4f7;--code:#0f172a;--code-text:#e5e9f0;",
    "--ok:#16803c;--warn:#b45309;--bad:#c0262d;--focus:#2563eb;",
    "font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;color:var(--text)}",
    "@media (prefers-color-scheme:dark){:host{--bg:#14171c;--side:#1b1f26;--line:#2c323c;--text:#e6e9ee;",
    "--muted:#9aa3b2;--bot:#222831;--code:#0b0e13;--user:#2f6ae6;--accent:#4f86f7}}",
    "*,*::before,*::after{box-sizing:border-box}",
    "[hidden]{display:none!important}",
    "button{font:inherit;color:inherit;cursor:pointer}",
    ":focus-visible{outline:2px solid var(--focus);outline-offset:2px}",
    ".cw-sr{position:absolute!important;width:1px;height:1px;padding:0;margin:-1px;overflow:hidden;",
    "clip:rect(0 0 0 0);white-space:nowrap;border:0}",
    ".cw-wrap{height:100%;container-type:inline-size;container-name:cw}",
    ".cw-app{position:relative;display:grid;grid-template-columns:264px minmax(0,1fr);height:100%;",
    "background:var(--bg);overflow:hidden}",
    /* side list */
    ".cw-side{display:flex;flex-direction:column;gap:8px;min-height:0;padding:12px;background:var(--side);",
    "border-right:1px solid var(--line)}",
    ".cw-side-head{display:flex;align-items:center;justify-content:space-between;padding:2px 4px}",
    ".cw-side-title{margin:0;font-size:13px;font-weight:600;letter-spacing:.02em;text-transform:uppercase;",
    "color:var(--muted)}",
    ".cw-new{padding:9px 12px;border:1px solid var(--line);border-radius:10px;background:var(--bg);",
    "font-weight:600;text-align:left}",
    ".cw-new:hover{border-color:var(--accent);color:var(--accent)}",
    ".cw-side nav{flex:1;min-height:0;overflow-y:auto;margin:0 -4px;padding:0 4px}",
    ".cw-convs{list-style:none;margin:0;padding:0;display:flex;flex-direction:column;gap:2px}",
    ".cw-conv-item{display:flex;align-items:center;border-radius:8px}",
    ".cw-conv-item:hover{background:rgba(127,127,127,.1)}",
    ".cw-conv{flex:1;min-width:0;display:flex;flex-direction:column;align-items:flex-start;padding:7px 8px;",
    "border:0;background:none;text-align:left;border-radius:8px}",
    ".cw-conv-item:has([aria-current]){background:rgba(37,99,235,.12)}",
    ".cw-conv[aria-current] .cw-conv-title{color:var(--accent);font-weight:600}",
    ".cw-conv-title{max-width:100%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-size:14px}",
    ".cw-conv-time{font-size:12px;color:var(--muted)}",
    ".cw-empty{margin:8px 4px;color:var(--muted);font-size:14px}",
    ".cw-icon{display:inline-flex;align-items:center;justify-content:center;width:34px;height:34px;",
    "flex:none;padding:0;border:0;border-radius:8px;background:none;color:var(--muted);font-size:20px;line-height:1}",
    ".cw-icon:hover{background:rgba(127,127,127,.15);color:var(--text)}",
    ".cw-icon svg{width:17px;height:17px;fill:currentColor}",
    ".cw-del{opacity:.55}.cw-conv-item:hover .cw-del,.cw-del:focus-visible{opacity:1}",
    ".cw-del:hover{color:var(--bad)}",
    ".cw-close-side,.cw-menu{display:none}",
    /* main column */
    ".cw-main{display:flex;flex-direction:column;min-width:0;min-height:0}",
    ".cw-head{display:flex;align-items:center;gap:8px;min-height:54px;padding:8px 16px;",
    "border-bottom:1px solid var(--line)}",
    ".cw-title{flex:1;min-width:0;margin:0;font-size:16px;font-weight:600;overflow:hidden;",
    "text-overflow:ellipsis;white-space:nowrap}",
    ".cw-conn{display:flex;align-items:center;gap:6px;font-size:13px;color:var(--muted);white-space:nowrap}",
    ".cw-dot{width:8px;height:8px;border-radius:50%;background:var(--muted)}",
    ".cw-conn[data-state=connected] .cw-dot{background:var(--ok)}",
    ".cw-conn[data-state=reconnecting] .cw-dot,.cw-conn[data-state=connecting] .cw-dot{background:var(--warn);",
    "animation:cw-pulse 1.2s ease-in-out infinite}",
    ".cw-conn[data-state=offline] .cw-dot,.cw-conn[data-state=unauthorized] .cw-dot,",
    ".cw-conn[data-state=incompatible] .cw-dot{background:var(--bad)}",
    "@keyframes cw-pulse{50%{opacity:.3}}",
    ".cw-link{padding:0;border:0;background:none;color:var(--accent);text-decoration:underline;font-size:13px}",
    /* thread */
    ".cw-thread{flex:1;min-height:0;overflow-y:auto;overscroll-behavior:contain;padding:20px 16px 8px}",
    ".cw-thread:focus-visible{outline-offset:-2px}",
    ".cw-older{display:block;margin:0 auto 16px;padding:6px 14px;border:1px solid var(--line);",
    "border-radius:999px;background:var(--bg);font-size:13px;color:var(--muted)}",
    ".cw-hello{margin:18% auto 0;max-width:28em;text-align:center;color:var(--muted)}",
    ".cw-msgs{list-style:none;margin:0 auto;padding:0;max-width:760px;display:flex;flex-direction:column;gap:14px}",
    ".cw-msg{display:flex;flex-direction:column;min-width:0}",
    ".cw-user{align-items:flex-end}",
    ".cw-bubble{max-width:min(85%,640px);padding:9px 14px;border-radius:16px;overflow-wrap:anywhere}",
    ".cw-user .cw-bubble{background:var(--user);color:var(--user-text);border-bottom-right-radius:5px}",
    ".cw-pending .cw-bubble{opacity:.7}",
    ".cw-pending[data-state=failed] .cw-bubble{opacity:1;background:transparent;color:var(--text);",
    "border:1px dashed var(--bad)}",
    ".cw-assistant .cw-bubble{max-width:100%;background:var(--bot);border-bottom-left-radius:5px}",
    ".cw-plain{white-space:pre-wrap}",
    ".cw-meta{display:flex;align-items:center;flex-wrap:wrap;gap:4px 10px;margin-top:4px;padding:0 4px;",
    "font-size:12px;color:var(--muted)}",
    ".cw-status-dot{width:6px;height:6px;border-radius:50%;background:var(--ok)}",
    ".cw-status{gap:6px}",
    "[data-status=streaming] .cw-status-dot{background:var(--accent);animation:cw-pulse 1s infinite}",
    "[data-status=cancelled] .cw-status,[data-status=interrupted] .cw-status{color:var(--warn)}",
    "[data-status=cancelled] .cw-status-dot,[data-status=interrupted] .cw-status-dot{background:var(--warn)}",
    "[data-status=error] .cw-status{color:var(--bad)}[data-status=error] .cw-status-dot{background:var(--bad)}",
    ".cw-pending[data-state=failed] .cw-meta{color:var(--bad)}",
    ".cw-caret{display:inline-block;width:7px;height:1em;margin-left:2px;vertical-align:-2px;",
    "background:currentColor;opacity:.5;animation:cw-pulse 1s infinite}",
    /* Markdown */
    ".cw-md>:first-child{margin-top:0}.cw-md>:last-child{margin-bottom:0}",
    ".cw-md p,.cw-md-list,.cw-md-pre{margin:0 0 .6em}",
    ".cw-md-list{padding-left:1.4em}.cw-md-list li+li{margin-top:.15em}",
    "ul.cw-md-list{list-style:disc}ol.cw-md-list{list-style:decimal}",
    ".cw-md-pre{padding:10px 12px;border-radius:8px;background:var(--code);color:var(--code-text);",
    "overflow-x:auto;white-space:pre;font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}",
    ".cw-md-pre code{font:inherit}",
    ".cw-md-code{padding:1px 5px;border-radius:5px;background:rgba(127,127,127,.18);",
    "font:.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}",
    /* composer */
    ".cw-composer{padding:10px 16px 12px;border-top:1px solid var(--line);background:var(--bg)}",
    ".cw-box{display:flex;align-items:flex-end;gap:8px;max-width:760px;margin:0 auto;padding:6px 6px 6px 14px;",
    "border:1px solid var(--line);border-radius:16px;background:var(--bg)}",
    ".cw-box:focus-within{border-color:var(--accent);box-shadow:0 0 0 3px rgba(37,99,235,.15)}",
    ".cw-input{flex:1;min-width:0;max-height:200px;padding:7px 0;border:0;outline:0;resize:none;",
    "background:transparent;color:inherit;font:inherit}",
    ".cw-send,.cw-stop{flex:none;height:36px;padding:0 16px;border-radius:11px;font-weight:600}",
    ".cw-send{border:0;background:var(--accent);color:var(--accent-text)}",
    ".cw-send:hover{filter:brightness(1.08)}",
    ".cw-stop{border:1px solid var(--line);background:var(--bg)}",
    ".cw-stop:hover{border-color:var(--bad);color:var(--bad)}",
    ".cw-hint{max-width:760px;margin:6px auto 0;font-size:12px;color:var(--muted)}",
    ".cw-notice{max-width:760px;margin:4px auto 0;font-size:13px;color:var(--bad)}",
    ".cw-notice:empty{display:none}",
    ".cw-backdrop{display:none}",
    /* narrow (a phone, or a small embed): the side list becomes a drawer */
    "@container cw (max-width:720px){",
    ".cw-app{grid-template-columns:minmax(0,1fr)}",
    ".cw-side{position:absolute;z-index:3;top:0;bottom:0;left:0;width:min(86%,320px);",
    "transform:translateX(-105%);transition:transform .2s ease;box-shadow:0 0 24px rgba(0,0,0,.2)}",
    ".cw-app[data-drawer=open] .cw-side{transform:none}",
    ".cw-app[data-drawer=closed] .cw-side{visibility:hidden;transition:transform .2s ease,visibility 0s .2s}",
    ".cw-app[data-drawer=open] .cw-backdrop{display:block;position:absolute;inset:0;z-index:2;",
    "background:rgba(0,0,0,.35)}",
    ".cw-menu,.cw-close-side{display:inline-flex}",
    ".cw-head{padding:6px 8px}",
    ".cw-thread{padding:14px 10px 6px}",
    ".cw-composer{padding:8px 8px 10px}",
    ".cw-bubble{max-width:92%}",
    ".cw-hint{display:none}",
    ".cw-conn-when{display:none}",
    "}",
    "@media (prefers-reduced-motion:reduce){*{animation:none!important;transition:none!important}}",
    /* the floating launcher (auto-mount without data-target) */
    ".cw-launcher{position:fixed;right:20px;bottom:20px;z-index:2147483000;height:52px;padding:0 20px;",
    "border:0;border-radius:26px;background:var(--accent);color:var(--accent-text);font-weight:600;",
    "box-shadow:0 6px 20px rgba(0,0,0,.25)}",
    ".cw-panel{position:fixed;right:20px;bottom:84px;z-index:2147483000;width:min(420px,calc(100vw - 40px));",
    "height:min(640px,calc(100vh - 110px));border:1px solid var(--line);border-radius:14px;overflow:hidden;",
    "box-shadow:0 12px 40px rgba(0,0,0,.25);background:var(--bg)}",
    /* a phone: the panel takes the screen, and its own × closes it */
    "@media (max-width:520px){.cw-panel{inset:0;width:auto;height:auto;border:0;border-radius:0}",
    ".cw-launcher[aria-expanded=true]{display:none}}",
  ].join("\n");

  // -- mounting -------------------------------------------------------------------------------------

  /** Fill `element` with a chat: ChatWidget.mount(el, {server: "https://chat.example.com", token}). */
  function mount(element, options) {
    if (typeof element === "string") element = document.querySelector(element);
    if (!element) throw new Error("ChatWidget.mount: no such element");
    return new Widget(element, options);
  }

  /** A "Chat" button fixed in the corner that opens the chat in a panel. */
  function mountFloating(options) {
    var host = h("div", { class: "chat-widget-floating" });
    document.body.appendChild(host);
    var root = host.attachShadow({ mode: "open" });
    root.appendChild(h("style", null, STYLES));
    var panelHost = h("div", { class: "cw-panel", role: "dialog", "aria-label": options.title || "Chat", hidden: true });
    var launcher = h("button", { type: "button", class: "cw-launcher", "aria-expanded": "false" },
                     options.title || "Chat");
    var widget = null;
    function setOpen(open) {
      panelHost.hidden = !open;
      launcher.setAttribute("aria-expanded", String(open));
      if (open && !widget) {
        widget = new Widget(panelHost, Object.assign({}, options, { onClose: function () { setOpen(false); } }));
      }
      (open ? widget.input : launcher).focus();
    }
    launcher.addEventListener("click", function () { setOpen(panelHost.hidden); });
    root.appendChild(panelHost);
    root.appendChild(launcher);
    return { open: function () { setOpen(true); }, close: function () { setOpen(false); } };
  }

  /**
   * <script src=".../static/widget.js">: mount on load. data-target: into that element, else a
   * floating button. data-mount="manual": only define window.ChatWidget, the page mounts it.
   */
  function autoMount(script) {
    var data = script.dataset;
    if (data.mount === "manual") return;
    var options = {
      server: data.server || script.src.replace(/\/static\/widget\.js(?:[?#].*)?$/, ""),
      token: data.token || undefined,
      title: data.title || undefined,
    };
    var go = function () {
      if (data.target) mount(data.target, options);
      else mountFloating(options);
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", go);
    else go();
  }

  window.ChatWidget = { mount: mount, mountFloating: mountFloating, renderMarkdown: renderMarkdown,
                        version: PROTOCOL };
  if (document.currentScript) autoMount(document.currentScript);
})();
