// The synclearn dashboard: chat with the served model and watch the learner (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
let modelId = null;
let history = [];  // the conversation, resent with every request as OpenAI clients do

function newSessionId() {
  return "web-" + Math.random().toString(36).slice(2, 12);
}
let sessionId = sessionStorage.getItem("synclearn-session") || newSessionId();

function setSession(id) {
  sessionId = id;
  sessionStorage.setItem("synclearn-session", id);
  $("session-id").textContent = id;
}

function headers(extra) {
  const h = { "Content-Type": "application/json", ...(extra || {}) };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(method, path, body, extra) {
  const resp = await fetch(path, { method, headers: headers(extra), body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error((data.error && data.error.message) || resp.status + " " + resp.statusText);
  return data;
}

function addMessage(role, text, meta) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  if (meta) {
    const span = document.createElement("span");
    span.className = "meta";
    span.textContent = meta;
    div.appendChild(span);
  }
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

async function send(event) {
  event.preventDefault();
  const text = $("prompt").value;
  if (!text.trim()) return;
  $("prompt").value = "";
  $("chat-error").textContent = "";
  addMessage("user", text);
  history.push({ role: "user", content: text });
  $("send").disabled = true;
  try {
    if (!modelId) await loadModel();
    const out = await api("POST", "/v1/chat/completions", { model: modelId, messages: history, max_tokens: 64 },
                          { "X-Session-Id": sessionId });
    const reply = out.choices[0].message.content;
    history.push({ role: "assistant", content: reply });
    const versions = out.synclearn ? out.synclearn.versions.join("→") : "";
    addMessage("assistant", reply, "weights v" + versions).classList.add("reply");
  } catch (err) {
    history.pop();
    $("chat-error").textContent = err.message;
  } finally {
    $("send").disabled = false;
  }
}

async function forgetConversation() {
  $("chat-error").textContent = "";
  try {
    const report = await api("POST", "/v1/forget", { session: true, mode: "auto" }, { "X-Session-Id": sessionId });
    addMessage("system", "forgot " + report.deleted + " turn(s) (" + report.mode + ")");
    newConversation();
    refresh();
  } catch (err) {
    $("chat-error").textContent = err.message;
  }
}

function newConversation() {
  history = [];
  $("messages").textContent = "";
  setSession(newSessionId());
}

function show(id, value) {
  $(id).textContent = value === null || value === undefined ? "–" : String(value);
}

function renderNeurons(memory) {
  const box = $("neurons");
  const layers = memory && (memory.layers || memory.neurons || memory);
  if (!layers || typeof layers !== "object") return;
  box.textContent = "";
  for (const [layer, info] of Object.entries(layers)) {
    if (!info || typeof info !== "object") continue;
    const free = info.free ?? info.free_neurons, prot = info.protected ?? info.protected_neurons;
    if (free === undefined && prot === undefined) continue;
    const total = info.neurons ?? info.total ?? info.d_ff ?? ((free || 0) + (prot || 0));
    const row = document.createElement("div");
    row.className = "neuron-layer";
    row.textContent = "layer " + layer + ": " + (free ?? "?") + " free, " + (prot ?? "?") + " protected of " + total + " ";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (100 * (free || 0) / Math.max(total, 1)) + "px";
    const pbar = document.createElement("span");
    pbar.className = "bar protected";
    pbar.style.width = (100 * (prot || 0) / Math.max(total, 1)) + "px";
    row.append(bar, pbar);
    box.appendChild(row);
  }
}

function renderForgets(list) {
  const ul = $("forgets");
  ul.textContent = "";
  if (!list || !list.length) {
    ul.innerHTML = '<li class="muted">none</li>';
    return;
  }
  for (const f of list) {
    const li = document.createElement("li");
    li.textContent = new Date(f.at * 1000).toLocaleTimeString() + ": " + f.scope + " by " + f.selector + ", " +
      f.deleted + " row(s), " + f.mode + ", now v" + f.version_after;
    ul.appendChild(li);
  }
}

async function refresh() {
  try {
    const s = await api("GET", "/v1/learner/status");
    const l = s.learner || {};
    show("weight-version", s.weight_version);
    show("attached", s.attached);
    show("steps", s.committed_steps);
    show("last-loss", l.last_loss === null || l.last_loss === undefined ? null : Number(l.last_loss).toFixed(4));
    show("examples", l.examples);
    show("rows", s.log ? s.log.learned + " / " + s.log.pending : s.log_rows);
    const fresh = l.new_rows ?? l.new, replayed = l.replayed_rows ?? l.replayed;
    show("new-replayed", fresh === undefined && replayed === undefined ? null : (fresh ?? "?") + " / " + (replayed ?? "?"));
    show("sessions", s.sessions);
    show("checkpoint", s.checkpoint ? "#" + s.checkpoint.seq + " at v" + s.checkpoint.weight_version : null);
    renderNeurons(s.memory || l.memory);
    renderForgets(s.recent_forgets);
    $("learner-raw").textContent = JSON.stringify(l, null, 1);
    $("status-error").textContent = "";
  } catch (err) {
    $("status-error").textContent = "status: " + err.message;
  }
}

async function loadModel() {
  const models = await api("GET", "/v1/models");
  modelId = models.data[0].id;
  $("model-name").textContent = "model: " + modelId;
}

async function control(path) {
  try {
    await api("POST", path, {});
  } catch (err) {
    $("status-error").textContent = err.message;
  }
  refresh();
}

$("api-key").value = localStorage.getItem("synclearn-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("synclearn-key", $("api-key").value); loadModel(); });
$("chat-form").addEventListener("submit", send);
$("forget-conversation").addEventListener("click", forgetConversation);
$("new-conversation").addEventListener("click", newConversation);
$("attach").addEventListener("click", () => control("/v1/learner/attach"));
$("detach").addEventListener("click", () => control("/v1/learner/detach"));
setSession(sessionId);
loadModel().catch((err) => { $("chat-error").textContent = err.message; });
refresh();
setInterval(refresh, 1000);
