// The generation page: form → POST /v1/videos → poll GET /v1/videos/{id} (progress bar) → play the mp4;
// the gallery lists past jobs from GET /v1/videos. Plain DOM, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 300;
let info = null;

function setStatus(text) { $("status").textContent = text; }

function showErrors(detail) {
  const list = $("errors");
  list.replaceChildren();
  const items = Array.isArray(detail) ? detail : [{ loc: [], msg: String(detail) }];
  for (const e of items) {
    const li = document.createElement("li");
    const field = (e.loc || []).filter((p) => p !== "body").join(".");
    li.textContent = field ? `${field}: ${e.msg}` : e.msg;
    list.appendChild(li);
  }
}

function play(job) {
  const video = $("player");
  video.muted = true;              // muted autoplay is allowed without a user gesture
  video.src = job.result.video_url;
  video.dataset.job = job.id;
  $("caption").textContent = `${job.request.prompt} — ${job.result.width}×${job.result.height}, ` +
    `${job.result.frames} frames, seed ${job.result.seed}`;
  video.play().catch(() => {});    // a refused autoplay leaves the controls to the user
}

async function loadInfo() {
  info = await (await fetch("/v1/info")).json();
  const d = info.defaults;
  $("model-info").textContent = `${info.model} (${info.model_type}, ${info.solver})`;
  for (const k of ["width", "height", "frames", "steps", "seed"]) $(k).placeholder = d[k];
  $("prompt").placeholder = d.prompt || "a prompt";
  $("image-label").hidden = info.model_type !== "i2v";
  $("image").required = info.model_type === "i2v";
  $("lora-label").hidden = !info.lora_strength_adjustable;
  $("steps").disabled = info.fixed_steps;
}

async function poll(id) {
  const bar = $("progress");
  for (;;) {
    const r = await fetch(`/v1/videos/${id}`);
    if (!r.ok) { setStatus(`status request failed (${r.status})`); return; }
    const job = await r.json();
    bar.value = job.progress;
    if (job.status === "queued") setStatus(`queued (position ${(job.queue_position ?? 0) + 1})`);
    else if (job.status === "running") {
      setStatus(job.step < job.total_steps ? `denoising: step ${job.step}/${job.total_steps}` : "decoding…");
    } else if (job.status === "succeeded") {
      setStatus("done"); play(job); refreshGallery(); return;
    } else { setStatus("failed"); showErrors(job.error); refreshGallery(); return; }
    await new Promise((res) => setTimeout(res, POLL_MS));
  }
}

async function submit(ev) {
  ev.preventDefault();
  $("errors").replaceChildren();
  const data = new FormData($("form"));
  if (info && info.model_type !== "i2v") data.delete("image");
  $("submit").disabled = true;
  try {
    const r = await fetch("/v1/videos", { method: "POST", body: data });
    const body = await r.json().catch(() => ({ detail: `HTTP ${r.status}` }));
    if (r.status !== 202) {
      setStatus(r.status === 429 ? `busy: retry in ${r.headers.get("Retry-After")} s` : `refused (${r.status})`);
      showErrors(body.detail);
      return;
    }
    $("progress").hidden = false;
    $("progress").value = 0;
    refreshGallery();
    await poll(body.id);
  } catch (e) {
    setStatus(`network error: ${e}`);
  } finally {
    $("submit").disabled = false;
  }
}

async function refreshGallery() {
  const r = await fetch("/v1/videos?limit=60");
  if (!r.ok) return;
  const { jobs } = await r.json();
  const gallery = $("gallery");
  gallery.replaceChildren();
  for (const job of jobs) {
    const item = document.createElement("div");
    item.className = `item ${job.status}`;
    item.dataset.job = job.id;
    if (job.status === "succeeded") {
      const v = document.createElement("video");
      Object.assign(v, { src: job.result.video_url, muted: true, loop: true, autoplay: true, preload: "metadata" });
      v.playsInline = true;
      item.appendChild(v);
      item.addEventListener("click", () => play(job));
    }
    const cap = document.createElement("div");
    cap.textContent = job.status === "succeeded" ? job.request.prompt : `${job.status}: ${job.request.prompt}`;
    if (job.error) cap.title = job.error;
    item.appendChild(cap);
    gallery.appendChild(item);
  }
}

$("form").addEventListener("submit", submit);
loadInfo().then(refreshGallery).catch((e) => setStatus(`cannot reach the server: ${e}`));
