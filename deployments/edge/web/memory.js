// The live memory view at "/ui/memory": one card per replica of every group, from GET /v1/memory
// every few seconds. Every figure shown is one the server measured; nothing is computed here but
// the split of a bar.
"use strict";

const REFRESH_MS = 3000;
const byId = (id) => document.getElementById(id);

// The bar's parts, in bytes, and what 100% is. On a GPU: this replica's weights, the rest of what its
// allocator holds, other processes, and free, out of the device's total. On the CPU: weights, the rest
// of the replica's resident memory, and free, out of its budget.
function memoryParts(replica) {
  const memory = replica.memory || {};
  const report = replica.load_report || {};
  const loaded = (report.attempts || []).find((attempt) => attempt.outcome === "loaded");
  const weights = loaded && loaded.measured_bytes ? loaded.measured_bytes : 0;
  const gpu = (memory.gpus || [])[0];
  if (gpu && (replica.model || {}).device !== "cpu") {
    const held = gpu.torch ? gpu.torch.reserved_bytes : weights;
    // What the device has in use beyond this replica's allocator: other processes (NVML lists them; a probe
    // without a list still says how much is used).
    const listed = (gpu.other_processes || []).reduce((sum, process) => sum + (process.used_bytes || 0), 0);
    const others = Math.max(listed, gpu.total_bytes - gpu.free_bytes - held, 0);
    return {
      total: gpu.total_bytes,
      parts: {
        weights: Math.min(weights, held),
        activations: Math.max(held - weights, 0),
        other: others,
        free: gpu.free_bytes,
      },
      caption: gpu.name + ": " + formatBytes(gpu.total_bytes - gpu.free_bytes) + " used of " + formatBytes(gpu.total_bytes),
    };
  }
  const budget = replica.budget || {};
  const total = budget.limit_bytes || memory.system_total_bytes || 1;
  const rss = memory.process_rss_bytes || 0;
  return {
    total,
    parts: {
      weights: Math.min(weights, rss),
      activations: Math.max(rss - weights, 0),
      other: 0,
      free: Math.max(total - rss, 0),
    },
    caption: "CPU: resident " + formatBytes(rss) + " of a " + formatBytes(total) + " budget",
  };
}

function bar(replica) {
  const { total, parts, caption } = memoryParts(replica);
  const wrapper = element("div", null, "memory");
  const track = element("div", null, "bar");
  for (const [name, bytes] of Object.entries(parts)) {
    const segment = element("span", null, "segment " + name);
    segment.style.width = Math.max(0, Math.min(100, (100 * bytes) / total)).toFixed(2) + "%";
    segment.title = name + ": " + formatBytes(bytes);
    track.append(segment);
  }
  wrapper.append(track, element("p", caption, "hint"));
  return wrapper;
}

function timeline(report) {
  const list = element("ol", null, "timeline");
  for (const attempt of (report && report.attempts) || []) {
    const item = element("li", null, "attempt " + attempt.outcome);
    item.append(
      element("strong", attempt.strategy + " on " + attempt.device + ": " + attempt.outcome),
      element("span", " estimate " + formatBytes(attempt.estimate_bytes) + " / budget " + formatBytes(attempt.budget_bytes)
        + (attempt.measured_bytes ? ", measured " + formatBytes(attempt.measured_bytes) : "")
        + ", " + attempt.seconds.toFixed(2) + " s"),
    );
    if (attempt.reason) item.title = attempt.reason;
    list.append(item);
  }
  if (!list.children.length) list.append(element("li", "no attempt yet"));
  return list;
}

const GROUP_TITLES = { gpu: "GPU group", gpu_floor: "GPU floor replicas", cpu: "CPU group" };

function groupTitle(group) {
  return GROUP_TITLES[group] || group;
}

