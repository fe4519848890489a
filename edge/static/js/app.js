// The page: three modes behind tabs, shared pickers and preferences. `window.tolk` exposes the live
// objects (sessions, views) for the browser tests and for anyone debugging in the console.

import { api } from "./api.js";
import { CaptionView, el, languageName } from "./captions.js";
import { ChannelPlayer } from "./channel.js";
import { download, transcribe } from "./file.js";
import { MicSession } from "./mic.js";

const LANGUAGES = ["en", "de", "fr", "es", "pt", "it", "nl", "pl", "ru", "uk", "tr", "ar", "hi", "ja", "zh"];
const TARGETS = ["pt", "en", "de", "fr", "es", "it", "nl", "ja", "zh"];
const $ = (id) => document.getElementById(id);

function status(id) {
  const node = $(id);
  return (text, { error = false } = {}) => {
    node.textContent = text;
    node.classList.toggle("error", error);
  };
}

function languagePicker(select, { auto = true, value = "en" } = {}) {
  const options = [...(auto ? [["auto", "Detect automatically"]] : []), ...LANGUAGES.map((c) => [c, languageName(c)])];
  select.replaceChildren(...options.map(([code, name]) => {
    const o = el("option", "", name);
    o.value = code;
    return o;
  }));
  select.value = value;
}

// Which translation pairs this server serves (GET /v1/languages), so a picker offers only those it can keep.
// Unknown (no translator announced yet, or the route failed): everything is offered and the server refuses.
const languages = {
  pairs: null,
  async load() {
    try {
      const body = await (await api.fetch("/v1/languages")).json();
      this.pairs = body.any_pair ? null : body.pairs.filter((p) => p.available);
    } catch {
      this.pairs = null;
    }
    for (const refresh of this.listeners) refresh();
  },
  listeners: [],
  /** Why `target` cannot be had from `source` here, or "" when it can (`auto`: from any language). */
  why(source, target) {
    if (!this.pairs || target === source) return "";
    const ok = this.pairs.some((p) => p.target === target && (source === "auto" || p.source === source));
    return ok ? "" : `No translation into ${languageName(target)}${source === "auto" ? "" : ` from ${languageName(source)}`} on this server`;
  },
};

function targetPicker(fieldset, onChange, source = () => "auto") {
  for (const code of TARGETS) {
    const box = el("input");
    box.type = "checkbox";
    box.value = code;
    box.addEventListener("change", () => onChange(selected()));
    const label = el("label");
    label.append(box, languageName(code));
    fieldset.append(label);
  }
  const selected = () => [...fieldset.querySelectorAll("input:checked")].map((b) => b.value);
  selected.set = (codes) => {
    for (const b of fieldset.querySelectorAll("input")) b.checked = codes.includes(b.value);
  };
  selected.refresh = () => {  // an unserved target is not offered (and says why); one already picked stays
    for (const b of fieldset.querySelectorAll("input")) {
      const why = languages.why(source(), b.value);
      b.disabled = Boolean(why) && !b.checked;
      b.parentElement.title = why;
    }
  };
  languages.listeners.push(selected.refresh);
  return selected;
}

function tabs() {
  const list = [...document.querySelectorAll("[role=tab]")];
  const select = (tab) => {
    for (const t of list) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    tab.focus();
    history.replaceState(null, "", "#" + tab.id.slice(4));
  };
  list.forEach((t, i) => {
    t.addEventListener("click", () => select(t));
    t.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) select(list[(i + step + list.length) % list.length]);
      if (e.key === "Home") select(list[0]);
      if (e.key === "End") select(list[list.length - 1]);
    });
  });
  const initial = list.find((t) => "#" + t.id.slice(4) === location.hash);
  if (initial) select(initial);
}

function preferences() {
  const large = $("large");
  large.checked = localStorage.getItem("tolk.large") === "1";
  document.body.classList.toggle("large", large.checked);
  large.addEventListener("change", () => {
    document.body.classList.toggle("large", large.checked);
    localStorage.setItem("tolk.large", large.checked ? "1" : "0");
  });
  $("token").value = api.token;
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    api.setToken($("token").value);
    $("auth").open = false;
  });
}

