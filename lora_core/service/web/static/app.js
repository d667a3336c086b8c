// LoRA Studio pages: sign-in, upload zones, form submission, live prediction status.
// The API token lives in an HttpOnly, SameSite=Strict cookie set by POST /session: no script can read it, not
// even one smuggled in through a file. Requests carry the pages' header, without which the API ignores the
// cookie, so a link or form on another site cannot act with it.
"use strict";

(() => {
  const PAGE_HEADER = "X-LoRA-Studio-Page";
  const TERMINAL = ["succeeded", "failed", "canceled"];

  function signedIn() {
    return document.body.dataset.signedIn === "1";
  }

  async function api(method, path, body) {
    const headers = { [PAGE_HEADER]: "1" };
    const init = { method, headers, credentials: "same-origin" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      // not JSON: keep the status
    }
    return { status: response.status, ok: response.ok, data };
  }

  function humanSize(bytes) {
    if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
    if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(2)} MB`;
    if (bytes >= 1e3) return `${(bytes / 1e3).toFixed(1)} KB`;
    return `${bytes} bytes`;
  }

  // ---- sign in / out ----
  function initSignin() {
    document.querySelectorAll("[data-signin]").forEach((form) => {
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const error = form.querySelector("[data-signin-error]");
        const value = form.elements.token.value.trim();
        error.textContent = "";
        if (!value) {
          error.textContent = "Paste your API token.";
          return;
        }
        const response = await api("POST", "/session", { token: value });
        if (response.ok) {
          location.reload();
        } else if (response.status === 401) {
          error.textContent = "This server does not know that token.";
        } else {
          error.textContent = `The server answered ${response.status}; try again.`;
        }
      });
    });
    document.querySelectorAll("[data-signout]").forEach((button) => {
      button.addEventListener("click", async () => {
        await api("POST", "/session/end");
        location.href = "/";
      });
    });
    document.querySelectorAll("[data-focus-signin]").forEach((link) => {
      link.addEventListener("click", (event) => {
        const input = document.getElementById("token-input");
        if (!input) return;
        event.preventDefault();
        input.scrollIntoView({ block: "center", behavior: "smooth" });
        input.focus({ preventScroll: true });
      });
    });
  }

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach((el) => {
      const date = new Date(el.getAttribute("datetime"));
      if (Number.isNaN(date.getTime())) return;
      el.title = el.getAttribute("datetime");
      const timeStyle = el.hasAttribute("data-short") ? "short" : "medium";
      el.textContent = date.toLocaleString(undefined, { dateStyle: "medium", timeStyle });
    });
  }

  // ---- the model form ----
  function fieldError(form, name, message) {
    const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
    if (!slot) return false;
    slot.textContent = message;
    const field = slot.closest("[data-field]");
    field.classList.add("invalid");
    const details = field.closest("details");
    if (details) details.open = true;
    return true;
  }

  function clearErrors(form) {
    form.querySelectorAll("[data-error-for]").forEach((slot) => { slot.textContent = ""; });
    form.querySelectorAll(".invalid").forEach((field) => field.classList.remove("invalid"));
    form.querySelector("[data-form-error]").textContent = "";
  }

  // The input object the API takes: empty optional inputs are null (or left out, keeping the default).
  function collect(form) {
    const input = {};
    form.querySelectorAll("[data-field]").forEach((field) => {
      const { field: name, kind } = field.dataset;
      const nullable = field.dataset.nullable === "1";
      if (kind === "boolean") {
        if (nullable) {
          const picked = field.querySelector("input[type=radio]:checked");
          input[name] = picked && picked.value ? picked.value === "true" : null;
        } else {
          input[name] = field.querySelector("input[type=checkbox]").checked;
        }
        return;
      }
      const control = field.querySelector(`[name="${CSS.escape(name)}"]`);
      const raw = kind === "textarea" || kind === "text" ? control.value : control.value.trim();
      if (raw === "") {
        if (nullable) input[name] = null;
        else if (field.dataset.emptyDefault === "1") input[name] = "";
        return; // required: the server names it; otherwise the default (or the parent's value) stays
      }
      if (kind === "integer" || kind === "number") {
        const number = Number(raw);
        input[name] = Number.isFinite(number) ? number : raw;
      } else {
        input[name] = raw;
      }
    });
    return input;
  }

  function showErrors(form, response) {
    const general = [];
    const body = response.data || {};
    if (response.status === 401) {
      general.push("The server refused your API token: sign in again.");
    } else if (Array.isArray(body.invalid_fields) && body.invalid_fields.length) {
      body.invalid_fields.forEach((f) => {
        const name = String(f.field).replace(/^input\./, "");
        if (!fieldError(form, name, f.description)) general.push(`${f.field}: ${f.description}`);
      });
    } else {
      general.push(body.detail || body.title || `The server answered ${response.status}.`);
    }
    form.querySelector("[data-form-error]").textContent = general.join(" ");
    const first = form.querySelector(".invalid") || form.querySelector("[data-form-error]");
    first.scrollIntoView({ block: "center" });
  }

  function initDropzone(zone, form) {
    const name = zone.dataset.dropzone;
    const picker = zone.querySelector("input[type=file]");
    const url = form.querySelector(`input[name="${CSS.escape(name)}"]`);
    const status = zone.querySelector("[data-upload-status]");
    const bar = zone.querySelector("progress");
    ["dragenter", "dragover"].forEach((t) => zone.addEventListener(t, () => zone.classList.add("over")));
    ["dragleave", "drop"].forEach((t) => zone.addEventListener(t, () => zone.classList.remove("over")));
    if (url.value && !status.textContent) status.textContent = "A file URL is set: drop a file to replace it.";

    picker.addEventListener("change", () => {
      const file = picker.files[0];
      if (!file) return;
      const slot = form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      slot.textContent = "";
      slot.closest("[data-field]").classList.remove("invalid");
      if (!signedIn()) {
        fieldError(form, name, "Sign in first: uploads belong to your API token.");
        return;
      }
      zone.classList.remove("done");
      zone.classList.add("uploading");
      status.textContent = `Uploading ${file.name} (${humanSize(file.size)})…`;
      bar.hidden = false;
      bar.value = 0;
      const request = new XMLHttpRequest();
      request.open("POST", "/v1/files");
      request.setRequestHeader(PAGE_HEADER, "1");
      request.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total;
      });
      const finish = () => {
        zone.classList.remove("uploading");
        bar.hidden = true;
        picker.value = "";
        let body = null;
        try {
          body = JSON.parse(request.responseText);
        } catch (_) {
          // keep null
        }
        if (request.status === 201 && body) {
          url.value = body.urls.get;
          zone.classList.add("done");
          status.textContent = `✓ ${body.name} · ${humanSize(body.size)} uploaded`;
        } else {
          status.textContent = "";
          fieldError(form, name, (body && body.detail) || `The upload failed (${request.status || "network error"}).`);
        }
      };
      request.addEventListener("loadend", finish);
      const data = new FormData();
      data.append("content", file, file.name);
      request.send(data);
    });
  }

  function initForm(form) {
    form.querySelectorAll("[data-dropzone]").forEach((zone) => initDropzone(zone, form));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      clearErrors(form);
      const general = form.querySelector("[data-form-error]");
      if (form.querySelector(".dropzone.uploading")) {
        general.textContent = "Wait for the upload to finish.";
        return;
      }
      if (!signedIn()) {
        general.textContent = "Sign in first: paste your API token below.";
        return;
      }
      const button = form.querySelector("[data-submit]");
      button.disabled = true;
      const fork = form.dataset.fork;
      const named = form.querySelector("[data-destination]");
      let path = fork ? `/v1/predictions/${encodeURIComponent(fork)}/fork`
        : `/v1/models/${form.dataset.model}/predictions`;
      let body = { input: collect(form) };
      if (!fork && named && named.value.trim()) { // a training published under a name: Replicate's trainings API
        path = "/v1/trainings";
        body = { ...body, model: form.dataset.model, destination: `${named.dataset.owner}/${named.value.trim()}` };
      }
      let response;
      try {
        response = await api("POST", path, body);
      } catch (error) {
        response = { status: 0, data: { detail: "The server could not be reached; try again." } };
      }
      if (response.status === 201) {
        location.href = `/predictions/${encodeURIComponent(response.data.id)}`;
        return;
      }
      button.disabled = false;
      showErrors(form, response);
    });
  }

  // ---- a prediction's page: live status, logs and progress until it is final, then the full page ----
  function initPrediction(head) {
    const id = head.dataset.prediction;
    const line = new RegExp(head.dataset.progressPattern);
    const logs = document.querySelector("[data-logs]");
    const badge = head.querySelector("[data-status]");
    logs.scrollTop = logs.scrollHeight;

    const cancel = head.querySelector("[data-cancel]");
    if (cancel) {
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        cancel.textContent = "Canceling…";
        await api("POST", `/v1/predictions/${encodeURIComponent(id)}/cancel`);
      });
    }

    function showProgress(text) {
      const lines = text.split("\n");
      for (let i = lines.length - 1; i >= 0; i -= 1) {
        const match = line.exec(lines[i].trim());
        if (!match) continue;
        const { percent, step, total, eta } = match.groups;
        const value = Number(percent);
        document.querySelector("[data-progress-card]").hidden = false;
        document.querySelector("[data-progress-percent]").textContent = `${value.toFixed(0)}%`;
        document.querySelector("[data-progress-step]").textContent = `${step}/${total}`;
        const etaS = eta === undefined || eta === "?" ? null : eta.split(":").reduce((s, part) => s * 60 + Number(part), 0);
        const etaText = etaS !== null && value < 100 ? `ETA ${etaS} s` : "";
        document.querySelector("[data-progress-eta]").textContent = etaText;
        document.querySelector("[data-progress-bar]").value = value;
        return;
      }
    }

    if (head.dataset.terminal === "1") return;
    let seen = logs.textContent;
    const poll = async () => {
      let response;
      try {
        response = await api("GET", `/v1/predictions/${encodeURIComponent(id)}`);
      } catch (_) {
        setTimeout(poll, 3000);
        return;
      }
      if (!response.ok || !response.data) {
        setTimeout(poll, 3000);
        return;
      }
      const p = response.data;
      badge.textContent = p.status;
      badge.className = `status status-${p.status}`;
      head.dataset.statusValue = p.status;
      if (p.logs !== seen) {
        const atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 40;
        logs.textContent = p.logs;
        seen = p.logs;
        if (atBottom) logs.scrollTop = logs.scrollHeight;
        showProgress(p.logs);
      }
      if (TERMINAL.includes(p.status)) {
        location.reload(); // the server renders outputs, file facts and timings
        return;
      }
      setTimeout(poll, 1000);
    };
    setTimeout(poll, 500);
  }

  // ---- API tokens: a new one is shown once; revoking this browser's own signs it out ----
  function initTokens() {
    const error = document.querySelector("[data-token-error]");
    document.querySelectorAll("[data-new-token]").forEach((button) => {
      button.addEventListener("click", async () => {
        const response = await api("POST", "/v1/tokens");
        if (!response.ok) {
          error.textContent = `The server answered ${response.status}; try again.`;
          return;
        }
        document.querySelector("[data-token-shown]").textContent = response.data.token;
        document.querySelector("[data-token-made]").hidden = false;
      });
    });
    document.querySelectorAll("[data-revoke-token]").forEach((button) => {
      button.addEventListener("click", async () => {
        const own = button.hasAttribute("data-signs-out");
        if (own && !confirm("This browser is signed in with this token: revoking it signs you out. Revoke it?")) return;
        const response = await api("DELETE", `/v1/tokens/${encodeURIComponent(button.dataset.revokeToken)}`);
        if (!response.ok && response.status !== 404) {
          error.textContent = `The server answered ${response.status}; the token was not revoked.`;
          return;
        }
        if (own) {
          await api("POST", "/session/end");
          location.href = "/";
        } else {
          button.closest("tr").remove();
        }
      });
    });
  }

  // ---- named LoRAs: deleting a version (its number is never given again) ----
  function initLoraDelete() {
    document.querySelectorAll("[data-delete-version]").forEach((button) => {
      button.addEventListener("click", async () => {
        const ref = button.dataset.deleteVersion;
        if (!confirm(`Delete ${ref}? Its file is removed, and ${ref} stops working (it never names other bytes).`)) return;
        const response = await api("DELETE", button.dataset.path);
        if (response.ok) {
          location.reload();
        } else {
          document.querySelector("[data-lora-error]").textContent =
            `The server answered ${response.status}; ${ref} was not deleted.`;
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    initSignin();
    initTokens();
    initLoraDelete();
    localTimes(document);
    document.querySelectorAll("[data-model-form]").forEach(initForm);
    const head = document.querySelector("[data-prediction]");
    if (head) initPrediction(head);
  });
})();
