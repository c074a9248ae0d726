// The page's "whole video" mode: a job over an uploaded video (POST /v1/video/jobs), shown as a card with a
// progress bar, the video itself, a timeline that fills in as segments land (GET .../events), and the final
// answer. A row of the timeline (a segment, or an event in it) jumps the player to its time. Each job has
// its own card; several can run at once. Text from the server is set with textContent only.
"use strict";

function clockTime(seconds) {
  const whole = Math.floor(seconds);
  const pad = (value) => String(value).padStart(2, "0");
  return Math.floor(whole / 3600) + ":" + pad(Math.floor(whole / 60) % 60) + ":" + pad(whole % 60);
}

function jobCard(job, videoUrl) {
  const card = element("article", null, "panel job");
  card.dataset.jobId = job.id;
  const head = element("div", null, "job-head");
  head.append(element("h2", "Whole video: " + (job.filename || job.file_id)), element("span", job.state, "job-state"));
  const progress = document.createElement("progress");
  progress.className = "job-progress";
  progress.max = job.progress.segments;
  progress.value = 0;
  const cancel = element("button", "Cancel", "job-cancel");
  cancel.type = "button";
  cancel.onclick = () => cancelJob(card);
  const bar = element("div", null, "job-bar");
  bar.append(progress, element("span", "0 of " + job.progress.segments + " segments", "job-progress-text"), cancel);
  const player = document.createElement("video");
  player.className = "job-player";
  player.controls = true;
  player.preload = "metadata";
  player.src = videoUrl;
  const body = element("div", null, "job-body");
  const timeline = element("ol", null, "job-timeline");
  const side = element("div", null, "job-side");
  side.append(player, element("h3", "Answer"), element("p", "(when every segment is in)", "answer job-answer hint"));
  body.append(element("div", null, "job-timeline-box"), side);
  body.firstChild.append(element("h3", "Timeline"), timeline);
  card.append(head, element("p", job.question, "hint job-question"), bar, element("p", "", "job-reason hint"), body);
  return card;
}

function jumpTo(card, seconds) {
  const player = card.querySelector(".job-player");
  player.currentTime = seconds;
  card.dataset.jumpedTo = String(seconds);
}

function timelineRow(card, className, seconds, thumbnail, label, text) {
  const item = element("li", null, className);
  item.dataset.time = String(seconds);
  const button = element("button", null, "job-jump");
  button.type = "button";
  button.onclick = () => jumpTo(card, seconds);
  if (thumbnail) {
    const image = document.createElement("img");
    image.alt = "frame near " + clockTime(seconds);
    showThumbnail(image, thumbnail);
    button.append(image);
  }
  button.append(element("span", label, "job-time"), element("span", text, "job-text"));
  item.append(button);
  return item;
}

// A thumbnail is a link to the job's thumbnail route, which wants the key: fetched with it, shown from a blob.
async function showThumbnail(image, url) {
  const response = await fetch(url, { headers: authHeaders() });
  if (response.ok) image.src = URL.createObjectURL(await response.blob());
}

// A segment's row, in time order, with its events (in the whole video's clock) under it.
function addSegment(card, segment) {
  const timeline = card.querySelector(".job-timeline");
  if (timeline.querySelector("li.job-segment[data-index='" + segment.index + "']")) return;
  const failed = segment.state !== "done";
  const label = clockTime(segment.start_s) + " - " + clockTime(segment.end_s);
  const text = failed ? "failed: " + segment.error : segment.events.length + " events";
  const row = timelineRow(card, "job-segment" + (failed ? " failed" : ""), segment.start_s, segment.thumbnail_url, label, text);
  row.dataset.index = String(segment.index);
  const events = element("ol", null, "job-events");
  for (const event of segment.events) {
    events.append(timelineRow(card, "job-event", event.time_s, event.thumbnail_url, clockTime(event.time_s), event.description));
  }
  row.append(events);
  const later = Array.from(timeline.children).find((other) => Number(other.dataset.time) > segment.start_s);
  timeline.insertBefore(row, later || null);
}

function showProgressOf(card, progress) {
  card.querySelector(".job-state").textContent = progress.state;
  card.querySelector(".job-progress").value = progress.done + progress.failed;
  card.querySelector(".job-progress-text").textContent = (progress.done + progress.failed) + " of " + progress.segments
    + " segments" + (progress.failed ? " (" + progress.failed + " failed)" : "");
}

function showEnd(card, job) {
  card.querySelector(".job-state").textContent = job.state;
  card.querySelector(".job-cancel").disabled = true;
  card.querySelector(".job-reason").textContent = job.reason;
  const answer = card.querySelector(".job-answer");
  answer.classList.remove("hint");
  answer.textContent = job.final ? job.final.answer : "(no final answer: " + job.reason + ")";
  card.dataset.ended = job.state;
}

async function cancelJob(card) {
  const response = await fetch(apiUrl("/v1/video/jobs/" + card.dataset.jobId), { method: "DELETE", headers: authHeaders() });
  if (!response.ok) showError(await errorMessage(response));
}

// Start a job over the uploaded file `fileId`; its card follows the job's events until it ends. The address
// names the job, so a reload (or the link, sent to someone with the same key) shows it again.
async function startVideoJob(file, fileId, question, sampling) {
  const body = { file_id: fileId, question, segment_s: Number(document.getElementById("segment-s").value) };
  body[sampling.name] = Number(sampling.value);
  const response = await fetch(apiUrl("/v1/video/jobs"), {
    method: "POST",
    headers: { ...authHeaders(), "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw response;
  const job = await response.json();
  history.replaceState(null, "", "?job=" + encodeURIComponent(job.id));
  await followJob(job, URL.createObjectURL(file));
}

// The job's events until it ends: a stream the server ends after a while (jobs.max_event_stream_s) is opened
// again with Last-Event-ID, and resumes where it was.
async function followJob(job, videoUrl) {
  const card = jobCard(job, videoUrl);
  document.getElementById("jobs").prepend(card);
  let lastId = null;
  let ended = false;
  while (!ended) {
    const headers = lastId === null ? authHeaders() : { ...authHeaders(), "Last-Event-ID": lastId };
    const events = await fetch(apiUrl("/v1/video/jobs/" + job.id + "/events"), { headers });
    if (!events.ok) throw events;
    await readEvents(events, (name, payload, id) => {
      if (id !== null) lastId = id;
      if (name === "segment") addSegment(card, payload);
      else if (name === "progress") showProgressOf(card, payload);
      else if (name === "done") { showEnd(card, payload); ended = true; }
      else if (name === "error") { showError(payload.message); ended = true; }
    });
    if (!ended) await new Promise((resolve) => setTimeout(resolve, 1000));  // the stream's retry: 1000
  }
}

// The job the address names (?job=...), with its video fetched from the Files API for the player.
async function openJobFromAddress() {
  const jobId = new URLSearchParams(location.search).get("job");
  if (!jobId) return;
  const response = await fetch(apiUrl("/v1/video/jobs/" + encodeURIComponent(jobId)), { headers: authHeaders() });
  if (response.status === 401) askForKey(openJobFromAddress);
  if (!response.ok) {
    showError(await errorMessage(response));
    return;
  }
  const job = await response.json();
  const content = await fetch(apiUrl("/v1/files/" + encodeURIComponent(job.file_id) + "/content"), { headers: authHeaders() });
  const videoUrl = content.ok ? URL.createObjectURL(await content.blob()) : "";
  await followJob(job, videoUrl);
}
