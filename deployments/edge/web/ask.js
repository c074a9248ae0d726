// The page at "/": choose or drop a video (or images), ask, and watch the answer stream in.
// A video is uploaded once with POST /v1/files (with a progress bar) and asked about with
// POST /v1/analyze?stream: a second question about the same file reuses its id. Images go inline
// to POST /v1/chat/completions with stream: true. Both are the routes any client uses.
"use strict";

const state = { files: [], uploaded: null }; // uploaded: {fingerprint, id}

const byId = (id) => document.getElementById(id);

function fingerprint(file) {
  return [file.name, file.size, file.lastModified].join("/");
}

function choose(fileList) {
  state.files = Array.from(fileList);
  const videos = state.files.filter((file) => file.type.startsWith("video/") || !file.type);
  if (videos.length && state.files.length > 1) {
    state.files = [videos[0]];
  }
  byId("chosen").textContent = state.files.length
    ? state.files.map((file) => file.name + " (" + formatBytes(file.size) + ")").join(", ")
    : "Nothing chosen.";
}

function isVideo(files) {
  return files.length === 1 && !files[0].type.startsWith("image/");
}

function setBusy(busy) {
  byId("ask-button").disabled = busy;
}

function showProgress(fraction, text) {
  byId("upload-status").hidden = false;
  byId("upload-progress").value = fraction;
  byId("upload-text").textContent = text;
}

// POST /v1/files with upload progress (fetch cannot report it): resolves to the file object.
function uploadFile(file) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("purpose", "vision");
    form.append("file", file, file.name);
    const request = new XMLHttpRequest();
    request.open("POST", apiUrl("/v1/files"));
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) {
        showProgress(event.loaded / event.total, "Uploading " + formatBytes(event.loaded) + " of " + formatBytes(event.total));
      }
    };
    request.onload = () => {
      const response = new Response(request.responseText, { status: request.status, statusText: request.statusText });
      if (request.status === 200) {
        showProgress(1, "Uploaded " + file.name);
        resolve(JSON.parse(request.responseText));
      } else {
        reject(response);
      }
    };
    request.onerror = () => reject(new Error("The upload failed: the connection closed (is the file over the server's size limit?)"));
    request.send(form);
  });
}

// The result panel stays hidden until an answer starts, so a refused request shows its error alone.
function resetResult() {
  showError("");
  byId("result").hidden = true;
  byId("answer").textContent = "";
  byId("answer").dataset.pieces = "0";
  byId("finish").textContent = "";
  byId("thumbnails").replaceChildren();
  for (const id of ["video-facts", "timing-facts", "served-facts"]) byId(id).replaceChildren();
  byId("oom-retries").replaceChildren();
}

// Streamed text is appended as text (never parsed as HTML); the count of pieces shows it streamed.
function appendAnswer(text) {
  const answer = byId("answer");
  answer.textContent += text;
  answer.dataset.pieces = String(Number(answer.dataset.pieces || "0") + 1);
}

function showThumbnails(sources, timestamps) {
  const box = byId("thumbnails");
  box.replaceChildren();
  sources.forEach((source, index) => {
    const figure = element("figure", null, "thumbnail");
    const image = document.createElement("img");
    image.src = source;
    image.alt = timestamps[index] !== undefined ? "frame at " + timestamps[index].toFixed(2) + " s" : "image " + (index + 1);
    figure.dataset.timestamp = timestamps[index] !== undefined ? String(timestamps[index]) : "";
    figure.append(image, element("figcaption", timestamps[index] !== undefined ? timestamps[index].toFixed(2) + " s" : "image " + (index + 1)));
    box.append(figure);
  });
}

function markUsedFrames(usedTimestamps) {
  const used = new Set(usedTimestamps.map((value) => value.toFixed(4)));
  for (const figure of byId("thumbnails").children) {
    const stamp = figure.dataset.timestamp;
    figure.classList.toggle("unused", stamp !== "" && !used.has(Number(stamp).toFixed(4)));
  }
}

