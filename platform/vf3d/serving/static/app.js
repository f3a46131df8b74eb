/*
 * The upload page: posts the chosen image to the vf3d endpoint and shows the result in the
 * vendored <model-viewer> (orbit controls, lighting, AR on phones).
 *
 * document.body.dataset.state is "idle", then "working" while a request runs, then "done" or
 * "error" (the message in #error); tests wait on it. document.body.dataset.shown is set once a
 * model has been loaded into the viewer.
 */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const imageInput = $("image"), preview = $("preview");
  const submitButton = $("submit"), turntableButton = $("turntable");
  const status = $("status"), error = $("error"), stats = $("stats");
  const download = $("download"), video = $("turntable-video"), videoDownload = $("turntable-download");
  const objectUrls = {};

  const viewer = $("viewer");
  const apiKeyInput = $("api-key");

  function setState(state, message) {
    document.body.dataset.state = state;
    submitButton.disabled = turntableButton.disabled = state === "working";
    status.textContent = message;
    if (state !== "error") error.textContent = "";
  }

  function fail(message, status) {
    error.textContent = message;
    setState("error", "Failed.");
    if (status === 401 || status === 403) {
      // The key lives under Options: open them and put the cursor in the field.
      apiKeyInput.closest("details").open = true;
      apiKeyInput.focus();
      statusHint(apiKeyInput.value.trim() ? "Check the API key under Options." : "Enter the API key under Options.");
    }
  }

  function statusHint(text) {
    status.textContent = text;
  }

  /* Load `url` (a GLB) into the viewer; resolves when it is shown, rejects if it cannot be. */
  function show(url) {
    return new Promise((resolve, reject) => {
      const loaded = () => { cleanup(); resolve(); };
      const failed = (event) => { cleanup(); reject(new Error(`The viewer could not show the model (${event.detail?.type || "error"}).`)); };
      const cleanup = () => { viewer.removeEventListener("load", loaded); viewer.removeEventListener("error", failed); };
      viewer.addEventListener("load", loaded);
      viewer.addEventListener("error", failed);
      viewer.hidden = false;
      viewer.src = url;
    });
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
    if (!response.ok) {
      const problem = new Error(await errorMessage(response));
      problem.status = response.status;
      throw problem;
    }
    return { blob: await response.blob(), headers: response.headers };
  }

  function count(headers, name) {
    const value = Number(headers.get(name));
    return Number.isFinite(value) && headers.has(name) ? value.toLocaleString("en") : "?";
  }

  async function makeModel() {
    const started = performance.now();
    setState("working", "Reconstructing the object; on a CPU this takes a while");
    download.hidden = true;
    stats.textContent = "";
    try {
      const { blob, headers } = await post("/v1/image-to-3d", { format: "glb" },
        { mesh_resolution: "mesh-resolution", seed: "seed" });
      const seconds = (performance.now() - started) / 1000;
      download.href = objectUrl("glb", blob);
      download.textContent = `Download GLB (${formatBytes(blob.size)})`;
      download.hidden = false;
      stats.textContent = `${count(headers, "X-VF3D-Vertices")} vertices · ` +
        `${count(headers, "X-VF3D-Faces")} faces · ${seconds.toFixed(1)} s`;
      await show(download.href);
      document.body.dataset.shown = "";
      setState("done", "Done: drag the model to turn it, scroll to zoom.");
    } catch (problem) {
      fail(problem.message, problem.status);
    }
  }

  async function makeTurntable() {
    const started = performance.now();
    setState("working", "Rendering a turntable video");
    try {
      const { blob } = await post("/v1/turntable", {}, { seed: "seed" });
      video.src = videoDownload.href = objectUrl("mp4", blob);
      video.hidden = videoDownload.hidden = false;
      const seconds = (performance.now() - started) / 1000;
      setState("done", `Turntable video ready (${formatBytes(blob.size)}, ${seconds.toFixed(1)} s).`);
    } catch (problem) {
      fail(problem.message, problem.status);
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
