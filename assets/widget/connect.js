/*! The widget's connect page: where every widget connection starts.
 *
 * Opened by <pipes-widget> as a popup, it tells the widget it is ready and gets the
 * request (token, provider, intent) back by postMessage: the browser names the
 * sender's origin, which Pipes checks, so no other site can start a flow through it.
 * Opened with the request in the URL's fragment (the widget's redirect mode, or a
 * link someone sent), it first says whose account would be connected and asks.
 * Either way it starts the flow on Pipes' own origin, where the answer sets the
 * browser cookie the callback requires, and goes on to the provider. */
(function () {
  'use strict';
  var title = document.getElementById('pipes-connect-title');
  var status = document.getElementById('pipes-connect-status');
  var button = document.getElementById('pipes-connect-continue');
  var FIELDS = ['connection_intent', 'connected_account_id'];

  function say(heading, text) { title.textContent = heading; status.textContent = text; }

  function start(request, extra) {
    var body = extra;
    FIELDS.forEach(function (k) { if (request[k]) body[k] = request[k]; });
    say('Connecting…', 'Taking you to the provider.');
    fetch('/widget/api/' + encodeURIComponent(request.provider) + '/authorize', {
      method: 'POST', credentials: 'same-origin',
      headers: { Authorization: 'Bearer ' + request.token, 'Content-Type': 'application/json' },
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().then(function (d) {
        if (!r.ok) throw new Error(d.message || 'The connection could not be started.');
        return d;
      });
    }).then(function (d) { location.replace(d.url); }, function (e) { say('Not connected', e.message); });
  }

  /* Whose account, in plain words, before anything starts. */
  function confirm(request) {
    fetch('/widget/api/providers', { headers: { Authorization: 'Bearer ' + request.token }, credentials: 'omit' })
      .then(function (r) {
        if (!r.ok) throw new Error('This connection link is no longer valid. Start again from the application.');
        return r.json();
      }).then(function (list) {
        var p = (list.data || []).filter(function (x) { return x.slug === request.provider; })[0];
        if (!p) throw new Error('This provider is not available.');
        var who = 'user ' + list.user_id + (list.organization_id ? ' in the organization ' + list.organization_id : '');
        say('Connect ' + p.name, 'Your ' + p.name + ' account will be connected to ' + who +
          '. Continue only if that is you. If someone sent you this link, close this page.');
        button.textContent = 'Continue to ' + p.name;
        button.hidden = false;
        button.focus();
        button.addEventListener('click', function () {
          button.hidden = true;
          start(request, request.redirect_to ? { redirect_to: request.redirect_to } : {});
        }, { once: true });
      }).catch(function (e) { say('Not connected', e.message); });
  }

  var fragment = new URLSearchParams(location.hash.slice(1));
  // The token leaves the address bar and the history at once.
  if (location.hash) history.replaceState(null, '', location.pathname);
  if (fragment.get('token') && fragment.get('provider')) {
    var request = {};
    fragment.forEach(function (v, k) { request[k] = v; });
    confirm(request);
    return;
  }
  if (!window.opener) {
    say('Nothing to connect', 'Start connecting from the application.');
    return;
  }
  var waiting = setTimeout(function () { say('Nothing to connect', 'Start connecting from the application.'); }, 5000);
  var started = false;
  window.addEventListener('message', function (event) {
    var d = event.data;
    if (started || event.source !== window.opener || !d || d.source !== 'pipes-widget' || d.type !== 'connect') return;
    started = true;
    clearTimeout(waiting);
    // The opener's origin as the browser reports it: Pipes posts the result only there.
    start(d.request, { opener_origin: event.origin });
  });
  window.opener.postMessage({ source: 'pipes-connect', type: 'ready' }, '*');
})();
