// Pinion's page follows the change feed and swaps in its new content
// without a reload. Without JavaScript the page refreshes itself instead
// (a <noscript> meta refresh), so nothing here is needed to use it.
(function () {
  'use strict';
  var types = ['pin.promoted', 'pin.rolled_back', 'pin.held', 'pin.released', 'pin.stale',
    'pin.fresh', 'runtime.changed', 'canary.started', 'canary.aborted', 'canary.promoted',
    'fleet.converged', 'fleet.stalled'];
  var running = false;
  var again = false;
  var updates = 0;

  function busy() {
    var active = document.activeElement;
    return active && active.form && document.getElementById('content').contains(active);
  }

  function refresh() {
    if (running || busy()) { again = true; return; }
    running = true;
    fetch(location.href, { credentials: 'same-origin', redirect: 'manual', cache: 'no-store' })
      .then(function (response) {
        if (response.type === 'opaqueredirect' || response.status === 401) {
          location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (text === null) { return; }
        var next = new DOMParser().parseFromString(text, 'text/html').getElementById('content');
        var current = document.getElementById('content');
        if (next && current) {
          current.replaceWith(next);
          updates += 1;
          document.body.setAttribute('data-updates', String(updates));
        }
      })
      .catch(function () { again = true; })
      .then(function () {
        running = false;
        if (again) { again = false; setTimeout(refresh, 500); }
      });
  }

  document.addEventListener('focusout', function () { if (again && !running) { again = false; setTimeout(refresh, 200); } });

  if (window.EventSource) {
    var source = new EventSource('/ui/events');
    types.forEach(function (type) { source.addEventListener(type, refresh); });
    source.addEventListener('open', function () { document.body.setAttribute('data-live', 'yes'); });
    source.addEventListener('error', function () {
      // Closed for good (the session ended): the reload goes to the login form.
      if (source.readyState === EventSource.CLOSED) { location.reload(); }
    });
  }
  // Peers' columns and ages change without events here.
  setInterval(refresh, 10000);
}());
