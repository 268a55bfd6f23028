/*! <pipes-widget token="…">: the Pipes connect widget.
 *
 * Lists the enabled integrations with this user's state (Connect, Connected,
 * Needs reauthorization), every account of a provider by its label, "Add another
 * account" where the integration allows several, and the organization's shared
 * accounts (read-only), and runs the OAuth flow in a popup, falling back to a
 * full-page redirect. An API-key provider shows a key field instead of Connect (a
 * client-credentials one, a client id and secret); Pipes checks the key with the
 * provider before it keeps it. It talks only to the widget API of the Pipes server it
 * was loaded from, with the widget token in the Authorization header.
 *
 * Attributes: token (required; may be replaced to renew), mode="redirect"
 * (never open a popup), api-base (Pipes' origin, when not the script's).
 * Event: `pipes-widget:token-expired` (bubbles, composed) when the token has
 * expired; set a new `token` attribute to continue.
 * Plain JS and CSS, no dependencies, no build step. */
(function () {
  'use strict';
  if (!window.customElements || customElements.get('pipes-widget')) return;

  var script = document.currentScript;
  var SCRIPT_ORIGIN = script && script.src ? new URL(script.src, location.href).origin : location.origin;
  var STORE_KEY = 'pipes-widget-token';
  var RESULT_PARAMS = ['pipes_provider', 'pipes_status', 'pipes_error'];

  var FAILURES = {
    access_denied: 'Access was not allowed, so {name} was not connected.',
    provider_error: '{name} refused the request. Try again later.',
    exchange_failed: '{name} could not finish connecting. Try again.'
  };
  var REASONS = {
    invalid_grant: 'Access was revoked or has expired at {name}.',
    invalid_refresh_token: 'Access was revoked or has expired at {name}.',
    expired_without_refresh_token: 'Access expired and {name} gave no way to renew it.'
  };

  function fill(text, name) { return text.replace('{name}', name); }

  /* A tiny element builder: text goes through textContent, never innerHTML. */
  function h(tag, attrs, children) {
    var el = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k.slice(0, 2) === 'on') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    });
    (children || []).forEach(function (c) {
      if (c === null || c === undefined || c === false) return;
      el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return el;
  }

  function formatDate(iso) {
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleDateString(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
  }

  class PipesWidget extends HTMLElement {
    static get observedAttributes() { return ['token']; }

    constructor() {
      super();
      this.root = this.attachShadow({ mode: 'open' });
      this.notices = {};       // slug -> {kind, text}
      this.confirming = null;  // slug awaiting disconnect confirmation
      this.busy = null;        // slug with a connection in progress
      this.entering = null;    // {slug, intent}: a credential form asked for by a button
      this.expired = false;
      this.providers = [];
      this.onMessage = this.onMessage.bind(this);
      this.onVisible = this.onVisible.bind(this);
    }

    get base() { return (this.getAttribute('api-base') || SCRIPT_ORIGIN).replace(/\/$/, ''); }
    get redirectOnly() { return this.getAttribute('mode') === 'redirect'; }

    connectedCallback() {
      this.token = this.takeToken();
      this.takeResult();
      this.root.textContent = '';
      this.root.appendChild(h('link', { rel: 'stylesheet', href: this.base + '/widget.css' }));
      this.status = h('p', { class: 'sr-only', role: 'status', 'aria-live': 'polite' });
      this.body = h('div', { class: 'pipes', 'aria-busy': 'true' }, [h('p', { class: 'muted' }, ['Loading…'])]);
      this.root.appendChild(this.status);
      this.root.appendChild(this.body);
      window.addEventListener('message', this.onMessage);
      document.addEventListener('visibilitychange', this.onVisible);
      this.load();
    }

    disconnectedCallback() {
      window.removeEventListener('message', this.onMessage);
      document.removeEventListener('visibilitychange', this.onVisible);
      clearTimeout(this.expiryTimer);
      clearInterval(this.popupTimer);
    }

    /* Back from another tab (say, the provider's settings): show the current state. */
    onVisible() {
      if (document.visibilityState === 'visible' && !this.busy && !this.confirming && !this.expired && this.token) this.load();
    }

    attributeChangedCallback(name, old, value) {
      if (name === 'token' && old !== null && value && value !== old && this.body) {
        this.token = this.takeToken();
        this.expired = false;
        this.load();
      }
    }

    /* The hosted page takes its token from the fragment (#token=…, never sent to a server),
       keeps it in this tab (so a redirect back needs no token in the URL) and removes it
       from the address bar and history. */
    takeToken() {
      var token = this.getAttribute('token');
      if (!this.hasAttribute('hosted')) return token;
      var fragment = new URLSearchParams(location.hash.slice(1));
      if (fragment.get('token')) {
        token = fragment.get('token');
        history.replaceState(history.state, '', location.pathname + location.search);
      }
      try {
        if (token) sessionStorage.setItem(STORE_KEY, token);
        else token = sessionStorage.getItem(STORE_KEY);
      } catch (e) { /* storage disabled: the fragment is all we have */ }
      return token;
    }

    /* After a redirect (no popup), the result comes back as pipes_* query parameters. */
    takeResult() {
      var url = new URL(location.href);
      var slug = url.searchParams.get('pipes_provider');
      if (!slug) return;
      this.pendingResult = { provider: slug, status: url.searchParams.get('pipes_status'), error: url.searchParams.get('pipes_error') };
      RESULT_PARAMS.forEach(function (p) { url.searchParams.delete(p); });
      history.replaceState(history.state, '', url.pathname + url.search + url.hash);
    }

    api(method, path, body) {
      var init = { method: method, headers: { Authorization: 'Bearer ' + (this.token || '') }, credentials: 'omit' };
      if (body) { init.headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
      var self = this;
      return fetch(this.base + '/widget/api' + path, init).then(function (res) {
        if (res.status === 204) return null;
        return res.json().catch(function () { return {}; }).then(function (data) {
          if (res.status === 401) {
            if (data.code === 'widget_token_expired') self.onExpired();
            else self.fail('This widget could not sign in. Reload the page to try again.');
            throw new Error('unauthorized');
          }
          // A field error says what was wrong with what the user typed.
          var first = data.errors && data.errors[0] && data.errors[0].message;
          if (!res.ok) throw new Error(first || data.message || ('HTTP ' + res.status));
          return data;
        });
      });
    }

    load() {
      if (!this.token) { this.fail('This widget has no token. The application must provide one.'); return; }
      var self = this;
      this.api('GET', '/providers').then(function (data) {
        self.providers = data.data || [];
        self.armExpiry(data.expires_at);
        if (self.pendingResult) { self.showResult(self.pendingResult); self.pendingResult = null; }
        self.render();
      }).catch(function (err) {
        if (err.message !== 'unauthorized') self.fail('The list of accounts could not be loaded. Reload the page to try again.');
      });
    }

    armExpiry(expiresAt) {
      clearTimeout(this.expiryTimer);
      var ms = new Date(expiresAt).getTime() - Date.now();
      if (ms > 0 && ms < 2147483647) this.expiryTimer = setTimeout(this.onExpired.bind(this), ms);
    }

    onExpired() {
      if (this.expired) return;
      this.expired = true;
      clearTimeout(this.expiryTimer);
      if (this.hasAttribute('hosted')) { try { sessionStorage.removeItem(STORE_KEY); } catch (e) { /* ignore */ } }
      this.body.setAttribute('aria-busy', 'false');
      this.body.replaceChildren(h('div', { class: 'panel', role: 'alert', 'data-state': 'expired' }, [
        h('h2', {}, ['Session expired']),
        h('p', {}, ['This page has been open too long. Reload it to continue.'])
      ]));
      this.dispatchEvent(new CustomEvent('pipes-widget:token-expired', { bubbles: true, composed: true }));
    }

    fail(text) {
      this.body.setAttribute('aria-busy', 'false');
      this.body.replaceChildren(h('div', { class: 'panel', role: 'alert', 'data-state': 'error' }, [h('p', {}, [text])]));
    }

    nameOf(slug) {
      var p = this.providers.filter(function (x) { return x.slug === slug; })[0];
      return p ? p.name : slug;
    }

    showResult(r) {
      var name = this.nameOf(r.provider);
      if (r.status === 'connected') {
        this.notices[r.provider] = null;
        this.announce(name + ' is connected.');
      } else {
        this.notices[r.provider] = { kind: 'error', text: fill(FAILURES[r.error] || 'Something went wrong while connecting {name}. Try again.', name) };
      }
    }

    announce(text) { this.status.textContent = text; }

    onMessage(event) {
      var d = event.data;
      if (event.origin !== this.base || !d) return;
      // The connect page is ready: hand it the request (only to Pipes' origin, only to our popup).
      if (d.source === 'pipes-connect' && d.type === 'ready') {
        var pending = this.pendingConnect;
        if (pending && event.source === pending.popup) {
          this.pendingConnect = null;
          pending.popup.postMessage({ source: 'pipes-widget', type: 'connect', request: pending.request }, this.base);
        }
        return;
      }
      if (d.source !== 'pipes-widget') return;
      clearInterval(this.popupTimer);
      this.busy = null;
      this.showResult(d);
      this.load();
    }

    /* `intent`: {connection_intent: 'add'} for another account, or 'reauthorize' with its id.
       Every flow starts on Pipes' connect page, which binds this browser to it: in a popup
       that gets the request by postMessage, or (redirect mode) with it in the fragment. */
    connect(slug, intent) {
      var name = this.nameOf(slug);
      this.notices[slug] = null;
      var request = { token: this.token, provider: slug };
      Object.keys(intent || {}).forEach(function (k) { request[k] = intent[k]; });
      // Opened at once, inside the click, or the browser blocks it.
      var popup = this.redirectOnly ? null : window.open(this.base + '/widget/connect', 'pipes-connect', 'popup,width=520,height=720');
      if (!popup) {
        var back = new URL(location.href);
        back.hash = '';
        request.redirect_to = back.toString();
        location.assign(this.base + '/widget/connect#' + new URLSearchParams(request).toString());
        return;
      }
      var self = this;
      this.pendingConnect = { popup: popup, request: request };
      this.busy = slug;
      this.render();
      this.announce('Finish connecting ' + name + ' in the pop-up window.');
      clearInterval(this.popupTimer);
      // Closed without an answer (the user gave up): show the current state again.
      this.popupTimer = setInterval(function () {
        if (popup.closed) { clearInterval(self.popupTimer); self.pendingConnect = null; self.busy = null; self.load(); }
      }, 500);
    }

    /* Providers whose accounts connect with a credential the user types. */
    keyed(p) { return p.auth_method === 'api_key' || p.auth_method === 'client_credentials'; }

    /* Shows the credential form for `intent` in the provider's card. */
    enter(slug, intent) {
      this.entering = { slug: slug, intent: intent || {} };
      this.focusAfter = slug;
      this.render();
    }

    /* The fields of a keyed provider, with the button that sends them. The values are read
       once, on submit, and never kept. */
    credentialForm(p, intent, verb) {
      var self = this;
      var busy = this.busy === p.slug;
      var fields = p.auth_method === 'api_key'
        ? [['secret', 'API key']]
        : [['client_id', 'Client ID'], ['client_secret', 'Client secret']];
      var inputs = fields.map(function (f, i) {
        return h('label', { class: 'field' }, [f[1], h('input', {
          name: f[0], type: f[0] === 'client_id' ? 'text' : 'password', autocomplete: 'off', spellcheck: 'false',
          required: true, disabled: busy, 'data-focus': i === 0 ? true : null
        })]);
      });
      return h('form', { class: 'credential', 'data-credential': p.auth_method, 'aria-label': verb + ' ' + p.name,
        onsubmit: function (e) {
          e.preventDefault();
          var body = {};
          Object.keys(intent || {}).forEach(function (k) { body[k] = intent[k]; });
          fields.forEach(function (f) { body[f[0]] = e.target.elements[f[0]].value.trim(); });
          self.submitCredential(p.slug, body);
        } }, inputs.concat([h('button', { type: 'submit', disabled: busy }, [busy ? 'Checking…' : verb])]));
    }

    submitCredential(slug, body) {
      var name = this.nameOf(slug);
      var self = this;
      this.busy = slug;
      this.notices[slug] = null;
      this.render();
      this.api('POST', '/' + encodeURIComponent(slug) + '/credential', body).then(function () {
        self.busy = null;
        self.entering = null;
        self.announce(name + ' is connected.');
        self.focusAfter = slug;
        self.load();
      }).catch(function (err) {
        self.busy = null;
        if (err.message === 'unauthorized') return;
        self.notices[slug] = { kind: 'error', text: name + ' could not be connected: ' + err.message };
        self.focusAfter = slug;
        self.render();
      });
    }

    /* `accountId`: one of several accounts; absent: the provider's one account. */
    disconnect(slug, accountId) {
      var name = this.nameOf(slug);
      var self = this;
      this.confirming = null;
      this.busy = slug;
      this.render();
      var query = accountId ? '?connected_account_id=' + encodeURIComponent(accountId) : '';
      this.api('DELETE', '/' + encodeURIComponent(slug) + query).then(function () {
        self.busy = null;
        self.announce(name + ' is disconnected.');
        self.focusAfter = slug;
        self.load();
      }).catch(function (err) {
        self.busy = null;
        if (err.message === 'unauthorized') return;
        self.notices[slug] = { kind: 'error', text: name + ' could not be disconnected: ' + err.message };
        self.render();
      });
    }

    render() {
      if (this.expired) return;
      var self = this;
      this.body.setAttribute('aria-busy', 'false');
      if (!this.providers.length) {
        this.body.replaceChildren(h('p', { class: 'muted' }, ['No integrations are available yet.']));
        return;
      }
      this.body.replaceChildren(h('ul', { class: 'list' }, this.providers.map(function (p) { return self.card(p); })));
      var focus = this.focusAfter;
      this.focusAfter = null;
      if (focus) {
        var target = this.root.querySelector('[data-slug="' + CSS.escape(focus) + '"] [data-focus]');
        if (target) target.focus();
      }
    }

    /* An account's label: its display name, else its identifier, else its place. */
    label(account, i) { return account.account_display_name || account.account_identifier || ('Account ' + (i + 1)); }

    badge(state) {
      if (state === 'connected') return h('span', { class: 'badge ok' }, ['Connected']);
      if (state === 'needs_reauthorization') return h('span', { class: 'badge warn' }, ['Needs reauthorization']);
      return h('span', { class: 'badge' }, ['Not connected']);
    }

    /* The organization's shared account: its state, and nothing to change here. */
    sharedCard(p) {
      var account = p.connected_account;
      var state = account ? account.state : 'not_connected';
      var id = 'pw-org-' + p.slug.replace(/[^a-zA-Z0-9_-]/g, '_');
      return h('li', { class: 'card', 'data-slug': p.slug, 'data-owner': 'organization', 'data-state': state, 'aria-labelledby': id + '-name' }, [
        h('div', { class: 'logo', 'aria-hidden': 'true' }, [(p.name || p.slug).charAt(0).toUpperCase()]),
        h('div', { class: 'body' }, [
          h('h2', { id: id + '-name' }, [p.name]),
          h('p', { class: 'state' }, [this.badge(state), ' ', h('span', { class: 'muted' }, ['Shared by your organization'])]),
          h('p', { class: 'muted' }, [account ? 'Your organization manages this connection.' : 'Your organization has not connected ' + p.name + ' yet.'])
        ]),
        h('div', { class: 'actions' }, [])
      ]);
    }

    /* A provider with several accounts: one row each, with its own actions. */
    accountsCard(p, accounts) {
      var self = this;
      var id = 'pw-' + p.slug.replace(/[^a-zA-Z0-9_-]/g, '_');
      var busy = this.busy === p.slug;
      var notice = this.notices[p.slug];
      var rows = accounts.map(function (a, i) {
        var label = self.label(a, i);
        var key = p.slug + ':' + a.id;
        var actions = [];
        if (self.confirming === key) {
          actions.push(h('button', { type: 'button', class: 'danger', 'aria-label': 'Yes, disconnect ' + label, onclick: function () { self.disconnect(p.slug, a.id); } }, ['Yes, disconnect']));
          actions.push(h('button', { type: 'button', 'data-cancel': true, onclick: function () { self.confirming = null; self.render(); } }, ['Cancel']));
        } else {
          if (a.state === 'needs_reauthorization') {
            var again = { connection_intent: 'reauthorize', connected_account_id: a.id };
            actions.push(h('button', { type: 'button', disabled: busy, 'aria-label': 'Reauthorize ' + label,
              onclick: function () { if (self.keyed(p)) self.enter(p.slug, again); else self.connect(p.slug, again); } }, ['Reauthorize']));
          }
          actions.push(h('button', { type: 'button', class: 'secondary', disabled: busy, 'aria-label': 'Disconnect ' + label,
            onclick: function () { self.confirming = key; self.render(); var c = self.root.querySelector('[data-cancel]'); if (c) c.focus(); } }, ['Disconnect']));
        }
        return h('li', { class: 'account', 'data-account': a.id, 'data-state': a.state }, [
          h('span', { class: 'label' }, [label]), ' ', self.badge(a.state), h('span', { class: 'account-actions' }, actions)
        ]);
      });
      var add = h('button', { type: 'button', 'data-focus': true, disabled: busy, 'aria-label': 'Add another ' + p.name + ' account',
        onclick: function () { self.addAccount(p); } }, [busy ? 'Waiting…' : 'Add another account']);
      var entering = this.entering && this.entering.slug === p.slug ? this.credentialForm(p, this.entering.intent, 'Save') : null;
      return h('li', { class: 'card', 'data-slug': p.slug, 'data-state': 'accounts', 'aria-labelledby': id + '-name' }, [
        h('div', { class: 'logo', 'aria-hidden': 'true' }, [(p.name || p.slug).charAt(0).toUpperCase()]),
        h('div', { class: 'body' }, [
          h('h2', { id: id + '-name' }, [p.name]),
          h('ul', { class: 'accounts', 'aria-label': p.name + ' accounts' }, rows),
          entering,
          notice ? h('p', { class: 'notice ' + notice.kind, role: 'alert' }, [notice.text]) : null
        ]),
        h('div', { class: 'actions' }, p.multiple_connections ? [add] : [])
      ]);
    }

    addAccount(p) {
      if (this.keyed(p)) this.enter(p.slug, { connection_intent: 'add' });
      else this.connect(p.slug, { connection_intent: 'add' });
    }

    card(p) {
      var self = this;
      var accounts = p.connected_accounts || [];
      if (p.read_only) return this.sharedCard(p);
      if (accounts.length > 1) return this.accountsCard(p, accounts);
      var account = p.connected_account || accounts[0];
      var state = account ? account.state : 'not_connected';
      var id = 'pw-' + p.slug.replace(/[^a-zA-Z0-9_-]/g, '_');
      var busy = this.busy === p.slug;
      var notice = this.notices[p.slug];
      var details = [];
      var actions = [];
      if (state === 'connected') {
        details.push(h('p', { class: 'state' }, [
          h('span', { class: 'badge ok' }, ['Connected']), ' since ',
          h('time', { datetime: account.created_at }, [formatDate(account.created_at)])
        ]));
        if (account.scopes && account.scopes.length) {
          details.push(h('p', { class: 'scopes' }, ['Access: '].concat(account.scopes.map(function (s) { return h('code', {}, [s]); }))));
        }
        if (this.confirming === p.slug) {
          actions.push(h('p', { class: 'confirm', id: id + '-confirm' }, ['Disconnect ' + p.name + '? The application will lose access.']));
          actions.push(h('button', { type: 'button', class: 'danger', 'aria-describedby': id + '-confirm', onclick: function () { self.disconnect(p.slug, account.id); } }, ['Yes, disconnect']));
          actions.push(h('button', { type: 'button', 'data-cancel': true, onclick: function () { self.confirming = null; self.focusAfter = p.slug; self.render(); } }, ['Cancel']));
        } else {
          actions.push(h('button', { type: 'button', class: 'secondary', 'data-focus': true, disabled: busy, 'aria-label': 'Disconnect ' + p.name,
            onclick: function () { self.confirming = p.slug; self.render(); var c = self.root.querySelector('[data-cancel]'); if (c) c.focus(); } }, [busy ? 'Disconnecting…' : 'Disconnect']));
          if (p.multiple_connections) {
            actions.push(h('button', { type: 'button', disabled: busy, 'aria-label': 'Add another ' + p.name + ' account',
              onclick: function () { self.addAccount(p); } }, ['Add another account']));
          }
          if (this.entering && this.entering.slug === p.slug) details.push(this.credentialForm(p, this.entering.intent, 'Save'));
        }
      } else if (state === 'needs_reauthorization') {
        details.push(h('p', { class: 'state' }, [h('span', { class: 'badge warn' }, ['Needs reauthorization'])]));
        details.push(h('p', { class: 'reason' }, [fill(REASONS[p.reauthorization_reason] || '{name} no longer accepts this connection.', p.name) + ' Reauthorize to keep it working.']));
        var again = { connection_intent: 'reauthorize', connected_account_id: account.id };
        if (this.keyed(p)) details.push(this.credentialForm(p, again, 'Update'));
        else actions.push(h('button', { type: 'button', 'data-focus': true, disabled: busy, 'aria-label': 'Reauthorize ' + p.name,
          onclick: function () { self.connect(p.slug, again); } }, [busy ? 'Waiting…' : 'Reauthorize']));
      } else if (this.keyed(p)) {
        details.push(this.credentialForm(p, null, 'Connect'));
      } else {
        actions.push(h('button', { type: 'button', 'data-focus': true, disabled: busy, 'aria-label': 'Connect ' + p.name,
          onclick: function () { self.connect(p.slug); } }, [busy ? 'Waiting…' : 'Connect']));
      }
      if (notice) details.push(h('p', { class: 'notice ' + notice.kind, role: 'alert' }, [notice.text]));
      return h('li', { class: 'card', 'data-slug': p.slug, 'data-state': state, 'aria-labelledby': id + '-name',
        onkeydown: function (e) { if (e.key === 'Escape' && self.confirming === p.slug) { self.confirming = null; self.focusAfter = p.slug; self.render(); } } }, [
        h('div', { class: 'logo', 'aria-hidden': 'true' }, [(p.name || p.slug).charAt(0).toUpperCase()]),
        h('div', { class: 'body' }, [
          h('h2', { id: id + '-name' }, [p.name]),
          p.description ? h('p', { class: 'muted' }, [p.description]) : null
        ].concat(details)),
        h('div', { class: 'actions' }, actions)
      ]);
    }
  }

  customElements.define('pipes-widget', PipesWidget);
})();
