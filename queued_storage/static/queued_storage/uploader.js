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
 * tus mode: with `data-tus-url` (the tus endpoint, `queued_storage:tus`) each file is sent
 * with the tus 1.0 protocol instead of one PUT, by the small client below (no dependency):
 *
 *   - `POST` to the endpoint creates the upload (`Upload-Length`, `Upload-Metadata` with the
 *     base64 `filename` and `filetype`); its `Location` is kept in `localStorage` under the
 *     file's name, size and lastModified, so that picking the same file again (after a page
 *     reload, a closed tab) asks the server where it stopped (`HEAD`) and resumes from there;
 *   - `PATCH` requests of `data-chunk-size` bytes (default 8 MiB) carry the file from
 *     `Upload-Offset`; XHR progress runs across the chunks;
 *   - a failed request (network error, 409, 423, 460, 408, 429, 5xx) is retried after the
 *     delays of `data-retry-delays` (ms, default `500,1000,2000,4000`), each time from the offset
 *     a `HEAD` reports; other answers (403, 404, 410, 413...) end the upload with their message;
 *   - a request that makes no progress (no byte of its body sent, no byte of an answer) for
 *     `data-stall-timeout` ms (default 30000; 0: never) is aborted and counts as a failed one,
 *     so a connection that hangs without failing (a half-open path, a server that stopped
 *     reading) is retried from the server's offset instead of waiting for its idle timeout;
 *   - the last `PATCH` answers `X-Queued-Storage-Name` and `X-Queued-Storage-Status-Url`: the
 *     remembered URL is forgotten, and the status is followed as in step 3 above.
 *
 * direct mode: with `data-mode="direct"` and `data-direct-url` (the endpoint
 * `queued_storage:direct`) each file goes from the browser straight to S3, in parts:
 *
 *   - `POST` to the endpoint (JSON: name, size, content type) reserves the name and opens a
 *     multipart upload; the answer gives the part size and the URLs of the next steps, and its
 *     `upload_url` is kept in `localStorage` under the file's name, size and lastModified;
 *   - per part (bytes [(n-1)*part_size, n*part_size)): its CRC32, computed here over
 *     `file.slice()` one part in memory at a time, declared to `parts_url`, which answers
 *     presigned URLs, `data-sign-ahead` parts at a time (default 8); the part is `PUT` to its
 *     URL with exactly the headers the server gave (a slice has no type: no Content-Type, no
 *     other x-amz-* header; the CSRF token never goes to S3); XHR progress runs across parts;
 *   - a part that fails (network error, 403 of an expired URL, 408, 429, 5xx) or stalls
 *     (`data-stall-timeout`) is sent again after the delays of `data-retry-delays`, with a
 *     fresh URL; the server's JSON endpoints are retried after the same delays (0, 408, 429,
 *     5xx); picking the same file after a reload asks `GET upload_url` for the parts S3 holds
 *     and sends only the others (an upload the server no longer knows, 404, starts over);
 *   - `POST complete_url` `{}`: 201 gives the stored file (`remote`), followed as in steps
 *     2-3; 409 (parts missing) asks which parts S3 holds and sends the rest; 422 (the object
 *     does not match the declared parts: nothing was kept) shows the server's error.
 *   The bucket must allow the page's origin to `PUT` with those headers (CORS: docs/uploads.md).
 *
 * Every request to this site (PUT, tus, direct, attach) carries the page's CSRF token
 * (`X-CSRFToken`) and the session cookie; the upload views are exempt from CSRF, a project's
 * own may not be.
 *
 * `window.QueuedStorageUploader.init(element)` sets up an element added after the page loaded;
 * `window.QueuedStorageUploader.crc32(blob)` gives a Blob's CRC32 as direct mode sends it.
 */
