/* Parley client glue for the HTMX websocket extension (no inline script: CSP-friendly).
 *
 * - Reconnects carry ?after=<last sequence rendered>&epoch=<history epoch>, so the server
 *   replays what we missed, or, if the history was restored since, tells us to start over:
 *   the page reloads, keeping unconfirmed sends (sessionStorage) and sending them again.
 * - Every send carries a client_id (idempotency key); unconfirmed sends are retried after a
 *   reconnect and the server stores them once.
 * - A message already on the page (same id, or an older sequence) is never shown twice.
 * - 4xxx close codes are final: we say why instead of retrying.
 * - A page around a search result (?around=) opens at that message (.msg-target); if it
 *   does not reach the newest message it has no socket (data-live="false").
 * - <body data-socket> mirrors the socket (connecting, open, closed, refused) for styling
 *   and for the browser tests.
 * - The message list is a polite live region (role="log"): a screen reader reads out one
 *   new message; many at once (older ones loaded, a catch-up) go in with the region
 *   silenced, and #chat-announce says how many instead.
 * - Mentions: every reader gets the same <span class="mention" data-mention="name">; one
 *   per-user rule highlights the ones naming this user. The list marks a conversation with
 *   an unread mention (data-mention-seq above data-read-seq).
 * - The title and favicon say how many are unread: on the list, the rows' sum; on a
 *   conversation, the messages that came while the tab was hidden.
 * - Browser notifications, off until the person turns them on (#notify-toggle: permission
 *   is asked in that click, never before); the choice is kept per user in localStorage.
 *   While the tab is hidden, a message from someone else notifies, unless its conversation
 *   is muted; a mention of this user notifies even then. Both pages may notify (the
 *   conversation page for its conversation, the list for any it shows): the first tab to
 *   claim a (conversation, sequence) notifies (a Web Lock, then localStorage), so open
 *   tabs notify once, and all of a conversation's share one tag, so the newest replaces
 *   the last (a mention after its plain notification, say).
 */
