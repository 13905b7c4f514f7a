// spar review: plain JS, no build step. Every text from the run is set with textContent (never innerHTML):
// consultation text is untrusted. The token arrives in the page URL once; it is kept in sessionStorage, taken
// out of the address bar, and sent as a bearer header with every API call.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  let token = params.get("token") || sessionStorage.getItem("spar-review-token") || "";
  sessionStorage.setItem("spar-review-token", token);
  history.replaceState(null, "", location.pathname);

  const PAGE = 50;
  const STAGE_SHORT = { inquiry: "Inq", ddx: "DDx", lab: "Lab", diag: "Dx" };
  const state = { offset: 0, total: 0, rows: [], sel: -1, detail: null, claim: -1, overridden: new Set() };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "on") for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

  async function api(path, opts = {}) {
    const res = await fetch(path, {
      ...opts,
      headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    });
    const body = await res.json().catch(() => ({ error: res.statusText }));
    if (!res.ok) throw new Error(body.error || res.statusText);
    return body;
  }

  let toastTimer = null;
  function toast(msg, isError) {
    const t = $("toast");
    t.textContent = msg;
    t.className = isError ? "error" : "";
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (t.hidden = true), isError ? 6000 : 2500);
  }

  function query() {
    const q = new URLSearchParams();
    q.set("offset", state.offset);
    q.set("limit", PAGE);
    const add = (k, v) => { if (v !== "" && v !== null) q.set(k, v); };
    add("q", $("search").value.trim());
    add("department", $("f-department").value);
    add("stage", $("f-stage").value);
    add("min_reward", $("f-min").value);
    add("max_reward", $("f-max").value);
    add("violation", $("f-violation").value);
    if ($("f-halluc").checked) q.set("hallucinated", "true");
    return q.toString();
  }

  let listSeq = 0;
  async function loadList(selectIndex) {
    const seq = ++listSeq;
    let page;
    try {
      page = await api("/api/consultations?" + query());
    } catch (e) {
      toast(e.message, true);
      return;
    }
    if (seq !== listSeq) return; // a newer request (typing in the search box) superseded this one
    state.total = page.total;
    state.rows = page.rows;
    const tbody = $("list").querySelector("tbody");
    tbody.replaceChildren(
      ...page.rows.map((r, i) =>
        el("tr", { "data-id": r.id, on: { click: () => select(i) } },
          el("td", { class: "num" }, r.id),
          el("td", {}, r.case_id),
          el("td", {}, r.department),
          el("td", { title: r.stages.join(" + ") }, r.stages.map((x) => STAGE_SHORT[x] || x).join(" ")),
          el("td", { class: "num" }, fmt(r.reward)),
          el("td", { class: "num" + (r.refuted ? " bad" : "") }, r.refuted ? `${r.refuted}/${r.claims}` : r.claims),
          el("td", { class: "num" + (r.violations ? " bad" : "") }, r.violations),
          el("td", {}, r.dropped ? "dropped" : r.end_reason)))
    );
    const last = Math.min(state.offset + page.rows.length, page.total);
    $("page-info").textContent = page.total
      ? `${state.offset + 1}–${last} of ${page.total}`
      : "no consultation matches";
    $("page-info").dataset.total = page.total;
    state.sel = -1;
    if (selectIndex !== undefined && page.rows.length) select(Math.max(0, Math.min(selectIndex, page.rows.length - 1)));
  }

  function refilter() {
    state.offset = 0;
    loadList();
  }

  let detailSeq = 0;
  async function select(i) {
    if (i < 0 || i >= state.rows.length) return;
    state.sel = i;
    const seq = ++detailSeq;
    const trs = $("list").querySelectorAll("tbody tr");
    trs.forEach((tr, j) => tr.classList.toggle("selected", j === i));
    trs[i].scrollIntoView({ block: "nearest" });
    try {
      const d = await api("/api/consultations/" + state.rows[i].id);
      // Keys pressed quickly (j j j) ask for several; only the last one asked for is shown.
      if (seq === detailSeq) showDetail(d);
    } catch (e) {
      toast(e.message, true);
    }
  }

  function move(d) {
    const next = state.sel + d;
    if (next >= state.rows.length) {
      if (state.offset + PAGE < state.total) { state.offset += PAGE; loadList(0); }
    } else if (next < 0) {
      if (state.offset > 0) { state.offset = Math.max(0, state.offset - PAGE); loadList(PAGE - 1); }
    } else select(next);
  }

  function page(d) {
    const o = state.offset + d * PAGE;
    if (o < 0 || o >= state.total) return;
    state.offset = o;
    loadList(0);
  }

  function labelBadge(label) {
    return el("span", { class: "badge label-" + label }, label);
  }

  function showDetail(d) {
    state.detail = d;
    state.claim = -1;
    const root = $("detail");
    const head = el("div", { class: "panel", id: "detail-head" },
      el("h3", {}, `#${d.id} · case ${d.case_id} · ${d.department}`),
      el("div", {}, `group ${d.group_id} · sample ${d.sample_idx} · ${d.mode} · end ${d.end_reason}`));
    if (d.rewards) {
      const r = d.rewards;
      head.append(el("div", { id: "rewards" },
        `R = ${fmt(r.reward)} · R_task = ${fmt(r.r_task)} · R_fact = ${fmt(r.r_fact)} · λ = ${fmt(r.lambda)}` +
        (r.stage_score !== null ? ` · G_k = ${fmt(r.stage_score)}` : "") +
        (r.drop_reason ? ` · dropped: ${r.drop_reason}` : "")));
    } else head.append(el("div", { class: "hint" }, "not scored"));
    const stages = el("table", { id: "stage-rewards" },
      el("tr", {}, el("th", {}, "stage"), el("th", {}, "steps"), el("th", {}, "G_k"), el("th", {}, "Σ A"),
        el("th", {}, "mean γ"), el("th", {}, "violations")),
      ...d.stage_rewards.map((s) => el("tr", {},
        el("td", {}, s.stage), el("td", { class: "num" }, s.steps), el("td", { class: "num" }, fmt(s.stage_score)),
        el("td", { class: "num" }, fmt(s.advantage_sum)), el("td", { class: "num" }, fmt(s.mean_gamma)),
        el("td", { class: "num" + (s.violations ? " bad" : "") }, s.violations))));
    head.append(stages);

    const dialogue = el("div", { id: "dialogue" });
    let stage = null;
    d.turns.forEach((t, ti) => {
      if (t.stage && t.stage !== stage) {
        stage = t.stage;
        dialogue.append(el("div", { class: "stage-boundary" }, `${stage} stage`));
      }
      const box = el("div", { class: "turn " + t.role, "data-turn": ti },
        el("div", { class: "who" }, t.role === "assistant" ? "doctor" : t.role === "user" ? "patient / instruction" : t.role));
      for (const p of t.pieces) {
        if (p.claim === undefined) box.append(p.text);
        else {
          const c = d.claims[p.claim];
          box.append(el("mark", {
            class: "claim " + c.label, "data-claim": p.claim,
            title: `${c.label}${c.source ? " · " + c.source : ""}`,
            on: { click: () => focusClaim(p.claim) },
          }, p.text));
        }
      }
      if (t.step !== null && t.step !== undefined) {
        const s = d.steps[t.step];
        box.append(el("div", { class: "step" },
          `step ${t.step} · γ = ${fmt(s.gamma)} · A = ${fmt(s.advantage)}`,
          s.violations.length ? el("span", { class: "bad" }, " · violations: " + s.violations.join(", ")) : " · no violation"));
      }
      dialogue.append(box);
    });

    const claims = el("div", { class: "panel", id: "claims" }, el("h3", {}, `Claims (${d.claims.length})`));
    d.claims.forEach((c, i) => {
      const key = `${d.id}/claim/${i}`;
      claims.append(el("div", { class: "claim-row", "data-index": i },
        labelBadge(c.label), " ", c.text,
        state.overridden.has(key) ? el("span", { class: "overridden" }, "overridden") : null,
        c.turn === null ? el("span", { class: "hint" }, " (not found verbatim in a reply)") : null,
        el("div", { class: "evidence" }, `saliency ${fmt(c.saliency, 2)}` + (c.source ? ` · evidence: ${c.source}` : "")),
        el("div", {}, "set: ",
          ...["supported", "refuted", "uncertain"].map((l) =>
            el("button", { type: "button", "data-label": l, on: { click: () => overrideClaim(i, l) } }, l)))));
    });
    if (!d.claims.length) claims.append(el("div", { class: "hint" }, "no claims"));

    const rubric = el("div", { class: "panel", id: "rubric" }, el("h3", {}, `Rubric (${d.rubric.length})`));
    d.rubric.forEach((r, i) => {
      const v = r.met === null ? "no verdict" : r.met ? "met" : "not met";
      rubric.append(el("div", { class: "rubric-row", "data-index": i },
        el("span", { class: "badge " + (r.met ? "label-supported" : r.met === false ? "label-refuted" : "label-uncertain") }, v),
        ` [${r.points}] ${r.criterion}`,
        state.overridden.has(`${d.id}/rubric/${i}`) ? el("span", { class: "overridden" }, "overridden") : null,
        r.explanation ? el("div", { class: "evidence" }, r.explanation) : null,
        el("span", {}, " set: ",
          el("button", { type: "button", "data-met": "true", on: { click: () => overrideRubric(i, true) } }, "met"),
          el("button", { type: "button", "data-met": "false", on: { click: () => overrideRubric(i, false) } }, "not met"))));
    });
    if (!d.rubric.length) rubric.append(el("div", { class: "hint" }, "no rubric items"));

    root.replaceChildren(head, el("div", { class: "detail-body" }, dialogue, el("div", { class: "side" }, claims, rubric)));
  }

  function focusClaim(i) {
    const d = state.detail;
    if (!d || !d.claims.length) return;
    state.claim = (i + d.claims.length) % d.claims.length;
    document.querySelectorAll(".claim-row").forEach((r) => r.classList.toggle("focused", +r.dataset.index === state.claim));
    document.querySelectorAll("mark.claim").forEach((m) => m.classList.toggle("focused", +m.dataset.claim === state.claim));
    const m = document.querySelector(`mark.claim[data-claim="${state.claim}"]`) ||
      document.querySelector(`.claim-row[data-index="${state.claim}"]`);
    if (m) m.scrollIntoView({ block: "center" });
  }

  async function sendOverride(body, key, what) {
    try {
      const res = await api("/api/overrides", { method: "POST", body: JSON.stringify(body) });
      state.overridden.add(key);
      const keep = state.claim;
      showDetail(res.consultation);
      if (keep >= 0) focusClaim(keep);
      toast(`${what} saved (audit log${body.kind === "claim" ? " and claim cache" : ""})`);
      refreshRow();
    } catch (e) {
      toast(e.message, true);
    }
  }

  // The list row's counts change with an override; reload the page of rows, keeping the selection.
  async function refreshRow() {
    const sel = state.sel;
    const detail = state.detail;
    await loadList();
    if (sel >= 0 && sel < state.rows.length) {
      state.sel = sel;
      $("list").querySelectorAll("tbody tr").forEach((tr, j) => tr.classList.toggle("selected", j === sel));
    }
    state.detail = detail;
  }

  function overrideClaim(i, label) {
    const d = state.detail;
    if (!d) return;
    sendOverride({ id: d.id, kind: "claim", index: i, label }, `${d.id}/claim/${i}`, `claim ${i} → ${label}`);
  }

  function overrideRubric(i, met) {
    const d = state.detail;
    if (!d) return;
    sendOverride({ id: d.id, kind: "rubric", index: i, met }, `${d.id}/rubric/${i}`, `rubric item ${i} → ${met ? "met" : "not met"}`);
  }

  async function loadFacets() {
    const f = await api("/api/summary");
    const fill = (sel, values) => values.forEach((v) => $(sel).append(el("option", { value: v }, v)));
    fill("f-department", f.departments);
    fill("f-stage", f.stages);
    fill("f-violation", f.violations);
    document.title += ` · ${f.consultations} consultations`;
  }

  let typing = null;
  $("search").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(refilter, 250); });
  for (const id of ["f-department", "f-stage", "f-halluc", "f-violation"])
    $(id).addEventListener("change", refilter);
  for (const id of ["f-min", "f-max"])
    $(id).addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(refilter, 250); });
  $("f-clear").addEventListener("click", () => {
    for (const id of ["search", "f-department", "f-stage", "f-violation", "f-min", "f-max"]) $(id).value = "";
    $("f-halluc").checked = false;
    refilter();
  });
  $("prev-page").addEventListener("click", () => page(-1));
  $("next-page").addEventListener("click", () => page(1));

  document.addEventListener("keydown", (e) => {
    const inField = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (e.key === "Escape") { document.activeElement.blur(); $("help").hidden = true; return; }
    if (inField || e.ctrlKey || e.metaKey || e.altKey) return;
    const keys = {
      j: () => move(1), k: () => move(-1), n: () => page(1), p: () => page(-1),
      "/": () => $("search").focus(),
      h: () => { $("f-halluc").checked = !$("f-halluc").checked; refilter(); },
      c: () => focusClaim(state.claim + 1), C: () => focusClaim(state.claim - 1),
      s: () => state.claim >= 0 && overrideClaim(state.claim, "supported"),
      r: () => state.claim >= 0 && overrideClaim(state.claim, "refuted"),
      u: () => state.claim >= 0 && overrideClaim(state.claim, "uncertain"),
      Enter: () => state.sel >= 0 && select(state.sel),
      "?": () => ($("help").hidden = !$("help").hidden),
    };
    const f = keys[e.key];
    if (f) { e.preventDefault(); f(); }
  });

  loadFacets().then(() => loadList()).catch((e) => toast(e.message, true));
})();
