// The chat page. The conversation lives in sessionStorage and is sent to POST /ask as `history`
// (the earlier questions, oldest first). Everything that comes from an article is put into the
// page with textContent / text nodes, never as markup.
(function () {
  "use strict";

  var STORAGE_KEY = "assistant.conversation.v1";
  var MAX_STORED_TURNS = 60;
  var TIMEOUT_MS = 90000;

  var form = document.getElementById("ask-form");
  if (!form) return;
  var input = document.getElementById("question");
  var sendButton = document.getElementById("send");
  var transcript = document.getElementById("transcript");
  var intro = document.getElementById("intro");
  var live = document.getElementById("live");
  var newButton = document.getElementById("new-conversation");
  var formError = document.getElementById("composer-error");
  var charCount = document.getElementById("char-count");

  var config = {
    askUrl: form.getAttribute("data-ask-url") || "/ask",
    feedbackUrl: form.getAttribute("data-feedback-url") || "/feedback",
    maxChars: parseInt(form.getAttribute("data-max-chars"), 10) || 1000,
    maxHistory: parseInt(form.getAttribute("data-max-history"), 10) || 20,
    topK: parseInt(form.getAttribute("data-top-k"), 10) || 3
  };
  var reduceMotion = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  var turns = load();
  var inFlight = null; // {controller, turn, timedOut}

  // --- storage ---------------------------------------------------------------------------

  function load() {
    var data;
    try {
      data = JSON.parse(window.sessionStorage.getItem(STORAGE_KEY) || "null");
    } catch (e) {
      return [];
    }
    if (!data || !Array.isArray(data.turns)) return [];
    return data.turns.filter(function (t) {
      return t && typeof t.question === "string";
    }).map(function (t) {
      if (t.status === "pending") {
        // the page was reloaded while waiting: the answer is lost, offer to ask again
        return { id: t.id, question: t.question, status: "error",
                 error: "This question was interrupted when the page reloaded." };
      }
      return t;
    });
  }

  function save() {
    try {
      window.sessionStorage.setItem(STORAGE_KEY, JSON.stringify({
        version: 1,
        turns: turns.slice(-MAX_STORED_TURNS)
      }));
    } catch (e) {
      // storage full or disabled: the conversation still works for this page view
    }
  }

  function newId() {
    return Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
  }

  // --- DOM helpers -----------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // Only same-origin paths from the API become links.
  function safeHref(url) {
    return typeof url === "string" && url.charAt(0) === "/" && url.charAt(1) !== "/" ? url : null;
  }

  function link(url, text, className) {
    var href = safeHref(url);
    var node = el(href ? "a" : "span", className, text);
    if (href) node.setAttribute("href", href);
    return node;
  }

  function announce(text) {
    live.textContent = "";
    window.setTimeout(function () { live.textContent = text; }, 60);
  }

  function normalise(s) {
    return String(s || "").trim().replace(/\s+/g, " ").replace(/[?.!]+$/, "").toLowerCase();
  }

  // --- rendering -------------------------------------------------------------------------

  var LIST_ITEM = /^(?:[-*\u2022\u2013]\s|\d{1,2}[.)]\s)/;
  var SENTENCE_END = /[.!?,;\u2026]['"\u201d\u2019)\]]*$/;

  // How a line of a passage looks: a short line without a sentence ending reads as a heading.
  function lineKind(line, lineCount) {
    if (LIST_ITEM.test(line)) return "item";
    if (lineCount > 1 && line.length <= 90 && line.split(/\s+/).length <= 12 && !SENTENCE_END.test(line)) {
      return "subhead";
    }
    return "text";
  }

  // The passage, line by line, with its answering sentence(s) in <mark>. Offsets count Unicode
  // code points (Python's str), so the text is sliced as an array of code points, not UTF-16 units.
  function passageNode(text, highlight) {
    var quote = el("blockquote", "card__passage");
    var chars = Array.from(String(text || ""));
    var n = chars.length;
    var spans = (Array.isArray(highlight) ? highlight : []).map(function (h) {
      var s = Math.max(0, Math.min(n, Number(h && h.start) || 0));
      var e = Math.max(0, Math.min(n, Number(h && h.end) || 0));
      return [s, e];
    }).filter(function (p) { return p[1] > p[0]; }).sort(function (a, b) { return a[0] - b[0]; });
    var merged = [];
    spans.forEach(function (p) {
      var last = merged[merged.length - 1];
      if (last && p[0] <= last[1]) last[1] = Math.max(last[1], p[1]);
      else merged.push([p[0], p[1]]);
    });

    var lines = [];
    var lineStart = 0;
    for (var i = 0; i <= n; i++) {
      if (i === n || chars[i] === "\n") {
        lines.push([lineStart, i]);
        lineStart = i + 1;
      }
    }
    lines.forEach(function (range) {
      var a = range[0], b = range[1];
      var lineText = chars.slice(a, b).join("");
      if (!lineText.trim()) return;
      var line = el("p", "line line--" + lineKind(lineText.trim(), lines.length));
      var pos = a;
      merged.forEach(function (m) {
        var s = Math.max(m[0], a), e = Math.min(m[1], b);
        if (e <= s) return;
        if (s > pos) line.appendChild(document.createTextNode(chars.slice(pos, s).join("")));
        line.appendChild(el("mark", null, chars.slice(s, e).join("")));
        pos = e;
      });
      if (pos < b) line.appendChild(document.createTextNode(chars.slice(pos, b).join("")));
      quote.appendChild(line);
    });
    return quote;
  }

  var MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
                "October", "November", "December"];

  // "2023-03-12" -> "12 March 2023" (the article's own date, not the reader's locale)
  function humanDate(iso) {
    var m = /^(\d{4})-(\d{2})(?:-(\d{2}))?/.exec(String(iso || ""));
    if (!m) return String(iso || "");
    var month = MONTHS[parseInt(m[2], 10) - 1] || m[2];
    return (m[3] ? parseInt(m[3], 10) + " " : "") + month + " " + m[1];
  }

  function webHref(url) {
    return typeof url === "string" && /^https?:\/\/[^\s]+$/i.test(url) ? url : null;
  }

  // "Jane Doe · 12 March 2023 · example-clinic.com ↗": what the article says about itself
  function bylineNode(source) {
    var parts = [];
    if (source.author) parts.push(el("span", "card__author", source.author));
    if (source.published) {
      var t = el("time", "card__date", humanDate(source.published));
      t.setAttribute("datetime", source.published);
      parts.push(t);
    }
    var href = webHref(source.original_url);
    var siteName = source.site || (href ? href.replace(/^https?:\/\/(www\.)?/i, "").split("/")[0] : "");
    if (href) {
      var a = el("a", "card__original", siteName + " \u2197");
      a.setAttribute("href", href);
      a.setAttribute("rel", "noopener noreferrer external");
      a.setAttribute("aria-label", siteName + " (the original article, on the web)");
      parts.push(a);
    } else if (siteName) {
      parts.push(el("span", "card__site", siteName));
    }
    if (!parts.length) return null;
    var p = el("p", "card__byline");
    parts.forEach(function (x, i) {
      if (i) {
        var sep = el("span", "card__sep", " \u00b7 ");
        sep.setAttribute("aria-hidden", "true");
        p.appendChild(sep);
      }
      p.appendChild(x);
    });
    return p;
  }

  // --- feedback: helpful / not helpful, one click, undoable ----------------------------------

  function sendFeedback(turn, answer, helpful) {
    var chars = Array.from(String(answer.text || ""));
    var h = (answer.highlight || [])[0];
    var source = answer.source || {};
    var body = {
      question: turn.question,
      history: turn.history || [],
      resolved_question: (turn.response && turn.response.resolved_question) || null,
      doc_id: source.doc_id || null,
      start: typeof source.start === "number" ? source.start : null,
      end: typeof source.end === "number" ? source.end : null,
      highlight: h ? chars.slice(h.start, h.end).join("").slice(0, 2000) : null,
      helpful: helpful
    };
    return fetch(config.feedbackUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body)
    }).then(function (res) {
      return res.json().catch(function () { return null; }).then(function (data) {
        if (!res.ok || !data || !data.id) throw new Error(errorMessage(res.status, data, ""));
        return data.id;
      });
    });
  }

  function withdrawFeedback(id) {
    return fetch(config.feedbackUrl + "/" + encodeURIComponent(id), { method: "DELETE" }).then(function (res) {
      if (!res.ok && res.status !== 404) throw new Error("The feedback could not be taken back (" + res.status + ").");
    });
  }

  function feedbackNode(turn, answer, idx) {
    var box = el("div", "card__feedback");
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Was this answer helpful?");
    box.appendChild(el("span", "card__feedback-label", "Helpful?"));
    var yes = el("button", "button button--small feedback-button", "Yes");
    var no = el("button", "button button--small feedback-button", "No");
    yes.setAttribute("aria-label", "Helpful");
    no.setAttribute("aria-label", "Not helpful");
    var status = el("span", "card__feedback-status");
    status.setAttribute("role", "status");
    var undo = el("button", "feedback-undo", "Undo");
    yes.type = no.type = undo.type = "button";
    yes.setAttribute("data-helpful", "true");
    no.setAttribute("data-helpful", "false");
    box.appendChild(yes);
    box.appendChild(no);
    box.appendChild(status);
    box.appendChild(undo);
    turn.feedback = turn.feedback || {};

    function show() {
      var f = turn.feedback[idx];
      yes.setAttribute("aria-pressed", f && f.helpful === true ? "true" : "false");
      no.setAttribute("aria-pressed", f && f.helpful === false ? "true" : "false");
      undo.hidden = !f;
      status.textContent = f ? "Thanks: sent." : "";
    }

    function busy(b) { yes.disabled = no.disabled = undo.disabled = b; }

    function choose(helpful) {
      var old = turn.feedback[idx];
      if (old && old.helpful === helpful) return;
      busy(true);
      (old ? withdrawFeedback(old.id) : Promise.resolve()).then(function () {
        delete turn.feedback[idx];
        return sendFeedback(turn, answer, helpful);
      }).then(function (id) {
        turn.feedback[idx] = { id: id, helpful: helpful };
        save();
        show();
        announce(helpful ? "Marked helpful. Undo is next to it." : "Marked not helpful. Undo is next to it.");
      }, function (err) {
        save();
        show();
        status.textContent = (err && err.message) || "The feedback could not be sent.";
      }).then(function () { busy(false); });
    }

    yes.addEventListener("click", function () { choose(true); });
    no.addEventListener("click", function () { choose(false); });
    undo.addEventListener("click", function () {
      var f = turn.feedback[idx];
      if (!f) return;
      busy(true);
      withdrawFeedback(f.id).then(function () {
        delete turn.feedback[idx];
        save();
        show();
        status.textContent = "Feedback taken back.";
        yes.focus();
      }, function (err) {
        status.textContent = err.message;
      }).then(function () { busy(false); });
    });
    show();
    return box;
  }

  function cardNode(answer, turn, idx) {
    var card = el("article", "card");
    var source = answer.source || {};
    card.appendChild(passageNode(answer.text, answer.highlight));

    var cite = el("p", "card__source");
    cite.appendChild(el("span", "card__label", "Source"));
    cite.appendChild(link(source.url, source.title || source.doc_id || "Article", "card__cite"));
    card.appendChild(cite);
    var by = bylineNode(source);
    if (by) card.appendChild(by);

    var also = Array.isArray(answer.also_in) ? answer.also_in : [];
    if (also.length) {
      var p = el("p", "card__also");
      p.appendChild(el("span", "card__label", "Also in"));
      also.forEach(function (other, i) {
        if (i) p.appendChild(document.createTextNode(", "));
        p.appendChild(link(other.url, other.title || other.doc_id || "Article", "card__also-link"));
      });
      card.appendChild(p);
    }
    if (turn) card.appendChild(feedbackNode(turn, answer, idx));
    return card;
  }

  function capitalise(s) {
    s = String(s);
    return s.charAt(0).toUpperCase() + s.slice(1);
  }

  function answersNode(response, turn) {
    var answers = Array.isArray(response.answers) ? response.answers : [];
    var compared = answers.some(function (a) { return a && a.about; });
    if (!compared) {
      var list = el("div", "cards");
      answers.forEach(function (a, i) { list.appendChild(cardNode(a, turn, i)); });
      return list;
    }
    var groups = [];
    var byKey = {};
    answers.forEach(function (a) {
      var key = a.about ? String(a.about) : "";
      if (!Object.prototype.hasOwnProperty.call(byKey, key)) {
        byKey[key] = { about: key, answers: [] };
        groups.push(byKey[key]);
      }
      byKey[key].answers.push({ answer: a, idx: answers.indexOf(a) });
    });
    var grid = el("div", "compare");
    grid.setAttribute("data-columns", String(Math.min(groups.length, 3)));
    groups.forEach(function (g) {
      var col = el("section", "compare__col");
      var h = el("h4", "compare__heading", g.about ? capitalise(g.about) : "Also relevant");
      col.appendChild(h);
      g.answers.forEach(function (x) { col.appendChild(cardNode(x.answer, turn, x.idx)); });
      grid.appendChild(col);
    });
    return grid;
  }

  function thinkingNode() {
    var box = el("div", "thinking");
    box.appendChild(el("span", "thinking__text", "Searching the articles"));
    var dots = el("span", "thinking__dots");
    dots.setAttribute("aria-hidden", "true");
    for (var i = 0; i < 3; i++) dots.appendChild(el("span", "thinking__dot"));
    box.appendChild(dots);
    return box;
  }

  function turnNode(turn) {
    var li = el("li", "turn");
    li.setAttribute("data-turn", turn.id);
    li.setAttribute("data-status", turn.status);

    var q = el("div", "turn__question");
    var bubble = el("h3", "bubble");
    bubble.appendChild(el("span", "sr-only", "You asked: "));
    bubble.appendChild(document.createTextNode(turn.question));
    q.appendChild(bubble);
    li.appendChild(q);

    var a = el("div", "turn__answer");
    li.appendChild(a);

    if (turn.status === "pending") {
      a.setAttribute("aria-busy", "true");
      a.appendChild(thinkingNode());
      return li;
    }
    if (turn.status === "error") {
      var err = el("div", "turn__error");
      err.appendChild(el("p", "turn__error-text", turn.error || "Something went wrong."));
      var retry = el("button", "button button--small", "Ask again");
      retry.type = "button";
      retry.addEventListener("click", function () { retryTurn(turn); });
      err.appendChild(retry);
      a.appendChild(err);
      return li;
    }

    var r = turn.response || {};
    var answered = !r.abstained && Array.isArray(r.answers) && r.answers.length > 0;
    var meta = el("p", "answer-meta");
    if (answered) meta.appendChild(el("span", "answer-meta__count", countLine(r.answers)));
    if (r.resolved_question && normalise(r.resolved_question) !== normalise(r.question || turn.question)) {
      var resolved = el("span", "resolved");
      resolved.appendChild(el("span", "resolved__label", "Searched for: "));
      resolved.appendChild(el("span", "resolved__text", r.resolved_question));
      meta.appendChild(resolved);
    }
    if (meta.childNodes.length) a.appendChild(meta);
    if (answered) a.appendChild(answersNode(r, turn));
    else a.appendChild(el("p", "abstain", r.message || "The articles do not answer this question."));
    return li;
  }

  function countLine(answers) {
    var docs = [];
    answers.forEach(function (a) {
      var id = a.source && a.source.doc_id;
      if (id && docs.indexOf(id) < 0) docs.push(id);
    });
    var n = answers.length;
    return n + (n === 1 ? " passage" : " passages") + " from " + docs.length + (docs.length === 1 ? " article" : " articles");
  }

  function renderAll() {
    transcript.textContent = "";
    turns.forEach(function (t) { transcript.appendChild(turnNode(t)); });
    var empty = turns.length === 0;
    intro.hidden = !empty;
    newButton.hidden = empty;
    document.body.classList.toggle("has-conversation", !empty);
  }

  function replaceTurn(turn) {
    var old = transcript.querySelector('[data-turn="' + turn.id + '"]');
    var fresh = turnNode(turn);
    if (old) transcript.replaceChild(fresh, old);
    else transcript.appendChild(fresh);
    return fresh;
  }

  function scrollTo(node, block) {
    if (!node) return;
    node.scrollIntoView({ block: block || "start", behavior: reduceMotion ? "auto" : "smooth" });
  }

  function summary(turn) {
    if (turn.status === "error") return "Error: " + turn.error;
    var r = turn.response;
    if (r.abstained || !r.answers || !r.answers.length) return r.message || "The articles do not answer this question.";
    var first = r.answers[0];
    var n = r.answers.length;
    var titles = [];
    r.answers.forEach(function (a) {
      var t = a.source && a.source.title;
      if (t && titles.indexOf(t) < 0) titles.push(t);
    });
    var chars = Array.from(first.text || "");
    var h = (first.highlight || [])[0];
    var sentence = h ? chars.slice(h.start, h.end).join("") : chars.slice(0, 200).join("");
    return "Answer: " + n + " passage" + (n === 1 ? "" : "s") + " from " + titles.join("; ") + ". " + sentence;
  }

  // --- asking ----------------------------------------------------------------------------

  function historyQuestions() {
    return turns.filter(function (t) { return t.status === "done"; })
      .map(function (t) { return t.question; })
      .slice(-config.maxHistory);
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    form.classList.toggle("is-busy", busy);
    form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function errorMessage(status, data, fallbackText) {
    if (data && data.error && typeof data.error.message === "string") return data.error.message;
    if (fallbackText) return "The server answered " + status + ": " + fallbackText.slice(0, 200);
    return "The server answered with status " + status + ".";
  }

  function ask(question) {
    if (inFlight) return;
    var history = historyQuestions();
    var turn = { id: newId(), question: question, status: "pending", history: history };
    turns.push(turn);
    save();
    intro.hidden = true;
    newButton.hidden = false;
    document.body.classList.add("has-conversation");
    var node = replaceTurn(turn);
    scrollTo(node, "end");
    setBusy(true);
    announce("Searching the articles…");

    var controller = window.AbortController ? new AbortController() : null;
    var state = { controller: controller, turn: turn, timedOut: false, cancelled: false };
    inFlight = state;
    var timer = window.setTimeout(function () {
      state.timedOut = true;
      if (controller) controller.abort();
    }, TIMEOUT_MS);

    var body = { question: question, history: history, top_k: config.topK };
    fetch(config.askUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json" },
      body: JSON.stringify(body),
      signal: controller ? controller.signal : undefined
    }).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!res.ok) throw new Error(errorMessage(res.status, data, data ? "" : text));
        if (!data || !Array.isArray(data.answers)) throw new Error("The server sent an answer this page cannot read.");
        return data;
      });
    }).then(function (data) {
      turn.status = "done";
      turn.response = data;
    }, function (err) {
      turn.status = "error";
      if (state.timedOut) {
        turn.error = "The assistant took too long to answer. Try again, or ask a shorter question.";
      } else if (err && err.name === "AbortError") {
        turn.error = "The question was cancelled.";
      } else if (err instanceof TypeError) {
        turn.error = "Could not reach the assistant. Check your connection and that the server is running, then try again.";
      } else {
        turn.error = (err && err.message) || "Something went wrong.";
      }
    }).then(function () {
      window.clearTimeout(timer);
      if (inFlight === state) inFlight = null;
      setBusy(false);
      if (state.cancelled || turns.indexOf(turn) < 0) return;
      save();
      var fresh = replaceTurn(turn);
      announce(summary(turn));
      scrollTo(fresh, fresh.offsetHeight > window.innerHeight * 0.7 ? "start" : "end");
    });
  }

  function retryTurn(turn) {
    if (inFlight) return;
    var i = turns.indexOf(turn);
    if (i >= 0) turns.splice(i, 1);
    var old = transcript.querySelector('[data-turn="' + turn.id + '"]');
    if (old) old.parentNode.removeChild(old);
    save();
    ask(turn.question);
    input.focus();
  }

  function showFormError(text) {
    formError.textContent = text || "";
    if (text) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  function submit() {
    var question = input.value.trim();
    if (!question) {
      showFormError("Type a question first.");
      input.focus();
      return;
    }
    if (question.length > config.maxChars) {
      showFormError("The question is " + question.length + " characters long; the limit is " + config.maxChars + ".");
      return;
    }
    if (inFlight) {
      showFormError("Still answering the last question: one moment.");
      return;
    }
    showFormError("");
    input.value = "";
    autosize();
    updateCount();
    ask(question);
  }

  function newConversation() {
    if (inFlight) {
      inFlight.cancelled = true;
      if (inFlight.controller) inFlight.controller.abort();
      inFlight = null;
      setBusy(false);
    }
    turns = [];
    try { window.sessionStorage.removeItem(STORAGE_KEY); } catch (e) { /* ignore */ }
    renderAll();
    showFormError("");
    window.scrollTo(0, 0);
    input.focus();
    announce("Started a new conversation.");
  }

  // --- composer --------------------------------------------------------------------------

  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, 220) + "px";
  }

  function updateCount() {
    var n = input.value.length;
    var show = n >= config.maxChars * 0.8;
    charCount.hidden = !show;
    charCount.textContent = show ? n + " / " + config.maxChars : "";
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    submit();
  });

  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submit();
    }
  });

  input.addEventListener("input", function () {
    if (formError.textContent) showFormError("");
    autosize();
    updateCount();
  });

  newButton.addEventListener("click", newConversation);

  Array.prototype.forEach.call(document.querySelectorAll(".example"), function (button) {
    button.addEventListener("click", function () {
      var q = button.getAttribute("data-question") || button.textContent;
      input.focus();
      ask(q.trim());
    });
  });

  // --- start -----------------------------------------------------------------------------

  renderAll();
  save();
  if (turns.length) {
    var last = transcript.lastElementChild;
    if (last) last.scrollIntoView({ block: "end" });
  }
  input.focus({ preventScroll: true });
})();
