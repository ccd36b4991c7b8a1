// The whole-slide pages: the slide upload (raw body, with an upload progress bar), the job's
// progress (polled from the server), and the zoomable viewer with the heat-map toggled over it.
"use strict";

(function () {
  function csrfToken(form) {
    return form.querySelector("input[name=csrfmiddlewaretoken]").value;
  }

  function showError(box, message) {
    box.textContent = message;
    box.hidden = false;
  }

  var upload = document.getElementById("slide-upload");
  if (upload) {
    upload.addEventListener("submit", function (event) {
      event.preventDefault();
      var file = document.getElementById("slide-file").files[0];
      var errorBox = document.getElementById("upload-error");
      var bar = document.getElementById("upload-progress");
      errorBox.hidden = true;
      if (!file) { showError(errorBox, "Choose a slide file."); return; }
      var request = new XMLHttpRequest();
      request.open("POST", upload.dataset.uploadUrl);
      request.setRequestHeader("X-CSRFToken", csrfToken(upload));
      request.setRequestHeader("X-Slide-Name", encodeURIComponent(file.name));
      request.setRequestHeader("X-Display-Name", encodeURIComponent(document.getElementById("slide-name").value));
      request.setRequestHeader("X-Slide-Mpp", encodeURIComponent(document.getElementById("slide-mpp").value));
      request.setRequestHeader("Content-Type", "application/octet-stream");
      bar.hidden = false;
      request.upload.onprogress = function (e) { if (e.lengthComputable) bar.value = 100 * e.loaded / e.total; };
      request.onload = function () {
        var answer = {};
        try { answer = JSON.parse(request.responseText); } catch (e) { answer = {}; }
        if (request.status === 201 && answer.url) { window.location.assign(answer.url); return; }
        bar.hidden = true;
        showError(errorBox, answer.error || ("The upload failed (HTTP " + request.status + ")."));
      };
      request.onerror = function () { bar.hidden = true; showError(errorBox, "The upload was interrupted."); };
      request.send(file);
    });
  }

  var job = document.getElementById("slide-job");
  if (job && (job.dataset.state === "queued" || job.dataset.state === "running")) {
    var poll = function () {
      fetch(job.dataset.statusUrl, { credentials: "same-origin" }).then(function (r) { return r.json(); })
        .then(function (status) {
          if (status.state === "done" || status.state === "failed") { window.location.reload(); return; }
          document.getElementById("job-state").textContent = status.state === "queued" ? "Queued" : "Calling the slide";
          document.getElementById("job-progress").value = status.percent;
          if (status.tiles_total) {
            document.getElementById("job-tiles").textContent = status.tiles_done + " of " + status.tiles_total + " tiles";
          }
          window.setTimeout(poll, 1000);
        }).catch(function () { window.setTimeout(poll, 3000); });
    };
    window.setTimeout(poll, 1000);
  }

  var element = document.getElementById("slide-viewer");
  if (element && window.OpenSeadragon) {
    var viewer = window.OpenSeadragon({
      element: element, prefixUrl: element.dataset.prefixUrl, tileSources: element.dataset.dziUrl,
      showNavigator: true, maxZoomPixelRatio: 2, crossOriginPolicy: false
    });
    var overlay = null;
    var toggle = document.getElementById("heatmap-toggle");
    viewer.addHandler("open", function () {
      viewer.addTiledImage({
        tileSource: { type: "image", url: element.dataset.overlayUrl, buildPyramid: false },
        x: 0, y: 0, width: 1, opacity: toggle.checked ? 1 : 0,
        success: function (e) { overlay = e.item; element.dataset.overlay = "loaded"; }
      });
    });
    toggle.addEventListener("change", function () {
      if (overlay) overlay.setOpacity(toggle.checked ? 1 : 0);
      element.dataset.heatmap = toggle.checked ? "shown" : "hidden";
    });
    element.dataset.heatmap = toggle.checked ? "shown" : "hidden";
  }
})();
