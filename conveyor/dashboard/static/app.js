// Conveyor dashboard: live updates. Served from /static: the CSP allows no inline script.
//
// A live region (<section class="live" data-events=... data-fragment=...>) follows its
// execution's or job's event stream over SSE (same origin: the session cookie
// authenticates it). Progress frames move the progress bars at once; every other event
// re-fetches the region's HTML fragment (debounced), which redraws statuses, the DAG's
// colours, outputs and buttons. The server renders everything; this file never builds
// HTML from event data.
(function () {
  "use strict";

  // every event type the engine writes (conveyor/domain/events.py); EventSource only
  // delivers named events to listeners registered by name
  var EVENT_TYPES = [
    "job.queued", "job.started", "job.progress", "job.completed", "job.failed",
    "job.retrying", "job.cancel_requested", "job.cancelled", "job.released",
    "job.lease_expired", "job.awaiting_input",
    "execution.queued", "execution.started", "execution.awaiting_input", "execution.running",
    "execution.completed", "execution.failed", "execution.cancelled", "execution.retrying",
    "clarification.requested", "clarification.answered", "clarification.expired",
    "document.saved", "usage.recorded",
    "queue.paused", "queue.resumed", "queue.cleaned"
  ];
  var REFRESH_DELAY_MS = 200;
  var POLL_MS = 5000;

  function isTerminal(region) {
    var body = region.querySelector(".live-body");
    return body !== null && body.getAttribute("data-terminal") === "true";
  }

  function clampPercent(value) {
    var n = Number(value);
    if (!isFinite(n)) { return null; }
    return Math.max(0, Math.min(100, Math.round(n)));
  }

  // a job.progress frame: move the matching bars now, without a round trip
  function showProgress(region, event) {
    var percent = clampPercent(event.data && event.data.progress);
    if (percent === null) { return; }
    var step = event.step_id || "";
    region.querySelectorAll("progress[data-step]").forEach(function (bar) {
      if (bar.getAttribute("data-step") === step) { bar.value = percent; }
    });
    region.querySelectorAll(".dag .node").forEach(function (node) {
      if (node.getAttribute("data-step") !== step) { return; }
      var fill = node.querySelector("rect.bar");
      var full = fill && Number(fill.getAttribute("data-full"));
      if (fill && full) { fill.setAttribute("width", String(Math.round(full * percent / 100))); }
    });
    var message = event.data && event.data.message;
    if (typeof message === "string") {
      region.querySelectorAll("[data-step-message]").forEach(function (span) {
        // textContent: agent text is shown as text, never parsed as HTML
        if (span.getAttribute("data-step-message") === step) { span.textContent = message; }
      });
    }
  }

  function follow(region) {
    var source = null;
    var timer = null;
    var busy = false;
    var again = false;
    var poller = null;

    function stop() {
      if (source !== null) { source.close(); source = null; }
      if (poller !== null) { clearInterval(poller); poller = null; }
    }

    function refresh() {
      timer = null;
      if (busy) { again = true; return; }
      busy = true;
      // keep the step details the user opened across the swap
      var open = [];
      region.querySelectorAll("details[open]").forEach(function (d) { if (d.id) { open.push(d.id); } });
      htmx.ajax("GET", region.getAttribute("data-fragment"), { target: region, swap: "innerHTML" })
        .then(function () {
          open.forEach(function (id) {
            var d = document.getElementById(id);
            if (d !== null) { d.open = true; }
          });
          if (isTerminal(region)) { stop(); }
        })
        .finally(function () {
          busy = false;
          if (again) { again = false; schedule(); }
        });
    }

    function schedule() {
      if (timer === null) { timer = setTimeout(refresh, REFRESH_DELAY_MS); }
    }

    function onEvent(message) {
      var event = null;
      try { event = JSON.parse(message.data); } catch (err) { return; }
      if (event && event.type === "job.progress") {
        showProgress(region, event);
        return;
      }
      // the refreshed fragment says when nothing more can happen (data-terminal); until
      // then EventSource reconnects after the server ends a stream, resuming from the
      // last event id, so a step that stops after its execution ended is still seen
      schedule();
    }

    if (isTerminal(region)) { return; }
    source = new EventSource(region.getAttribute("data-events"));
    EVENT_TYPES.forEach(function (type) { source.addEventListener(type, onEvent); });
    source.onmessage = onEvent;
    source.onerror = function () {
      // closed for good (an HTTP error, e.g. the session expired): poll instead
      if (source !== null && source.readyState === EventSource.CLOSED && poller === null) {
        source = null;
        poller = setInterval(function () {
          if (isTerminal(region)) { stop(); } else { schedule(); }
        }, POLL_MS);
      }
    };
    window.addEventListener("pagehide", stop);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("section.live[data-events][data-fragment]").forEach(follow);
  });
})();