function showServedBy(servedBy) {
  fillTable(byId("served-facts"), [
    ["group", servedBy.group],
    ["replica", servedBy.replica],
    ["precision", servedBy.precision],
    ["device", servedBy.device || "?"],
  ]);
}

function showVideo(video, frames) {
  const rows = [
    ["file", video.filename || "(no name)"],
    ["size", formatBytes(video.size_bytes)],
    ["container / codec", (video.container || "?") + " / " + (video.codec || "?")],
    ["duration", video.duration_s !== undefined && video.duration_s !== null ? video.duration_s.toFixed(2) + " s" : "?"],
    ["resolution", video.width + " x " + video.height],
    ["frame rate", video.average_fps ? Number(video.average_fps).toFixed(2) + " fps" : "?"],
    ["audio", video.has_audio ? "yes" : "no"],
    ["frames sampled", frames.sampled_count + " at " + frames.width + " x " + frames.height],
    ["seeks / decoded", frames.seeks + " / " + frames.decoded_frames],
  ];
  if (video.file_id) rows.push(["file id", video.file_id]);
  fillTable(byId("video-facts"), rows);
}

function showTimings(server, client) {
  const rows = [];
  for (const [name, value] of Object.entries(server || {})) {
    rows.push([name, typeof value === "number" ? value.toFixed(3) + " s" : value]);
  }
  for (const [name, value] of Object.entries(client)) rows.push([name, value.toFixed(3) + " s"]);
  fillTable(byId("timing-facts"), rows);
}

function showRetries(retries) {
  const list = byId("oom-retries");
  list.replaceChildren();
  if (!retries || !retries.length) {
    list.append(element("li", "none"));
    return;
  }
  for (const retry of retries) {
    list.append(element("li",
      retry.before.video_frames + " frames of " + retry.before.max_pixels_per_frame + " px ran out of memory; retried with "
      + retry.after.video_frames + " frames of " + retry.after.max_pixels_per_frame + " px (freed " + formatBytes(retry.freed_bytes) + ")"));
  }
}

// temperature and seed, where a person set them (else the server's defaults).
function answerOptions() {
  const options = {};
  for (const name of ["temperature", "seed"]) {
    const value = byId(name).value.trim();
    if (value !== "") options[name] = Number(value);
  }
  return options;
}

// The chosen video's file id: uploaded once, reused for every later question about the same file.
async function uploadedId(file) {
  const key = fingerprint(file);
  if (!state.uploaded || state.uploaded.fingerprint !== key) {
    const uploaded = await uploadFile(file);
    state.uploaded = { fingerprint: key, id: uploaded.id };
  } else {
    showProgress(1, "Reusing the uploaded file " + state.uploaded.id);
  }
  return state.uploaded.id;
}

function sampling() {
  const name = document.querySelector("input[name=sampling]:checked").value;
  return { name, value: byId(name).value };
}

async function askAboutVideo(file, question) {
  const started = performance.now();
  await uploadedId(file);
  const uploadedAt = performance.now();
  const form = new FormData();
  form.append("file_id", state.uploaded.id);
  form.append("question", question);
  const chosen = sampling();
  form.append(chosen.name, chosen.value);
  form.append("max_tokens", byId("max-tokens").value);
  for (const [name, value] of Object.entries(answerOptions())) form.append(name, String(value));
  form.append("stream", "true");
  form.append("thumbnails", "true");
  const response = await fetch(apiUrl("/v1/analyze"), { method: "POST", headers: authHeaders(), body: form });
  if (response.status === 404) state.uploaded = null; // the file expired or was deleted: upload again next time
  if (!response.ok) throw response;
  let firstText = null;
  await readEvents(response, (name, payload) => {
    if (name === "start") {
      byId("result").hidden = false;
      showVideo(payload.video, payload.frames);
      showThumbnails(payload.frames.thumbnails || [], payload.frames.sampled_timestamps_s);
      showServedBy(payload.served_by);
    } else if (name === "delta") {
      if (firstText === null) firstText = performance.now();
      appendAnswer(payload.text);
    } else if (name === "done") {
      const now = performance.now();
      byId("answer").textContent = payload.answer;
      byId("finish").textContent = "finish: " + payload.finish_reason + ", " + payload.usage.prompt_tokens
        + " prompt tokens, " + payload.usage.completion_tokens + " answer tokens";
      markUsedFrames(payload.frames.timestamps_s);
      showServedBy(payload.served_by);
      const client = { "file upload (page)": (uploadedAt - started) / 1000, "whole question (page)": (now - started) / 1000 };
      if (firstText !== null) client["first text (page)"] = (firstText - started) / 1000;
      showTimings(payload.timings, client);
      showRetries(payload.out_of_memory_retries);
    } else if (name === "error") {
      showError(payload.error.message);
    }
  });
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("Could not read " + file.name));
    reader.readAsDataURL(file);
  });
}

