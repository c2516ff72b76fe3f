/*
 * chat-widget: the chat in a page, for the chat.v1 protocol. One tag embeds it; the server
 * defaults to the one the script comes from:
 *
 *   <script src="https://chat.example.com/static/widget.js" data-target="#chat"></script>
 *   <script src="https://chat.example.com/static/widget.js" data-server="https://chat.example.com"></script>
 *
 * With data-target it fills that element; without, it adds a floating "Chat" button. With
 * data-mount="manual" it only defines ChatWidget.mount(element, {server, token}) for the page to
 * call. Other data-* attributes: data-token (a token issued by the host site; otherwise the widget
 * keeps the one the server mints in localStorage), data-title. A page opened as
 * `…#token=<token>` takes that token (and removes it from the address bar).
 *
 * Two files, no build step: this one is the view (DOM, Markdown, styles); chat-client.js beside
 * it is the DOM-free client (socket, reconnects, outbox, resume, other tabs, HTTP API). This file
 * loads it from the URL of its own <script src> (…/static/chat-client.js) unless the page
 * already defined window.ChatClient, so the embed stays one tag.
 *
 * The view keeps to one rule: text from messages only ever reaches the page through
 * textContent / text nodes.
 */
(function () {
  "use strict";

  if (window.ChatWidget) return; // the script was included twice: keep the first

  var DEFAULTS = {
    pageSize: 30, // history messages per page
    convPageSize: 30, // conversations per page of the side list
    maxChars: 32000, // the server's CHAT_MAX_MESSAGE_CHARS, in code points
    confirmDelete: true,
    title: "Chat",
  };
  var instances = 0;
  var script = document.currentScript;
  var clientLoaded = loadClient(script);

  /** chat-client.js from beside this script (same query string: a cache-busting ?v= applies to both). */
  function loadClient(me) {
    if (window.ChatClient) return Promise.resolve(window.ChatClient);
    return new Promise(function (resolve, reject) {
      var src = me && me.src ? new URL("chat-client.js", me.src) : new URL("/static/chat-client.js", location.href);
      if (me && me.src) src.search = new URL(me.src).search;
      var tag = document.createElement("script");
      tag.src = src.href;
      if (me && me.crossOrigin) tag.crossOrigin = me.crossOrigin;
      tag.onload = function () { window.ChatClient ? resolve(window.ChatClient) : reject(new Error("no ChatClient")); };
      tag.onerror = function () { reject(new Error("could not load " + src.href)); };
      (document.head || document.documentElement).appendChild(tag);
    });
  }

  // -- small helpers -------------------------------------------------------------------------------

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

  /** A button that copies what `text()` gives, and says "Copied" for a moment. */
  function copyButton(label, text) {
    var btn = h("button", { type: "button", class: "cw-act cw-copy", "aria-label": label, "data-action": "copy" },
                "Copy");
    btn.addEventListener("click", function () {
      var say = function (what) {
        btn.textContent = what;
        clearTimeout(btn.__copied);
        btn.__copied = setTimeout(function () { btn.textContent = "Copy"; }, 1500);
      };
      copyText(text()).then(function () { say("Copied"); }, function () { say("Copy failed"); });
    });
    return btn;
  }

  /** The clipboard API where there is one (a secure page), else the old way through a selection. */
  function copyText(text) {
    var clip = navigator.clipboard;
    if (clip && clip.writeText) {
      return clip.writeText(text).catch(function () { return copyBySelection(text); });
    }
    return copyBySelection(text);
  }

  function copyBySelection(text) {
    return new Promise(function (resolve, reject) {
      var active = document.activeElement;
      while (active && active.shadowRoot && active.shadowRoot.activeElement) active = active.shadowRoot.activeElement;
      var area = h("textarea", { readonly: true, "aria-hidden": "true",
                                 style: "position:fixed;top:0;left:-9999px;opacity:0" });
      area.value = text;
      document.body.appendChild(area);
      area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      area.remove();
      if (active && active.focus) active.focus(); // selecting took the focus: give it back to the button
      if (ok) resolve();
      else reject(new Error("copy refused"));
    });
  }

  // -- Markdown subset: paragraphs, lists, headings, fenced code, `code`, **bold**, *em*, links ------
  // Built from DOM nodes only: whatever a message holds ends up as text, never as markup.

  var FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w.+#-]*)[^`]*$/;
  var LIST_ITEM = /^\s{0,6}([-*+]|\d{1,9}[.)])\s+(.*)$/;
  var HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  // **bold** may hold *em* that ends where the bold does (`**so *nice***`): its content is a run of
  // non-stars and whole *…* spans, so the em's closing star is not left over.
  var INLINE = /`([^`\n]+)`|\*\*(?=\S)((?:[^*]|\*[^*\s][^*]*\*)+?)\*\*(?!\*)|(^|[^\w*])\*(?=[^\s*])([^*\n]*?[^\s*])\*(?![\w*])/g;
  // [text](url), its url without spaces (balanced parentheses allowed); and bare http(s) URLs.
  var LINK = /\[([^\[\]\n]+)\]\(((?:[^\s()]|\([^\s()]*\))+)\)|(^|[^\w\/])(https?:\/\/[^\s<>"'`]+)/;
  var INLINE_ALL = new RegExp(INLINE.source + "|" + LINK.source, "g");
  // Only these schemes become links: javascript:, data:, vbscript: and the rest stay text.
  var LINK_SCHEMES = ["http:", "https:", "mailto:"];

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
    // The button comes first: the <pre> stays the block's last element, where the caret goes.
    frag.appendChild(h("div", { class: "cw-md-block" },
                       copyButton("Copy code", function () { return code.textContent; }),
                       h("pre", { class: "cw-md-pre", tabindex: "0" }, code)));
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

  /** Inline spans of one line; `noLinks` inside a link's text (a link never holds a link). */
  function inline(text, noLinks) {
    var out = [];
    var last = 0;
    var m;
    var re = new RegExp(INLINE_ALL.source, "g"); // its own lastIndex: inline() recurses for **bold**
    while ((m = re.exec(text)) !== null) {
      var at = m.index;
      if (m[1] !== undefined) {
        out.push(text.slice(last, at), h("code", { class: "cw-md-code" }, m[1]));
      } else if (m[2] !== undefined) {
        out.push(text.slice(last, at), h("strong", null, inline(m[2], noLinks)));
      } else if (m[4] !== undefined) {
        out.push(text.slice(last, at) + m[3], h("em", null, inline(m[4], noLinks)));
      } else if (m[5] !== undefined) {
        var href = noLinks ? null : safeHref(m[6]);
        out.push(text.slice(last, at), href ? link(href, inline(m[5], true)) : m[0]);
      } else {
        var bare = trimUrl(m[8]);
        re.lastIndex = at + m[7].length + bare.length; // what was trimmed off is text again
        href = noLinks ? null : safeHref(bare);
        out.push(text.slice(last, at) + m[7], href ? link(href, bare) : bare);
      }
      last = re.lastIndex;
    }
    out.push(text.slice(last));
    return out.filter(function (x) { return x !== ""; });
  }

  /**
   * The href a link may have, or null: the URL as the browser's own parser reads it (so tabs,
   * case and entities cannot disguise a scheme), absolute, with an allowed scheme.
   */
  function safeHref(raw) {
    var url;
    try { url = new URL(raw); } catch (e) { return null; } // relative, or not a URL: text
    return LINK_SCHEMES.indexOf(url.protocol) >= 0 ? url.href : null;
  }

  /** A bare URL ends before trailing punctuation, and before a ")" it did not open. */
  function trimUrl(url) {
    for (;;) {
      var end = url.charAt(url.length - 1);
      if (/[.,;:!?*_~]/.test(end)) url = url.slice(0, -1);
      else if (end === ")" && url.split("(").length < url.split(")").length) url = url.slice(0, -1);
      else return url;
    }
  }

  function link(href, content) {
    var a = h("a", { class: "cw-md-link", rel: "noopener noreferrer", target: "_blank" }, content);
    a.href = href; // set as a property on an element made here, never spliced into markup
    return a;
  }


  // -- the view -------------------------------------------------------------------------------------

  var STATE_LABELS = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    offline: "Offline",
    unauthorized: "Not signed in",
    incompatible: "Incompatible server",
  };

  // Shown under a reply only when it did not simply complete.
  var REPLY_STATUS = {
    streaming: "Replying…",
    paused: "Waiting for the connection…",
    cancelled: "Cancelled",
    error: "Error",
    interrupted: "Interrupted",
  };

  function Widget(host, options) {
    var self = this;
    this.opts = Object.assign({}, DEFAULTS, options || {});
    this.id = "cw" + (++instances);
    this.state = "connecting";
    this.convs = [];
    this.convsHasMore = false;
    this.view = { key: null, messages: [], hasMore: false, loadingOlder: false, gen: 0 };
    this.buildDom(host);
    this.render();
    clientLoaded.then(function (ChatClient) { if (!self.destroyed) self.attach(ChatClient); }, function (e) {
      self.state = "incompatible";
      self.renderConn();
      self.showNotice("The chat could not start: " + e.message + ".");
    });
  }

  /** The client is loaded: restore what this browser kept, wire its events, connect. */
  Widget.prototype.attach = function (ChatClient) {
    var self = this;
    this.Client = ChatClient;
    var client = this.client = new ChatClient({ server: this.opts.server, token: this.opts.token });
    this.store = client.store; // the same keys: chat-widget:<server>:…
    this.current = this.store.get("conversation") || ChatClient.newKey();
    if (ChatClient.isNewKey(this.current) && !client.entries().some(this.inConversation(this.current))) {
      this.current = ChatClient.newKey();
    }
    this.view = { key: this.current, messages: [], hasMore: false, loadingOlder: false, gen: 0 };

    client.on("state", function (state) { self.setState(state); });
    client.on("ready", function () { return Promise.all([self.refreshConversations(), self.reloadView()]); });
    client.on("identity", function () { self.switchTo(ChatClient.newKey()); }); // not our conversation
    client.on("outbox", function () { self.renderSoon(); });
    client.on("retarget", function (key, id) {
      if (self.current !== key) return;
      self.current = id;
      self.view.key = id;
      self.store.set("conversation", id);
    });
    client.on("ack", function (entry, frame) {
      // A regenerate's ack names the user message answered again: its new reply takes the old
      // one's place when it starts (threadItems).
      if (self.view.key === frame.conversation_id && !frame.regenerate && !self.hasMessage(frame.message_id)) {
        var parent = frame.parent_id !== undefined ? frame.parent_id : entry.parent_id;
        self.addMessage({ id: frame.message_id, role: "user", content: entry.content, status: "complete",
                          client_id: entry.client_id, parent_id: parent });
      }
      if (!self.convs.some(function (c) { return c.id === frame.conversation_id; })) self.refreshConversationsSoon();
      self.render();
    });
    client.on("reply", function (reply, piece) {
      if (reply.conversation_id !== self.view.key) return;
      if (piece === undefined) { // started, or resumed: screen readers hear only what is new
        self.live.textContent = "";
        self.renderThread();
      } else if (self.onBranch(reply)) { // a reply on a branch not shown streams on unseen
        self.live.appendChild(document.createTextNode(piece));
        self.scheduleStreamRender();
      }
    });
    client.on("done", function (reply) {
      if (self.view.key === reply.conversation_id) {
        self.placeReply({ id: reply.id, role: "assistant", content: reply.content, status: reply.status,
                          error: reply.error, reply_to: reply.reply_to });
        self.live.textContent = "";
      }
      self.refreshConversationsSoon();
      self.render();
    });
    client.on("lost", function (reply) { if (reply.conversation_id === self.view.key) self.reloadSoon(); });
    client.on("message_added", function (frame) {
      var m = frame.message;
      if (m && frame.conversation_id === self.view.key && !self.hasMessage(m.id)) {
        self.addMessage(m);
        self.render();
      }
      self.refreshConversationsSoon();
    });
    // The current branch changed (our flip, or another tab's): the branch is reloaded from the server.
    client.on("selected", function (frame, own) {
      if (frame.conversation_id !== self.view.key) return;
      var flip = own && self.flip && self.flip.conv === frame.conversation_id ? self.flip : null;
      var seek = own && self.seek && self.seek.conv === frame.conversation_id ? self.seek : null;
      if (own) self.flip = self.seek = null;
      self.reloadView({ keepScroll: !!(flip || seek) }).then(function () {
        if (flip) self.afterFlip(flip);
        if (seek) self.showFound(seek.id);
      }, function () {});
    });
    client.on("select_failed", function (request, detail) {
      self.flip = self.seek = null;
      self.showNotice("That version could not be shown: " + detail + ".");
      if (request && request.conversation_id === self.view.key) self.reloadSoon();
    });
    client.on("conversation_deleted", function (id) { self.forgetConversation(id, false); });
    // Renamed, or its settings changed: here, in another tab, or by the server (a title from the model).
    client.on("conversation_updated", function (conv) { self.conversationChanged(conv); });
    client.on("failed", function (entry) {
      if (entry && entry.kind === "regenerate") { // nothing to show in the thread: say so, and let it go
        self.showNotice("The reply could not be regenerated: " + entry.failed.detail + ".");
        client.discard(entry.client_id);
      }
      self.render();
    });
    client.on("notice", function (text) { self.showNotice(text); });

    this.bindGlobal();
    this.render();
    // Show the saved conversation at once, before the socket is up (it reloads again when it is).
    if (client.token && !ChatClient.isNewKey(this.current)) this.reloadView().catch(function () {});
    this.refreshConversations();
    client.connect();
  };

  Widget.prototype.isNewKey = function (key) { return this.Client.isNewKey(key); };

  Widget.prototype.inConversation = function (key) {
    return function (entry) { return entry.conv === key; };
  };

  Widget.prototype.entries = function () { return this.client ? this.client.entries() : []; };

  // -- DOM ----------------------------------------------------------------------------------------

  Widget.prototype.buildDom = function (host) {
    var self = this;
    var id = this.id;
    this.host = host;
    this.root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
    this.root.appendChild(h("style", null, STYLES));

    this.newBtn = h("button", { type: "button", class: "cw-new", on: { click: function () { self.newChat(); } } },
                    h("span", { "aria-hidden": "true" }, "+ "), "New chat");
    // A double click renames: on the list, as the first click may have rebuilt the item (it opens it).
    this.convList = h("ul", { class: "cw-convs", role: "list", on: { dblclick: function (e) {
      var btn = e.target.closest && e.target.closest("[data-conv]");
      var conv = btn && self.findConv(btn.getAttribute("data-conv"));
      if (conv) self.startRename(conv);
    } } });
    this.emptyList = h("p", { class: "cw-empty" }, "No conversations yet.");
    this.side = h("aside", { class: "cw-side", id: id + "-side", "aria-label": "Conversations" },
      h("div", { class: "cw-side-head" },
        h("h2", { class: "cw-side-title" }, "Conversations"),
        h("button", { type: "button", class: "cw-icon cw-close-side", "aria-label": "Close conversations",
                      on: { click: function () { self.toggleDrawer(false); } } }, "×")),
      this.newBtn,
      this.searchBox = h("input", { type: "search", class: "cw-search", placeholder: "Search messages…",
                                    "aria-label": "Search messages", "aria-controls": id + "-found",
                                    autocomplete: "off",
                                    on: { input: function () { self.searchSoon(); },
                                          keydown: function (e) { self.onSearchKey(e); } } }),
      this.found = h("div", { class: "cw-found", id: id + "-found", role: "region", "aria-label": "Search results",
                              hidden: true }),
      this.convNav = h("nav", { "aria-label": "Your conversations",
                                on: { scroll: function () { self.onListScroll(); } } },
                       this.convList, this.emptyList));

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
    this.settingsBtn = h("button", { type: "button", class: "cw-icon cw-settings-btn", "aria-label": "Conversation settings",
                                     "aria-expanded": "false", "aria-controls": id + "-settings",
                                     on: { click: function () { self.toggleSettings(); } } }, "⚙");
    var head = h("header", { class: "cw-head" }, this.menuBtn, this.titleEl, this.conn, this.settingsBtn);
    if (this.opts.onClose) {
      head.appendChild(h("button", { type: "button", class: "cw-icon", "aria-label": "Close chat",
                                     on: { click: this.opts.onClose } }, "×"));
    }

    this.olderBtn = h("button", { type: "button", class: "cw-older", on: { click: function () { self.loadOlder(); } } },
                      "Load earlier messages");
    this.msgList = h("ol", { class: "cw-msgs", "aria-labelledby": id + "-title" });
    this.placeholder = h("p", { class: "cw-hello" }, "Send a message to start the conversation.");
    // Token mode without a token: say so and what to do, instead of retrying for ever.
    this.signin = h("div", { class: "cw-signin", hidden: true },
      h("p", null, h("strong", null, "Not signed in.")),
      h("p", null, "This chat is for signed-in users. Sign in on the site that sent you here, then open the " +
                   "chat again from there."),
      h("p", { class: "cw-signin-how" }, "Site owners: hand the page a token, as /#token=… in its address or " +
                                          "as data-token on the widget's script tag."));
    this.thread = h("div", { class: "cw-thread", tabindex: "0", role: "region", "aria-label": "Messages",
                             on: { scroll: function () { self.onScroll(); } } },
                    this.olderBtn, this.signin, this.placeholder, this.msgList);
    // Screen readers hear the reply as it streams; the visible bubble is re-rendered as Markdown.
    this.live = h("div", { class: "cw-sr cw-live", "aria-live": "polite", "aria-atomic": "false" });
    // "Version 2 of 3" after a flip between versions of a message.
    this.announcer = h("div", { class: "cw-sr cw-announce", "aria-live": "polite", "aria-atomic": "true" });

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

    this.settings = this.buildSettings(id);
    this.main = h("section", { class: "cw-main", "aria-labelledby": id + "-title" }, head, this.settings, this.thread,
                  this.live, this.announcer, this.form);
    this.backdrop = h("div", { class: "cw-backdrop", on: { click: function () { self.toggleDrawer(false); } } });
    this.app = h("div", { class: "cw-app", "data-drawer": "closed",
                          on: { keydown: function (e) { if (e.key === "Escape") self.toggleDrawer(false); } } },
                 this.side, this.backdrop, this.main);
    this.root.appendChild(h("div", { class: "cw-wrap" }, this.app));
  };

  Widget.prototype.bindGlobal = function () {
    var client = this.client;
    // The client has no DOM: the page's events reach it from here.
    this.onOnline = function () { client.reconnectNow(); };
    this.onOffline = function () { client.offline(); };
    // Leaving the page gives up this tab's claim on its outbox: the next tab to start adopts what
    // is still unsent (a reload of this tab keeps its id and takes it back).
    this.onPageHide = function () { client.leaveTab(); };
    this.onPageShow = function (e) { if (e.persisted) client.returnToTab(); };
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    window.addEventListener("pagehide", this.onPageHide);
    window.addEventListener("pageshow", this.onPageShow);
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

  // -- connection state -----------------------------------------------------------------------------

  Widget.prototype.setState = function (state) {
    this.state = state;
    clearInterval(this.countdown);
    var self = this;
    if (state === "reconnecting") this.countdown = setInterval(function () { self.renderConn(); }, 1000);
    this.render();
  };

  Widget.prototype.retryNow = function () {
    if (!this.client) return;
    if (this.state === "unauthorized") this.client.refusals = 0;
    this.client.reconnectNow();
  };

  // -- what the person does ---------------------------------------------------------------------------

  Widget.prototype.submit = function () {
    var content = this.input.value;
    if (!content.trim() || !this.client) return;
    if (codePoints(content) > this.opts.maxChars) {
      this.showNotice("This message is too long (" + codePoints(content) + " characters; the limit is " +
                      this.opts.maxChars + ").");
      return;
    }
    this.store.set("conversation", this.current);
    this.input.value = "";
    this.autosize();
    this.input.focus(); // after a click on Send too: the next message is typed right away
    this.showNotice("");
    this.client.send(content, this.current);
    this.render();
    this.scrollToBottom();
  };

  /** Stop: our reply in progress, else a reply streaming here from another tab (by its id). */
  Widget.prototype.stop = function () {
    var client = this.client;
    if (client.busy()) {
      client.cancel();
    } else {
      var streaming = client.streaming(this.view.key)[0];
      if (streaming) client.cancel(streaming.id);
    }
    this.input.focus();
  };

  Widget.prototype.busyHere = function () {
    var client = this.client;
    return !!client && (client.busy() || (client.ready && client.streaming(this.view.key).length > 0));
  };

  Widget.prototype.retry = function (clientId) {
    var entry = this.client.findEntry(clientId);
    if (!entry) return;
    var conv = null;
    if (entry.failed && entry.failed.code === "not_found") {
      // Its conversation is gone: send it as the start of a new one, and go there.
      conv = this.Client.newKey();
      this.switchTo(conv);
    }
    this.client.retry(clientId, conv);
    this.render();
  };

  /** A message the server refused as too large can only fail again: back into the box to shorten. */
  Widget.prototype.edit = function (clientId) {
    var entry = this.client.findEntry(clientId);
    if (!entry) return;
    this.client.discard(clientId);
    this.input.value = entry.content + (this.input.value ? "\n" + this.input.value : "");
    this.autosize();
    this.input.focus();
    this.render();
  };

  // -- versions: edit a message, regenerate a reply, flip between siblings ------------------------

  /** Open a stored user message for editing, in place: its text in a box, Save and Cancel. */
  Widget.prototype.startEdit = function (m) {
    this.editing = { id: m.id, draft: m.content };
    this.renderThread();
    var area = this.msgList.querySelector('[data-id="' + cssEscape(m.id) + '"] .cw-edit-input');
    if (area) {
      area.focus();
      area.setSelectionRange(area.value.length, area.value.length);
      this.sizeEditor(area);
    }
  };

  Widget.prototype.cancelEdit = function () {
    var id = this.editing && this.editing.id;
    this.editing = null;
    this.renderThread();
    var btn = id && this.msgList.querySelector('[data-id="' + cssEscape(id) + '"] [data-action=edit]');
    if (btn) btn.focus();
    else this.input.focus();
  };

  /** Send the edited text as a new version: a sibling of the message (same parent), then its reply. */
  Widget.prototype.saveEdit = function (m) {
    var content = this.editing ? this.editing.draft : "";
    if (!content.trim()) return;
    if (codePoints(content) > this.opts.maxChars) {
      this.showNotice("This message is too long (" + codePoints(content) + " characters; the limit is " +
                      this.opts.maxChars + ").");
      return;
    }
    if (content === m.content) { // nothing changed: no new version
      this.cancelEdit();
      return;
    }
    this.editing = null;
    this.showNotice("");
    this.client.edit(content, this.view.key, this.parentOf(m));
    this.render();
    this.input.focus();
    this.scrollToBottom();
  };

  Widget.prototype.sizeEditor = function (area) {
    area.style.height = "auto";
    area.style.height = Math.min(area.scrollHeight + 2, 300) + "px";
  };

  /** A message's parent: as the server gave it, else the message before it on the branch shown. */
  Widget.prototype.parentOf = function (m) {
    if (m.parent_id !== undefined) return m.parent_id;
    var list = this.view.messages;
    for (var i = 0; i < list.length; i++) {
      if (list[i].id === m.id) return i > 0 ? list[i - 1].id : null;
    }
    return null;
  };

  Widget.prototype.regenerate = function (m) {
    if (!m.reply_to) return;
    this.showNotice("");
    this.client.regenerate(this.view.key, m.reply_to);
    this.render();
    this.input.focus(); // the reply it replaces goes away when the new one starts
  };

  /** Whether a new reply to this user message may be asked for now (none waits or streams). */
  Widget.prototype.canRegenerate = function (replyTo) {
    var client = this.client;
    if (client.regenerating(replyTo)) return false;
    return !client.streaming(this.view.key).some(function (r) { return r.reply_to === replyTo; });
  };

  /** The arrows of "‹ 2 / 3 ›": make the branch through that sibling current (the server keeps it). */
  Widget.prototype.flipTo = function (targetId, dir, position, count) {
    var active = this.root.activeElement;
    if (!this.client.select(this.view.key, targetId)) {
      this.showNotice("Other versions can be shown once the chat is connected again.");
      return;
    }
    this.editing = null;
    this.flip = { conv: this.view.key, target: targetId, dir: dir,
                  focus: !!(active && active.getAttribute("data-flip")),
                  text: "Version " + position + " of " + count };
  };

  /** The branch is shown: keep the keyboard on the arrows of the version now shown, and say which. */
  Widget.prototype.afterFlip = function (flip) {
    var li = this.msgList.querySelector('[data-id="' + cssEscape(flip.target) + '"]');
    if (li) {
      var btn = li.querySelector('[data-flip="' + flip.dir + '"]');
      if (!btn || btn.disabled) btn = li.querySelector("[data-flip]:not([disabled])");
      if (flip.focus && btn) btn.focus();
      else if (li.scrollIntoView) li.scrollIntoView({ block: "nearest" });
    }
    var announcer = this.announcer;
    announcer.textContent = "";
    setTimeout(function () { announcer.textContent = flip.text; }, 50); // a change, to be heard again
  };

  Widget.prototype.discard = function (clientId) {
    this.client.discard(clientId);
    this.render();
    this.input.focus();
  };

  Widget.prototype.onKey = function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      this.submit();
    } else if (e.key === "Escape" && this.busyHere()) {
      this.stop();
    }
  };

  Widget.prototype.autosize = function () {
    this.input.style.height = "auto";
    this.input.style.height = Math.min(this.input.scrollHeight, 200) + "px";
  };

  // -- conversations and history ------------------------------------------------------------------

  /**
   * The first page of the side list. Pages loaded further down stay, minus what moved up (a
   * conversation with a new message comes first).
   */
  Widget.prototype.refreshConversations = function () {
    var self = this;
    if (!this.client || !this.client.token) return Promise.resolve();
    return this.client.conversations(null, this.opts.convPageSize).then(function (page) {
      var first = {};
      page.items.forEach(function (c) { first[c.id] = true; });
      // Everything loaded before and not on the new first page is older than all of it.
      var older = self.convsLoadedMore ? self.convs.filter(function (c) { return !first[c.id]; }) : [];
      self.convs = page.items.concat(older);
      if (!self.convsLoadedMore) self.convsHasMore = page.has_more;
      self.renderList();
      self.renderTitle();
      self.fillList();
    }).catch(function () { /* offline: the list stays as it was */ });
  };

  /** The next page of the side list (?before=<the last one>). */
  Widget.prototype.loadMoreConversations = function () {
    var self = this;
    if (!this.convsHasMore || this.convsLoading || !this.convs.length) return;
    this.convsLoading = true;
    var last = this.convs[this.convs.length - 1].id;
    this.client.conversations(last, this.opts.convPageSize).then(function (page) {
      var known = {};
      self.convs.forEach(function (c) { known[c.id] = true; });
      self.convs = self.convs.concat(page.items.filter(function (c) { return !known[c.id]; }));
      self.convsHasMore = page.has_more;
      self.convsLoadedMore = true;
      self.renderList();
    }).catch(function () {
      self.showNotice("Could not load more conversations.");
    }).finally(function () {
      self.convsLoading = false;
      self.fillList();
    });
  };

  Widget.prototype.onListScroll = function () {
    var nav = this.convNav;
    if (nav.scrollHeight - nav.scrollTop - nav.clientHeight < 120) this.loadMoreConversations();
  };

  /** Until the list can scroll, scrolling cannot ask for more: keep loading. */
  Widget.prototype.fillList = function () {
    var nav = this.convNav;
    if (this.convsHasMore && nav.clientHeight > 0 && nav.scrollHeight <= nav.clientHeight + 10) {
      this.loadMoreConversations();
    }
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

  Widget.prototype.reloadSoon = function () {
    var self = this;
    clearTimeout(this.reloadTimer);
    this.reloadTimer = setTimeout(function () { self.reloadView().catch(function () {}); }, 100);
  };

  /** The newest page of the current conversation, replacing the view (after a reconnect too). */
  Widget.prototype.reloadView = function (opts) {
    var self = this;
    var keepScroll = !!(opts && opts.keepScroll);
    var view = this.view;
    var gen = ++view.gen;
    if (this.isNewKey(view.key)) {
      view.messages = [];
      view.hasMore = false;
      this.render();
      return Promise.resolve();
    }
    this.thread.setAttribute("aria-busy", "true");
    return this.client.history(view.key, null, this.opts.pageSize).then(function (page) {
      if (self.view !== view || view.gen !== gen) return;
      if (page === null) {
        self.forgetConversation(view.key);
        return;
      }
      view.messages = page.messages;
      view.hasMore = page.has_more;
      self.keepRecentReplies(view);
      self.render();
      if (!keepScroll) self.scrollToBottom();
      self.fillViewport();
    }).finally(function () { self.thread.removeAttribute("aria-busy"); });
  };

  /** The page before the oldest message shown; a promise (the same one while it loads). */
  Widget.prototype.loadOlder = function () {
    var self = this;
    var view = this.view;
    if (view.loadingOlder) return view.loadingOlder;
    if (!view.hasMore || !view.messages.length) return Promise.resolve();
    this.olderBtn.textContent = "Loading…";
    var gen = view.gen;
    view.loadingOlder = this.client.history(view.key, view.messages[0].id, this.opts.pageSize).then(function (page) {
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
      view.loadingOlder = null;
      self.olderBtn.textContent = "Load earlier messages";
    });
    return view.loadingOlder;
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
    this.store.set("conversation", this.isNewKey(key) && !this.entries().some(this.inConversation(key)) ? null : key);
    this.view = { key: key, messages: [], hasMore: false, loadingOlder: false, gen: 0 };
    this.live.textContent = "";
    this.editing = null;
    this.flip = this.seek = this.highlight = null;
    this.toggleSettings(false, true);
    this.render();
    if (this.client.ready || !this.isNewKey(key)) return this.reloadView().catch(function () {});
    return Promise.resolve();
  };

  Widget.prototype.newChat = function () {
    if (!this.client) return;
    this.switchTo(this.Client.newKey());
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
    if (this.isNewKey(conv.id)) { // typed but never sent: nothing on the server yet
      this.forgetConversation(conv.id, true);
      this.newBtn.focus();
      return;
    }
    this.client.deleteConversation(conv.id).then(function () {
      self.forgetConversation(conv.id, true);
      self.newBtn.focus(); // its button is gone; keep the keyboard user in the list
    }, function (e) {
      self.showNotice(/HTTP/.test(e.message) ? "Could not delete the conversation (" + e.message + ")."
                                             : "Could not delete the conversation: the server cannot be reached.");
    });
  };

  /**
   * The conversation is gone. Deleted here: what was typed into it goes too. Deleted elsewhere:
   * messages typed here and never stored move to a new chat, marked not sent, to retry or discard.
   */
  Widget.prototype.forgetConversation = function (id, deletedHere) {
    this.convs = this.convs.filter(function (c) { return c.id !== id; });
    var moved = this.client.forgetConversation(id, deletedHere);
    if (moved && this.current === id) this.current = moved;
    if (this.current === id) this.switchTo(this.Client.newKey());
    else if (this.view.key !== this.current) this.switchTo(this.current);
    this.render();
  };

  Widget.prototype.hasMessage = function (id) {
    return this.view.messages.some(function (m) { return m.id === id; });
  };

  /**
   * Where a reply to the user message `replyTo` goes on the branch shown: {at, cut} (at: its index;
   * cut: it takes the place of an earlier reply to that message, and of what followed it, as a
   * regenerated reply does), or null when that message is not on the branch shown.
   */
  Widget.prototype.replySlot = function (replyTo) {
    var list = this.view.messages;
    if (!replyTo) return { at: list.length, cut: false }; // a server without reply_to: the end
    for (var i = list.length - 1; i >= 0 && list[i].id !== replyTo; i--) { /* search */ }
    if (i < 0) return null;
    var next = list[i + 1];
    return { at: i + 1, cut: !!next && next.role === "assistant" && next.reply_to === replyTo };
  };

  /** Whether a streaming reply is shown: its user message is on the branch shown. */
  Widget.prototype.onBranch = function (reply) {
    return this.hasMessage(reply.id) || this.replySlot(reply.reply_to) !== null;
  };

  /**
   * A message stored now (ours, or another tab's): after the last one when it follows it; as a new
   * version (an edit) in place of its sibling and what followed it; else the branch is reloaded.
   */
  Widget.prototype.addMessage = function (m) {
    var list = this.view.messages;
    var last = list[list.length - 1];
    if (m.parent_id === undefined || (last ? last.id === m.parent_id : m.parent_id === null)) {
      list.push(Object.assign({ siblings: [m.id] }, m));
      return;
    }
    var at = -1;
    if (m.parent_id === null) at = this.view.hasMore ? -1 : 0;
    else {
      for (var i = 0; i < list.length; i++) if (list[i].id === m.parent_id) at = i + 1;
    }
    if (at < 0 || at >= list.length) {
      this.reloadSoon();
      return;
    }
    var old = list[at];
    var siblings = (old.siblings || [old.id]).slice();
    if (siblings.indexOf(m.id) < 0) siblings.push(m.id);
    list.splice(at);
    list.push(Object.assign({}, m, { siblings: siblings }));
  };

  /** A stored reply: in its place on the branch shown, or not shown when it is on another branch. */
  Widget.prototype.placeReply = function (message) {
    var list = this.view.messages;
    for (var i = 0; i < list.length; i++) {
      if (list[i].id === message.id) { // its text so far was in a history page
        list[i] = Object.assign({}, list[i], message);
        return;
      }
    }
    var slot = this.replySlot(message.reply_to);
    if (!slot) return; // stored on its own branch: flipping back shows it
    message.parent_id = message.reply_to || null;
    if (slot.cut) { // a regenerated reply: the old one's sibling, and now the end of the branch
      var old = list[slot.at];
      var siblings = (old.siblings || [old.id]).slice();
      if (siblings.indexOf(message.id) < 0) siblings.push(message.id);
      message.siblings = siblings;
      list.splice(slot.at);
      this.reloadSoon();
    } else if (slot.at < list.length) { // something else follows its message: the server knows where
      this.reloadSoon();
      return;
    } else {
      message.siblings = [message.id];
    }
    list.push(message);
    var view = this.view;
    view.recent = (view.recent || []).concat([{ at: Date.now(), message: message }]).slice(-5);
  };

  /**
   * A history page read just before a reply was stored lacks it: a reply stored moments ago whose
   * message ends the page is kept.
   */
  Widget.prototype.keepRecentReplies = function (view) {
    var list = view.messages;
    var now = Date.now();
    (view.recent || []).forEach(function (r) {
      var m = r.message;
      var last = list[list.length - 1];
      if (now - r.at < 10000 && last && last.id === m.reply_to && m.id !== last.id) list.push(m);
    });
  };


  // -- titles: renaming a conversation in the side list -----------------------------------------

  Widget.prototype.findConv = function (id) {
    return this.convs.find(function (c) { return c.id === id; }) || null;
  };

  /** A conversation changed (renamed, new settings; here, in another tab, or by the server). */
  Widget.prototype.conversationChanged = function (conv) {
    var known = false;
    this.convs = this.convs.map(function (c) {
      if (c.id !== conv.id) return c;
      known = true;
      return Object.assign({}, c, conv);
    });
    if (!known) this.refreshConversationsSoon(); // not loaded yet (a new one, or further down the list)
    if (!known && conv.title !== undefined && conv.id === this.current) this.convs.unshift(conv);
    this.renderList();
    this.renderTitle();
    if (this.settingsFor === conv.id && !this.settings.hidden && !this.settingsDirty) this.fillSettings();
  };

  Widget.prototype.startRename = function (conv) {
    if (conv.pending || this.isNewKey(conv.id)) return; // not on the server yet: nothing to rename
    this.renaming = { id: conv.id, draft: conv.title || "", fresh: true };
    this.renderList();
  };

  Widget.prototype.cancelRename = function () {
    var id = this.renaming && this.renaming.id;
    this.renaming = null;
    this.renderList();
    this.focusConv(id);
  };

  /** Enter (or leaving the box): the new title is shown at once, and stored with PATCH. */
  Widget.prototype.saveRename = function () {
    var self = this;
    var r = this.renaming;
    if (!r) return;
    this.renaming = null; // first: the box's blur when it goes must not save again
    var conv = this.findConv(r.id);
    var title = r.draft.trim();
    if (!conv || !title || title === conv.title) {
      this.renderList();
      this.focusConv(r.id);
      return;
    }
    var before = conv.title;
    this.conversationChanged({ id: r.id, title: title });
    this.focusConv(r.id);
    this.client.rename(r.id, title).then(function (updated) { self.conversationChanged(updated); }, function (e) {
      self.conversationChanged({ id: r.id, title: before });
      self.showNotice("The conversation was not renamed: " + (e.detail || e.message) + ".");
    });
  };

  /** The title being edited in the list: Enter saves, Escape cancels. */
  Widget.prototype.titleEditor = function () {
    var self = this;
    var input = h("input", { type: "text", class: "cw-rename-input", "aria-label": "Conversation title",
                             on: { input: function () { if (self.renaming) self.renaming.draft = input.value; },
                                   blur: function () { self.saveRename(); },
                                   keydown: function (e) {
                                     if (e.key === "Enter" && !e.isComposing) {
                                       e.preventDefault();
                                       self.saveRename();
                                     } else if (e.key === "Escape") {
                                       e.preventDefault();
                                       e.stopPropagation(); // not the drawer's Escape
                                       self.cancelRename();
                                     }
                                   } } });
    input.value = this.renaming.draft;
    return input;
  };

  Widget.prototype.focusConv = function (id) {
    var btn = id && this.convList.querySelector('[data-conv="' + cssEscape(id) + '"]');
    if (btn) btn.focus();
  };

  // -- search: the person's messages, from the side list ----------------------------------------

  Widget.prototype.searchSoon = function () {
    var self = this;
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(function () { self.runSearch(); }, 300); // not a request per key
  };

  Widget.prototype.onSearchKey = function (e) {
    if (e.key === "Enter") {
      e.preventDefault();
      this.runSearch();
    } else if (e.key === "Escape" && this.searchBox.value) {
      e.preventDefault();
      e.stopPropagation(); // clears the search; a second Escape closes the drawer
      this.searchBox.value = "";
      this.runSearch();
    }
  };

  /** Titles holding the words (?q=) and messages holding them (/api/search); an empty box: the list again. */
  Widget.prototype.runSearch = function () {
    var self = this;
    clearTimeout(this.searchTimer);
    var q = this.searchBox.value.trim();
    var gen = this.searchGen = (this.searchGen || 0) + 1; // an older answer arriving late is dropped
    if (!q || !this.client || !this.client.token) {
      this.found.hidden = true;
      this.found.textContent = "";
      this.convNav.hidden = false;
      return Promise.resolve();
    }
    this.found.setAttribute("aria-busy", "true");
    var titles = this.client.conversations(null, 10, q).catch(function () { return { items: [] }; });
    return Promise.all([titles, this.client.search(q, null, 20)]).then(function (got) {
      if (gen === self.searchGen) self.renderFound(q, got[0].items, got[1], null);
    }, function (e) {
      if (gen === self.searchGen) self.renderFound(q, [], null, e);
    }).finally(function () { if (gen === self.searchGen) self.found.removeAttribute("aria-busy"); });
  };

  Widget.prototype.renderFound = function (q, convs, page, error) {
    var self = this;
    var found = this.found;
    found.textContent = "";
    found.hidden = false;
    this.convNav.hidden = true;
    if (convs.length) {
      found.appendChild(h("h3", { class: "cw-found-head" }, "Conversations"));
      found.appendChild(h("ul", { class: "cw-found-list", role: "list" }, convs.map(function (c) {
        return h("li", null, h("button", { type: "button", class: "cw-found-conv", "data-found-conv": c.id,
                                           on: { click: function () { self.open(c.id); } } },
                               c.title || "Untitled"));
      })));
    }
    found.appendChild(h("h3", { class: "cw-found-head" }, "Messages"));
    if (error) {
      found.appendChild(h("p", { class: "cw-empty" }, error.status === 400 || error.status === 422
        ? "Search for a word (letters or digits)." : "The search failed: " + (error.detail || error.message) + "."));
      return;
    }
    var list = h("ul", { class: "cw-found-list", role: "list" });
    found.appendChild(list);
    this.appendHits(list, q, page);
  };

  /** One page of hits, and "More results" while there are more. */
  Widget.prototype.appendHits = function (list, q, page) {
    var self = this;
    if (!page.items.length && !list.children.length) {
      list.replaceWith(h("p", { class: "cw-empty" }, "No messages found."));
      return;
    }
    page.items.forEach(function (hit) {
      var conv = self.findConv(hit.conversation_id);
      list.appendChild(h("li", null, h("button", {
        type: "button", class: "cw-hit", "data-message-id": hit.message_id, "data-role": hit.role,
        on: { click: function () { self.openFound(hit); } } },
        h("span", { class: "cw-hit-title" }, conv ? conv.title || "Untitled" : "A conversation"),
        h("span", { class: "cw-hit-snippet" }, snippetNodes(self.Client, hit.snippet)),
        h("span", { class: "cw-conv-time" }, shortTime(hit.created_at),
          h("span", { class: "cw-hit-role" }, hit.role === "user" ? " · you" : " · reply")))));
    });
    if (page.has_more && page.items.length) {
      var gen = this.searchGen;
      var last = page.items[page.items.length - 1].message_id;
      var more = h("button", { type: "button", class: "cw-link cw-more", on: { click: function () {
        more.disabled = true;
        self.client.search(q, last, 20).then(function (next) {
          if (gen !== self.searchGen) return;
          more.parentNode.remove();
          self.appendHits(list, q, next);
        }, function () { more.disabled = false; self.showNotice("Could not load more results."); });
      } } }, "More results");
      list.appendChild(h("li", null, more));
    }
  };

  /**
   * A hit: its conversation, with the branch the message is on made current (select), scrolled to
   * the message and marked.
   */
  Widget.prototype.openFound = function (hit) {
    var self = this;
    var conv = hit.conversation_id;
    var id = hit.message_id;
    var loaded = conv === this.current && this.view.key === conv ? Promise.resolve() : this.switchTo(conv);
    this.toggleDrawer(false);
    loaded.then(function () {
      if (self.view.key !== conv) return false; // the person went elsewhere meanwhile
      return self.loadUntil(id, 20);
    }).then(function (shown) {
      if (self.view.key !== conv) return;
      if (shown) return self.showFound(id);
      // On another branch: make that branch current; `selected` reloads it and shows the message.
      self.seek = { conv: conv, id: id };
      if (!self.client.select(conv, id)) {
        self.seek = null;
        self.showNotice("That message is on another version: it can be shown once the chat is connected again.");
      }
    });
  };

  /** Earlier pages of the branch shown until `id` is in it (at most `pages` more): whether it is. */
  Widget.prototype.loadUntil = function (id, pages) {
    var self = this;
    var view = this.view;
    if (this.hasMessage(id) || !view.hasMore || pages <= 0) return Promise.resolve(this.hasMessage(id));
    return this.loadOlder().then(function () { return self.view === view && self.loadUntil(id, pages - 1); });
  };

  Widget.prototype.showFound = function (id) {
    var self = this;
    return this.loadUntil(id, 20).then(function (shown) {
      if (!shown) {
        self.showNotice("That message could not be found in the conversation.");
        return;
      }
      self.highlight = id;
      self.renderThread();
      var li = self.msgList.querySelector('[data-id="' + cssEscape(id) + '"]');
      if (!li) return;
      li.scrollIntoView({ block: "center" });
      li.focus({ preventScroll: true }); // a screen reader reads the message found
    });
  };

  /** A search snippet as text nodes and <mark> elements made here: never parsed as markup. */
  function snippetNodes(Client, snippet) {
    return Client.snippetParts(snippet).map(function (part) {
      return part.mark ? h("mark", null, part.text) : part.text;
    });
  }

  // -- conversation settings: title, system prompt, model; export ---------------------------------

  Widget.prototype.buildSettings = function (id) {
    var self = this;
    var field = function (label, control) {
      return h("div", { class: "cw-field" }, h("label", { for: control.id }, label), control);
    };
    this.setTitle = h("input", { type: "text", id: id + "-set-title", class: "cw-input-box", autocomplete: "off",
                                 on: { input: function () { self.settingsDirty = true; } } });
    this.setPrompt = h("textarea", { id: id + "-set-prompt", class: "cw-input-box", rows: "4",
                                     placeholder: "The server's default",
                                     on: { input: function () { self.settingsDirty = true; } } });
    this.setModel = h("select", { id: id + "-set-model", class: "cw-input-box",
                                  on: { change: function () { self.settingsDirty = true; } } });
    this.setError = h("p", { class: "cw-settings-error", role: "alert" });
    this.setStatus = h("span", { class: "cw-settings-status", role: "status" });
    return h("form", { class: "cw-settings", id: id + "-settings", hidden: true, "aria-label": "Conversation settings",
                       on: { submit: function (e) { e.preventDefault(); self.saveSettings(); },
                             keydown: function (e) {
                               if (e.key !== "Escape") return;
                               e.preventDefault();
                               e.stopPropagation();
                               self.toggleSettings(false);
                             } } },
      field("Title", this.setTitle),
      field("System prompt", this.setPrompt),
      field("Model", this.setModel),
      this.setError,
      h("div", { class: "cw-settings-buttons" },
        h("button", { type: "button", class: "cw-act", on: { click: function () { self.exportAs("json"); } } },
          "Export JSON"),
        h("button", { type: "button", class: "cw-act", on: { click: function () { self.exportAs("markdown"); } } },
          "Export Markdown"),
        this.setStatus,
        h("button", { type: "button", class: "cw-edit-cancel", on: { click: function () { self.toggleSettings(false); } } },
          "Close"),
        h("button", { type: "submit", class: "cw-edit-save" }, "Save settings")));
  };

  /** The panel under the header, for the conversation shown (a new chat has none yet). */
  Widget.prototype.toggleSettings = function (open, quiet) {
    var isOpen = !this.settings.hidden;
    if (open === undefined) open = !isOpen;
    if (open && (!this.client || this.isNewKey(this.current))) open = false;
    if (open === isOpen) return;
    this.settings.hidden = !open;
    this.settingsBtn.setAttribute("aria-expanded", String(open));
    if (!open) {
      if (!quiet) this.settingsBtn.focus();
      return;
    }
    var self = this;
    var id = this.settingsFor = this.current;
    this.setError.textContent = "";
    this.setStatus.textContent = "";
    this.fillSettings();
    this.loadModels();
    this.setTitle.focus();
    // The list may not have it yet (a conversation just started), or not as it is now.
    this.client.conversation(id).then(function (conv) { self.conversationChanged(conv); }, function () {});
  };

  /** The fields from the conversation as the list has it (kept fresh by conversation_updated). */
  Widget.prototype.fillSettings = function () {
    var conv = this.findConv(this.settingsFor) || { id: this.settingsFor };
    this.settingsBase = { title: conv.title || "", system_prompt: conv.system_prompt || null, model: conv.model || null };
    this.settingsDirty = false;
    this.setTitle.value = this.settingsBase.title;
    this.setPrompt.value = this.settingsBase.system_prompt || "";
    this.fillModels();
  };

  Widget.prototype.loadModels = function () {
    var self = this;
    this.client.models().then(function (models) {
      self.models = models;
      self.fillModels();
    }, function () { /* the picker keeps "default" and the conversation's own model */ });
  };

  /** "Server default" first, then each model; the conversation's model even when no longer offered. */
  Widget.prototype.fillModels = function () {
    var select = this.setModel;
    var chosen = this.settingsDirty ? select.value : (this.settingsBase.model || "");
    var models = this.models || { items: [], default: null };
    var ids = models.items.map(function (m) { return String(m.id); });
    if (chosen && ids.indexOf(chosen) < 0) ids.push(chosen);
    select.textContent = "";
    select.appendChild(h("option", { value: "" }, "Server default" + (models.default ? " (" + models.default + ")" : "")));
    ids.forEach(function (id) { select.appendChild(h("option", { value: id }, id)); });
    select.value = chosen;
  };

  /** Only what changed is sent (a title sent unchanged would count as a person's own). */
  Widget.prototype.saveSettings = function () {
    var self = this;
    var base = this.settingsBase;
    var id = this.settingsFor;
    var changes = {};
    var prompt = this.setPrompt.value.trim() ? this.setPrompt.value : null;
    if (this.setTitle.value !== base.title) changes.title = this.setTitle.value;
    if (prompt !== base.system_prompt) changes.system_prompt = prompt;
    if ((this.setModel.value || null) !== base.model) changes.model = this.setModel.value || null;
    this.setError.textContent = "";
    if (!Object.keys(changes).length) {
      this.setStatus.textContent = "Nothing to save.";
      return;
    }
    this.setStatus.textContent = "Saving…";
    this.client.updateConversation(id, changes).then(function (updated) {
      self.settingsDirty = false;
      self.conversationChanged(updated);
      if (self.settingsFor === id) {
        self.fillSettings();
        self.setStatus.textContent = "Saved.";
      }
    }, function (e) {
      if (self.settingsFor !== id) return;
      self.setStatus.textContent = "";
      self.setError.textContent = "Not saved: " + (e.detail || e.message) + ".";
    });
  };

  /** A download of the conversation: fetched with the token (a plain link could not send it). */
  Widget.prototype.exportAs = function (format) {
    var self = this;
    this.client.exportConversation(this.settingsFor, format).then(function (file) {
      var url = URL.createObjectURL(file.blob);
      var a = h("a", { href: url, download: file.filename, hidden: true });
      self.settings.appendChild(a);
      a.click();
      a.remove();
      setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
    }, function (e) {
      self.setError.textContent = "Could not export: " + (e.detail || e.message) + ".";
    });
  };

  // -- feedback: thumbs up or down on a reply ------------------------------------------------------

  /** Pressing the pressed thumb again takes the rating back (0). Shown at once, stored with PUT. */
  Widget.prototype.rate = function (id, value) {
    var self = this;
    var m = this.view.messages.find(function (x) { return x.id === id; });
    if (!m) return;
    var before = m.feedback || null;
    var rating = before && before.rating === value ? 0 : value;
    this.setFeedback(id, { rating: rating, comment: before ? before.comment : null }, value);
    this.client.feedback(id, rating).then(function (answer) {
      self.setFeedback(id, answer.feedback || null, value);
    }, function (e) {
      self.setFeedback(id, before, value);
      self.showNotice("Your rating was not saved: " + (e.detail || e.message) + ".");
    });
  };

  Widget.prototype.setFeedback = function (id, feedback, pressed) {
    var active = this.root.activeElement;
    var hadFocus = active && active.getAttribute("data-rate") === String(pressed);
    this.view.messages = this.view.messages.map(function (m) {
      return m.id === id ? Object.assign({}, m, { feedback: feedback }) : m;
    });
    this.renderThread();
    var btn = hadFocus && this.msgList.querySelector('[data-id="' + cssEscape(id) + '"] [data-rate="' + pressed + '"]');
    if (btn) btn.focus(); // the button was rebuilt: the keyboard stays on it
  };

  /** Thumbs up and down under a stored reply; aria-pressed is its rating. */
  Widget.prototype.ratingButtons = function (m) {
    var self = this;
    var rating = m.feedback ? m.feedback.rating : 0;
    var thumb = function (value, label) {
      return h("button", { type: "button", class: "cw-act cw-rate", "data-rate": String(value), "aria-label": label,
                           "aria-pressed": String(rating === value),
                           on: { click: function () { self.rate(m.id, value); } } }, THUMB(value < 0));
    };
    return h("span", { class: "cw-rating", role: "group", "aria-label": "Rate this reply" },
             thumb(1, "Good reply"), thumb(-1, "Bad reply"));
  };

  // -- rendering ------------------------------------------------------------------------------------

  Widget.prototype.renderSoon = function () {
    var self = this;
    if (this.renderQueued) return;
    this.renderQueued = true;
    Promise.resolve().then(function () {
      self.renderQueued = false;
      self.render();
    });
  };

  Widget.prototype.render = function () {
    this.renderConn();
    if (!this.client) return;
    this.renderList();
    this.renderTitle();
    this.renderThread();
    var busy = this.busyHere();
    if (!busy && this.root.activeElement === this.stopBtn) this.input.focus(); // don't drop focus to <body>
    this.stopBtn.hidden = !busy;
  };

  Widget.prototype.renderConn = function () {
    var state = this.state;
    var client = this.client;
    this.conn.setAttribute("data-state", state);
    this.app.setAttribute("data-state", state);
    if (this.connLabel.textContent !== STATE_LABELS[state]) this.connLabel.textContent = STATE_LABELS[state];
    var waiting = state === "reconnecting" && client && !client.ws;
    var secs = waiting ? Math.max(0, Math.ceil((client.retryAt - Date.now()) / 1000)) : 0;
    this.connRetry.textContent = waiting && secs > 0 ? "retry in " + secs + " s" : "";
    this.retryBtn.hidden = !(waiting || state === "offline" || state === "unauthorized");
    this.retryBtn.textContent = state === "unauthorized" ? "Try again" : "Retry now";
    this.signin.hidden = state !== "unauthorized";
  };

  Widget.prototype.renderTitle = function () {
    var key = this.current;
    var conv = this.convs.find(function (c) { return c.id === key; });
    var title = conv ? conv.title || "Untitled" : "New chat";
    if (this.titleEl.textContent !== title) this.titleEl.textContent = title;
    this.settingsBtn.disabled = this.isNewKey(key); // settings belong to a conversation the server has
  };

  Widget.prototype.listItems = function () {
    // Chats typed offline and never sent have no id yet; list them first, they are the newest.
    var pending = [];
    var seen = {};
    var outbox = this.entries();
    for (var i = outbox.length - 1; i >= 0; i--) {
      var e = outbox[i];
      if (this.isNewKey(e.conv) && !seen[e.conv]) {
        seen[e.conv] = true;
        pending.push({ id: e.conv, title: e.content.slice(0, 60), pending: true });
      }
    }
    return pending.concat(this.convs);
  };

  Widget.prototype.renderList = function () {
    var self = this;
    var items = this.listItems();
    var renaming = this.renaming ? this.renaming.id : null;
    var sig = JSON.stringify([this.current, renaming, items.map(function (c) { return [c.id, c.title, c.updated_at]; })]);
    if (sig === this.listSig) return;
    this.listSig = sig;
    var focused = this.root.activeElement && this.root.activeElement.getAttribute("data-conv");
    this.convList.textContent = "";
    items.forEach(function (conv) {
      if (conv.id === renaming) {
        self.convList.appendChild(h("li", { class: "cw-conv-item" }, self.titleEditor()));
        return;
      }
      var title = conv.title || "Untitled";
      var openBtn = h("button", { type: "button", class: "cw-conv", "data-conv": conv.id,
                                  "aria-current": conv.id === self.current ? "page" : null,
                                  on: { click: function () { self.open(conv.id); } } },
        h("span", { class: "cw-conv-title" }, title),
        h("span", { class: "cw-conv-time" }, conv.pending ? "not sent yet" : shortTime(conv.updated_at)));
      var renameBtn = conv.pending ? null :
        h("button", { type: "button", class: "cw-icon cw-del cw-rename", "aria-label": "Rename “" + title + "”",
                      title: "Rename", on: { click: function () { self.startRename(conv); } } },
          h("span", { "aria-hidden": "true" }, "✎"));
      var delBtn = h("button", { type: "button", class: "cw-icon cw-del", "aria-label": "Delete “" + title + "”",
                                 title: "Delete", on: { click: function () { self.remove(conv); } } }, TRASH());
      self.convList.appendChild(h("li", { class: "cw-conv-item" }, openBtn, renameBtn, delBtn));
    });
    this.emptyList.hidden = items.length > 0;
    var box = renaming && this.convList.querySelector(".cw-rename-input");
    if (box) {
      box.focus();
      if (this.renaming.fresh) box.select(); // a new rename: typing replaces the title
      else box.setSelectionRange(box.value.length, box.value.length); // rebuilt: go on where it was
      this.renaming.fresh = false;
    } else if (focused) {
      var again = this.convList.querySelector('[data-conv="' + cssEscape(focused) + '"]');
      if (again) again.focus();
    }
  };

  /** The thread as keyed items: history, the replies streaming, then messages not yet confirmed. */
  Widget.prototype.threadItems = function () {
    var self = this;
    var key = this.view.key;
    var client = this.client;
    var paused = client.state !== "connected";
    var messages = this.view.messages;
    var shown = {};
    messages.forEach(function (m) { shown[m.id] = true; });
    var live = {}; // replies streaming whose text so far is in a history page: shown in its place
    var slots = {}; // index → the replies streaming that go before the message at that index
    var end = messages.length; // a regenerated reply streaming hides the reply it replaces, and the rest
    client.streaming(key).forEach(function (r) {
      var item = { key: "m:" + r.id, live: r.id,
                   msg: { id: r.id, role: "assistant", content: r.text, status: paused ? "paused" : "streaming",
                          reply_to: r.reply_to } };
      if (shown[r.id]) {
        live[r.id] = item;
        return;
      }
      var slot = self.replySlot(r.reply_to);
      if (!slot) return; // its message is on another branch: it streams on there, unseen
      (slots[slot.at] = slots[slot.at] || []).push(item);
      if (slot.cut) end = Math.min(end, slot.at);
    });
    var items = [];
    for (var i = 0; i <= end; i++) {
      if (slots[i]) items = items.concat(slots[i]);
      if (i < end) items.push(live[messages[i].id] || { key: "m:" + messages[i].id, msg: messages[i] });
    }
    var confirmed = {};
    messages.forEach(function (m) { if (m.client_id) confirmed[m.client_id] = true; });
    // An acknowledged message waiting for its reply is stored: shown by the branch it is on (or,
    // after a flip away from it, not at all).
    this.entries().forEach(function (e) {
      if (e.conv === key && e.kind !== "regenerate" && !confirmed[e.client_id] && !e.acked) {
        items.push({ key: "c:" + e.client_id, entry: e, state: client.entryState(e) });
      }
    });
    return items;
  };

  Widget.prototype.renderThread = function () {
    var self = this;
    var items = this.threadItems();
    var stick = this.nearBottom();
    var keep = {};
    var prev = null;
    this.streamEls = {};
    items.forEach(function (item) {
      keep[item.key] = true;
      var sig = itemSignature(item, self);
      var el = self.msgList.querySelector('[data-key="' + cssEscape(item.key) + '"]');
      if (!el || el.__sig !== sig) {
        var fresh = self.renderItem(item);
        fresh.__sig = sig;
        if (el) el.replaceWith(fresh);
        el = fresh;
      }
      if (item.live) self.streamEls[item.live] = el;
      var want = prev ? prev.nextSibling : self.msgList.firstChild;
      if (want !== el) self.msgList.insertBefore(el, want);
      prev = el;
    });
    Array.prototype.slice.call(this.msgList.children).forEach(function (el) {
      if (!keep[el.getAttribute("data-key")]) el.remove();
    });
    this.placeholder.hidden = items.length > 0 || this.view.hasMore || this.state === "unauthorized";
    this.olderBtn.hidden = !this.view.hasMore;
    if (stick) this.scrollToBottom();
  };

  Widget.prototype.renderItem = function (item) {
    var self = this;
    var m = item.msg;
    if (item.entry) {
      var e = item.entry;
      var meta = h("div", { class: "cw-meta" }, h("span", null, ENTRY_LABELS[item.state](e)));
      if (e.failed && e.failed.code === "too_large") {
        // Sending it again can only fail again: the text goes back into the box to be shortened.
        meta.appendChild(h("button", { type: "button", class: "cw-link",
                                       on: { click: function () { self.edit(e.client_id); } } }, "Edit"));
      } else if (e.failed) {
        meta.appendChild(h("button", { type: "button", class: "cw-link",
                                       on: { click: function () { self.retry(e.client_id); } } }, "Retry"));
      }
      if (e.failed) {
        meta.appendChild(h("button", { type: "button", class: "cw-link",
                                       on: { click: function () { self.discard(e.client_id); } } }, "Discard"));
      }
      return h("li", { class: "cw-msg cw-user cw-pending", "data-key": item.key, "data-client-id": e.client_id,
                       "data-state": item.state },
               h("span", { class: "cw-sr" }, "You: "), h("div", { class: "cw-bubble cw-plain" }, e.content), meta);
    }
    if (m.role === "user") {
      var editing = this.editing && this.editing.id === m.id;
      return h("li", { class: "cw-msg cw-user" + (this.highlight === m.id ? " cw-found-msg" : ""),
                       "data-key": item.key, "data-id": m.id, "data-client-id": m.client_id || null,
                       "data-found": this.highlight === m.id ? "true" : null,
                       tabindex: this.highlight === m.id ? "-1" : null },
               h("span", { class: "cw-sr" }, "You: "),
               editing ? this.editor(m) : h("div", { class: "cw-bubble cw-plain" }, m.content),
               editing ? null : h("div", { class: "cw-actions" }, this.versions(m, "Message"),
                 h("button", { type: "button", class: "cw-act", "data-action": "edit", "aria-label": "Edit message",
                               on: { click: function () { self.startEdit(m); } } }, "Edit")));
    }
    var status = m.status || "complete";
    var live = status === "streaming" || status === "paused";
    // A reply that failed before its first word has nothing to show but its status line.
    var body = m.content || live ? h("div", { class: "cw-bubble cw-md" }, renderMarkdown(m.content)) : null;
    if (live) withCaret(body);
    var meta2 = null;
    if (status !== "complete") {
      var metaChildren = [h("span", { class: "cw-status-dot", "aria-hidden": "true" }), REPLY_STATUS[status] || status];
      if (status === "error" && m.error) metaChildren.push(": " + m.error);
      meta2 = h("div", { class: "cw-meta cw-status" }, metaChildren);
    }
    var actions = null;
    if (!live) {
      var pending = m.reply_to && this.client.regenerating(m.reply_to);
      actions = h("div", { class: "cw-actions" }, this.versions(m, "Reply"),
        m.content ? copyButton("Copy reply", function () { return m.content; }) : null, // its Markdown, as written
        this.ratingButtons(m),
        m.reply_to ? h("button", { type: "button", class: "cw-act", "data-action": "regenerate",
                                   "aria-label": "Regenerate reply", disabled: !this.canRegenerate(m.reply_to),
                                   on: { click: function () { self.regenerate(m); } } },
                       pending ? "Regenerating…" : "Regenerate") : null);
    }
    return h("li", { class: "cw-msg cw-assistant" + (this.highlight === m.id ? " cw-found-msg" : ""),
                     "data-key": item.key, "data-id": m.id,
                     "data-status": status === "paused" ? "streaming" : status,
                     "data-found": this.highlight === m.id ? "true" : null,
                     tabindex: this.highlight === m.id ? "-1" : null,
                     "aria-busy": live ? "true" : null },
             h("span", { class: "cw-sr" }, "Assistant: "), body, meta2, actions);
  };

  /** "‹ 2 / 3 ›" under a message with siblings: the arrows show the previous or next version. */
  Widget.prototype.versions = function (m, what) {
    var self = this;
    var siblings = m.siblings;
    var k = siblings ? siblings.indexOf(m.id) : -1;
    if (!siblings || siblings.length < 2 || k < 0) return null;
    var n = siblings.length;
    var flip = function (dir) {
      var to = dir === "prev" ? k - 1 : k + 1;
      return function () { self.flipTo(siblings[to], dir, to + 1, n); };
    };
    return h("span", { class: "cw-versions", role: "group", "aria-label": what + ", version " + (k + 1) + " of " + n },
      h("button", { type: "button", class: "cw-flip", "data-flip": "prev", disabled: k === 0,
                    "aria-label": k > 0 ? "Previous version, " + k + " of " + n : "Previous version",
                    on: { click: flip("prev") } }, h("span", { "aria-hidden": "true" }, "‹")),
      h("span", { class: "cw-version-count" }, (k + 1) + " / " + n),
      h("button", { type: "button", class: "cw-flip", "data-flip": "next", disabled: k === n - 1,
                    "aria-label": k < n - 1 ? "Next version, " + (k + 2) + " of " + n : "Next version",
                    on: { click: flip("next") } }, h("span", { "aria-hidden": "true" }, "›")));
  };

  /** A user message being edited: its text in a box; Enter or Save sends it, Escape or Cancel not. */
  Widget.prototype.editor = function (m) {
    var self = this;
    var area = h("textarea", { class: "cw-edit-input", rows: "2", "aria-label": "Edit your message",
                               on: { input: function () { if (self.editing) self.editing.draft = area.value;
                                                          self.sizeEditor(area); },
                                     keydown: function (e) {
                                       if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
                                         e.preventDefault();
                                         self.saveEdit(m);
                                       } else if (e.key === "Escape") {
                                         e.preventDefault();
                                         e.stopPropagation();
                                         self.cancelEdit();
                                       }
                                     } } });
    area.value = this.editing ? this.editing.draft : m.content;
    return h("form", { class: "cw-edit", on: { submit: function (e) { e.preventDefault(); self.saveEdit(m); } } },
      area,
      h("div", { class: "cw-edit-buttons" },
        h("button", { type: "button", class: "cw-edit-cancel", on: { click: function () { self.cancelEdit(); } } },
          "Cancel"),
        h("button", { type: "submit", class: "cw-edit-save" }, "Save")));
  };

  /**
   * The streaming caret goes at the end of the last line of text (inside the last paragraph,
   * list item or code block), not on a line of its own below it.
   */
  function withCaret(bubble) {
    var at = bubble;
    while (at.lastElementChild && (/^(P|UL|OL|LI|PRE)$/.test(at.lastElementChild.tagName) ||
                                   at.lastElementChild.className === "cw-md-block")) at = at.lastElementChild;
    if (at.tagName === "PRE" && at.lastElementChild) at = at.lastElementChild;
    at.appendChild(h("span", { class: "cw-caret", "aria-hidden": "true" }));
    return bubble;
  }

  /** Deltas arrive faster than it is worth re-rendering Markdown: at most every 50 ms. */
  Widget.prototype.scheduleStreamRender = function () {
    var self = this;
    if (this.streamTimer) return;
    this.streamTimer = setTimeout(function () {
      self.streamTimer = null;
      var stick = self.nearBottom();
      var stale = false;
      self.client.streaming(self.view.key).forEach(function (r) {
        var el = self.streamEls && self.streamEls[r.id];
        var bubble = el && el.querySelector(".cw-bubble");
        if (!bubble) {
          if (self.onBranch(r)) stale = true; // not rendered yet (a reply on another branch never is)
          return;
        }
        bubble.textContent = "";
        bubble.appendChild(renderMarkdown(r.text));
        withCaret(bubble);
        el.__sig = null; // the next full render rebuilds it
      });
      if (stale) self.renderThread();
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
    clearTimeout(this.listTimer);
    clearTimeout(this.reloadTimer);
    clearTimeout(this.searchTimer);
    clearInterval(this.countdown);
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    window.removeEventListener("pagehide", this.onPageHide);
    window.removeEventListener("pageshow", this.onPageShow);
    if (this.client) this.client.close();
    this.root.textContent = "";
  };

  var ENTRY_LABELS = {
    sending: function () { return "Sending…"; },
    queued: function (e) { return e.note ? "Will retry: " + e.note : "Queued"; },
    waiting: function () { return "Not sent yet — waiting for the connection"; },
    failed: function (e) { return "Not sent: " + e.failed.detail; },
  };

  function itemSignature(item, widget) {
    if (item.entry) {
      var e = item.entry;
      return JSON.stringify([item.state, e.content, e.note || "", e.failed ? e.failed.code : ""]);
    }
    var m = item.msg;
    var sig = [m.role, m.status, m.content, m.error || "", m.siblings || null, widget.highlight === m.id];
    if (m.role === "user") sig.push(!!(widget.editing && widget.editing.id === m.id));
    else sig.push(m.feedback ? m.feedback.rating : 0);
    if (m.role !== "user" && m.reply_to) {
      sig.push(m.reply_to, widget.client.regenerating(m.reply_to), widget.canRegenerate(m.reply_to));
    }
    return JSON.stringify(sig);
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

  /** An icon, not an emoji: not every system has a font for those. */
  function THUMB(down) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    if (down) svg.setAttribute("transform", "rotate(180)");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("d", "M2 21h4V9H2v12zm20-11c0-1.1-.9-2-2-2h-6.3l1-4.6v-.3c0-.4-.2-.8-.5-1.1L13.2 1 6.6 7.6" +
                           "C6.2 8 6 8.5 6 9v10c0 1.1.9 2 2 2h9c.8 0 1.5-.5 1.8-1.2l3-7c.1-.3.2-.5.2-.8v-2z");
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
    ".cw-rename{font-size:16px}",
    ".cw-rename-input{flex:1;min-width:0;margin:2px 0;padding:6px 8px;border:1px solid var(--accent);border-radius:8px;",
    "background:var(--bg);color:inherit;font:inherit;font-size:14px}",
    ".cw-search{width:100%;padding:7px 10px;border:1px solid var(--line);border-radius:10px;background:var(--bg);",
    "color:inherit;font:inherit;font-size:14px}",
    ".cw-search:focus{outline:0;border-color:var(--accent)}",
    ".cw-found{flex:1;min-height:0;overflow-y:auto;margin:0 -4px;padding:0 4px}",
    ".cw-found-head{margin:8px 4px 4px;font-size:12px;font-weight:600;text-transform:uppercase;color:var(--muted)}",
    ".cw-found-list{list-style:none;margin:0;padding:0;display:flex;flex-direction:column;gap:2px}",
    ".cw-hit,.cw-found-conv{display:flex;flex-direction:column;align-items:flex-start;gap:2px;width:100%;",
    "padding:7px 8px;border:0;border-radius:8px;background:none;text-align:left;font-size:14px}",
    ".cw-hit:hover,.cw-found-conv:hover{background:rgba(127,127,127,.1)}",
    ".cw-hit-title{max-width:100%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-weight:600;font-size:13px}",
    ".cw-hit-snippet{color:var(--muted);overflow-wrap:anywhere}",
    ".cw-hit-snippet mark{background:rgba(250,204,21,.45);color:inherit;border-radius:3px}",
    ".cw-more{margin:6px 8px}",
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
    ".cw-settings-btn:disabled{opacity:.35;cursor:default}",
    ".cw-settings{display:flex;flex-direction:column;gap:10px;padding:12px 16px;border-bottom:1px solid var(--line);",
    "background:var(--side)}",
    ".cw-field{display:flex;flex-direction:column;gap:4px;max-width:760px;width:100%;margin:0 auto;font-size:13px;",
    "font-weight:600}",
    ".cw-input-box{padding:7px 10px;border:1px solid var(--line);border-radius:9px;background:var(--bg);",
    "color:inherit;font:inherit;font-size:14px;font-weight:400}",
    "textarea.cw-input-box{resize:vertical;min-height:70px;max-height:240px}",
    ".cw-settings-error{max-width:760px;width:100%;margin:0 auto;font-size:13px;color:var(--bad)}",
    ".cw-settings-error:empty{display:none}",
    ".cw-settings-buttons{display:flex;align-items:center;flex-wrap:wrap;gap:8px;max-width:760px;width:100%;",
    "margin:0 auto}",
    ".cw-settings-status{flex:1;font-size:13px;color:var(--muted)}",
    /* thread */
    ".cw-thread{flex:1;min-height:0;overflow-y:auto;overscroll-behavior:contain;padding:20px 16px 8px}",
    ".cw-thread:focus-visible{outline-offset:-2px}",
    ".cw-older{display:block;margin:0 auto 16px;padding:6px 14px;border:1px solid var(--line);",
    "border-radius:999px;background:var(--bg);font-size:13px;color:var(--muted)}",
    ".cw-signin{margin:12% auto 0;max-width:30em;padding:16px 18px;border:1px solid var(--line);",
    "border-radius:12px;text-align:center}",
    ".cw-signin p{margin:0 0 .5em}.cw-signin p:last-child{margin:0}",
    ".cw-signin-how{font-size:13px;color:var(--muted)}",
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
    /* under a message: Edit / Regenerate and the versions "‹ 2 / 3 ›" */
    ".cw-actions{display:flex;align-items:center;flex-wrap:wrap;gap:2px 6px;margin-top:2px;padding:0 2px;",
    "font-size:12px;color:var(--muted)}",
    ".cw-act,.cw-flip{border:0;border-radius:6px;background:none;color:var(--muted)}",
    ".cw-act{padding:3px 7px;font-size:12px}",
    ".cw-flip{display:inline-flex;align-items:center;justify-content:center;width:24px;height:24px;padding:0;",
    "font-size:17px;line-height:1}",
    ".cw-act:hover:not(:disabled),.cw-flip:hover:not(:disabled){background:rgba(127,127,127,.15);color:var(--text)}",
    ".cw-act:disabled,.cw-flip:disabled{opacity:.4;cursor:default}",
    ".cw-versions{display:inline-flex;align-items:center;gap:1px}",
    ".cw-version-count{min-width:3em;text-align:center;font-variant-numeric:tabular-nums}",
    ".cw-edit{display:flex;flex-direction:column;gap:6px;width:min(85%,640px)}",
    ".cw-edit-input{width:100%;min-height:44px;max-height:300px;padding:9px 12px;border:1px solid var(--accent);",
    "border-radius:14px;background:var(--bg);color:inherit;font:inherit;resize:vertical}",
    ".cw-edit-buttons{display:flex;justify-content:flex-end;gap:8px}",
    ".cw-edit-save,.cw-edit-cancel{height:32px;padding:0 14px;border-radius:9px;font-size:14px;font-weight:600}",
    ".cw-edit-save{border:0;background:var(--accent);color:var(--accent-text)}",
    ".cw-edit-cancel{border:1px solid var(--line);background:var(--bg)}",
    ".cw-edit-cancel:hover{border-color:var(--accent)}",
    ".cw-rating{display:inline-flex;gap:2px}",
    ".cw-rate{display:inline-flex;align-items:center}.cw-rate svg{width:14px;height:14px;fill:none;stroke:currentColor;",
    "stroke-width:1.8}.cw-rate[aria-pressed=true] svg{fill:currentColor}",
    ".cw-rate[aria-pressed=true]{background:rgba(37,99,235,.15);color:var(--accent)}",
    ".cw-found-msg .cw-bubble{box-shadow:0 0 0 3px rgba(250,204,21,.7)}",
    ".cw-found-msg:focus{outline:0}",
    ".cw-caret{display:inline-block;width:7px;height:1em;margin-left:1px;vertical-align:-2px;",
    "background:currentColor;opacity:.5;animation:cw-pulse 1s infinite}",
    /* Markdown */
    ".cw-md>:first-child{margin-top:0}.cw-md>:last-child{margin-bottom:0}",
    ".cw-md p,.cw-md-list,.cw-md-block{margin:0 0 .6em}.cw-md-pre{margin:0}",
    ".cw-md-list{padding-left:1.4em}.cw-md-list li+li{margin-top:.15em}",
    "ul.cw-md-list{list-style:disc}ol.cw-md-list{list-style:decimal}",
    ".cw-md-pre{padding:10px 12px;border-radius:8px;background:var(--code);color:var(--code-text);",
    "overflow-x:auto;white-space:pre;font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}",
    ".cw-md-pre code{font:inherit}",
    ".cw-md-block{position:relative}",
    ".cw-md-block>.cw-copy{position:absolute;top:4px;right:4px;background:var(--code);color:var(--code-text);",
    "opacity:.75}.cw-md-block>.cw-copy:hover,.cw-md-block>.cw-copy:focus-visible{opacity:1}",
    ".cw-md-link{color:var(--accent);text-decoration:underline;overflow-wrap:anywhere}",
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
      token: data.token || tokenFromFragment() || undefined,
      title: data.title || undefined,
    };
    var go = function () {
      if (data.target) mount(data.target, options);
      else mountFloating(options);
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", go);
    else go();
  }

  /**
   * A site that signs its users in can send them to the chat page as /#token=<token>: the token is
   * kept (localStorage, as any token) and removed from the address, so it is neither bookmarked,
   * shared by copy and paste, nor sent in a Referer. A fragment never reaches the server's logs.
   */
  function tokenFromFragment() {
    var m = /^#(?:.*&)?token=([^&]+)/.exec(window.location.hash || "");
    if (!m) return null;
    var rest = window.location.hash.slice(1).split("&").filter(function (p) { return p.indexOf("token=") !== 0; });
    try {
      history.replaceState(history.state, "", window.location.pathname + window.location.search +
                                              (rest.length ? "#" + rest.join("&") : ""));
    } catch (e) { /* a sandboxed frame: the token still works */ }
    try { return decodeURIComponent(m[1]); } catch (e) { return null; }
  }

  window.ChatWidget = { mount: mount, mountFloating: mountFloating, renderMarkdown: renderMarkdown,
                        ready: clientLoaded, version: "chat.v1" };
  if (script) autoMount(script);
})();
