/*
 * The upload page: posts the chosen image to the vf3d endpoint and shows the result.
 *
 * document.body.dataset.state is "idle", then "working" while a request runs, then "done" or
 * "error" (the message in #error); tests wait on it.
 */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const imageInput = $("image"), preview = $("preview");
  const submitButton = $("submit"), turntableButton = $("turntable");
  const status = $("status"), error = $("error"), stats = $("stats");
  const download = $("download"), video = $("turntable-video"), videoDownload = $("turntable-download");
  const objectUrls = {};

  let viewer = null;
  try {
    viewer = new window.vf3d.Viewer($("viewer"));
  } catch (problem) {
    $("viewer").setAttribute("aria-label", `3D view unavailable: ${problem.message}`);
  }

  function setState(state, message) {
    document.body.dataset.state = state;
    submitButton.disabled = turntableButton.disabled = state === "working";
    status.textContent = message;
    if (state !== "error") error.textContent = "";
  }

  function fail(message) {
    error.textContent = message;
    setState("error", "Failed.");
  }

  /* Replace the blob URL kept under `name`, revoking the old one. */
  function objectUrl(name, blob) {
    if (objectUrls[name]) URL.revokeObjectURL(objectUrls[name]);
    objectUrls[name] = URL.createObjectURL(blob);
    return objectUrls[name];
  }

  function formatBytes(bytes) {
    return bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
  }

  /* The server's {"error": ...} message, or the status and the start of the body. */
  async function errorMessage(response) {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error === "string") return body.error;
    } catch (_) { /* not JSON: fall through */ }
    const reason = `HTTP ${response.status} ${response.statusText}`.trim();
    return text ? `${reason}: ${text.slice(0, 300)}` : reason;
  }

  /* POST the chosen image's bytes to `path` with `query` plus the filled-in `options` (query
   * parameter name -> input id); resolves to the response's Blob. */
  async function post(path, query, options) {
    const file = imageInput.files[0];
    if (!file) throw new Error("Choose an image first.");
    const params = new URLSearchParams(query);
    for (const [name, id] of Object.entries(options)) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    const headers = { "Content-Type": file.type || "application/octet-stream" };
    const key = $("api-key").value.trim();
    if (key) headers.Authorization = `Bearer ${key}`;
    const url = params.toString() ? `${path}?${params}` : path;
    let response;
    try {
      response = await fetch(url, { method: "POST", headers, body: file });
    } catch (problem) {
      throw new Error(`Could not reach the server (${problem.message}).`);
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    return response.blob();
  }

  async function makeModel() {
    const started = performance.now();
    setState("working", "Reconstructing the object; on a CPU this takes a while");
    download.hidden = true;
    stats.textContent = "";
    try {
      const blob = await post("/v1/image-to-3d", { format: "glb" },
        { mesh_resolution: "mesh-resolution", seed: "seed" });
      const seconds = (performance.now() - started) / 1000;
      const geometry = window.vf3d.buildGeometry(window.vf3d.parseGlb(await blob.arrayBuffer()));
      if (viewer) viewer.show(geometry);
      download.href = objectUrl("glb", blob);
      download.textContent = `Download GLB (${formatBytes(blob.size)})`;
      download.hidden = false;
      stats.textContent = `${geometry.vertexCount.toLocaleString("en")} vertices · ` +
        `${geometry.faceCount.toLocaleString("en")} faces · ${seconds.toFixed(1)} s`;
      setState("done", viewer ? "Done: drag the model to turn it." : "Done (this browser cannot show 3D).");
    } catch (problem) {
      fail(problem.message);
    }
  }

  async function makeTurntable() {
    const started = performance.now();
    setState("working", "Rendering a turntable video");
    try {
      const blob = await post("/v1/turntable", {}, { seed: "seed" });
      video.src = videoDownload.href = objectUrl("mp4", blob);
      video.hidden = videoDownload.hidden = false;
      const seconds = (performance.now() - started) / 1000;
      setState("done", `Turntable video ready (${formatBytes(blob.size)}, ${seconds.toFixed(1)} s).`);
    } catch (problem) {
      fail(problem.message);
    }
  }

  imageInput.addEventListener("change", () => {
    const file = imageInput.files[0];
    preview.hidden = !file;
    if (file) preview.src = objectUrl("preview", file);
    if (document.body.dataset.state !== "working") setState("idle", file ? "Ready." : "Choose an image to start.");
  });
  $("upload-form").addEventListener("submit", (event) => {
    event.preventDefault();
    makeModel();
  });
  turntableButton.addEventListener("click", makeTurntable);
})();