function card(group, replica) {
  const state = replica.state || "unknown";
  const node = element("article", null, "card state-" + state);
  node.dataset.group = group;
  node.dataset.state = state;
  node.append(element("h3", groupTitle(group) + ": " + (replica.replica || "no replica")));
  const facts = document.createElement("table");
  const rows = [
    ["state", state],
    ["precision", replica.precision || "none"],
  ];
  if (replica.node_ip) rows.push(["node", replica.node_ip]);
  if (replica.reason) rows.push(["why", replica.reason]);
  if (replica.budget) rows.push(["budget", formatBytes(replica.budget.weights_bytes) + " for weights of " + formatBytes(replica.budget.limit_bytes)]);
  if (replica.request_out_of_memory !== undefined) {
    rows.push(["request out-of-memory", String(replica.request_out_of_memory)]);
  }
  if (replica.batching) rows.push(["batch", replica.batching.running + " running, " + replica.batching.waiting + " waiting"]);
  const media = replica.batching && replica.batching.media_cache;
  if (media) {
    rows.push(["media cache", formatBytes(media.bytes) + " of " + formatBytes(media.max_bytes) + ", " + media.entries + " entries, " +
      Math.round(100 * media.hit_ratio) + "% hits (" + media.hits + " of " + (media.hits + media.misses) + ")"]);
  }
  fillTable(facts, rows);
  node.append(facts);
  if (replica.memory) node.append(bar(replica));
  if (replica.load_report !== undefined) {
    node.append(element("h4", "Loading attempts"), timeline(replica.load_report));
  }
  return node;
}

function render(body) {
  const breakers = Object.entries(body.breakers || { gpu: body.gpu_breaker });
  byId("breaker").textContent = breakers.map(([group, state]) => (breakers.length > 1 ? groupTitle(group) + " " : "") + state).join(", ");
  const spills = Object.entries(body.floor_spills_by_reason || {});
  byId("spills").textContent = spills.length ? spills.map(([reason, count]) => reason + ": " + count).join("; ") : "none";
  byId("spills-line").hidden = !("gpu_floor" in body.groups);
  byId("fallbacks").textContent = String(body.fallbacks);
  const reasons = Object.entries(body.fallbacks_by_reason || {}).map(([reason, count]) => reason + ": " + count);
  byId("fallback-reasons").textContent = reasons.length ? "(" + reasons.join("; ") + ")" : "";
  const jobs = body.jobs && body.jobs.queued_segments !== undefined ? body.jobs : null;
  byId("jobs-line").hidden = !jobs;
  if (jobs) {
    byId("job-segments").textContent = jobs.queued_segments + " queued, " + jobs.running_segments + " running (at most "
      + jobs.max_running_segments + ") over " + jobs.jobs + " job" + (jobs.jobs === 1 ? "" : "s");
  }
  const groups = byId("groups");
  groups.replaceChildren();
  for (const [group, replicas] of Object.entries(body.groups)) {
    const section = element("section", null, "group");
    section.dataset.group = group;
    const idle = group === "gpu_floor" && !replicas.length ? ", idle until the GPU group is busy" : "";
    const segments = jobs ? (jobs.running_segments_by_group[group] || 0) : 0;
    const running = segments ? ", " + segments + " job segment" + (segments === 1 ? "" : "s") + " running" : "";
    const title = element("h2", groupTitle(group) + " (" + replicas.length + " replica" + (replicas.length === 1 ? "" : "s") + idle + running + ")");
    title.dataset.jobSegments = String(segments);
    section.append(title);
    const cards = element("div", null, "cards");
    for (const replica of replicas) cards.append(card(group, replica));
    section.append(cards);
    groups.append(section);
  }
  byId("updated").textContent = new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    const response = await fetch(apiUrl("/v1/memory"), { headers: authHeaders() });
    if (response.status === 401) {
      askForKey(refresh);
      showError(await errorMessage(response));
      return;
    }
    if (!response.ok) {
      showError(await errorMessage(response));
      return;
    }
    showError("");
    render(await response.json());
  } catch (failure) {
    showError("The server did not answer: " + (failure.message || failure));
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
