// The admin page. Every change goes to the same routes scripts use (POST /documents, DELETE
// /documents/{id}, POST /documents/from-url, POST /admin/reindex, POST /admin/questions/mark),
// authorised by the HttpOnly session cookie plus the CSRF token of this page in a header.
// After a change the page reloads (the server renders the lists); a message survives the reload.
(function () {
  "use strict";

  var app = document.getElementById("admin-app");
  if (!app) return;
  var csrf = app.getAttribute("data-csrf") || "";
  var root = app.getAttribute("data-root") || "";
  var flash = document.getElementById("flash");
  var FLASH_KEY = "assistant.admin.flash";
  var busy = false;

  function say(text, kind) {
    flash.textContent = "";
    flash.className = "flash" + (kind ? " flash--" + kind : "");
    window.setTimeout(function () { flash.textContent = text; }, 30);
  }

  function reloadWith(text) {
    try { window.sessionStorage.setItem(FLASH_KEY, text); } catch (e) { /* ignore */ }
    window.location.reload();
  }

  function errorText(status, data, text) {
    if (data && data.error && typeof data.error.message === "string") return data.error.message;
    return "The server answered " + status + (text ? ": " + String(text).slice(0, 200) : ".");
  }

  function call(method, url, body, isJson) {
    var headers = { "X-CSRF-Token": csrf, "Accept": "application/json" };
    if (isJson) headers["Content-Type"] = "application/json";
    return fetch(root + url, {
      method: method, headers: headers, credentials: "same-origin",
      body: body === undefined ? undefined : (isJson ? JSON.stringify(body) : body)
    }).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!res.ok) {
          var err = new Error(errorText(res.status, data, data ? "" : text));
          err.status = res.status;
          throw err;
        }
        return data;
      });
    });
  }

  function setBusy(b) {
    busy = b;
    Array.prototype.forEach.call(document.querySelectorAll(".admin button:not(#sign-out)"), function (btn) {
      btn.disabled = b;
    });
  }

  // --- upload: one request per file, in turn ------------------------------------------------

  var uploadForm = document.getElementById("upload-form");
  var fileInput = document.getElementById("upload-files");
  var chosen = document.getElementById("chosen");
  var chooseButton = document.getElementById("choose-files");
  var pending = [];

  function choose(files) {
    pending = Array.prototype.slice.call(files || []);
    chosen.textContent = pending.length
      ? pending.length + (pending.length === 1 ? " file: " : " files: ") + pending.map(function (f) { return f.name; }).join(", ")
      : "";
  }

  chooseButton.addEventListener("click", function () { fileInput.click(); });
  fileInput.addEventListener("change", function () { choose(fileInput.files); });
  ["dragenter", "dragover"].forEach(function (type) {
    uploadForm.addEventListener(type, function (e) {
      e.preventDefault();
      uploadForm.classList.add("is-dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    uploadForm.addEventListener(type, function (e) {
      e.preventDefault();
      uploadForm.classList.remove("is-dragging");
    });
  });
  uploadForm.addEventListener("drop", function (e) {
    if (e.dataTransfer && e.dataTransfer.files) choose(e.dataTransfer.files);
  });

  uploadForm.addEventListener("submit", function (e) {
    e.preventDefault();
    if (busy) return;
    if (!pending.length) { say("Choose or drop one or more files first.", "error"); chooseButton.focus(); return; }
    var url = document.getElementById("upload-url").value.trim();
    if (url && pending.length > 1) { say("The published address applies to one file: upload one file with it.", "error"); return; }
    var replace = document.getElementById("upload-replace").checked;
    var done = [], failed = [];
    setBusy(true);
    var chain = Promise.resolve();
    pending.forEach(function (file, i) {
      chain = chain.then(function () {
        say("Uploading and indexing " + file.name + " (" + (i + 1) + " of " + pending.length + ")…");
        var fd = new FormData();
        fd.append("file", file, file.name);
        if (url) fd.append("url", url);
        return call("POST", "/documents" + (replace ? "?replace=true" : ""), fd, false).then(function (r) {
          done.push(r.title + " (" + r.status + ")");
        }, function (err) {
          failed.push(file.name + ": " + err.message);
        });
      });
    });
    chain.then(function () {
      setBusy(false);
      if (!failed.length) { reloadWith("Indexed: " + done.join("; ") + ". Readers can ask about it now."); return; }
      say((done.length ? "Indexed: " + done.join("; ") + ". " : "") + "Not added: " + failed.join(" "), "error");
    });
  });

  // --- add by URL ----------------------------------------------------------------------------

  document.getElementById("url-form").addEventListener("submit", function (e) {
    e.preventDefault();
    if (busy) return;
    var input = document.getElementById("add-url");
    var url = input.value.trim();
    if (!url) { say("Type the address of a web page first.", "error"); input.focus(); return; }
    setBusy(true);
    say("Fetching " + url + " and indexing it…");
    call("POST", "/documents/from-url", { url: url }, true).then(function (r) {
      reloadWith("Added " + r.title + " (" + r.path + "). Readers can ask about it now.");
    }, function (err) {
      setBusy(false);
      say(err.message, "error");
      input.focus();
    });
  });

  // --- delete: a second press confirms -------------------------------------------------------

  Array.prototype.forEach.call(document.querySelectorAll(".delete-button"), function (btn) {
    btn.addEventListener("click", function () {
      if (busy) return;
      var id = btn.getAttribute("data-doc-id");
      var title = btn.getAttribute("data-title");
      if (btn.getAttribute("data-confirm") !== "yes") {
        btn.setAttribute("data-confirm", "yes");
        btn.textContent = "Confirm delete";
        btn.setAttribute("aria-label", "Confirm: delete " + title);
        say("Press “Confirm delete” to delete " + title + ".");
        return;
      }
      setBusy(true);
      say("Deleting " + title + "…");
      var path = id.split("/").map(encodeURIComponent).join("/");
      call("DELETE", "/documents/" + path, undefined, false).then(function () {
        reloadWith("Deleted " + title + ": it is no longer cited.");
      }, function (err) {
        setBusy(false);
        say(err.message, "error");
      });
    });
    btn.addEventListener("blur", function () {
      if (btn.getAttribute("data-confirm") === "yes" && !busy) {
        btn.removeAttribute("data-confirm");
        btn.textContent = "Delete";
        btn.setAttribute("aria-label", "Delete " + btn.getAttribute("data-title"));
      }
    });
  });

  // --- reindex with live progress (NDJSON stream) ---------------------------------------------

  var reindexButton = document.getElementById("reindex-button");
  var progressBox = document.getElementById("reindex-progress");
  var bar = document.getElementById("reindex-bar");
  var statusLine = document.getElementById("reindex-status");

  function describe(p) {
    var parts = [];
    if (p.phase === "waiting") return "Waiting for the index lock…";
    if (p.articles_total) parts.push(p.articles_done + " of " + p.articles_total + " articles read");
    if (p.phase === "embedding" && p.passages_total) parts.push(p.passages_done + " of " + p.passages_total + " new passages embedded");
    if (p.seconds_left !== null && p.seconds_left !== undefined) parts.push("about " + Math.ceil(p.seconds_left) + " s left");
    return parts.join(" · ") || "Working…";
  }

  function percent(p) {
    if (p.phase === "embedding" && p.passages_total) return 20 + 80 * p.passages_done / p.passages_total;
    if (p.articles_total) return 20 * p.articles_done / p.articles_total;
    return 0;
  }

  reindexButton.addEventListener("click", function () {
    if (busy) return;
    setBusy(true);
    progressBox.hidden = false;
    bar.value = 0;
    statusLine.textContent = "Starting…";
    fetch(root + "/admin/reindex", {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Accept": "application/x-ndjson" }
    }).then(function (res) {
      if (!res.ok) {
        return res.json().catch(function () { return null; }).then(function (d) { throw new Error(errorText(res.status, d, "")); });
      }
      var reader = res.body.getReader();
      var decoder = new TextDecoder();
      var buffer = "";
      var final = null;
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) return final;
          buffer += decoder.decode(chunk.value, { stream: true });
          var lines = buffer.split("\n");
          buffer = lines.pop();
          lines.forEach(function (line) {
            if (!line.trim()) return;
            var p = JSON.parse(line);
            if (p.done) { final = p; return; }
            bar.value = percent(p);
            statusLine.textContent = describe(p);
          });
          return pump();
        });
      }
      return pump();
    }).then(function (final) {
      if (!final) throw new Error("The reindex stopped without a result.");
      if (final.error) throw new Error(final.error.message);
      var r = final.report;
      bar.value = 100;
      reloadWith("Reindexed: " + r.articles + " articles, " + r.passages + " passages (added " + r.added.length +
                 ", changed " + r.changed.length + ", removed " + r.removed.length + "; " + r.embedded_passages +
                 " passages embedded in " + r.seconds.toFixed(1) + " s).");
    }).catch(function (err) {
      setBusy(false);
      statusLine.textContent = "";
      progressBox.hidden = true;
      say(err.message || "The reindex failed.", "error");
    });
  });

  // --- questions nobody answered: mark a group -----------------------------------------------

  Array.prototype.forEach.call(document.querySelectorAll(".mark-button"), function (btn) {
    btn.addEventListener("click", function () {
      if (busy) return;
      var li = btn.closest(".group");
      var ids = (li.getAttribute("data-ids") || "").split(",").filter(Boolean).map(Number);
      var on = btn.getAttribute("aria-pressed") !== "true";
      btn.disabled = true;
      call("POST", "/admin/questions/mark", { ids: ids, unanswerable: on }, true).then(function () {
        btn.disabled = false;
        btn.setAttribute("aria-pressed", on ? "true" : "false");
        btn.textContent = on ? "Marked: not for this library (undo)" : "Not for this library";
        say(on ? "Marked: exported as questions the library should not answer." : "Mark removed.");
      }, function (err) {
        btn.disabled = false;
        say(err.message, "error");
      });
    });
  });

  // --- a message from before the reload ------------------------------------------------------

  try {
    var msg = window.sessionStorage.getItem(FLASH_KEY);
    if (msg) {
      window.sessionStorage.removeItem(FLASH_KEY);
      say(msg, "ok");
    }
  } catch (e) { /* ignore */ }

  // every control above is live from here on (tests wait for this before pressing keys)
  app.setAttribute("data-ready", "true");
})();