function micMode() {
  const view = new CaptionView($("mic-captions"));
  const say = status("mic-status");
  const language = $("mic-language");
  languagePicker(language, { value: "en" });
  const targets = targetPicker($("mic-targets"), () => session?.configure(settings()), () => language.value);
  const settings = () => ({ language: language.value, targets: targets(), diarize: $("mic-diarize").checked });
  language.addEventListener("change", () => { targets.refresh(); session?.configure(settings()); });
  let session = null;
  const startBtn = $("mic-start"), stopBtn = $("mic-stop");
  startBtn.addEventListener("click", async () => {
    startBtn.disabled = true;
    view.clear();
    session = new MicSession({ view, onStatus: say, onEnd: () => { startBtn.disabled = false; stopBtn.disabled = true; },
                               onTargets: (t) => { targets.set(t); targets.refresh(); } });
    window.tolk.mic = session;
    try {
      await session.start(settings());
      stopBtn.disabled = false;
      stopBtn.focus();
    } catch (err) {
      say(`Microphone unavailable: ${err.message}`, { error: true });
      startBtn.disabled = false;
    }
  });
  stopBtn.addEventListener("click", () => {
    stopBtn.disabled = true;
    session?.stop();
  });
  return view;
}

function channelMode() {
  const view = new CaptionView($("channel-captions"));
  const say = status("channel-status");
  const player = new ChannelPlayer({ audio: $("channel-audio"), view, onStatus: say,
                                     onTargets: (t) => targets.set(t) });
  let picked = false;  // until the listener picks targets, each channel's defaults apply
  const targets = targetPicker($("channel-targets"), (t) => { picked = true; player.setTargets(t); });
  const list = $("channels"), leave = $("channel-leave");
  const refresh = async () => {
    try {
      const { channels } = await (await api.fetch("/v1/channels")).json();
      list.replaceChildren(...channels.map((c) => {
        const b = el("button", "", c.title || c.name);
        b.dataset.channel = c.name;
        b.setAttribute("aria-pressed", String(c.name === player.channel && !player.leaving));
        b.append(el("span", "live", ` ${languageName(c.language)}${c.live ? " · live" : ""}`));
        b.addEventListener("click", () => {
          for (const other of list.querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === b));
          player.subscribe(c.name, picked ? targets() : []);
          leave.disabled = false;
        });
        return el("li").appendChild(b).parentElement;
      }));
      if (!channels.length) say("No channels are configured on this server (TOLK_CHANNELS).");
    } catch (err) {
      say(`Channels unavailable: ${err.message}`, { error: true });
    }
  };
  $("channels-refresh").addEventListener("click", refresh);
  leave.addEventListener("click", () => {
    player.leave();
    leave.disabled = true;
    for (const b of list.querySelectorAll("button")) b.setAttribute("aria-pressed", "false");
  });
  refresh();
  window.tolk.channel = player;
  return view;
}

function fileMode() {
  const view = new CaptionView($("file-captions"));
  const say = status("file-status");
  const language = $("file-language");
  languagePicker(language, { value: "auto" });
  const targets = targetPicker($("file-targets"), () => {}, () => language.value);
  language.addEventListener("change", () => targets.refresh());
  const downloads = $("file-downloads"), subtitle = $("file-subtitle-language");
  let job = null;
  $("file-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = $("file-input").files[0];
    if (!file) return;
    const chosen = targets();
    downloads.hidden = true;
    $("file-start").disabled = true;
    try {
      const result = await transcribe({ file, language: language.value, targets: chosen, view, onStatus: say,
                                        channels: Number($("file-channels").value) });
      job = { ...result, name: file.name.replace(/\.[^.]+$/, "") || "transcript" };
      window.tolk.file = job;
      say(`Done: ${view.finals.length} caption(s).`);
      subtitle.replaceChildren(...["", ...chosen].map((t) => {
        const o = el("option", "", t ? languageName(t) : "Original");
        o.value = t;
        return o;
      }));
      downloads.hidden = !job.sessionId;
    } catch (err) {
      say(`${err.message}${err.code ? ` (${err.code})` : ""}`, { error: true });
    } finally {
      $("file-start").disabled = false;
    }
  });
  for (const format of ["srt", "vtt"]) {
    $(`download-${format}`).addEventListener("click", () =>
      download(job.sessionId, format, job.name, subtitle.value).catch((err) => say(err.message, { error: true })));
  }
  return view;
}

window.tolk = { api };
preferences();
window.tolk.views = { mic: micMode(), channel: channelMode(), file: fileMode() };
window.tolk.languages = languages;
languages.load();
tabs();