async function askAboutImages(files, question) {
  const started = performance.now();
  const urls = await Promise.all(files.map(readAsDataUrl));
  showThumbnails(files.map((file) => URL.createObjectURL(file)), []);
  const content = urls.map((url) => ({ type: "image_url", image_url: { url } }));
  content.push({ type: "text", text: question });
  const response = await fetch(apiUrl("/v1/chat/completions"), {
    method: "POST",
    headers: { ...authHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify({
      messages: [{ role: "user", content }],
      max_tokens: Number(byId("max-tokens").value),
      ...answerOptions(),
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!response.ok) throw response;
  byId("result").hidden = false;
  showServedBy({
    group: response.headers.get("x-served-by-group"),
    replica: response.headers.get("x-served-by-replica"),
    precision: response.headers.get("x-served-by-precision"),
  });
  let firstText = null;
  await readEvents(response, (name, payload) => {
    if (!payload) return;
    if (payload.error) {
      showError(payload.error.message);
      return;
    }
    const choice = payload.choices && payload.choices[0];
    if (choice && choice.delta && choice.delta.content) {
      if (firstText === null) firstText = performance.now();
      appendAnswer(choice.delta.content);
    }
    if (choice && choice.finish_reason) byId("finish").textContent = "finish: " + choice.finish_reason;
    if (payload.usage) {
      byId("finish").textContent += ", " + payload.usage.prompt_tokens + " prompt tokens, " + payload.usage.completion_tokens + " answer tokens";
    }
  });
  const client = { "whole question (page)": (performance.now() - started) / 1000 };
  if (firstText !== null) client["first text (page)"] = (firstText - started) / 1000;
  showTimings({}, client);
  fillTable(byId("video-facts"), files.map((file, index) => ["image " + (index + 1), file.name + " (" + formatBytes(file.size) + ")"]));
  showRetries([]);
}

async function ask(event) {
  if (event) event.preventDefault();
  const question = byId("question").value.trim();
  if (!state.files.length) {
    showError("Choose a video or images first.");
    return;
  }
  if (!question) {
    showError("Type a question.");
    return;
  }
  setBusy(true);
  resetResult();
  try {
    const wholeVideo = document.querySelector("input[name=mode]:checked").value === "job";
    if (wholeVideo && !isVideo(state.files)) {
      showError("The whole-video mode takes one video.");
    } else if (wholeVideo) {
      const file = state.files[0];
      const running = startVideoJob(file, await uploadedId(file), question, sampling());
      setBusy(false); // a job runs on in its card: the form is free for the next question or job
      await running;
    } else if (isVideo(state.files)) {
      await askAboutVideo(state.files[0], question);
    } else {
      await askAboutImages(state.files, question);
    }
  } catch (failure) {
    if (failure instanceof Response) {
      if (failure.status === 401) askForKey(() => ask());
      showError(await errorMessage(failure));
    } else {
      showError(failure.message || String(failure));
    }
  } finally {
    setBusy(false);
  }
}

function setUp() {
  openJobFromAddress().catch((failure) => showError(failure.message || String(failure)));
  byId("ask-form").addEventListener("submit", ask);
  byId("media-input").addEventListener("change", (event) => choose(event.target.files));
  const zone = byId("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    choose(event.dataTransfer.files);
  });
}

setUp();
