// What both pages share: the API key (this tab only), error messages, byte formatting and a
// server-sent-events reader. Text from the server is always set with textContent, never as HTML.
"use strict";

const KEY_STORAGE = "video-detective-api-key";
// The app's route prefix ("" at the root), written into the page by the server.
const API_ROOT = document.querySelector("meta[name=api-root]").content;

function apiUrl(path) {
  return API_ROOT + path;
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

// A 401 shows the key panel; `onKey` runs once a key is entered.
function askForKey(onKey) {
  const panel = document.getElementById("key-panel");
  const form = document.getElementById("key-form");
  panel.hidden = false;
  form.onsubmit = (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, document.getElementById("api-key").value.trim());
    panel.hidden = true;
    if (onKey) onKey();
  };
}

// The server's message from an error response (its JSON body's error.message), or the status line.
async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.message) return response.status + ": " + body.error.message;
  } catch (ignored) {
    // not JSON: fall through to the raw text
  }
  return response.status + " " + response.statusText + (text ? ": " + text.slice(0, 300) : "");
}

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return value.toFixed(unit === 0 ? 0 : 2) + " " + units[unit];
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fillTable(table, rows) {
  table.replaceChildren();
  for (const [name, value] of rows) {
    const row = document.createElement("tr");
    row.append(element("th", name), element("td", value));
    table.append(row);
  }
}

function showError(message) {
  const box = document.getElementById("error-box");
  box.textContent = message;
  box.hidden = !message;
}

// Calls onEvent(name, payload) for each server-sent event of a fetch response; `name` is "message"
// for an unnamed event. Stops at the stream's end.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let boundary;
    while ((boundary = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + 2);
      let name = "message";
      let id = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        else if (line.startsWith("id:")) id = line.slice(3).trim();
      }
      if (!data.length) continue;
      const joined = data.join("\n");
      onEvent(name, joined === "[DONE]" ? null : JSON.parse(joined), id);
    }
  }
}
