// The agent console: plain DOM, one WebSocket, one RTCPeerConnection per call. docs/handoff.md.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: "", agent: "", ws: null, board: [], pc: null, callId: null, stream: null,
                muted: false, held: false, iceServers: [], analyser: null };
// What tests (and the curious) can read: the caller's audio as the page hears it.
window.callhook = { callerLevel: 0, callerFrequency: 0, events: [] };

function say(text) { $("call-state").textContent = text; window.callhook.events.push(text); }

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  const token = $("token").value;
  const refused = await signIn(token);
  if (refused) $("signin-error").textContent = "That token is not known.";
});

// Checks a token (an agent token, or an ID token from the identity provider) and connects; the refusal's
// reason if refused.
async function signIn(token) {
  const response = await fetch("/api/session", { method: "POST", body: JSON.stringify({ token }),
                                                  headers: { "Content-Type": "application/json" } });
  if (!response.ok) return (await response.json().catch(() => ({}))).error || `error ${response.status}`;
  state.token = token;
  connect();
  return null;
}

// Signing in through the company's identity provider: the authorization code flow with PKCE, this page
// being a public client (no secret). The redirect comes back to this page; the ID token is then used exactly
// as an agent token. The token lives in this page's memory only: a reload signs in again. docs/handoff.md.
const sso = { config: null };
const SSO_KEY = "callhook.sso";

function randomText(bytes) { return base64url(crypto.getRandomValues(new Uint8Array(bytes))); }
function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
function redirectUri() { return `${location.origin}/`; }
function ssoFailed(text) { $("signin-error").textContent = text; $("sso-button").focus(); }

async function startPage() {
  let config = { static_tokens: true, oidc: null };
  try {
    const response = await fetch("/api/config");
    if (response.ok) config = await response.json();
  } catch (error) { /* the token form still works */ }
  $("signin-form").hidden = !config.static_tokens;
  $("sso-or").hidden = !config.static_tokens;
  if (config.oidc) { sso.config = config.oidc; $("sso").hidden = false; }
  else if (config.oidc_error) $("signin-error").textContent = "Company sign-in is unavailable right now.";
  const params = new URLSearchParams(location.search);
  if (params.has("code") || params.has("error") || params.has("state")) await finishSso(params);
}

$("sso-button").addEventListener("click", async () => {
  const c = sso.config;
  const verifier = randomText(32), stateValue = randomText(16), nonce = randomText(16);
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  sessionStorage.setItem(SSO_KEY, JSON.stringify({ verifier, state: stateValue, nonce, issuer: c.issuer }));
  const url = new URL(c.authorization_endpoint);
  const query = { response_type: "code", client_id: c.client_id, redirect_uri: redirectUri(), scope: c.scopes,
                  state: stateValue, nonce, code_challenge: challenge, code_challenge_method: "S256" };
  for (const [key, value] of Object.entries(query)) url.searchParams.set(key, value);
  location.assign(url.href);
});

async function finishSso(params) {
  history.replaceState(null, "", location.pathname);  // the code leaves the address bar and the history
  const saved = JSON.parse(sessionStorage.getItem(SSO_KEY) || "null");
  sessionStorage.removeItem(SSO_KEY);  // one answer per sign-in started here
  if (!sso.config) { ssoFailed("Company sign-in is not available."); return; }
  // CSRF and mix-up: only an answer to a sign-in this tab started, from the configured issuer
  if (!saved || params.get("state") !== saved.state || saved.issuer !== sso.config.issuer) {
    ssoFailed("That sign-in was not started on this page: please sign in again.");
    return;
  }
  if (params.has("error")) { ssoFailed("The identity provider did not sign you in: please try again."); return; }
  let tokens;
  try {
    const response = await fetch(sso.config.token_endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "authorization_code", code: params.get("code") || "",
                                  redirect_uri: redirectUri(), client_id: sso.config.client_id,
                                  code_verifier: saved.verifier }),
    });
    if (!response.ok) throw new Error(`status ${response.status}`);
    tokens = await response.json();
  } catch (error) {
    ssoFailed("The identity provider did not give a sign-in token: please try again.");
    return;
  }
  // Replay: the ID token must carry the nonce of this sign-in (the console checks signature, issuer,
  // audience and expiry).
  if (idTokenClaims(tokens.id_token).nonce !== saved.nonce) { ssoFailed("The sign-in token was not for this sign-in."); return; }
  const refused = await signIn(tokens.id_token);
  if (refused) ssoFailed(`Sign-in refused: ${refused}.`);
}

