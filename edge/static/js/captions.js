// Captions: finals in an ARIA live log, the current partial greyed below them and replaced in place,
// one column per translation target. Shared by the microphone, channel and file modes.

const NAMES = new Intl.DisplayNames([navigator.language || "en"], { type: "language" });
export const languageName = (code) => { try { return NAMES.of(code) || code; } catch { return code; } };

/** A multichannel session's (or file's) audio channel, 0-based; null otherwise (a broadcast channel's
 * results carry its name, a string, under the same key). Its results number utterances and seqs per channel. */
const audioChannel = (r) => (Number.isInteger(r.channel) ? r.channel : null);
const resultKey = (r) => {
  const ch = audioChannel(r);
  return ch === null ? `${r.session_id}:${r.seq}` : `${r.session_id}:c${ch}:${r.seq}`;
};

export class CaptionView {
  constructor(root) {
    this.root = root;
    this.head = el("div", "head");
    this.head.setAttribute("aria-hidden", "true");
    this.log = el("ol");
    this.log.setAttribute("role", "log");
    this.log.setAttribute("aria-live", "polite");
    this.log.setAttribute("aria-relevant", "additions");
    this.log.setAttribute("aria-label", "Captions");
    this.partialLine = el("div", "partial");
    this.partialLine.setAttribute("aria-live", "off");  // announced once, when final
    root.replaceChildren(this.head, this.log, this.partialLine);
    this.targets = [];
    this.finals = [];  // what was shown, in order: {key, seq, text, translations, errors, start, end, ...}
    this.seen = new Set();
    this.partials = 0;
    this.partialUtterance = null;
    this.lastPartialTranslations = {};
    this.setTargets([]);
  }

  setTargets(targets) {
    this.targets = [...targets];
    this.root.style.setProperty("--cols", String(1 + this.targets.length));
    this.head.replaceChildren(el("span", "", "Original"), ...this.targets.map((t) => el("span", "", languageName(t))));
  }

  clear() {
    this.log.replaceChildren();
    this.partialLine.replaceChildren();
    this.finals = [];
    this.seen.clear();
    this.partialUtterance = null;
  }

  /** A result of /v1/listen (or the file SSE stream). `meta` is merged into the record kept in `finals`. */
  show(r, meta = {}) {
    const key = resultKey(r);
    if (this.seen.has(key)) return;  // a replayed final already shown (channel reconnect)
    this.seen.add(key);
    if (r.type === "partial") return this.partial(r);
    if (r.type === "final") return this.final(r, meta);
  }

  partial(r) {
    this.partials += 1;
    if (this.partialUtterance !== r.utterance_id) this.lastPartialTranslations = {};
    this.partialUtterance = r.utterance_id;
    if (r.translations) Object.assign(this.lastPartialTranslations, r.translations);
    this.partialLine.replaceChildren(...this.cells(r.text, this.lastPartialTranslations, {}, r.language));
    this.scroll();
  }

  final(r, meta) {
    if (this.partialUtterance === r.utterance_id || !r.text) {
      this.partialLine.replaceChildren();
      this.partialUtterance = null;
    }
    if (!r.text) return;  // "it was not speech": clears the partial
    const li = el("li", meta.replay ? "replay" : "");
    li.dataset.seq = String(r.seq);
    li.dataset.utterance = String(r.utterance_id);
    const ch = audioChannel(r);
    if (ch !== null) li.dataset.channel = String(ch);
    li.append(...this.cells(r.text, r.translations || {}, r.translation_errors || {}, r.language));
    if (r.speaker || r.speakers_late) li.firstElementChild.prepend(el("span", "speaker", r.speaker || "?"));
    if (ch !== null) li.firstElementChild.prepend(el("span", "channel", `ch${ch}`));  // before the speaker
    this.log.append(li);
    this.finals.push({ key: resultKey(r), seq: r.seq, session_id: r.session_id, text: r.text,
                       translations: r.translations || {}, errors: r.translation_errors || {},
                       start: r.start, end: r.end, language: r.language, ...meta });
    while (this.log.children.length > 500) this.log.firstElementChild.remove();  // a long session stays light
    this.scroll();
  }

  /** A `speakers` result: the final of that utterance was labelled (again); its speaker shown anew. */
  relabel(r) {
    const ch = audioChannel(r);
    const li = this.log.querySelector(`li[data-utterance="${r.utterance_id}"]` +
                                      (ch === null ? "" : `[data-channel="${ch}"]`));
    const tag = li?.querySelector(".speaker");
    if (tag) tag.textContent = r.speaker || "?";
    else if (li) {
      const speaker = el("span", "speaker", r.speaker || "?");
      const label = li.firstElementChild.querySelector(".channel");  // the channel stays first
      if (label) label.after(speaker);
      else li.firstElementChild.prepend(speaker);
    }
  }

  cells(text, translations, errors, language) {
    const out = [el("div", "cell src", text)];
    if (language) out[0].lang = language;
    for (const t of this.targets) {
      const cell = el("div", "cell tr");
      cell.lang = t;
      cell.dataset.target = t;
      cell.dataset.label = t.toUpperCase();
      if (translations[t] !== undefined) cell.textContent = translations[t];
      else if (errors[t]) {
        cell.classList.add("missing");
        cell.textContent = `(${errors[t].replaceAll("_", " ")})`;
      }
      out.push(cell);
    }
    return out;
  }

  text() { return this.finals.map((f) => f.text).join(" "); }

  scroll() {
    const r = this.root;
    if (r.scrollHeight - r.scrollTop - r.clientHeight < 120) r.scrollTop = r.scrollHeight;
  }
}

export function el(tag, cls = "", text = "") {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text) e.textContent = text;
  return e;
}
