/* Parley client glue for the HTMX websocket extension (no inline script: CSP-friendly).
 *
 * - Reconnects carry ?after=<last sequence rendered>, so the server replays what we missed.
 * - Every send carries a client_id (idempotency key); unconfirmed sends are retried after a
 *   reconnect and the server stores them once.
 * - A message already on the page (same id, or an older sequence) is never shown twice.
 * - 4xxx close codes are final: we say why instead of retrying.
 */
(function () {
  "use strict";

  var state = { lastSeq: 0, pending: {}, typingSentAt: 0, readTimer: null, readSent: 0 };

  function chatRoot() { return document.getElementById("chat"); }

  function uuid4() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  function setStatus(text, kind) {
    var el = document.getElementById("conn-status");
    if (!el) { return; }
    el.textContent = text || "";
    el.dataset.kind = kind || "";
  }

  /* Mine/theirs: one rule for this user, so every recipient gets the same fragment. */
  function installPerUserStyles() {
    var uid = document.body.dataset.userId;
    if (!uid || !("adoptedStyleSheets" in document)) { return; }
    var sheet = new CSSStyleSheet();
    var sel = '[data-sender-id="' + uid + '"]';
    sheet.replaceSync(
      ".msg" + sel + "{margin-left:auto;background:var(--mine-bg);border-color:var(--mine-border)}" +
      ".msg" + sel + " .author::after{content:' (you)';font-weight:normal}" +
      '.typing[data-user-id="' + uid + '"]{display:none}');
    document.adoptedStyleSheets = document.adoptedStyleSheets.concat([sheet]);
  }

  function scrollToBottom(force) {
    var box = document.getElementById("messages");
    if (!box) { return; }
    var near = box.scrollHeight - box.scrollTop - box.clientHeight < 120;
    if (force || near) { box.scrollTop = box.scrollHeight; }
  }

  /* Drop what the page already shows; remember the newest sequence; settle pending sends. */
  function filterFragment(text) {
    var tpl = document.createElement("template");
    tpl.innerHTML = text;
    var changed = false;
    tpl.content.querySelectorAll("article.msg[data-seq]").forEach(function (m) {
      var seq = parseInt(m.dataset.seq, 10);
      if (seq <= state.lastSeq || document.getElementById(m.id)) {
        m.remove(); changed = true; return;
      }
      state.lastSeq = seq;
      var cid = m.dataset.clientId;
      if (cid && state.pending[cid]) {
        delete state.pending[cid];
        var p = document.getElementById("pending-" + cid);
        if (p) { p.remove(); }
      }
    });
    tpl.content.querySelectorAll(".chat-error[data-client-id]").forEach(function (e) {
      var cid = e.dataset.clientId;
      delete state.pending[cid];
      var p = document.getElementById("pending-" + cid);
      if (p) { p.classList.add("failed"); p.title = e.textContent; }
    });
    /* A conversation-list row moves to the top: drop the old copy first. */
    tpl.content.querySelectorAll("li.conv-row[id]").forEach(function (row) {
      var old = document.getElementById(row.id);
      if (old) { old.remove(); }
      var empty = document.querySelector("#conversation-list > li.empty");
      if (empty) { empty.remove(); }
    });
    if (!changed) { return text; }
    var out = [];
    Array.prototype.forEach.call(tpl.content.children, function (c) {
      if (c.getAttribute("hx-swap-oob") && c.getAttribute("hx-swap-oob").indexOf("#messages") >= 0 &&
          c.children.length === 0) { return; }
      out.push(c.outerHTML);
    });
    return out.join("");
  }

  function onReady() {
    installPerUserStyles();
    var root = chatRoot();
    if (root) { state.lastSeq = parseInt(root.dataset.lastSeq || "0", 10); }
    scrollToBottom(true);

    htmx.defineExtension("parley", {
      transformResponse: function (text, xhr) {
        return xhr ? text : filterFragment(text);   // only websocket frames
      }
    });

    var originalCreate = htmx.createWebSocket;
    htmx.createWebSocket = function (url) {
      if (chatRoot() && url.indexOf("/ws/chat/") >= 0) {
        url = url.split("?")[0] + "?after=" + state.lastSeq;
      }
      return originalCreate ? originalCreate(url) : new WebSocket(url, []);
    };

    document.body.addEventListener("htmx:wsConfigSend", function (evt) {
      var params = evt.detail.parameters;
      if (!("chat_message" in params)) { return; }
      var text = String(params.chat_message || "");
      if (!text.trim()) { evt.preventDefault(); return; }
      var cid = uuid4();
      params.client_id = cid;
      var payload = { chat_message: text, client_id: cid };
      state.pending[cid] = payload;
      var box = document.getElementById("messages");
      if (box) {
        var p = document.createElement("article");
        p.id = "pending-" + cid;
        p.className = "msg pending";
        p.dataset.senderId = document.body.dataset.userId || "";
        var body = document.createElement("p");
        body.className = "body";
        body.textContent = text;
        p.appendChild(body);
        box.appendChild(p);
        scrollToBottom(true);
      }
      var err = document.getElementById("chat-error");
      if (err) { err.textContent = ""; }
    });

    document.body.addEventListener("htmx:wsAfterSend", function (evt) {
      var form = evt.target.closest ? evt.target.closest("form") : null;
      if (form) { form.reset(); }
    });

    document.body.addEventListener("htmx:wsConnecting", function () {
      if (document.body.dataset.socket !== "refused") { document.body.dataset.socket = "connecting"; }
    });

    document.body.addEventListener("htmx:wsOpen", function (evt) {
      document.body.dataset.socket = "open";
      setStatus("", "");
      var sock = evt.detail.socketWrapper;
      /* Sends that never got their confirmation are retried; the server stores them once. */
      Object.keys(state.pending).forEach(function (cid) {
        var queued = sock.queue.some(function (q) { return q.message.indexOf(cid) >= 0; });
        if (!queued) { sock.send(JSON.stringify(state.pending[cid])); }
      });
    });

    document.body.addEventListener("htmx:wsClose", function (evt) {
      var code = evt.detail.event.code;
      document.body.dataset.socket = code >= 4000 ? "refused" : "closed";
      if (code === 4401) {
        setStatus("Your session has ended. Please log in again.", "fatal");
      } else if (code === 4403) {
        setStatus("You are not a participant of this conversation.", "fatal");
      } else if (code === 4429) {
        setStatus("Disconnected for sending too many messages. Reload to continue.", "fatal");
      } else if ([1006, 1011, 1012, 1013].indexOf(code) >= 0) {
        setStatus("Reconnecting…", "warn");
      } else {
        setStatus("Disconnected. Reload the page to reconnect.", "fatal");
      }
    });

    document.body.addEventListener("htmx:wsAfterMessage", function (evt) {
      scrollToBottom(false);
      document.querySelectorAll(".typing.active").forEach(function (el) {
        clearTimeout(el._clear);
        el._clear = setTimeout(function () { el.classList.remove("active"); el.textContent = ""; }, 4000);
      });
      scheduleRead(evt.detail.socketWrapper);
    });

    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible" && state.lastSock) { scheduleRead(state.lastSock); }
    });

    var input = document.getElementById("chat_message");
    if (input) {
      input.addEventListener("keydown", function (e) {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          var form = input.form;
          if (form.requestSubmit) { form.requestSubmit(); } else { htmx.trigger(form, "submit"); }
        }
      });
      input.addEventListener("input", function () {
        var now = Date.now();
        if (now - state.typingSentAt < 3000 || !state.lastSock) { return; }
        state.typingSentAt = now;
        state.lastSock.send(JSON.stringify({ type: "typing" }));
      });
    }

    document.body.addEventListener("htmx:wsOpen", function (evt) { state.lastSock = evt.detail.socketWrapper; });
  }

  /* Opening the page marks it read on the server; new messages are marked as they arrive. */
  function scheduleRead(sock) {
    if (!chatRoot() || !sock) { return; }
    state.lastSock = sock;
    if (document.visibilityState !== "visible" || state.lastSeq <= state.readSent) { return; }
    clearTimeout(state.readTimer);
    state.readTimer = setTimeout(function () {
      if (state.lastSeq > state.readSent) {
        state.readSent = state.lastSeq;
        sock.send(JSON.stringify({ type: "read", seq: state.lastSeq }));
      }
    }, 500);
  }

  /* Deferred scripts run after parsing and before DOMContentLoaded, which is when htmx opens
     the socket: set up now so the first connection already goes through createWebSocket. */
  onReady();
})();