function idTokenClaims(token) {
  try {
    const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0))));
  } catch (error) { return {}; }
}

// Back on the sign-in form: the socket was refused or the ID token expired.
function signedOut(text) {
  state.agent = ""; state.token = ""; state.ws = null; state.board = [];
  renderBoard();
  $("who").textContent = "";
  $("queues").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = text;
  (sso.config ? $("sso-button") : $("token")).focus();
}

startPage();

function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  state.ws = ws;
  ws.addEventListener("open", () => ws.send(JSON.stringify({ type: "hello", token: state.token })));
  ws.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
  ws.addEventListener("close", (event) => {
    if (state.ws !== ws) return;
    if (event.code === 4401) { signedOut("Your sign-in has expired: please sign in again."); return; }
    if (event.code === 4003) { signedOut(`Signed out: ${event.reason || "refused"}.`); return; }
    if (state.agent) { $("who").textContent = `${state.agent}: disconnected, reconnecting…`; setTimeout(connect, 1000); }
  });
}

function onMessage(message) {
  switch (message.type) {
    case "welcome":
      state.agent = message.agent;
      state.iceServers = (message.ice_servers || []).map((url) => ({ urls: url }));
      $("who").textContent = `Signed in as ${message.agent} (queues: ${message.queues === "*" ? "all" : message.queues.join(", ")})`
        + (message.expires_at ? ` until ${new Date(message.expires_at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}` : "");
      $("signin").hidden = true;
      $("queues").hidden = false;
      break;
    case "board": state.board = message.calls; renderBoard(); break;
    case "answer": state.pc && state.pc.setRemoteDescription({ type: "answer", sdp: message.sdp }); say("Connecting…"); break;
    case "refused": endCall(message.reason === "taken" ? "Another agent took this call." : `Could not take the call (${message.reason}).`); break;
    case "ended": endCall(`Call ended: ${message.reason}.`); break;
    case "quality": renderQuality(message); break;
    case "expired":  // no more takes; the console closes the socket when the call in progress ends
      $("who").textContent = `${state.agent}: your sign-in has expired; finish the call, then sign in again.`;
      break;
  }
}

function since(seconds) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

function renderBoard() {
  const rows = $("waiting-rows");
  rows.replaceChildren();
  $("queues-empty").hidden = state.board.length > 0;
  $("waiting").hidden = state.board.length === 0;
  for (const call of state.board) {
    const row = document.createElement("tr");
    row.dataset.callId = call.call_id;
    const who = call.user_name ? `${call.user_name} (+${call.user})` : `+${call.user}`;
    const context = Object.entries(call.context || {}).map(([k, v]) => `${k}: ${v}`).join("; ");
    const collected = [call.digits ? `digits: ${call.digits}` : "", context].filter(Boolean).join("; ");
    for (const text of [who, call.queue, null, call.reason || "", collected]) {
      const cell = document.createElement("td");
      if (text === null) { cell.className = "since"; cell.dataset.since = call.enqueued_at; cell.textContent = since(call.enqueued_at); }
      else cell.textContent = text;
      row.append(cell);
    }
    const action = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Answer";
    button.className = "answer";
    button.setAttribute("aria-label", `Answer the call from ${who}`);
    button.disabled = state.callId !== null;
    button.addEventListener("click", () => take(call));
    action.append(button);
    row.append(action);
    rows.append(row);
  }
}
setInterval(() => document.querySelectorAll("td.since").forEach((cell) => { cell.textContent = since(Number(cell.dataset.since)); }), 1000);

