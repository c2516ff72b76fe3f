/*
 * chat-client.js: the DOM-free half of the chat widget, a client for the chat.v1 protocol
 * (docs: README "Browser widget"; the contract: docs/protocol.md). It touches no document: a bot, a
 * test or another view can use it with any WebSocket, fetch and storage (a browser's, Node's).
 *
 *   var client = new ChatClient({server: "https://chat.example.com", token: optionalToken});
 *   client.on("reply", function (reply) { ... });   // see EVENTS below
 *   client.connect();
 *   client.send("hello", conversationKey);           // queued in the outbox, sent in order
 *
 * What it keeps its promises with:
 * - An outbox of unconfirmed messages, each with a client_id, kept in storage per tab (a tab id
 *   in session storage). A message leaves it only when its reply's `done` arrives; after a
 *   reconnect or a reload it is sent again with the same client_id (stored once by the server).
 *   The outbox of a tab that closed is adopted by the next tab that starts.
 * - One message on the wire at a time: later ones wait, so the server's queue is never overrun.
 * - After a reconnect, the replies listed in `ready.replies_in_flight` are resumed from the last
 *   `seq` this client has; deltas are deduplicated by `seq`, and a gap asks for a replay.
 * - The socket is opened with ?sync=1: other tabs' messages and replies arrive live.
 */