(function () {
  "use strict";

  var FINAL = { remote: true, failed: true };
  var TUS_VERSION = "1.0.0";
  var MiB = 1024 * 1024;
  /* Answers after which a tus request is worth sending again (0: the network failed). */
  var RETRY_STATUS = { 0: true, 408: true, 409: true, 423: true, 429: true, 460: true };
  var STORE_PREFIX = "queued-storage:tus:";
  var DIRECT_STORE_PREFIX = "queued-storage:direct:";
  var STALL_TIMEOUT = 30000;
  /* Answers of the site's JSON endpoints (direct mode) worth asking again (0: no answer). */
  var DIRECT_RETRY_STATUS = { 0: true, 408: true, 429: true };
  /* Answers of S3 to a part worth sending again, with a fresh URL (403: the URL expired). */
  var PART_RETRY_STATUS = { 0: true, 403: true, 408: true, 429: true };
  /* Parts whose URLs are asked in one request (the server takes 1 to 100). */
  var SIGN_AHEAD = 8;

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

  /* The CSRF token goes to this site only, never to another origin's upload URL. */
  function sameOriginCsrf(xhr, url, root) {
    if (new URL(url, window.location.href).origin === window.location.origin) {
      xhr.setRequestHeader("X-CSRFToken", csrfToken(root));
    }
  }

  /* base64 of the UTF-8 bytes of text, as Upload-Metadata wants its values. */
  function base64Utf8(text) {
    var bytes = new TextEncoder().encode(text);
    var binary = "";
    for (var i = 0; i < bytes.length; i += 1) binary += String.fromCharCode(bytes[i]);
    return window.btoa(binary);
  }

  /* localStorage, or nothing where it is refused (private windows, disabled storage). */
  function store(action, key, value) {
    try {
      if (action === "get") return window.localStorage.getItem(key);
      if (action === "set") window.localStorage.setItem(key, value);
      else window.localStorage.removeItem(key);
    } catch (ignored) {
      /* no resume after a reload, the upload itself goes on */
    }
    return null;
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

  /* S3 answers errors in XML: its Code and Message. */
  function s3Message(xhr) {
    var text = xhr.responseText || "";
    var code = text.match(/<Code>([^<]*)<\/Code>/);
    var message = text.match(/<Message>([^<]*)<\/Message>/);
    if (!code && !message) return "S3 answered HTTP " + xhr.status;
    return "S3: " + [code && code[1], message && message[1]].filter(Boolean).join(": ");
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (ignored) {
      return null;
    }
  }

  /* CRC32 (IEEE, zlib's), with a 256-entry table. */
  var crcTable = null;

  function crc32(bytes) {
    if (!crcTable) {
      crcTable = new Int32Array(256);
      for (var n = 0; n < 256; n += 1) {
        var c = n;
        for (var k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        crcTable[n] = c;
      }
    }
    var crc = -1;
    for (var i = 0; i < bytes.length; i += 1) crc = crcTable[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
    return (crc ^ -1) >>> 0;
  }

  function blobBytes(blob) {
    if (blob.arrayBuffer) return blob.arrayBuffer();
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () {
        resolve(reader.result);
      };
      reader.onerror = function () {
        reject(reader.error);
      };
      reader.readAsArrayBuffer(blob);
    });
  }

  /* A Blob's CRC32 as S3 wants it: base64 of its 4 big-endian bytes. The Blob is read whole:
   * direct mode passes one part at a time. */
  function blobCrc32(blob) {
    return blobBytes(blob).then(function (buffer) {
      var c = crc32(new Uint8Array(buffer));
      return window.btoa(
        String.fromCharCode((c >>> 24) & 0xff, (c >>> 16) & 0xff, (c >>> 8) & 0xff, c & 0xff)
      );
    });
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
    this.tusUrl = root.getAttribute("data-tus-url") || "";
    this.directUrl = root.getAttribute("data-direct-url") || "";
    this.mode = root.getAttribute("data-mode") || (this.tusUrl ? "tus" : "put");
    this.signAhead = parseInt(root.getAttribute("data-sign-ahead") || "", 10) || SIGN_AHEAD;
    this.signAhead = Math.max(1, Math.min(100, this.signAhead));
    this.chunkSize = parseInt(root.getAttribute("data-chunk-size") || "", 10) || 8 * MiB;
    this.stallTimeout = parseInt(root.getAttribute("data-stall-timeout") || "", 10);
    if (!(this.stallTimeout >= 0)) this.stallTimeout = STALL_TIMEOUT;
    this.retryDelays = (root.getAttribute("data-retry-delays") || "500,1000,2000,4000")
      .split(",")
      .map(function (d) {
        return parseInt(d, 10);
      })
      .filter(function (d) {
        return d >= 0;
      });
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
    if (this.mode === "direct" || this.mode === "tus") {
      var endpoint = this.mode === "direct" ? this.directUrl : this.tusUrl;
      var entry = this.makeItem(file);
      if (!endpoint) {
        this.fail(file, entry, this.mode + " mode needs data-" + this.mode + "-url");
      } else if (this.mode === "direct") {
        new DirectUpload(this, file, entry).start();
      } else {
        new TusUpload(this, file, entry).start();
      }
      return;
    }
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
      self.uploaded(file, item, JSON.parse(xhr.responseText));
    });
    xhr.addEventListener("error", function () {
      self.fail(file, item, "the connection failed");
    });
    xhr.addEventListener("abort", function () {
      self.fail(file, item, "aborted");
    });
    sameOriginCsrf(xhr, url.toString(), this.root);
    xhr.send(file);
  };

  /* The upload is stored (answer: name, state, url, status_url): show it, attach it, follow it. */
  Uploader.prototype.uploaded = function (file, item, answer) {
    var self = this;
    this.setUploadProgress(item, 100);
    item.setAttribute("data-stored-name", answer.name);
    // A form's field (queued_storage.forms.DirectFileField) posts the stored name.
    var field = this.root.querySelector("input[data-qs-name]");
    if (field) field.value = answer.name;
    this.emit("uploaded", { file: file, item: item, response: answer });
    this.show(file, item, answer);
    this.attach(file, item, answer).then(function () {
      if (!FINAL[answer.state] && answer.status_url) self.poll(file, item, answer.status_url);
    });
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

  /*
   * One file sent with tus 1.0 (https://tus.io/protocols/resumable-upload): creation, then
   * PATCH chunks from the server's offset; HEAD after a failure or to resume a remembered
   * upload. Its state: `url` (the upload's URL), `offset` (what the server confirmed),
   * `failures` (in a row; reset by every chunk the server takes).
   */
  function TusUpload(uploader, file, item) {
    this.uploader = uploader;
    this.file = file;
    this.item = item;
    this.endpoint = new URL(uploader.tusUrl, window.location.href).toString();
    this.key = STORE_PREFIX + [this.endpoint, file.name, file.size, file.lastModified].join(":");
    this.url = null;
    this.offset = 0;
    this.failures = 0;
  }

  TusUpload.prototype.request = function (method, url, headers, body, onProgress) {
    var all = { "Tus-Resumable": TUS_VERSION };
    Object.keys(headers).forEach(function (name) {
      all[name] = headers[name];
    });
    return request(this.uploader, method, url, all, body, onProgress, true);
  };

  /* One request; the promise gives the XHR, status 0 when the network failed or the request
   * stalled: no progress for the stall timeout (then `xhr.queuedStorageStalled` is true).
   * `csrf`: send the CSRF token (to this site's URLs only); `headers`: exactly these. */
  function request(uploader, method, url, headers, body, onProgress, csrf) {
    var stallTimeout = uploader.stallTimeout;
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      var timer = null;
      /* (Re)start the stall timer: every sign of progress gives the request another period. */
      function alive() {
        if (!stallTimeout) return;
        window.clearTimeout(timer);
        timer = window.setTimeout(function () {
          xhr.queuedStorageStalled = true;
          xhr.abort();
        }, stallTimeout);
      }
      xhr.open(method, url);
      if (csrf) sameOriginCsrf(xhr, url, uploader.root);
      Object.keys(headers).forEach(function (name) {
        xhr.setRequestHeader(name, headers[name]);
      });
      if (body !== undefined) {
        xhr.upload.addEventListener("progress", function (event) {
          alive();
          if (onProgress) onProgress(event.loaded);
        });
        xhr.upload.addEventListener("load", alive); // the body is sent; the answer may take
      }
      xhr.addEventListener("readystatechange", alive); // the answer's headers, its body
      xhr.addEventListener("progress", alive);
      xhr.addEventListener("loadend", function () {
        window.clearTimeout(timer);
      });
      xhr.addEventListener("load", function () {
        resolve(xhr);
      });
      ["error", "abort", "timeout"].forEach(function (type) {
        xhr.addEventListener(type, function () {
          resolve(xhr); // status 0: the network failed, or the request stalled
        });
      });
      xhr.send(body === undefined ? null : body);
      alive();
    });
  }

  TusUpload.prototype.start = function () {
    var remembered = store("get", this.key);
    if (remembered) {
      this.url = remembered;
      this.resume(true);
    } else {
      this.create();
    }
  };

  TusUpload.prototype.create = function () {
    var self = this;
    var metadata = "filename " + base64Utf8(this.file.name);
    if (this.file.type) metadata += ",filetype " + base64Utf8(this.file.type);
    this.request("POST", this.endpoint, {
      "Upload-Length": String(this.file.size),
      "Upload-Metadata": metadata,
    }).then(function (xhr) {
      if (xhr.status !== 201 || !xhr.getResponseHeader("Location")) {
        self.failed(xhr, function () {
          self.create();
        });
        return;
      }
      self.url = new URL(xhr.getResponseHeader("Location"), self.endpoint).toString();
      store("set", self.key, self.url);
      self.offset = 0;
      if (!self.done(xhr)) self.send();
    });
  };

  /* Ask the server for the offset, then go on from there. A remembered upload the server no
   * longer knows (404, 410: expired, or removed) starts again from the first byte. */
  TusUpload.prototype.resume = function (remembered) {
    var self = this;
    this.request("HEAD", this.url, {}).then(function (xhr) {
      var offset = parseInt(xhr.getResponseHeader("Upload-Offset") || "", 10);
      if (xhr.status === 200 && offset >= 0) {
        self.offset = offset;
        if (remembered) self.item.setAttribute("data-resumed-from", String(offset));
        self.uploader.setUploadProgress(self.item, percent(offset, self.file.size));
        if (!self.done(xhr)) self.send();
      } else if (remembered && (xhr.status === 404 || xhr.status === 410)) {
        store("remove", self.key);
        self.create();
      } else {
        self.failed(xhr, function () {
          self.resume(false);
        });
      }
    });
  };

  TusUpload.prototype.send = function () {
    var self = this;
    var start = this.offset;
    var chunk = this.file.slice(start, Math.min(this.file.size, start + this.uploader.chunkSize));
    this.setState("uploading");
    this.request(
      "PATCH",
      this.url,
      { "Upload-Offset": String(start), "Content-Type": "application/offset+octet-stream" },
      chunk,
      function (loaded) {
        self.uploader.setUploadProgress(self.item, percent(start + loaded, self.file.size));
      }
    ).then(function (xhr) {
      var offset = parseInt(xhr.getResponseHeader("Upload-Offset") || "", 10);
      if (xhr.status !== 204 || !(offset > start)) {
        self.failed(xhr, function () {
          self.resume(false);
        });
        return;
      }
      self.offset = offset;
      self.failures = 0;
      if (!self.done(xhr)) self.send();
    });
  };

  /* The answer that ends the upload names the stored file: forget the upload, follow the file. */
  TusUpload.prototype.done = function (xhr) {
    var self = this;
    var name = xhr.getResponseHeader("X-Queued-Storage-Name");
    if (!name) return false;
    store("remove", this.key);
    var answer = { name: decodeURIComponent(name), state: "pending", url: null };
    answer.status_url = xhr.getResponseHeader("X-Queued-Storage-Status-Url");
    var shown = answer.status_url
      ? fetch(answer.status_url, {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        })
          .then(function (response) {
            return response.ok ? response.json() : {};
          })
          .catch(function () {
            return {};
          })
      : Promise.resolve({});
    shown.then(function (status) {
      Object.keys(status).forEach(function (key) {
        answer[key] = status[key];
      });
      self.uploader.uploaded(self.file, self.item, answer);
    });
    return true;
  };

  /* A request failed: try again after the next delay if the answer says it may work, else
   * show the server's message. */
  TusUpload.prototype.failed = function (xhr, again) {
    var self = this;
    var retry = RETRY_STATUS[xhr.status] || xhr.status >= 500;
    var delay = this.uploader.retryDelays[this.failures];
    var stalled = !xhr.status && xhr.queuedStorageStalled;
    if (!retry || delay === undefined) {
      var message = xhr.status
        ? errorMessage(xhr, xhr.responseText)
        : stalled
          ? "the connection stalled"
          : "the connection failed";
      if (xhr.status && xhr.responseText && message === "HTTP " + xhr.status) {
        message += ": " + xhr.responseText; // tus answers are plain text
      }
      if (xhr.status === 404 || xhr.status === 410) store("remove", this.key);
      this.uploader.fail(this.file, this.item, message);
      return;
    }
    retryAfter(this, delay, stalled, again);
  };

  /* Count a failure of *upload* (a TusUpload or a DirectUpload), show the wait, try again. */
  function retryAfter(upload, delay, stalled, again) {
    upload.failures += 1;
    var wait = "retrying in " + (delay / 1000).toFixed(1) + " s";
    upload.setState("retrying", stalled ? "stalled, " + wait : wait);
    window.setTimeout(again, delay);
  }

  TusUpload.prototype.setState = function (state, text) {
    var node = this.item.querySelector(".qs-state");
    node.setAttribute("data-state", state);
    node.textContent = text || state;
  };

  /*
   * One file sent straight to S3 (direct mode): the site reserves the name and signs each
   * part's URL; the parts go from here to S3; the site verifies and completes. Its state:
   * `upload` (the site's answer: part size, part count, the URLs), `todo` (the part numbers S3
   * does not hold yet, in order), `held` (bytes of the parts S3 holds), `checksums` and
   * `signed` (by part number), `failures` (in a row; reset by every part S3 takes).
   */
  function DirectUpload(uploader, file, item) {
    this.uploader = uploader;
    this.file = file;
    this.item = item;
    this.endpoint = new URL(uploader.directUrl, window.location.href).toString();
    this.key =
      DIRECT_STORE_PREFIX + [this.endpoint, file.name, file.size, file.lastModified].join(":");
    this.upload = null;
    this.todo = [];
    this.held = 0;
    this.checksums = {};
    this.signed = {};
    this.failures = 0;
    this.completing = false; // a completion was sent: a later 404 may mean it succeeded
    this.refusal = ""; // the last completion's refusal, shown if asking again leads nowhere
  }

  /* A request to the site's JSON endpoints (with the CSRF token and the session cookie). */
  DirectUpload.prototype.json = function (method, url, body) {
    var headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    var payload = body === undefined ? undefined : JSON.stringify(body);
    return request(this.uploader, method, url, headers, payload, null, true);
  };

  DirectUpload.prototype.absolute = function (url) {
    return new URL(url, this.endpoint).toString();
  };

  DirectUpload.prototype.start = function () {
    var remembered = store("get", this.key);
    if (remembered) this.resume(remembered, true);
    else this.create();
  };

  DirectUpload.prototype.create = function () {
    var self = this;
    this.setState("uploading");
    this.json("POST", this.endpoint, {
      name: this.file.name,
      size: this.file.size,
      content_type: this.file.type || "",
      checksum_algorithm: "crc32",
    }).then(function (xhr) {
      var answer = parseJson(xhr.responseText);
      if (xhr.status !== 201 || !answer || !answer.upload_url) {
        self.failed(xhr, DIRECT_RETRY_STATUS, function () {
          self.create();
        });
        return;
      }
      self.begin(answer, []);
      store("set", self.key, self.upload.upload_url);
      self.next();
    });
  };

  /* The upload's figures and URLs, and the parts S3 holds already (`received`). */
  DirectUpload.prototype.begin = function (answer, received) {
    var self = this;
    this.upload = answer;
    ["parts_url", "upload_url", "complete_url", "status_url"].forEach(function (key) {
      if (answer[key]) answer[key] = self.absolute(answer[key]);
    });
    var have = {};
    this.held = 0;
    received.forEach(function (part) {
      have[part.number] = true;
      self.held += part.size;
    });
    this.todo = [];
    for (var n = 1; n <= answer.parts; n += 1) if (!have[n]) this.todo.push(n);
    this.uploader.setUploadProgress(this.item, percent(this.held, this.file.size));
  };

  /* Ask the site which parts S3 holds, then send the others. A remembered upload the site no
   * longer knows (404: expired, cancelled, finished) starts again from the first part. */
  DirectUpload.prototype.resume = function (url, remembered) {
    var self = this;
    this.json("GET", url).then(function (xhr) {
      var answer = parseJson(xhr.responseText);
      if (xhr.status === 200 && answer && answer.parts_url && answer.received) {
        self.begin(answer, answer.received);
        if (remembered) self.item.setAttribute("data-resumed-from", String(self.held));
        self.next();
      } else if (remembered && xhr.status === 404) {
        store("remove", self.key);
        self.create();
      } else if (self.completing && xhr.status === 404) {
        self.settle(xhr);
      } else {
        self.failed(xhr, DIRECT_RETRY_STATUS, function () {
          self.resume(url, false);
        });
      }
    });
  };

  /* The next step: the first part S3 lacks (its URL first, if none is valid), or completion. */
  DirectUpload.prototype.next = function () {
    if (!this.todo.length) {
      this.complete();
      return;
    }
    var signed = this.signed[this.todo[0]];
    if (signed && Date.now() < signed.until) this.put(this.todo[0], signed);
    else this.sign();
  };

  DirectUpload.prototype.partBlob = function (number) {
    var size = this.upload.part_size;
    return this.file.slice((number - 1) * size, Math.min(number * size, this.file.size));
  };

  /* The CRC32s of the parts, each computed once, one part in memory at a time. */
  DirectUpload.prototype.checksum = function (numbers) {
    var self = this;
    var parts = [];
    return numbers
      .reduce(function (chain, number) {
        return chain.then(function () {
          var known = self.checksums[number];
          return (known ? Promise.resolve(known) : blobCrc32(self.partBlob(number))).then(
            function (checksum) {
              self.checksums[number] = checksum;
              parts.push({ number: number, checksum: checksum });
            }
          );
        });
      }, Promise.resolve())
      .then(function () {
        return parts;
      });
  };

  /* Declare the next parts' CRC32s and take their presigned URLs. */
  DirectUpload.prototype.sign = function () {
    var self = this;
    var numbers = this.todo.slice(0, this.uploader.signAhead);
    this.checksum(numbers)
      .then(function (parts) {
        return self.json("POST", self.upload.parts_url, { parts: parts });
      })
      .then(
        function (xhr) {
          var answer = parseJson(xhr.responseText);
          if (xhr.status !== 200 || !answer || !answer.parts) {
            self.failed(xhr, DIRECT_RETRY_STATUS, function () {
              self.next();
            });
            return;
          }
          var until = Date.now() + (answer.expires_in || 60) * 900; // a tenth to spare
          answer.parts.forEach(function (part) {
            self.signed[part.number] = {
              url: part.url,
              method: part.method || "PUT",
              headers: part.headers || {},
              until: until,
            };
          });
          if (!self.signed[numbers[0]]) {
            self.uploader.fail(self.file, self.item, "no URL for part " + numbers[0]);
            return;
          }
          self.next();
        },
        function (err) {
          self.uploader.fail(self.file, self.item, "the file could not be read (" + err + ")");
        }
      );
  };

  /* PUT one part to S3: the slice (no type, so no Content-Type) with exactly the signed
   * headers, no CSRF token. A URL serves once: a retry asks for a fresh one. */
  DirectUpload.prototype.put = function (number, signed) {
    var self = this;
    var blob = this.partBlob(number);
    delete this.signed[number];
    this.setState("uploading");
    request(
      this.uploader,
      signed.method,
      signed.url,
      signed.headers,
      blob,
      function (loaded) {
        self.uploader.setUploadProgress(self.item, percent(self.held + loaded, self.file.size));
      },
      false
    ).then(function (xhr) {
      if (xhr.status < 200 || xhr.status > 299) {
        var retry = PART_RETRY_STATUS;
        if (xhr.status === 400 && /<Code>RequestTimeout<\/Code>/.test(xhr.responseText)) {
          retry = { 400: true };
        }
        self.failed(xhr, retry, function () {
          self.next();
        });
        return;
      }
      self.held += blob.size;
      self.todo.shift();
      self.failures = 0;
      self.uploader.setUploadProgress(self.item, percent(self.held, self.file.size));
      self.next();
    });
  };

  DirectUpload.prototype.complete = function () {
    var self = this;
    this.completing = true;
    this.setState("completing");
    this.json("POST", this.upload.complete_url, {}).then(function (xhr) {
      var answer = parseJson(xhr.responseText);
      if (xhr.status === 201 && answer && answer.name) {
        store("remove", self.key);
        self.uploader.uploaded(self.file, self.item, answer);
      } else if (xhr.status === 409) {
        // Parts are missing (or another request is completing it): ask S3's list again.
        self.refusal = errorMessage(xhr, xhr.responseText);
        self.failed(xhr, { 409: true }, function () {
          self.resume(self.upload.upload_url, false);
        });
      } else if (xhr.status === 404) {
        self.settle(xhr); // an earlier completion whose answer was lost may have done it
      } else {
        // 422: the object does not match the declared parts; nothing was kept.
        self.failed(xhr, DIRECT_RETRY_STATUS, function () {
          self.complete();
        });
      }
    });
  };

  /* The upload is gone (404) after a completion was sent: the file is stored if its status
   * says so (an answer was lost on the way); else the refusal is shown. */
  DirectUpload.prototype.settle = function (xhr) {
    var self = this;
    var message = this.refusal || errorMessage(xhr, xhr.responseText);
    store("remove", this.key);
    fetch(this.upload.status_url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .catch(function () {
        return null;
      })
      .then(function (status) {
        if (status && status.state === "remote") {
          self.uploader.uploaded(self.file, self.item, status);
        } else {
          self.uploader.fail(self.file, self.item, message);
        }
      });
  };

  /* A request failed: try again after the next delay if its answer is in `retry` (or a 5xx),
   * else show the server's (or S3's) message. */
  DirectUpload.prototype.failed = function (xhr, retry, again) {
    var delay = this.uploader.retryDelays[this.failures];
    var stalled = !xhr.status && xhr.queuedStorageStalled;
    if (!(retry[xhr.status] || xhr.status >= 500) || delay === undefined) {
      var message;
      if (!xhr.status) message = stalled ? "the connection stalled" : "the connection failed";
      else if (/<Error>/.test(xhr.responseText || "")) message = s3Message(xhr);
      else message = errorMessage(xhr, xhr.responseText);
      if (xhr.status === 404 || xhr.status === 422) store("remove", this.key);
      this.uploader.fail(this.file, this.item, message);
      return;
    }
    retryAfter(this, delay, stalled, again);
  };

  DirectUpload.prototype.setState = TusUpload.prototype.setState;

  function init(root) {
    if (!root || root.queuedStorageUploader) return root && root.queuedStorageUploader;
    root.queuedStorageUploader = new Uploader(root);
    return root.queuedStorageUploader;
  }

  function initAll() {
    var roots = document.querySelectorAll("[data-qs-uploader]");
    for (var i = 0; i < roots.length; i += 1) init(roots[i]);
  }

  window.QueuedStorageUploader = { init: init, crc32: blobCrc32 };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", initAll);
  } else {
    initAll();
  }
})();
