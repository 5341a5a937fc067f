/*
 * queued_storage uploader: plain JavaScript, no framework, no build step.
 *
 * Finds every element with the attribute `data-qs-uploader` (the template
 * `queued_storage/uploader.html` renders one) and turns it into an upload widget:
 *
 *   1. files dropped on it or chosen with its file input are sent one request each, as the raw
 *      body of a PUT to `data-upload-url` with `?name=<file name>` (queued_storage's UploadView:
 *      streamed to the staging disk, never held in memory); XHR upload progress events drive a
 *      progress bar per file;
 *   2. the 201 answer gives the stored name, the state (`pending`), the URL to use now (the
 *      staging copy) and `status_url`; if `data-attach-url` is set, the stored name is POSTed
 *      there (form field `name`, with the page's CSRF token) so that the project can attach the
 *      file to a model;
 *   3. `status_url` is polled every `data-poll-interval` ms (default 500) until the state is
 *      `remote` or `failed`: the state shows `pending`, `transferring NN %`, then `remote`,
 *      and the link (and, for images, the preview) switches to the URL the status endpoint
 *      gives: the staging URL until the remote copy is verified, then the remote (S3) URL.
 *
 * Events, dispatched on the widget element (they bubble), with `event.detail`:
 *   `queued-storage:uploaded` {file, item, response}  the upload view answered 201
 *   `queued-storage:state`    {file, item, status}    a status was shown (also the first one)
 *   `queued-storage:error`    {file, item, message}   the upload or a status request failed
 *
 * `window.QueuedStorageUploader.init(element)` sets up an element added after the page loaded.
 */