async function take(call) {
  if (state.callId) return;
  state.callId = call.call_id;
  renderBoard();
  $("call").hidden = false;
  $("call-with").textContent = `${call.user_name || ""} +${call.user}, queue ${call.queue}${call.reason ? `, ${call.reason}` : ""}`;
  say("Taking the call…");
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    endCall(`No microphone: ${error.message}`);
    return;
  }
  const pc = new RTCPeerConnection({ iceServers: state.iceServers });
  state.pc = pc;
  for (const track of state.stream.getAudioTracks()) pc.addTrack(track, state.stream);
  pc.addEventListener("track", (event) => listen(event.streams[0] || new MediaStream([event.track])));
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") { say("Connected: you are talking to the caller."); $("hangup").focus(); }
    if (pc.connectionState === "failed" && state.pc === pc) {
      state.ws.send(JSON.stringify({ type: "hangup", call_id: state.callId }));
      endCall("The call's audio connection failed.");
    }
  });
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  state.ws.send(JSON.stringify({ type: "take", call_id: call.call_id, sdp: pc.localDescription.sdp }));
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);  // a candidate that never completes must not hold the call
  });
}

function listen(stream) {
  $("remote-audio").srcObject = stream;
  const context = new AudioContext();
  const source = context.createMediaStreamSource(stream);
  const analyser = context.createAnalyser();
  analyser.fftSize = 4096;
  source.connect(analyser);
  state.analyser = analyser;
  const bins = new Float32Array(analyser.frequencyBinCount);
  const wave = new Float32Array(analyser.fftSize);
  const step = () => {
    if (state.analyser !== analyser) return;
    analyser.getFloatTimeDomainData(wave);
    let sum = 0;
    for (const v of wave) sum += v * v;
    const rms = Math.sqrt(sum / wave.length);
    analyser.getFloatFrequencyData(bins);
    let best = 1;
    for (let i = 2; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
    window.callhook.callerLevel = rms;
    if (rms > 0.01) window.callhook.callerFrequency = best * context.sampleRate / analyser.fftSize;
    $("caller-level").value = Math.min(1, rms * 4);
  };
  const frame = () => { step(); if (state.analyser === analyser) requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
  // requestAnimationFrame does not run in a hidden tab: sample on a timer too. The timer alone ends the
  // listening, so the context is closed once (Firefox throws on a second close).
  const timer = setInterval(() => {
    if (state.analyser === analyser) { step(); return; }
    clearInterval(timer);
    context.close();
  }, 250);
}

function renderQuality(message) {
  const rows = [];
  const leg = (name, q) => {
    if (!q) return;
    rows.push([`${name} MOS`, q.mos ?? "–"], [`${name} loss`, `${q.loss_percent ?? 0} %`],
              [`${name} jitter`, `${q.jitter_ms ?? 0} ms`], [`${name} round trip`, q.rtt_ms == null ? "–" : `${q.rtt_ms} ms`]);
  };
  leg("Caller", message.caller);
  leg("Your line", message.agent_leg);
  const list = $("quality");
  list.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    list.append(dt, dd);
  }
}

function hangUp() {
  if (state.callId && state.ws) state.ws.send(JSON.stringify({ type: "hangup", call_id: state.callId }));
  endCall("You hung up.");
}

function endCall(text) {
  say(text);
  if (state.pc) state.pc.close();
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.pc = null; state.stream = null; state.callId = null; state.analyser = null;
  state.muted = false; state.held = false;
  $("mute").setAttribute("aria-pressed", "false");
  $("hold").setAttribute("aria-pressed", "false");
  renderBoard();
}

$("hangup").addEventListener("click", hangUp);
$("mute").addEventListener("click", () => {
  if (!state.stream) return;
  state.muted = !state.muted;
  state.stream.getAudioTracks().forEach((t) => { t.enabled = !state.muted; });
  $("mute").setAttribute("aria-pressed", String(state.muted));
  say(state.muted ? "Your microphone is muted." : "Your microphone is on.");
});
$("hold").addEventListener("click", () => {
  if (!state.callId) return;
  state.held = !state.held;
  state.ws.send(JSON.stringify({ type: "hold", call_id: state.callId, on: state.held }));
  $("hold").setAttribute("aria-pressed", String(state.held));
  say(state.held ? "The caller is on hold." : "Back with the caller.");
});
