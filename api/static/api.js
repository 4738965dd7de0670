// The /v1 API as the dashboard uses it: JSON requests with the API key as a Bearer token,
// uploads with progress, and errors as ApiError (the API's {"error": {code, message, field}}).

export class ApiError extends Error {
  constructor(status, code, message, field = null, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.retryAfter = retryAfter;
  }

  static from(status, body, statusText = "", retryAfter = null) {
    const error = body && body.error;
    if (error && error.code) {
      return new ApiError(status, error.code, error.message, error.field || null, retryAfter);
    }
    const text = statusText ? `${status} ${statusText}` : `status ${status}`;
    return new ApiError(status, "http_error", `the server answered ${text}`, null, retryAfter);
  }
}

const NETWORK = "the server cannot be reached; check that it is running and try again";

export class Api {
  constructor(key = null) {
    this.key = key;
    this.onUnauthorized = null; // called with the ApiError of any 401
  }

  headers(extra = {}) {
    const headers = { ...extra };
    if (this.key) headers.Authorization = `Bearer ${this.key}`;
    return headers;
  }

  url(path, query = {}) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(query)) {
      for (const v of Array.isArray(value) ? value : [value]) {
        if (v !== undefined && v !== null && v !== "") url.searchParams.append(name, String(v));
      }
    }
    return url;
  }

  // `json`: a body to send as JSON; `form`: a FormData (sent as multipart/form-data)
  async request(method, path, { query = {}, json, form, signal, headers = {} } = {}) {
    const init = { method, signal, headers: this.headers({ Accept: "application/json", ...headers }) };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers["Content-Type"] = "application/json";
    } else if (form !== undefined) {
      init.body = form;
    }
    let response;
    try {
      response = await fetch(this.url(path, query), init);
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network_error", NETWORK);
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const error = ApiError.from(
        response.status, body, response.statusText, response.headers.get("Retry-After"),
      );
      if (response.status === 401 && this.onUnauthorized) this.onUnauthorized(error);
      throw error;
    }
    return body;
  }

  options() {
    return this.request("GET", "/dashboard/options.json");
  }

  listJobs({ status = [], limit = 50, cursor = null } = {}) {
    return this.request("GET", "/v1/jobs", { query: { status, limit, cursor } });
  }

  getJob(id) {
    return this.request("GET", `/v1/jobs/${encodeURIComponent(id)}`);
  }

  cancel(id) {
    return this.request("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`);
  }

  retry(id) {
    return this.request("POST", `/v1/jobs/${encodeURIComponent(id)}/retry`);
  }

  segments(id) {
    return this.request("GET", `/v1/jobs/${encodeURIComponent(id)}/segments`);
  }

  result(id) {
    return this.request("GET", `/v1/jobs/${encodeURIComponent(id)}/result`);
  }

  voices() {
    return this.request("GET", "/v1/voices");
  }

  listPresenters() {
    return this.request("GET", "/v1/presenters", { query: { limit: 200 } });
  }

  createPresenter(form) {
    return this.request("POST", "/v1/presenters", { form });
  }

  deletePresenter(name) {
    return this.request("DELETE", `/v1/presenters/${encodeURIComponent(name)}`);
  }

  // POST /v1/jobs as multipart/form-data. XMLHttpRequest, not fetch: only it reports upload
  // progress, which matters for an hour of audio. The Idempotency-Key makes a resend safe.
  submit(form, { idempotencyKey, onProgress } = {}) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", this.url("/v1/jobs"));
      for (const [name, value] of Object.entries(this.headers({ Accept: "application/json" }))) {
        xhr.setRequestHeader(name, value);
      }
      if (idempotencyKey) xhr.setRequestHeader("Idempotency-Key", idempotencyKey);
      if (onProgress) {
        xhr.upload.addEventListener("progress", (e) => {
          if (e.lengthComputable) onProgress(e.loaded / e.total);
        });
      }
      xhr.addEventListener("load", () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch {
          // not JSON: reported below by status
        }
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve(body);
          return;
        }
        const error = ApiError.from(
          xhr.status, body, xhr.statusText, xhr.getResponseHeader("Retry-After"),
        );
        if (xhr.status === 401 && this.onUnauthorized) this.onUnauthorized(error);
        reject(error);
      });
      xhr.addEventListener("error", () => reject(new ApiError(0, "network_error", NETWORK)));
      xhr.addEventListener("abort", () => reject(new ApiError(0, "aborted", "the upload was stopped")));
      xhr.send(form);
    });
  }
}