(function () {
  "use strict";

  var FINAL = { remote: true, failed: true };

  function formatBytes(n) {
    if (n === null || n === undefined) return "";
    var units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
  }

  function percent(done, total) {
    if (!total) return 0;
    return Math.min(100, Math.floor((done * 100) / total));
  }

  /* The URL without its query string: a signed URL's signature is not shown as text. */
  function shownUrl(url) {
    return String(url || "").split("?", 1)[0];
  }

  function csrfToken(root) {
    var input = root.querySelector("input[name=csrfmiddlewaretoken]");
    if (input) return input.value;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function errorMessage(xhrOrResponse, text) {
    try {
      var body = JSON.parse(text);
      if (body && body.error) return body.error;
    } catch (ignored) {
      /* not JSON: fall through */
    }
    return "HTTP " + xhrOrResponse.status;
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function Uploader(root) {
    this.root = root;
    this.uploadUrl = root.getAttribute("data-upload-url");
    this.attachUrl = root.getAttribute("data-attach-url") || "";
    this.pollInterval = parseInt(root.getAttribute("data-poll-interval") || "500", 10);
    this.list = root.querySelector(".qs-files") || root.appendChild(el("ul", "qs-files"));
    this.input = root.querySelector("input[type=file]");
    this.bind();
  }

  Uploader.prototype.emit = function (name, detail) {
    this.root.dispatchEvent(
      new CustomEvent("queued-storage:" + name, { bubbles: true, detail: detail })
    );
  };

  Uploader.prototype.bind = function () {
    var self = this;
    var zone = this.root.querySelector(".qs-drop") || this.root;
    if (this.input) {
      this.input.addEventListener("change", function () {
        self.addFiles(self.input.files);
        self.input.value = "";
      });
    }
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (event) {
        event.preventDefault();
        zone.classList.add("qs-dragging");
      });
    });
    ["dragleave", "dragend"].forEach(function (type) {
      zone.addEventListener(type, function () {
        zone.classList.remove("qs-dragging");
      });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("qs-dragging");
      if (event.dataTransfer && event.dataTransfer.files) self.addFiles(event.dataTransfer.files);
    });
  };

  Uploader.prototype.addFiles = function (files) {
    for (var i = 0; i < files.length; i += 1) this.upload(files[i]);
  };

  /* One list item per file: name, size, upload bar, state, and the link (and preview). */
  Uploader.prototype.makeItem = function (file) {
    var item = el("li", "qs-file");
    item.setAttribute("data-file-name", file.name);
    var head = item.appendChild(el("div", "qs-head"));
    head.appendChild(el("span", "qs-name", file.name));
    head.appendChild(el("span", "qs-size", formatBytes(file.size)));
    var bar = item.appendChild(el("div", "qs-bar"));
    var progress = bar.appendChild(el("progress", "qs-upload-progress"));
    progress.max = 100;
    progress.value = 0;
    bar.appendChild(el("span", "qs-upload-percent", "0 %"));
    var state = item.appendChild(el("span", "qs-state", "uploading"));
    state.setAttribute("data-state", "uploading");
    var where = item.appendChild(el("div", "qs-where"));
    var link = where.appendChild(el("a", "qs-link"));
    link.hidden = true;
    if (/^image\//.test(file.type)) {
      var img = el("img", "qs-preview");
      img.alt = file.name;
      img.hidden = true;
      item.insertBefore(img, head);
    }
    this.list.appendChild(item);
    return item;
  };

  Uploader.prototype.setUploadProgress = function (item, value) {
    item.querySelector(".qs-upload-progress").value = value;
    item.querySelector(".qs-upload-percent").textContent = value + " %";
  };

  Uploader.prototype.fail = function (file, item, message) {
    var state = item.querySelector(".qs-state");
    state.setAttribute("data-state", "error");
    state.textContent = "error: " + message;
    item.classList.add("qs-error");
    this.emit("error", { file: file, item: item, message: message });
  };

  Uploader.prototype.upload = function (file) {
    var self = this;
    var item = this.makeItem(file);
    var url = new URL(this.uploadUrl, window.location.href);
    url.searchParams.set("name", file.name);
    var xhr = new XMLHttpRequest();
    xhr.open("PUT", url.toString());
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable) self.setUploadProgress(item, percent(event.loaded, event.total));
    });
    xhr.upload.addEventListener("load", function () {
      self.setUploadProgress(item, 100); // every byte is sent; the answer follows
    });
    xhr.addEventListener("load", function () {
      if (xhr.status !== 201) {
        self.fail(file, item, errorMessage(xhr, xhr.responseText));
        return;
      }
      var answer = JSON.parse(xhr.responseText);
      self.setUploadProgress(item, 100);
      item.setAttribute("data-stored-name", answer.name);
      self.emit("uploaded", { file: file, item: item, response: answer });
      self.show(file, item, answer);
      self.attach(file, item, answer).then(function () {
        if (!FINAL[answer.state] && answer.status_url) self.poll(file, item, answer.status_url);
      });
    });
    xhr.addEventListener("error", function () {
      self.fail(file, item, "the connection failed");
    });
    xhr.addEventListener("abort", function () {
      self.fail(file, item, "aborted");
    });
    xhr.send(file);
  };

  Uploader.prototype.attach = function (file, item, answer) {
    var self = this;
    if (!this.attachUrl) return Promise.resolve();
    var body = new URLSearchParams();
    body.set("name", answer.name);
    return fetch(this.attachUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken(this.root), Accept: "application/json" },
      body: body,
    })
      .then(function (response) {
        if (!response.ok) {
          return response.text().then(function (text) {
            self.fail(file, item, "attach: " + errorMessage(response, text));
          });
        }
        return null;
      })
      .catch(function () {
        self.fail(file, item, "attach: the connection failed");
      });
  };

  /* Show one status answer: the state text, and the link/preview at the URL to use now. */
  Uploader.prototype.show = function (file, item, status) {
    var state = item.querySelector(".qs-state");
    var text = status.state;
    if (status.state === "transferring") {
      text = "transferring " + percent(status.bytes_done || 0, status.size || 0) + " %";
    }
    state.textContent = text;
    state.setAttribute("data-state", status.state);
    item.setAttribute("data-state", status.state);
    if (status.url) {
      var link = item.querySelector(".qs-link");
      if (link.getAttribute("href") !== status.url) {
        link.href = status.url;
        link.textContent = shownUrl(status.url);
        link.hidden = false;
      }
      var img = item.querySelector(".qs-preview");
      if (img && img.getAttribute("src") !== status.url) {
        img.src = status.url;
        img.hidden = false;
      }
      item.setAttribute("data-url", status.url);
    }
    this.emit("state", { file: file, item: item, status: status });
  };

  Uploader.prototype.poll = function (file, item, statusUrl) {
    var self = this;
    function next() {
      fetch(statusUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          return response.text().then(function (text) {
            if (!response.ok) throw new Error(errorMessage(response, text));
            return JSON.parse(text);
          });
        })
        .then(function (status) {
          self.show(file, item, status);
          if (!FINAL[status.state]) window.setTimeout(next, self.pollInterval);
        })
        .catch(function (err) {
          self.fail(file, item, "status: " + err.message);
        });
    }
    window.setTimeout(next, this.pollInterval);
  };

  function init(root) {
    if (!root || root.queuedStorageUploader) return root && root.queuedStorageUploader;
    root.queuedStorageUploader = new Uploader(root);
    return root.queuedStorageUploader;
  }

  function initAll() {
    var roots = document.querySelectorAll("[data-qs-uploader]");
    for (var i = 0; i < roots.length; i += 1) init(roots[i]);
  }

  window.QueuedStorageUploader = { init: init };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", initAll);
  } else {
    initAll();
  }
})();