(function (root) {
  "use strict";

  var PROTOCOL = "chat.v1";
  var NEW = "new:"; // the key of a conversation that the server has not created yet
  var DEFAULTS = {
    backoffBaseMs: 500,
    backoffMaxMs: 10000,
    readyTimeoutMs: 15000,
    requestTimeoutMs: 15000,
    leaseMs: 5000, // a tab renews its claim on its outbox this often; 3 missed: the tab is gone
    sync: true,
    prefix: "chat-widget:",
  };

  /**
   * EVENTS (client.on(name, fn); fn's `this` is the client):
   *   state(state)            connecting | connected | reconnecting | offline | unauthorized | incompatible
   *   ready(frame)            the socket is up; a listener may return a Promise: the outbox is sent
   *                           again only after it settles (the view reloads its history first)
   *   identity(userId, prev)  the server says we are another user than last time
   *   outbox()                the outbox or the turn in progress changed (entries(), entryState(e))
   *   retarget(key, id)       a new conversation (key "new:…") got its id from the server
   *   ack(entry, frame)       one of our messages is stored
   *   reply(reply)            a reply started, grew, or is resumed: {id, conversation_id, reply_to,
   *                           seq, text, status: "streaming", own}
   *   done(reply)             a reply is stored: {id, conversation_id, reply_to, status, content, error}
   *   lost(reply)             a reply we were showing is no longer followed (reload its history)
   *   message_added(frame)    another tab of this user sent a message
 *   selected(frame, own)    a conversation's current branch changed: {conversation_id, leaf_id}; own:
 *                           the answer to this client's select(), else another socket's (reload the branch)
 *   select_failed(request, detail)  a select() was refused (the message is gone, or not yours)
   *   conversation_deleted(id)
   *   conversation_updated(conversation)  renamed, or its settings changed (here or elsewhere):
   *                           {id, title, created_at, updated_at, model, system_prompt, title_source}
   *   failed(entry)           a message was refused and cannot be sent as it is (entry.failed)
   *   notice(text)            something to tell the person
   *
   * METHODS: connect(), send(content, conversationKey) → entry, edit(content, conversationId, parentId) → entry,
 *   regenerate(conversationId, replyTo) → entry, select(conversationId, messageId) → sent?,
 *   cancel(replyId?), retry(clientId, conv?),
   *   discard(clientId), entries(), entryState(entry), busy(), streaming(conversationId),
   *   conversations(before?, limit?, q?), history(conversationId, before?, limit?, leaf?), deleteConversation(id),
   *   conversation(id), rename(id, title), updateConversation(id, {title?, system_prompt?, model?}), models(),
   *   search(q, before?, limit?), exportConversation(id, format) → {blob, filename},
   *   feedback(messageId, rating, comment?); a refused request rejects with an Error with .status and .detail,
   *   forgetConversation(id, deletedHere), setToken(token), reconnectNow(), offline(), leaveTab(),
   *   returnToTab(), close(). ChatClient.newKey() names a conversation not created yet.
   *
   * OPTIONS: server, token, WebSocket, fetch, storage (localStorage-like; null: memory only),
   *   session (sessionStorage-like, for the tab id), sync (default true), backoffBaseMs,
   *   backoffMaxMs, readyTimeoutMs, requestTimeoutMs, leaseMs.
   */
  function ChatClient(options) {
    this.opts = assign({}, DEFAULTS, options || {});
    this.base = String(this.opts.server || (root.location && root.location.origin) || "").replace(/\/+$/, "");
    this.wsUrl = this.base.replace(/^http/i, "ws") + "/ws"; // http→ws, https→wss
    this.WebSocket = this.opts.WebSocket || root.WebSocket;
    this.fetch = this.opts.fetch || (root.fetch && root.fetch.bind(root));
    if (!this.WebSocket) throw new Error("ChatClient: no WebSocket here; pass one as options.WebSocket");
    this.store = new Store(this.opts.storage !== undefined ? this.opts.storage : safeStorage("localStorage"),
                           this.opts.prefix + this.base + ":");
    this.session = new Store(this.opts.session !== undefined ? this.opts.session : safeStorage("sessionStorage"),
                             this.opts.prefix + this.base + ":");
    this.listeners = {};

    // A token from the host page wins and is kept, so the next page load is the same user too.
    this.tokenFromHost = !!this.opts.token;
    if (this.opts.token) this.store.set("token", this.opts.token);
    this.token = this.store.get("token");
    this.userId = this.store.get("user");

    this.tabId = this.claimTab();
    this.outbox = this.store.getJSON("outbox:" + this.tabId, []);
    this.adoptOrphans();

    this.replies = {}; // id → the replies streaming that we show: {id, conversation_id, reply_to, seq, text, own}
    this.finished = []; // ids of replies whose `done` we handled (a resume and a resend may both bring it)
    this.pendingResumes = []; // reply ids we asked to resume and have not heard of yet
    this.pendingSelects = []; // select frames sent and not answered yet, oldest first
    // The order in which resume and select frames were sent: an error without a client_id answers
    // the oldest one still unanswered (the server answers them in order).
    this.readQueue = [];
    this.turn = null; // our message's turn on this socket: {clientId, conv, userMessageId, replyId}
    this.inflight = null; // client_id of the message on the wire, until its turn ends
    this.ws = null;
    this.ready = false;
    this.attempt = 0;
    this.refusals = 0;
    this.state = "connecting";
  }

  ChatClient.PROTOCOL = PROTOCOL;
  ChatClient.newKey = function () { return NEW + uuid(); };
  ChatClient.isNewKey = function (key) { return typeof key === "string" && key.indexOf(NEW) === 0; };
  ChatClient.backoff = backoff;
  ChatClient.uuid = uuid;

  var P = ChatClient.prototype;

  // -- events -------------------------------------------------------------------------------------
  P.on = function (name, fn) {
    (this.listeners[name] = this.listeners[name] || []).push(fn);
    return this;
  };
  P.off = function (name, fn) {
    this.listeners[name] = (this.listeners[name] || []).filter(function (f) { return f !== fn; });
    return this;
  };
  P.emit = function (name) {
    var args = Array.prototype.slice.call(arguments, 1);
    var self = this;
    return (this.listeners[name] || []).map(function (fn) {
      try { return fn.apply(self, args); } catch (e) { setTimeout(function () { throw e; }); }
    });
  };

  // -- the tab's outbox in storage ----------------------------------------------------------------
  /** This tab's id: kept in session storage across reloads, new for a duplicated tab. */
  P.claimTab = function () {
    var id = this.session.get("tab");
    if (!id || this.leaseFresh(id)) id = uuid().slice(0, 8); // a duplicated tab copies session storage
    this.session.set("tab", id);
    this.tabId = id;
    this.holdLease();
    return id;
  };

  P.holdLease = function () {
    var self = this;
    clearInterval(this.leaseTimer);
    this.renewLease(this.tabId);
    this.leaseTimer = setInterval(function () {
      self.renewLease(self.tabId);
      if (self.adoptOrphans()) self.pump(); // a tab that closed (or crashed) while we were open
    }, this.opts.leaseMs);
  };

  /** The page goes away (pagehide): give up the claim, so the next tab may adopt what is unsent. */
  P.leaveTab = function () {
    clearInterval(this.leaseTimer);
    this.store.set("lease:" + this.tabId, null);
  };

  /** The page came back (from the back/forward cache): claim the outbox again and reconnect. */
  P.returnToTab = function () {
    this.holdLease();
    this.reconnectNow();
  };
  P.renewLease = function (id) { this.store.set("lease:" + id, String(Date.now())); };
  P.leaseFresh = function (id) {
    var at = Number(this.store.get("lease:" + id));
    return at > 0 && Date.now() - at < 3 * this.opts.leaseMs;
  };

  /** The outboxes of tabs that are gone (closed, or crashed) become ours: delivered, or shown unsent. */
  P.adoptOrphans = function () {
    var self = this;
    var legacy = this.store.getJSON("outbox", null); // before outboxes were per tab
    var taken = legacy || [];
    if (legacy) this.store.set("outbox", null);
    this.store.keys().forEach(function (key) {
      var m = /^outbox:(.+)$/.exec(key);
      if (!m || m[1] === self.tabId || self.leaseFresh(m[1])) return;
      taken = taken.concat(self.store.getJSON(key, []));
      self.store.set(key, null);
      self.store.set("lease:" + m[1], null);
    });
    if (!taken.length) return false;
    var have = {};
    this.outbox.forEach(function (e) { have[e.client_id] = true; });
    taken.forEach(function (e) {
      if (e && e.client_id && !have[e.client_id]) {
        have[e.client_id] = true;
        self.outbox.push(e);
      }
    });
    this.outbox.sort(function (a, b) { return (a.at || 0) - (b.at || 0); });
    this.saveOutbox();
    return true;
  };

  P.saveOutbox = function () {
    this.store.setJSON("outbox:" + this.tabId, this.outbox);
    this.emit("outbox");
  };

  P.entries = function () { return this.outbox.slice(); };

  P.findEntry = function (clientId) {
    for (var i = 0; i < this.outbox.length; i++) if (this.outbox[i].client_id === clientId) return this.outbox[i];
    return null;
  };

  P.removeEntry = function (clientId) {
    this.outbox = this.outbox.filter(function (e) { return e.client_id !== clientId; });
    this.saveOutbox();
  };

  /** "failed" | "sending" (on the wire or its reply streaming) | "waiting" (no connection) | "queued" */
  P.entryState = function (e) {
    if (e.failed) return "failed";
    if (e.client_id === this.inflight || e.following) return "sending";
    if (!this.ready) return "waiting";
    return "queued";
  };

  /** Our message's turn is on the wire, or its reply is streaming. */
  P.busy = function () { return !!(this.turn || this.inflight); };

  // -- what the person does -----------------------------------------------------------------------
  /** Queue a message for a conversation (an id, or a key from ChatClient.newKey()); the entry. */
  P.send = function (content, conv) {
    return this.queue({ client_id: uuid(), content: content, conv: conv, user: this.userId, at: Date.now() });
  };

  /**
   * A new version of a stored user message: `content` as its sibling, under `parentId` (the edited
   * message's parent_id; null when it was the first message). Queued and resent like any message.
   */
  P.edit = function (content, conv, parentId) {
    return this.queue({ client_id: uuid(), content: content, conv: conv, parent_id: parentId === undefined ? null : parentId,
                        user: this.userId, at: Date.now() });
  };

  /**
   * A new reply to a stored user message (`replyTo`: the reply_to of the reply to replace), a
   * sibling of its earlier replies. Its client_id is kept in the outbox until its reply's `done`
   * and resent after a drop, as a message's is: the server answers a resend with the same reply.
   */
  P.regenerate = function (conv, replyTo) {
    for (var i = 0; i < this.outbox.length; i++) {
      var e = this.outbox[i];
      if (e.kind === "regenerate" && e.reply_to === replyTo && !e.failed) return e; // asked already
    }
    return this.queue({ kind: "regenerate", client_id: uuid(), reply_to: replyTo, conv: conv, content: "",
                        user: this.userId, at: Date.now() });
  };

  /** Whether a regenerate of the reply to `replyTo` waits in the outbox or runs. */
  P.regenerating = function (replyTo) {
    return this.outbox.some(function (e) { return e.kind === "regenerate" && e.reply_to === replyTo && !e.failed; });
  };

  /**
   * Make the branch through `messageId` current (flip to a sibling). Not queued: false when there
   * is no connection. The answer (and other sockets' switches) come as the `selected` event.
   */
  P.select = function (conv, messageId) {
    var request = { conversation_id: conv, message_id: messageId };
    if (!this.sendFrame({ type: "select", conversation_id: conv, message_id: messageId })) return false;
    this.pendingSelects.push(request);
    this.readQueue.push("select");
    return true;
  };

  P.queue = function (entry) {
    this.outbox.push(entry);
    this.saveOutbox();
    this.pump();
    return entry;
  };

  /** Stop a reply: by its id when known (any tab's), else our turn in progress. */
  P.cancel = function (replyId) {
    var turn = this.turn;
    var id = replyId || (turn && turn.replyId);
    if (id) return this.sendFrame({ type: "cancel", message_id: id });
    if (turn) return this.sendFrame({ type: "cancel" });
    if (this.inflight) {
      // Sent but not acknowledged yet: cancel as soon as its turn begins.
      var entry = this.findEntry(this.inflight);
      if (entry) entry.stopRequested = true;
    }
    return false;
  };

  /** Send a refused message again, optionally into another conversation. */
  P.retry = function (clientId, conv) {
    var entry = this.findEntry(clientId);
    if (!entry) return;
    if (conv) {
      entry.conv = conv;
      delete entry.parent_id; // another conversation: the start of it, not a version of a message there
    }
    entry.failed = null;
    entry.retryAt = 0;
    this.saveOutbox();
    this.pump();
  };

  P.discard = function (clientId) { this.removeEntry(clientId); };

  /**
   * A conversation is gone. Deleted here: what was typed into it goes too. Deleted elsewhere:
   * messages typed here and never stored move to a new conversation key, marked failed; the key.
   */
  P.forgetConversation = function (id, deletedHere) {
    var orphans = this.outbox.filter(function (e) { return e.conv === id && !e.acked; });
    this.outbox = this.outbox.filter(function (e) { return e.conv !== id; });
    var key = null;
    if (!deletedHere && orphans.length) {
      key = ChatClient.newKey();
      orphans.forEach(function (e) {
        e.conv = key;
        e.failed = { code: "not_found", detail: "its conversation was deleted" };
      });
      this.outbox = this.outbox.concat(orphans);
    }
    var self = this;
    Object.keys(this.replies).forEach(function (rid) {
      if (self.replies[rid].conversation_id === id) delete self.replies[rid];
    });
    this.saveOutbox();
    return key;
  };

  // -- the connection -----------------------------------------------------------------------------
  P.connect = function () {
    if (this.closed || this.ws) return;
    clearTimeout(this.retryTimer);
    var q = [];
    if (this.token) q.push("token=" + encodeURIComponent(this.token));
    if (this.opts.sync) q.push("sync=1");
    var ws;
    try {
      ws = new this.WebSocket(this.wsUrl + (q.length ? "?" + q.join("&") : ""));
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    var self = this;
    this.ws = ws;
    this.ready = false;
    this.opened = false;
    this.setState(this.attempt ? "reconnecting" : "connecting");
    ws.onopen = function () { self.opened = true; };
    ws.onmessage = function (ev) { if (self.ws === ws) self.onFrame(ev.data); };
    ws.onclose = function (ev) { self.onClose(ws, ev); };
    // A handshake that hangs (a proxy, a half-open network) must not stall us forever.
    this.readyTimer = setTimeout(function () { if (self.ws === ws && !self.ready) ws.close(); },
                                 this.opts.readyTimeoutMs);
  };

  /** Try now, not after the backoff (the network came back, or the person asked). */
  P.reconnectNow = function () {
    if (this.ws || this.closed || this.state === "incompatible") return;
    this.connect();
  };

  /** The network is gone: the socket is dead even if it has not noticed yet. */
  P.offline = function () {
    if (this.ws) this.ws.close();
    else this.setState("offline");
  };

  /** Stop for good (the page goes away): the outbox stays in storage for the next load. */
  P.close = function () {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.readyTimer);
    clearTimeout(this.pumpTimer);
    if (this.ws) this.ws.close(1000);
    this.leaveTab(); // our outbox may be adopted by the next tab
  };

  P.onClose = function (ws, ev) {
    if (this.ws !== ws) return;
    clearTimeout(this.readyTimer);
    var wasReady = this.ready;
    var opened = this.opened;
    this.ws = null;
    this.ready = false;
    this.turn = null;
    this.inflight = null;
    this.pendingResumes = [];
    this.pendingSelects = [];
    this.readQueue = [];
    this.emit("outbox");
    if (this.closed) return;
    if (ev && ev.code === 1008 && !wasReady) {
      this.refused();
    } else if (!opened) {
      // A refused handshake (HTTP 403) looks like any failure to a browser: ask the HTTP API
      // whether we are signed in before deciding it was the network.
      var self = this;
      this.api("GET", "/api/conversations?limit=1").then(function (r) {
        if (r.status === 401) self.refused();
        else self.scheduleReconnect();
      }, function () { self.scheduleReconnect(); });
    } else {
      this.refusals = 0;
      if (ev && ev.code === 1013) this.attempt = Math.max(this.attempt, 4); // too many sockets: wait longer
      this.scheduleReconnect();
    }
  };

  P.refused = function () {
    if (!this.tokenFromHost && this.token) {
      // The saved identity is no longer accepted (the server's data was reset): start afresh.
      this.token = null;
      this.store.set("token", null);
      this.emit("notice", "Your saved session was not accepted by the server; a new one was started.");
      this.connect();
    } else if (++this.refusals >= 2) {
      // Refused twice while the HTTP API answers 401: retrying cannot help until someone signs in.
      this.setState("unauthorized");
    } else {
      this.scheduleReconnect();
    }
  };

  P.scheduleReconnect = function () {
    if (this.closed) return;
    var self = this;
    clearTimeout(this.retryTimer);
    if (root.navigator && root.navigator.onLine === false) {
      this.setState("offline"); // reconnectNow() brings us back
      return;
    }
    var delay = backoff(this.attempt++, this.opts.backoffBaseMs, this.opts.backoffMaxMs);
    this.retryAt = Date.now() + delay;
    this.setState("reconnecting");
    this.retryTimer = setTimeout(function () { self.connect(); }, delay);
  };

  P.setState = function (state) {
    this.state = state;
    this.emit("state", state);
  };

  /** Use a token from now on (a site signed the person in): reconnect with it. */
  P.setToken = function (token) {
    this.token = token;
    this.tokenFromHost = true;
    this.store.set("token", token);
    this.refusals = 0;
    this.attempt = 0;
    if (this.ws) this.ws.close();
    else this.connect();
  };

  P.sendFrame = function (frame) {
    if (!this.ws || !this.ready) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  };

  // -- the HTTP API beside the socket -------------------------------------------------------------
  /** A request with the token; `body`, when given, goes as JSON. */
  P.api = function (method, path, body) {
    var headers = this.token ? { Authorization: "Bearer " + this.token } : {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    // A request that never answers must not hold up the resend of the outbox behind it.
    var abort = typeof AbortController === "function" ? new AbortController() : null;
    var timer = setTimeout(function () { if (abort) abort.abort(); }, this.opts.requestTimeoutMs);
    return this.fetch(this.base + path, { method: method, headers: headers, mode: "cors", cache: "no-store",
                                          body: body !== undefined ? JSON.stringify(body) : undefined,
                                          signal: abort ? abort.signal : undefined })
      .finally(function () { clearTimeout(timer); });
  };

  /** The JSON answer of a request that must succeed; else an Error with .status and the server's .detail. */
  P.apiJSON = function (method, path, body) {
    return this.api(method, path, body).then(function (r) { return r.ok ? r.json() : refusal(r); });
  };

  /** A page of conversations, newest first: {items, has_more}; with `q`, those whose title has its words. */
  P.conversations = function (before, limit, search) {
    var q = "?limit=" + (limit || 50) + (before ? "&before=" + encodeURIComponent(before) : "") +
            (search ? "&q=" + encodeURIComponent(search) : "");
    return this.api("GET", "/api/conversations" + q).then(function (r) {
      if (!r.ok) throw new Error("conversations: HTTP " + r.status);
      return r.json();
    }).then(function (body) {
      return { items: Array.isArray(body.items) ? body.items : [], has_more: body.has_more === true };
    });
  };

  /**
   * A page of a conversation's current branch, the path from its root to its leaf, oldest first
   * ({messages, has_more, leaf_id}; each message with parent_id and siblings); with `leaf`, the
   * path to that message. null when the conversation does not exist.
   */
  P.history = function (conversationId, before, limit, leaf) {
    var q = "?limit=" + (limit || 50) + (before ? "&before=" + encodeURIComponent(before) : "") +
            (leaf ? "&leaf=" + encodeURIComponent(leaf) : "");
    return this.api("GET", "/api/conversations/" + encodeURIComponent(conversationId) + "/messages" + q)
      .then(function (r) {
        if (r.status === 404) return null;
        if (!r.ok) throw new Error("history: HTTP " + r.status);
        return r.json();
      });
  };

  /** Delete a conversation: resolves true when it is gone (204, or 404: already gone). */
  P.deleteConversation = function (id) {
    var self = this;
    return this.api("DELETE", "/api/conversations/" + encodeURIComponent(id)).then(function (r) {
      if (r.status !== 204 && r.status !== 404) throw new Error("HTTP " + r.status);
      self.forgetConversation(id, true);
      return true;
    });
  };

  /** One conversation, as the list has them ({id, title, …, model, system_prompt, title_source}). */
  P.conversation = function (id) {
    return this.apiJSON("GET", "/api/conversations/" + encodeURIComponent(id));
  };

  /** Rename a conversation: the conversation as stored (the title set by a person stays). */
  P.rename = function (id, title) { return this.updateConversation(id, { title: title }); };

  /**
   * Change a conversation's title, system_prompt or model (null: the server's default); only the
   * fields given change. Resolves the conversation; a refused value (422) rejects with its .detail.
   */
  P.updateConversation = function (id, changes) {
    return this.apiJSON("PATCH", "/api/conversations/" + encodeURIComponent(id), changes || {});
  };

  /** The models a conversation may use: {items: [{id}], default}. */
  P.models = function () {
    return this.apiJSON("GET", "/api/models").then(function (body) {
      return { items: Array.isArray(body.items) ? body.items : [], default: body["default"] || null };
    });
  };

  /**
   * Your messages holding every word of `q`, newest first: {items: [{conversation_id, message_id,
   * role, snippet, created_at}], has_more}. A snippet is HTML-escaped text with <mark> around the
   * words found: split it (ChatClient.snippetParts), never insert it as markup.
   */
  P.search = function (q, before, limit) {
    var path = "/api/search?q=" + encodeURIComponent(q) + "&limit=" + (limit || 20) +
               (before ? "&before=" + encodeURIComponent(before) : "");
    return this.apiJSON("GET", path).then(function (body) {
      return { items: Array.isArray(body.items) ? body.items : [], has_more: body.has_more === true };
    });
  };

  /** A conversation as a file ("json": the whole tree; "markdown": the current branch): {blob, filename}. */
  P.exportConversation = function (id, format) {
    var path = "/api/conversations/" + encodeURIComponent(id) + "/export" +
               (format === "markdown" ? "?format=markdown" : "");
    return this.api("GET", path).then(function (r) {
      if (!r.ok) return refusal(r);
      var name = filenameOf(r.headers.get("Content-Disposition")) ||
                 "conversation." + (format === "markdown" ? "md" : "json");
      return r.blob().then(function (blob) { return { blob: blob, filename: name }; });
    });
  };

  /** Rate a reply: 1 (good), -1 (bad) or 0 (no rating); resolves {message_id, conversation_id, feedback}. */
  P.feedback = function (messageId, rating, comment) {
    var body = { rating: rating };
    if (comment !== undefined && comment !== null) body.comment = comment;
    return this.apiJSON("PUT", "/api/messages/" + encodeURIComponent(messageId) + "/feedback", body);
  };

  // -- frames from the server ---------------------------------------------------------------------
  P.onFrame = function (data) {
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
      case "message_added": this.emit("message_added", frame); break;
      case "selected": this.onSelected(frame); break;
      case "conversation_deleted": this.emit("conversation_deleted", frame.conversation_id); break;
      case "conversation_updated":
        if (frame.conversation && typeof frame.conversation.id === "string") {
          this.emit("conversation_updated", frame.conversation);
        }
        break;
      default: break; // frames added to the protocol later are ignored, as the contract asks
    }
  };

  P.onReady = function (frame) {
    clearTimeout(this.readyTimer);
    if (frame.protocol !== PROTOCOL) {
      this.setState("incompatible");
      this.closed = true; // retrying cannot help
      this.ws.close(1000);
      return;
    }
    var self = this;
    var ws = this.ws;
    this.ready = true;
    this.attempt = 0;
    this.refusals = 0;
    if (frame.token && !this.tokenFromHost) {
      this.token = frame.token;
      this.store.set("token", frame.token);
    }
    var previous = this.userId;
    this.userId = frame.user_id;
    this.store.set("user", frame.user_id);
    // Messages typed as someone else (the host page signed another user in) are not sent as this one.
    this.outbox = this.outbox.filter(function (e) { return !e.user || e.user === frame.user_id; });
    this.adoptOrphans();
    this.resumeInFlight(Array.isArray(frame.replies_in_flight) ? frame.replies_in_flight : []);
    this.saveOutbox();
    if (previous && previous !== frame.user_id) this.emit("identity", frame.user_id, previous);
    this.setState("connected");
    // Resend the outbox only once the listeners (the view's history reload) are done.
    this.syncing = true;
    var go = function () {
      if (self.ws !== ws) return;
      self.syncing = false;
      self.pump();
    };
    Promise.all(this.emit("ready", frame)).then(go, go);
  };

  /**
   * Follow again every reply in flight (ours, or another tab's: we may show it), from the last
   * seq we have. Our acknowledged messages whose reply is in flight wait for it instead of being
   * resent; replies we showed that are no longer in flight are stored: the history has them.
   */
  P.resumeInFlight = function (inFlight) {
    var self = this;
    var live = {};
    inFlight.forEach(function (r) {
      if (!r || typeof r.message_id !== "string") return;
      live[r.message_id] = true;
      var reply = self.replies[r.message_id];
      if (!reply) {
        reply = self.replies[r.message_id] = { id: r.message_id, conversation_id: r.conversation_id,
                                               reply_to: r.reply_to, seq: 0, text: "", own: false };
      }
      self.outbox.forEach(function (e) {
        if (e.acked && e.message_id && e.message_id === r.reply_to) {
          e.following = r.message_id;
          reply.own = true;
          reply.clientId = e.client_id;
        }
      });
      self.askResume(r.message_id, reply.seq);
    });
    Object.keys(this.replies).forEach(function (id) {
      if (!live[id]) {
        var lost = self.replies[id];
        delete self.replies[id];
        self.emit("lost", lost);
      }
    });
    this.outbox.forEach(function (e) { if (e.following && !live[e.following]) e.following = null; });
  };

  P.askResume = function (id, after) {
    this.pendingResumes.push(id);
    this.readQueue.push("resume");
    this.sendFrame({ type: "resume", message_id: id, after: after });
  };

  /** A resume we asked for is answered (its start, its done, or an error). */
  P.resumeAnswered = function (id) {
    if (this.pendingResumes.indexOf(id) < 0) return;
    this.pendingResumes = this.pendingResumes.filter(function (x) { return x !== id; });
    var at = this.readQueue.indexOf("resume");
    if (at >= 0) this.readQueue.splice(at, 1);
  };

  /** The current branch of a conversation changed: our select's answer, or another socket's. */
  P.onSelected = function (frame) {
    var own = false;
    for (var i = 0; i < this.pendingSelects.length; i++) {
      if (this.pendingSelects[i].conversation_id === frame.conversation_id) {
        this.pendingSelects.splice(i, 1);
        var at = this.readQueue.indexOf("select");
        if (at >= 0) this.readQueue.splice(at, 1);
        own = true;
        break;
      }
    }
    this.emit("selected", frame, own);
  };

  P.onAck = function (frame) {
    var entry = this.findEntry(frame.client_id);
    if (entry) {
      if (ChatClient.isNewKey(entry.conv)) this.retarget(entry.conv, frame.conversation_id);
      entry.acked = true;
      entry.message_id = frame.message_id;
      entry.conv = frame.conversation_id;
      this.saveOutbox();
    }
    this.turn = { clientId: frame.client_id, conv: frame.conversation_id, userMessageId: frame.message_id,
                  replyId: null };
    if (entry) this.emit("ack", entry, frame);
    if (entry && entry.stopRequested) {
      entry.stopRequested = false;
      this.sendFrame({ type: "cancel" });
    }
    this.emit("outbox");
  };

  /** A new conversation got its id: every message typed into it follows. */
  P.retarget = function (key, conversationId) {
    this.outbox.forEach(function (e) { if (e.conv === key) e.conv = conversationId; });
    this.saveOutbox();
    this.emit("retarget", key, conversationId);
  };

  P.onStart = function (frame) {
    var id = frame.message_id;
    if (typeof id !== "string" || this.finished.indexOf(id) >= 0) return;
    this.resumeAnswered(id);
    var turn = this.turn;
    var reply = this.replies[id];
    if (!reply) {
      reply = this.replies[id] = { id: id, conversation_id: frame.conversation_id, reply_to: frame.reply_to,
                                   seq: 0, text: "", own: false };
    }
    reply.conversation_id = frame.conversation_id || reply.conversation_id;
    reply.reply_to = frame.reply_to || reply.reply_to;
    if (turn && !turn.replyId && (frame.reply_to === turn.userMessageId || !frame.reply_to)) {
      turn.replyId = id;
      reply.own = true;
      reply.clientId = turn.clientId;
    }
    this.emit("reply", this.snapshot(reply));
    this.emit("outbox");
  };

  P.onDelta = function (frame) {
    var reply = this.replies[frame.message_id];
    if (!reply || typeof frame.content !== "string") return;
    if (typeof frame.seq === "number") {
      if (frame.seq <= reply.seq) return; // we have it already (a replay after a resume)
      if (frame.seq > reply.seq + 1) {
        // A gap: never paper over it. Ask for everything after what we have; what arrives
        // meanwhile is dropped here and comes again in order.
        if (this.pendingResumes.indexOf(reply.id) < 0) this.askResume(reply.id, reply.seq);
        return;
      }
      reply.seq = frame.seq;
    } else {
      reply.seq += 1; // a server without seq: every delta is new
    }
    reply.text += frame.content;
    this.emit("reply", this.snapshot(reply), frame.content);
  };

  P.onDone = function (frame) {
    var id = frame.message_id;
    var reply = this.replies[id];
    var turn = this.turn;
    this.resumeAnswered(id);
    delete this.replies[id];
    // Without reply_to on `done`, a done for a reply we do not follow ends our turn in progress
    // (a duplicate answered with its stored reply).
    var ownTurn = turn && (turn.replyId === id || (!turn.replyId && !reply));
    var result = { id: id, conversation_id: frame.conversation_id, status: frame.status,
                   content: String(frame.content || ""), error: frame.error,
                   reply_to: frame.reply_to || (reply ? reply.reply_to : (ownTurn ? turn.userMessageId : undefined)) };
    if (ownTurn) {
      this.turn = null;
      this.inflight = null;
    }
    // The message this reply answers leaves the outbox, unless the reply was interrupted (its
    // server shut down or died): then it is sent again with its client_id, which generates a new
    // reply, at most twice.
    var changed = false;
    this.outbox = this.outbox.filter(function (e) {
      var answered = (ownTurn && e.client_id === turn.clientId) || e.following === id ||
                     (result.reply_to && e.message_id === result.reply_to);
      if (!answered) return true;
      changed = true;
      e.following = null;
      if (frame.status !== "interrupted" || (e.regenerated || 0) >= 2) return false;
      e.regenerated = (e.regenerated || 0) + 1;
      return true;
    });
    if (changed) this.saveOutbox();
    if (this.finished.indexOf(id) < 0) {
      this.finished.push(id);
      if (this.finished.length > 200) this.finished.shift();
      this.emit("done", result);
    }
    this.emit("outbox");
    this.pump();
  };

  P.onError = function (frame) {
    var detail = String(frame.detail || frame.code || "error");
    if (frame.client_id !== undefined && frame.client_id !== null) {
      this.messageFailed(frame.client_id, frame.code, detail);
    } else if (this.readQueue[0] === "select" && (frame.code === "not_found" || frame.code === "invalid")) {
      // The oldest unanswered read is a select: the message to switch to is gone (or not ours).
      this.readQueue.shift();
      this.emit("select_failed", this.pendingSelects.shift(), detail);
    } else if (this.pendingResumes.length && (frame.code === "not_found" || frame.code === "invalid")) {
      // A resume that found nothing: that reply is gone. Our message waiting for it is sent again
      // with its client_id: the server answers with its stored reply, or generates one.
      var id = this.pendingResumes[0];
      this.resumeAnswered(id);
      var lost = this.replies[id];
      delete this.replies[id];
      this.outbox.forEach(function (e) { if (e.following === id) e.following = null; });
      if (lost) this.emit("lost", lost);
      this.saveOutbox();
      this.pump();
    } else if (this.turn && frame.code === "not_found") {
      // The conversation of the turn in progress was deleted (here or elsewhere): the turn is over.
      var conv = this.turn.conv;
      this.removeEntry(this.turn.clientId);
      this.turn = null;
      this.inflight = null;
      this.emit("conversation_deleted", conv);
      this.pump();
    } else {
      this.emit("notice", detail);
    }
  };

  P.messageFailed = function (clientId, code, detail) {
    var entry = this.findEntry(clientId);
    var wasTurn = this.turn && this.turn.clientId === clientId;
    if (clientId === this.inflight || wasTurn) {
      this.inflight = null;
      this.turn = null;
    }
    if (entry) {
      if (!wasTurn && (code === "invalid" || code === "too_large" || code === "not_found")) {
        // Nothing was stored and sending it unchanged cannot work.
        entry.failed = { code: code, detail: detail };
        this.emit("failed", entry);
      } else {
        // busy, rate_limited, unavailable, internal: not stored (or not answered); the same
        // client_id is safe to send again after a pause.
        entry.tries = (entry.tries || 0) + 1;
        entry.retryAt = Date.now() + backoff(entry.tries, 1000, 30000);
        entry.note = detail;
      }
      this.saveOutbox();
    }
    this.emit("outbox");
    this.pump();
  };

  /** Send the oldest unconfirmed message, if the socket is free. Strict order: none overtakes. */
  P.pump = function () {
    clearTimeout(this.pumpTimer);
    if (!this.ready || this.syncing || this.inflight || this.turn) return;
    var entry = this.outbox.find(function (e) { return !e.failed; });
    if (!entry) return;
    if (entry.following) return; // its reply is streaming (resumed): its `done` ends it
    var wait = (entry.retryAt || 0) - Date.now();
    if (wait > 0) {
      var self = this;
      this.pumpTimer = setTimeout(function () { self.pump(); }, wait);
      return;
    }
    this.inflight = entry.client_id;
    if (entry.kind === "regenerate") {
      this.sendFrame({ type: "regenerate", reply_to: entry.reply_to, client_id: entry.client_id });
    } else {
      var frame = { type: "message", content: entry.content, client_id: entry.client_id,
                    conversation_id: ChatClient.isNewKey(entry.conv) ? null : entry.conv };
      if (entry.parent_id !== undefined) frame.parent_id = entry.parent_id; // an edit: a sibling
      this.sendFrame(frame);
    }
    this.emit("outbox");
  };

  /** The replies streaming now in a conversation (for a view). */
  P.streaming = function (conversationId) {
    var self = this;
    return Object.keys(this.replies).map(function (id) { return self.snapshot(self.replies[id]); })
      .filter(function (r) { return r.conversation_id === conversationId; });
  };

  P.snapshot = function (r) {
    return { id: r.id, conversation_id: r.conversation_id, reply_to: r.reply_to, seq: r.seq, text: r.text,
             status: "streaming", own: !!r.own };
  };

  // -- helpers ------------------------------------------------------------------------------------
  /** A refused request as an Error: .status, and .detail, the server's reason as one readable line. */
  function refusal(r) {
    return r.json().then(function (body) { return detailText(body && body.detail); }, function () { return ""; })
      .then(function (detail) {
        var e = new Error(detail || "HTTP " + r.status);
        e.status = r.status;
        e.detail = detail;
        throw e;
      });
  }

  /** FastAPI's detail: a sentence, or a list of {loc, msg} (a 422 names each bad field). */
  function detailText(detail) {
    if (typeof detail === "string") return detail;
    if (!Array.isArray(detail)) return "";
    return detail.map(function (d) {
      if (!d || typeof d.msg !== "string") return String(d);
      var field = Array.isArray(d.loc) ? d.loc[d.loc.length - 1] : null;
      return typeof field === "string" && d.msg.indexOf(field) < 0 ? field + ": " + d.msg : d.msg;
    }).join("; ");
  }

  /** The file name a Content-Disposition header suggests (filename*=UTF-8'' first), or null. */
  function filenameOf(header) {
    var m = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(header || "");
    if (m) {
      try { return decodeURIComponent(m[1].trim()); } catch (e) { /* fall back to the plain one */ }
    }
    m = /filename\s*=\s*"((?:[^"\\]|\\.)*)"|filename\s*=\s*([^;]+)/i.exec(header || "");
    return m ? (m[1] !== undefined ? m[1].replace(/\\(.)/g, "$1") : m[2].trim()) : null;
  }

  /**
   * A search snippet (HTML-escaped text, <mark>…</mark> around the words found) as parts to draw
   * as text: [{text, mark}]. The entities are undone here, once, so that the text reads as written.
   */
  function snippetParts(snippet) {
    var parts = [];
    var mark = false;
    String(snippet || "").split(/(<mark>|<\/mark>)/).forEach(function (piece) {
      if (piece === "<mark>") mark = true;
      else if (piece === "</mark>") mark = false;
      else if (piece) parts.push({ text: unescapeHtml(piece), mark: mark });
    });
    return parts;
  }

  var ENTITIES = { "&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": "\"", "&#x27;": "'", "&#39;": "'" };
  function unescapeHtml(s) {
    return s.replace(/&(?:amp|lt|gt|quot|#x27|#39);/g, function (e) { return ENTITIES[e]; });
  }
  ChatClient.snippetParts = snippetParts;

  function assign(target) {
    for (var i = 1; i < arguments.length; i++) {
      for (var k in arguments[i]) if (Object.prototype.hasOwnProperty.call(arguments[i], k)) target[k] = arguments[i][k];
    }
    return target;
  }

  function uuid() {
    var c = root.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    var b = new Uint8Array(16);
    if (c && c.getRandomValues) c.getRandomValues(b);
    else for (var i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  /** Exponential backoff with jitter: half fixed, half random, so clients don't retry in step. */
  function backoff(attempt, base, max) {
    var cap = Math.min(max, base * Math.pow(2, attempt));
    return Math.round(cap / 2 + Math.random() * cap / 2);
  }

  function safeStorage(name) {
    try { return root[name] || null; } catch (e) { return null; } // disabled storage throws on access
  }

  /** Key/value storage under a prefix that never throws (private mode, full quota); memory without one. */
  function Store(backend, prefix) {
    this.backend = backend;
    this.memory = {};
    this.prefix = prefix;
  }
  Store.prototype.get = function (key) {
    try {
      if (this.backend) return this.backend.getItem(this.prefix + key);
    } catch (e) { /* fall through to memory */ }
    return Object.prototype.hasOwnProperty.call(this.memory, key) ? this.memory[key] : null;
  };
  Store.prototype.set = function (key, value) {
    if (value === null || value === undefined) delete this.memory[key];
    else this.memory[key] = String(value);
    try {
      if (!this.backend) return;
      if (value === null || value === undefined) this.backend.removeItem(this.prefix + key);
      else this.backend.setItem(this.prefix + key, value);
    } catch (e) { /* the session still works, it just won't survive a reload */ }
  };
  Store.prototype.getJSON = function (key, fallback) {
    try { return JSON.parse(this.get(key)) || fallback; } catch (e) { return fallback; }
  };
  Store.prototype.setJSON = function (key, value) { this.set(key, JSON.stringify(value)); };
  /** Our keys (without the prefix). */
  Store.prototype.keys = function () {
    var out = [];
    try {
      if (this.backend) {
        for (var i = 0; i < this.backend.length; i++) {
          var k = this.backend.key(i);
          if (k && k.indexOf(this.prefix) === 0) out.push(k.slice(this.prefix.length));
        }
        return out;
      }
    } catch (e) { /* memory only */ }
    return Object.keys(this.memory);
  };
  ChatClient.Store = Store;

  if (typeof module === "object" && module.exports) module.exports = ChatClient;
  else root.ChatClient = root.ChatClient || ChatClient;
})(typeof globalThis !== "undefined" ? globalThis : this);