(function () {
  "use strict";

  var state = {
    lastSeq: 0, epoch: "", pending: {}, typingSentAt: 0, readTimer: null, readSent: 0,
    lastSock: null, open: false, opened: false, stick: true, keepFromBottom: null,
    busyUntil: 0, holding: false, pumpTimer: null, quietTimer: null, arrivedQuietly: 0, olderBefore: null, olderHadFocus: false
  };
  var QUIET_MS = 300;   /* after a bulk insert, before the list speaks again */
  var TYPING_VISIBLE_MS = 4000;
  var RECONNECT_CAP_MS = 8000;

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

  /* Silences the message list while many messages go in at once. */
  function quiet() {
    var box = document.getElementById("messages");
    if (!box) { return; }
    clearTimeout(state.quietTimer);
    box.setAttribute("aria-live", "off");
    box.setAttribute("aria-busy", "true");
  }

  /* Lets it speak again once the insert is done (a moment later: a screen reader sees the
     region as it is when it gets round to the change), saying `announcement` meanwhile. */
  function speakAgain(announcement) {
    var box = document.getElementById("messages");
    if (!box) { return; }
    clearTimeout(state.quietTimer);
    state.quietTimer = setTimeout(function () {
      box.setAttribute("aria-live", "polite");
      box.removeAttribute("aria-busy");
    }, QUIET_MS);
    var el = document.getElementById("chat-announce");
    if (el && announcement) { el.textContent = announcement; }
  }

  function showError(text) {
    var err = document.getElementById("chat-error");
    if (err) { err.textContent = text || ""; }
  }

  /* Mine/theirs, and mentions of me: rules for this user, so every recipient gets the same
     fragment. */
  function installPerUserStyles() {
    var uid = document.body.dataset.userId;
    if (!uid || !("adoptedStyleSheets" in document)) { return; }
    var sheet = new CSSStyleSheet();
    var sel = '[data-sender-id="' + uid + '"]';
    var me = document.body.dataset.username;
    sheet.replaceSync(
      ".msg" + sel + "{margin-left:auto;margin-right:0;background:var(--mine-bg);border-color:var(--mine-border)}" +
      ".msg" + sel + " .author::after{content:' (you)';font-weight:normal}" +
      '.typing[data-user-id="' + uid + '"]{display:none}' +
      (me ? mentionSelector(me) + "{background:#fff1b8;color:var(--fg);border-radius:3px;padding:0 .15em;" +
            "box-shadow:inset 0 -2px 0 #b88a00}" : ""));
    document.adoptedStyleSheets = document.adoptedStyleSheets.concat([sheet]);
  }

  /* The mentions of `name`, as a selector (a username has no quote, but escape anyway). */
  function mentionSelector(name) {
    return '.mention[data-mention="' + String(name).replace(/["\\]/g, "\\$&") + '"]';
  }

  function nearBottom() {
    var box = document.getElementById("messages");
    return !box || box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  }

  function scrollToBottom() {
    var box = document.getElementById("messages");
    if (box) { box.scrollTop = box.scrollHeight; }
  }

  function clearTyping(el) {
    clearTimeout(el._clear);
    el.classList.remove("active");
    el.textContent = "";
  }

  /* Characters as the server counts them (code points, surrounding whitespace ignored). */
  function charCount(text) { return Array.from(text.trim()).length; }

  function pendingKey() {
    var root = chatRoot();
    return root ? "parley-pending-" + root.dataset.conversationId : null;
  }

  /* The history this page shows was replaced (a restore): reload it, and keep what was
     typed but not confirmed to send again from the new page. */
  function startOver() {
    var key = pendingKey();
    var payloads = Object.keys(state.pending).map(function (cid) { return state.pending[cid]; });
    try {
      if (key && payloads.length) { sessionStorage.setItem(key, JSON.stringify(payloads)); }
    } catch (e) { /* storage full or disabled: the reload still shows the true history */ }
    /* A page around a search result starts over on the newest page: the live one. */
    var root = chatRoot();
    if (root && root.dataset.around) { window.location.replace(window.location.pathname); }
    else { window.location.reload(); }
  }

  /* A page around an older message (a search result) opens no socket: it cannot send. */
  function isLive() {
    var root = chatRoot();
    return !!root && root.dataset.live !== "false";
  }

  function restorePending() {
    if (!isLive()) { return; }   /* kept for the next live page of this conversation */
    var key = pendingKey();
    var saved = null;
    try {
      saved = key && sessionStorage.getItem(key);
      if (saved) { sessionStorage.removeItem(key); }
    } catch (e) { return; }
    if (!saved) { return; }
    JSON.parse(saved).forEach(function (payload) {
      if (!payload || !payload.client_id) { return; }
      /* Stored before the reload: the page already shows it. */
      if (document.querySelector('article.msg[data-client-id="' + payload.client_id + '"]')) { return; }
      state.pending[payload.client_id] = payload;
      addPendingBubble(payload.client_id, payload.chat_message);
    });
  }

  /* Drop what the page already shows; remember the newest sequence; settle pending sends. */
  function filterFragment(text) {
    var tpl = document.createElement("template");
    tpl.innerHTML = text;
    /* The server says this page must start over: its history was restored (unless this
       page already shows the new one), it is too far behind to replay, or it showed more
       than exists. */
    var reset = tpl.content.querySelector("#chat-reset[data-epoch]");
    if (reset && chatRoot() &&
        (reset.dataset.reason !== "restored" || reset.dataset.epoch !== state.epoch)) {
      startOver();
      return "";
    }
    var changed = false;
    var arriving = 0;
    var incoming = [];   /* new messages from someone else */
    /* Someone added since this page loaded: a place for their presence and typing, so
       the swap has its target. */
    [["presence-", "participants", "li"], ["typing-", "typing-row", "span"]].forEach(function (slot) {
      var box = document.getElementById(slot[1]);
      tpl.content.querySelectorAll('[hx-swap-oob][id^="' + slot[0] + '"]').forEach(function (el) {
        if (document.getElementById(el.id)) { return; }
        if (!box || (slot[2] === "li" && box.tagName !== "UL")) { el.remove(); changed = true; return; }
        var place = document.createElement(slot[2]);
        place.id = el.id;
        box.appendChild(place);
      });
    });
    /* Stored: a message this page is past (a resend after a reload) is confirmed alone. */
    tpl.content.querySelectorAll("#chat-confirmed[data-confirms]").forEach(function (c) {
      settle(c.dataset.confirms);
    });
    tpl.content.querySelectorAll("article.msg[data-seq]").forEach(function (m) {
      /* An edit or a delete: the message as it now is, under the change's own number. It
         replaces the message where the page shows it (in this frame or above), once. */
      if (m.dataset.updateSeq) {
        var changeSeq = parseInt(m.dataset.updateSeq, 10);
        m.parentNode.removeChild(m); changed = true;
        if (changeSeq <= state.lastSeq) { return; }
        state.lastSeq = changeSeq;
        m.removeAttribute("data-update-seq");
        var shown = tpl.content.getElementById(m.id) || document.getElementById(m.id);
        if (shown) { shown.replaceWith(m); }
        return;
      }
      var seq = parseInt(m.dataset.seq, 10);
      /* A send confirmed, even by a copy the page does not show again: stored once. */
      if (m.dataset.clientId) { settle(m.dataset.clientId); }
      if (seq <= state.lastSeq || document.getElementById(m.id)) {
        m.remove(); changed = true; return;
      }
      state.lastSeq = seq;
      arriving += 1;
      if (m.dataset.senderId && m.dataset.senderId !== document.body.dataset.userId) {
        incoming.push(m);
      }
      /* Their message is here: they are no longer typing it. */
      var typing = document.getElementById("typing-" + m.dataset.senderId);
      if (typing) { clearTyping(typing); }
    });
    tpl.content.querySelectorAll(".chat-error[data-client-id]").forEach(function (e) {
      var cid = e.dataset.clientId;
      var payload = state.pending[cid];
      if (payload && e.dataset.retryAfter) {
        /* The server is past capacity: it did not store this. Keep it, say so, retry. */
        retryLater(cid, parseFloat(e.dataset.retryAfter) || 2);
        return;
      }
      delete state.pending[cid];
      var p = document.getElementById("pending-" + cid);
      if (p) { p.classList.add("failed"); p.title = e.textContent; }
      /* Refused by the server: give the text back so nothing is lost. */
      var input = document.getElementById("chat_message");
      if (payload && input && !input.value) { input.value = payload.chat_message; }
      if (payload && state.holding) { pump(); }
    });
    /* A conversation-list row moves to the top: drop the old copy first. A live row is
       the same for every member: it keeps this page's title and read marker, and the
       unread count is worked out from them. */
    tpl.content.querySelectorAll("li.conv-row[id]").forEach(function (row) {
      var old = document.getElementById(row.id);
      if (row.hasAttribute("data-live") && !old) {
        refreshConversationList();   /* not on this page yet: fetch the list afresh */
        row.parentNode.removeChild(row); changed = true; return;
      }
      if (old && parseInt(row.dataset.lastSeq, 10) < parseInt(old.dataset.lastSeq, 10)) {
        /* older than what the page shows: keep the row, take a newer read marker and
           mention marker */
        if (row.dataset.readSeq) { old.dataset.readSeq = row.dataset.readSeq; }
        if (seqOf(row, "mentionSeq") > seqOf(old, "mentionSeq")) {
          rowArrived(row, old, false);
          old.dataset.mentionSeq = row.dataset.mentionSeq;
        }
        showUnread(old);
        row.parentNode.removeChild(row); changed = true; return;
      }
      var live = row.hasAttribute("data-live");
      if (live) {
        row.querySelector(".conv-title").textContent = old.querySelector(".conv-title").textContent;
        row.dataset.readSeq = old.dataset.readSeq || "0";
        row.dataset.mentionSeq = old.dataset.mentionSeq || "0";
        row.dataset.muted = old.dataset.muted || "false";
        var label = old.querySelector(".muted-label");
        var badges = row.querySelector(".conv-badges");
        if (label && badges) { badges.insertBefore(label.cloneNode(true), badges.firstChild); }
        row.removeAttribute("data-live");
        changed = true;
      }
      rowArrived(row, old, live);
      showUnread(row);
      if (old) { old.remove(); }
      var empty = document.querySelector("#conversation-list > li.empty");
      if (empty) { empty.remove(); }
    });
    if (arriving > 1) { quiet(); state.arrivedQuietly += arriving; }
    messagesArrived(incoming);
    if (!changed) { return text; }
    var out = [];
    Array.prototype.forEach.call(tpl.content.children, function (c) {
      if (c.getAttribute("hx-swap-oob") && c.getAttribute("hx-swap-oob").indexOf("#messages") >= 0 &&
          c.children.length === 0) { return; }
      out.push(c.outerHTML);
    });
    return out.join("");
  }

  /* A refused send is sent again after the server's hint, doubling per refusal (full
     jitter, capped): many pages refused at once do not come back at once. From the first
     refusal until nothing is left waiting, the page holds: its unconfirmed sends go out
     one at a time, oldest first, each once the one before it is stored, so they are
     stored in the order they were typed (state.pending keeps that order). */
  var RETRY_CAP_MS = 30000;
  function retryLater(cid, seconds) {
    var payload = state.pending[cid];
    payload.attempts = (payload.attempts || 0) + 1;
    payload.inFlight = false;
    var base = Math.min(RETRY_CAP_MS, seconds * 1000 * Math.pow(2, payload.attempts - 1));
    state.holding = true;
    state.busyUntil = Math.max(state.busyUntil, Date.now() + seconds * 1000);
    var p = document.getElementById("pending-" + cid);
    if (p) { p.classList.add("retrying"); p.title = "Server busy: retrying"; }
    setStatus("Server busy: retrying your message…", "busy");
    if (cid === Object.keys(state.pending)[0]) {
      pumpLater(base / 2 + Math.random() * base / 2);
    }
  }

  function pumpLater(ms) {
    clearTimeout(state.pumpTimer);
    state.pumpTimer = setTimeout(pump, ms);
  }

  /* While holding: the oldest unconfirmed send goes out once the server's hint has passed,
     unless it is on its way already. */
  function pump() {
    clearTimeout(state.pumpTimer);
    state.pumpTimer = null;
    var head = Object.keys(state.pending)[0];
    if (!head) { state.holding = false; return; }
    var payload = state.pending[head];
    if (payload.inFlight || !state.open || !state.lastSock) { return; }  /* the reconnect pumps */
    var wait = state.busyUntil - Date.now();
    if (wait > 0) { pumpLater(wait + Math.random() * 500); return; }
    payload.inFlight = true;
    state.lastSock.send(JSON.stringify({ chat_message: payload.chat_message, client_id: head }));
  }

  /* A pending send is stored: its bubble goes, and a "busy" notice with it. */
  function settle(cid) {
    if (!state.pending[cid]) { return; }
    delete state.pending[cid];
    var p = document.getElementById("pending-" + cid);
    if (p) { p.remove(); }
    var status = document.getElementById("conn-status");
    if (status && status.dataset.kind === "busy") { setStatus("", ""); showError(""); }
    if (state.holding) { pump(); }
  }

  /* A list row's unread count, from its newest sequence and this user's read marker. */
  function showUnread(row) {
    var unread = Math.max(0, parseInt(row.dataset.lastSeq || "0", 10) -
                             parseInt(row.dataset.readSeq || "0", 10));
    var badge = row.querySelector(".unread");
    if (badge) {
      badge.dataset.unread = String(unread);
      badge.setAttribute("aria-label", unread + " unread");
      badge.textContent = unread ? String(unread) : "";
    }
    row.classList.toggle("has-unread", unread > 0);
    var mentioned = seqOf(row, "mentionSeq") > seqOf(row, "readSeq");
    row.classList.toggle("has-mention", mentioned);
    var mark = row.querySelector(".mention-mark");
    if (mark) { mark.hidden = !mentioned; }
  }

  function seqOf(el, name) { return parseInt((el && el.dataset[name]) || "0", 10) || 0; }

  /* --- unread in the title and favicon; notifications ------------------------------------ */

  var titles = { base: document.title.replace(/^\(\d+\) /, ""), hidden: 0 };

  /* "(3) Conversations · Parley" and the favicon with a dot: on the list, the rows' unread
     counts summed; on a conversation, the messages that came while the tab was hidden. */
  function showUnreadInTitle() {
    var n = 0;
    if (chatRoot()) {
      n = titles.hidden;
    } else {
      document.querySelectorAll("#conversation-list .unread[data-unread]").forEach(function (b) {
        n += parseInt(b.dataset.unread || "0", 10) || 0;
      });
    }
    var title = (n ? "(" + n + ") " : "") + titles.base;
    if (document.title !== title) { document.title = title; }
    var icon = document.getElementById("favicon");
    if (icon && icon.dataset.unreadHref) {
      if (!icon.dataset.readHref) { icon.dataset.readHref = icon.getAttribute("href"); }
      var href = n ? icon.dataset.unreadHref : icon.dataset.readHref;
      if (icon.getAttribute("href") !== href) { icon.setAttribute("href", href); }
    }
  }

  function notificationsKey() { return "parley-notifications-" + (document.body.dataset.userId || ""); }

  function notificationsOn() {
    if (!("Notification" in window) || Notification.permission !== "granted") { return false; }
    try { return localStorage.getItem(notificationsKey()) === "on"; } catch (e) { return false; }
  }

  function setNotifications(on) {
    try {
      if (on) { localStorage.setItem(notificationsKey(), "on"); }
      else { localStorage.removeItem(notificationsKey()); }
    } catch (e) { /* storage disabled: the button says it is still off */ }
    showNotificationsToggle();
  }

  function showNotificationsToggle() {
    var b = document.getElementById("notify-toggle");
    if (!b) { return; }
    var on = notificationsOn();
    var blocked = !on && Notification.permission === "denied";
    b.hidden = false;
    b.setAttribute("aria-pressed", on ? "true" : "false");
    b.textContent = on ? "Turn off notifications" : blocked ? "Notifications blocked" : "Turn on notifications";
    b.title = blocked ? "This browser blocks notifications from this site: allow them in its site settings." : "";
  }

  function watchNotificationsToggle() {
    var b = document.getElementById("notify-toggle");
    if (!b || !document.body.dataset.userId || !("Notification" in window)) { return; }
    showNotificationsToggle();
    b.addEventListener("click", function () {
      if (notificationsOn()) { setNotifications(false); return; }
      if (Notification.permission === "granted") { setNotifications(true); return; }
      /* The only place permission is asked: in the person's own click. */
      Promise.resolve(Notification.requestPermission()).then(function (answer) {
        setNotifications(answer === "granted");
      }, function () { showNotificationsToggle(); });
    });
    /* Turned on or off in another tab. */
    window.addEventListener("storage", function (e) {
      if (e.key === notificationsKey()) { showNotificationsToggle(); }
    });
  }

  /* One notification per (conversation, sequence) across this user's tabs. Two tabs get a
     message at the same moment, before either's localStorage write reaches the other: the
     tab that takes the Web Lock named for it notifies, and holds it a while; a tab that gets
     the message later finds it in localStorage. (Without Web Locks, a page not served over
     https: localStorage alone, and the shared tag collapses what slips through.) */
  function notifyOnce(cid, seq, mention, title, body, href) {
    if (document.visibilityState !== "hidden" || !notificationsOn() || !seq) { return; }
    var kind = mention ? "mention" : "plain";
    var key = "parley-notified-" + kind + "-" + cid;
    function seen(k) {
      try { return parseInt(localStorage.getItem(k) || "0", 10) >= seq; } catch (e) { return false; }
    }
    function show() {
      if (seen(key)) { return false; }
      try {
        localStorage.setItem(key, String(seq));
        /* a mention says all a plain notification would */
        if (mention && !seen("parley-notified-plain-" + cid)) {
          localStorage.setItem("parley-notified-plain-" + cid, String(seq));
        }
      } catch (e) { /* no storage: the lock and the tag still hold */ }
      try {
        var n = new Notification(title, { body: String(body || "").slice(0, 160), tag: "parley-conversation-" + cid });
        n.onclick = function () {
          window.focus();
          if (href) { window.location.href = href; }
          n.close();
        };
      } catch (e) { /* a browser that notifies only from a service worker: nothing shown */ }
      return true;
    }
    if (seen(key)) { return; }
    if (!(navigator.locks && navigator.locks.request)) { show(); return; }
    navigator.locks.request("parley-" + key + "-" + seq, { ifAvailable: true }, function (lock) {
      if (!lock || !show()) { return null; }
      return new Promise(function (done) { setTimeout(done, 10000); });
    });
  }

  /* A conversation page: new messages from others while the tab is hidden are counted in
     the title and notified (a muted conversation only when they mention this user). */
  function messagesArrived(list) {
    var root = chatRoot();
    if (!root || !list.length) { return; }
    if (document.visibilityState === "hidden") { titles.hidden += list.length; showUnreadInTitle(); }
    var me = document.body.dataset.username;
    var mentioning = null;
    list.forEach(function (m) { if (me && m.querySelector(mentionSelector(me))) { mentioning = m; } });
    var m = mentioning || (root.dataset.muted === "true" ? null : list[list.length - 1]);
    if (!m) { return; }
    var author = m.querySelector(".author");
    var body = m.querySelector(".body");
    var who = author ? author.textContent : "";
    notifyOnce(root.dataset.conversationId, parseInt(m.dataset.seq, 10), !!mentioning,
      who + (mentioning ? " mentioned you in " : " in ") + (root.dataset.title || ""),
      body ? body.textContent : "", null);
  }

  /* A list row that arrived (`old`: the row it replaces): a live one is a new message, an
     own one may carry a new mention of this user. */
  function rowArrived(row, old, live) {
    var cid = row.id.slice("conv-".length);
    var seq = seqOf(row, "lastSeq");
    var titleEl = row.querySelector(".conv-title");
    var title = titleEl ? titleEl.textContent : "";
    var preview = row.querySelector(".preview");
    var strong = preview ? preview.querySelector("strong") : null;
    var sender = strong ? strong.textContent.replace(/:$/, "") : "";
    var text = preview ? preview.textContent.trim() : "";
    var link = row.querySelector("a[href]");
    var href = link ? link.getAttribute("href") : null;
    if (live) {
      if (old && seq <= seqOf(old, "lastSeq")) { return; }
      if (sender === document.body.dataset.username || row.dataset.muted === "true" ||
          seq <= seqOf(row, "readSeq")) { return; }
      notifyOnce(cid, seq, false, sender + " in " + title,
                 text.slice(strong ? strong.textContent.length : 0).trim(), href);
      return;
    }
    var mention = seqOf(row, "mentionSeq");
    if (mention > seqOf(row, "readSeq") && mention > seqOf(old, "mentionSeq")) {
      notifyOnce(cid, mention, true, "You were mentioned in " + title, text, href);
    }
  }

  function addPendingBubble(cid, text) {
    var box = document.getElementById("messages");
    if (!box) { return; }
    var p = document.createElement("article");
    p.id = "pending-" + cid;
    p.className = "msg pending";
    p.dataset.senderId = document.body.dataset.userId || "";
    var body = document.createElement("p");
    body.className = "body";
    body.textContent = text;
    p.appendChild(body);
    box.appendChild(p);
    scrollToBottom();
  }

  /* Edit and Delete on this user's own messages (the fragment is the same for everyone,
     so the page adds them; the server checks who asks). */
  function addMessageActions(m) {
    var uid = document.body.dataset.userId;
    if (!m.matches || !m.matches("article.msg[data-seq]") || m.dataset.senderId !== uid ||
        m.classList.contains("deleted") || m.querySelector(".msg-actions")) { return; }
    var header = m.querySelector("header");
    if (!header) { return; }
    var actions = document.createElement("span");
    actions.className = "msg-actions";
    [["edit", "Edit"], ["delete", "Delete"]].forEach(function (a) {
      var b = document.createElement("button");
      b.type = "button"; b.className = "link"; b.dataset.action = a[0]; b.textContent = a[1];
      b.setAttribute("aria-label", a[1] + " your message");
      actions.appendChild(b);
    });
    header.appendChild(actions);
  }

  function csrfToken() {
    var field = document.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  /* POST an edit or a delete; the change itself reaches this page through its socket. */
  function changeMessage(article, action, fields) {
    var data = new FormData();
    Object.keys(fields).forEach(function (k) { data.append(k, fields[k]); });
    var url = window.location.pathname.replace(/\/$/, "") + "/m/" + article.id.slice(4) + "/" + action;
    return fetch(url, {
      method: "POST", body: data, credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken() }
    }).then(function (r) {
      if (r.ok) { showError(""); return true; }
      return r.text().then(function (t) {
        var plain = (r.headers.get("content-type") || "").indexOf("text/plain") === 0;
        showError(r.status === 403 ? "Only its sender can change a message." :
                  plain && t ? t : "The message could not be changed (" + r.status + "). Try again.");
        return false;
      });
    }, function () {
      showError("The server could not be reached: the message was not changed.");
      return false;
    });
  }

  function openEdit(article) {
    var body = article.querySelector(".body");
    if (!body || article.querySelector("form.edit-form")) { return; }
    var form = document.createElement("form");
    form.className = "edit-form";
    var label = document.createElement("label");
    label.className = "sr-only"; label.htmlFor = "edit-" + article.id; label.textContent = "Edit your message";
    var box = document.createElement("textarea");
    box.id = "edit-" + article.id; box.name = "chat_message"; box.rows = 2; box.value = body.innerText;
    var save = document.createElement("button");
    save.type = "submit"; save.textContent = "Save";
    var cancel = document.createElement("button");
    cancel.type = "button"; cancel.className = "link"; cancel.textContent = "Cancel";
    form.append(label, box, save, cancel);
    function close() { form.remove(); body.hidden = false; }
    cancel.addEventListener("click", close);
    box.addEventListener("keydown", function (e) {
      if (e.key === "Escape") { e.preventDefault(); close(); }
      else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      save.disabled = true;
      changeMessage(article, "edit", { chat_message: box.value }).then(function (ok) {
        if (ok) { close(); } else { save.disabled = false; }
      });
    });
    body.hidden = true;
    body.after(form);
    box.focus();
  }

  function watchMessages() {
    var box = document.getElementById("messages");
    if (!box) { return; }
    box.querySelectorAll("article.msg[data-seq]").forEach(addMessageActions);
    new MutationObserver(function (changes) {
      changes.forEach(function (c) {
        Array.prototype.forEach.call(c.addedNodes, function (n) {
          if (n.nodeType !== 1) { return; }
          addMessageActions(n);
          if (n.querySelectorAll) { n.querySelectorAll("article.msg[data-seq]").forEach(addMessageActions); }
        });
      });
    }).observe(box, { childList: true, subtree: true });
    box.addEventListener("click", function (e) {
      var b = e.target.closest ? e.target.closest("button[data-action]") : null;
      var article = b ? b.closest("article.msg[data-seq]") : null;
      if (!article) { return; }
      if (b.dataset.action === "edit") { openEdit(article); }
      if (b.dataset.action === "delete" &&
          window.confirm("Delete this message? Everyone in the conversation will see that it was deleted.")) {
        changeMessage(article, "delete", {});
      }
    });
  }

  function onReady() {
    installPerUserStyles();
    watchMessages();
    watchNotificationsToggle();
    showUnreadInTitle();
    var root = chatRoot();
    if (root) {
      state.lastSeq = parseInt(root.dataset.lastSeq || "0", 10);
      state.epoch = root.dataset.epoch || "";
      restorePending();
    }
    /* A search result's message is shown where the reader can see it; else the newest. */
    var target = document.querySelector("#messages .msg-target");
    if (target) { target.scrollIntoView({ block: "center" }); } else { scrollToBottom(); }

    /* The extension's default backoff grows to 64 s; a chat should be back within seconds
       of the server. Full jitter still spreads a restart's reconnects out. */
    htmx.config.wsReconnectDelay = function (retry) {
      return Math.random() * Math.min(RECONNECT_CAP_MS, 500 * Math.pow(2, retry));
    };

    htmx.defineExtension("parley", {
      transformResponse: function (text, xhr) {
        return xhr ? text : filterFragment(text);   // only websocket frames
      }
    });

    var originalCreate = htmx.createWebSocket;
    htmx.createWebSocket = function (url) {
      if (chatRoot() && url.indexOf("/ws/chat/") >= 0) {
        url = url.split("?")[0] + "?after=" + state.lastSeq +
          "&epoch=" + encodeURIComponent(state.epoch);
      }
      return originalCreate ? originalCreate(url) : new WebSocket(url, []);
    };

    document.body.addEventListener("htmx:wsConfigSend", function (evt) {
      var params = evt.detail.parameters;
      if (!("chat_message" in params)) { return; }
      var text = String(params.chat_message || "");
      if (!text.trim()) { evt.preventDefault(); return; }
      var input = document.getElementById("chat_message");
      var limit = input ? parseInt(input.dataset.maxLength || "0", 10) : 0;
      if (limit && charCount(text) > limit) {
        /* Refused here and kept in the box for editing; the server would refuse it too. */
        evt.preventDefault();
        showError("Message too long: " + charCount(text) + " characters, the limit is " +
                  limit + ". Shorten it and send again.");
        return;
      }
      var cid = uuid4();
      params.client_id = cid;
      state.pending[cid] = { chat_message: text, client_id: cid };
      addPendingBubble(cid, text);
      showError("");
      /* Cleared now, not after the send: while the socket is down the send waits in the
         queue, and the box must not be wiped later, under whatever is typed meanwhile. */
      var form = evt.target.closest ? evt.target.closest("form") : null;
      if (form) { form.reset(); }
      /* Holding since a refusal (retryLater): this one waits its turn. */
      if (state.holding || state.busyUntil > Date.now()) {
        evt.preventDefault();
        state.holding = true;
        if (!state.pumpTimer) { pump(); }  /* a refused one's backoff is not cut short */
        return;
      }
      state.pending[cid].inFlight = true;
    });

    document.body.addEventListener("htmx:wsConnecting", function () {
      if (document.body.dataset.socket !== "refused") { document.body.dataset.socket = "connecting"; }
    });

    document.body.addEventListener("htmx:wsOpen", function (evt) {
      var sock = evt.detail.socketWrapper;
      var reconnected = state.opened;
      state.opened = true;
      state.lastSock = sock;
      state.open = true;
      document.body.dataset.socket = "open";
      setStatus("", "");
      /* The list socket replays nothing: after a reconnect, fetch the rows afresh. */
      if (reconnected && document.getElementById("conversation-list")) {
        refreshConversationList();
      }
      /* Sends that never got their confirmation are retried; the server stores them once.
         Holding, only the oldest goes now and the rest follow it, one at a time. */
      Object.keys(state.pending).forEach(function (cid) {
        var queued = sock.queue.some(function (q) { return q.message.indexOf(cid) >= 0; });
        state.pending[cid].inFlight = queued;
        if (!queued && !state.holding) {
          state.pending[cid].inFlight = true;
          sock.send(JSON.stringify({ chat_message: state.pending[cid].chat_message, client_id: cid }));
        }
      });
      if (state.holding) { pump(); }
    });

    document.body.addEventListener("htmx:wsClose", function (evt) {
      var code = evt.detail.event.code;
      state.open = false;
      document.body.dataset.socket = code >= 4000 ? "refused" : "closed";
      /* Who is online or typing is unknown until the server says again on reconnect. */
      document.querySelectorAll(".presence[data-online='true']").forEach(function (el) {
        el.dataset.online = "false";
        var sr = el.querySelector(".sr-only");
        if (sr) { sr.textContent = " (offline)"; }
      });
      document.querySelectorAll(".typing.active").forEach(clearTyping);
      if (code === 4401) {
        setStatus("Your session has ended. Please log in again.", "fatal");
      } else if (code === 4403) {
        setStatus("You are not a participant of this conversation.", "fatal");
      } else if (code === 4409) {
        setStatus("Too many open windows or tabs: close some, then reload this page.", "fatal");
      } else if (code === 4429) {
        setStatus("Disconnected for sending too many messages. Reload to continue.", "fatal");
      } else if ([1006, 1011, 1012, 1013].indexOf(code) >= 0) {
        setStatus("Reconnecting…", "warn");
      } else {
        setStatus("Disconnected. Reload the page to reconnect.", "fatal");
      }
    });

    /* The browser knows it lost the network before the socket does: a server's close frame
       or a dead TCP connection may reach an offline page only seconds later (or, for a
       silent network, after the next ping). Say so at once; the socket's own close and
       open events take over from here. */
    window.addEventListener("offline", function () {
      var status = document.getElementById("conn-status");
      if (status && status.dataset.kind !== "fatal") { setStatus("Reconnecting…", "warn"); }
    });
    window.addEventListener("online", function () {
      var status = document.getElementById("conn-status");
      if (state.open && status && status.dataset.kind === "warn") { setStatus("", ""); }
    });

    /* Follow new messages only if the reader was already at the bottom (decided before the
       swap: a tall message would otherwise look like the reader had scrolled away). */
    document.body.addEventListener("htmx:wsBeforeMessage", function () { state.stick = nearBottom(); });

    document.body.addEventListener("htmx:wsAfterMessage", function (evt) {
      if (state.stick) { scrollToBottom(); }
      if (state.arrivedQuietly) {
        var n = state.arrivedQuietly;
        state.arrivedQuietly = 0;
        speakAgain(n + " new messages");
      }
      document.querySelectorAll(".typing.active").forEach(function (el) {
        if (el._clear) { return; }
        el._clear = setTimeout(function () { el._clear = null; clearTyping(el); }, TYPING_VISIBLE_MS);
      });
      scheduleRead(evt.detail.socketWrapper);
      showUnreadInTitle();
    });

    /* Older messages go in above what the reader is looking at: keep it where it is (the
       browser's scroll anchoring does nothing when the list is scrolled to the very top). */
    document.body.addEventListener("htmx:beforeSwap", function (evt) {
      var box = document.getElementById("messages");
      if (box && evt.detail.elt && evt.detail.elt.id === "load-older") {
        state.keepFromBottom = box.scrollHeight - box.scrollTop;
        if (evt.detail.shouldSwap) {
          state.olderBefore = box.querySelectorAll("article.msg").length;
          state.olderHadFocus = document.activeElement === evt.detail.elt;
          quiet();
        }
      }
    });
    document.body.addEventListener("htmx:afterSwap", function () {
      showUnreadInTitle();   /* the list fetched afresh */
      var box = document.getElementById("messages");
      if (box && state.keepFromBottom != null) {
        box.scrollTop = box.scrollHeight - state.keepFromBottom;
        state.keepFromBottom = null;
      }
      if (box && state.olderBefore != null) {
        var loaded = box.querySelectorAll("article.msg").length - state.olderBefore;
        state.olderBefore = null;
        speakAgain(loaded === 1 ? "1 older message loaded" : loaded + " older messages loaded");
        /* The button that had the focus is gone: the focus goes to the next one, or to the
           list, not back to the top of the page. */
        if (state.olderHadFocus) {
          state.olderHadFocus = false;
          (document.getElementById("load-older") || box).focus({ preventScroll: true });
        }
      }
    });

    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState !== "visible") { return; }
      titles.hidden = 0;
      showUnreadInTitle();
      if (state.lastSock) { scheduleRead(state.lastSock); }
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
        var limit = parseInt(input.dataset.maxLength || "0", 10);
        var err = document.getElementById("chat-error");
        if (err && err.textContent.indexOf("Message too long") === 0 && charCount(input.value) <= limit) {
          showError("");
        }
        var now = Date.now();
        /* Typing is only worth sending live: a queued one would arrive stale. */
        if (now - state.typingSentAt < 3000 || !state.open || !input.value.trim()) { return; }
        state.typingSentAt = now;
        state.lastSock.send(JSON.stringify({ type: "typing" }));
      });
    }
  }

  function refreshConversationList() {
    htmx.ajax("GET", window.location.pathname, {
      target: "#conversation-list", select: "#conversation-list", swap: "outerHTML"
    });
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
