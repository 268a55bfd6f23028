/*! The widget's completion page: where the OAuth callback sends the browser.
 * In a popup, it posts the result to the page that opened it (only to the
 * origin Pipes checked) and closes. Without a popup, it goes back to the
 * widget's page with the result as pipes_* query parameters. */
(function () {
  'use strict';
  var main = document.getElementById('pipes-done');
  if (!main) return;
  var d = main.dataset;
  var result = { source: 'pipes-widget', provider: d.provider, status: d.status, error: d.error || null };
  if (window.opener && !window.opener.closed && d.openerOrigin) {
    try {
      window.opener.postMessage(result, d.openerOrigin);
      window.close();
      return;
    } catch (e) { /* the opener navigated away: fall through */ }
  }
  if (d.back) {
    var back = new URL(d.back);
    back.searchParams.set('pipes_provider', result.provider);
    back.searchParams.set('pipes_status', result.status);
    if (result.error) back.searchParams.set('pipes_error', result.error);
    location.replace(back.toString());
  }
})();
