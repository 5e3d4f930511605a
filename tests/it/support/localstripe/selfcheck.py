#!/usr/bin/env python3
"""Self-check of the localstripe compatibility layer (compat.py).

    <venv>/bin/python tests/it/support/localstripe/selfcheck.py [--fixtures PATH] [-v]

Starts compat.py (twice, to check isolation), drives the flows paybridge uses
over plain HTTP, and checks:
  * every top-level key of resources.{payment_intent,charge,customer,
    payment_method,event,refund,dispute} in Stripe's fixtures3.json is present in
    every such object the layer returned, with the same JSON type (null only
    where the fixture has null, or where the key is listed in NULLABLE below
    because no value makes sense here); nested objects are checked the same
    way;
  * card outcomes, 3-D Secure, cancel, capture, webhooks (signature + shape);
  * Idempotency-Key replay / mismatch / concurrency;
  * refunds: create/retrieve/list/update/cancel, over-refund refusals,
    idempotent replay, pending/failed/canceled refunds through /_test/refunds,
    refund.* / charge.refunded / charge.refund.updated webhooks;
  * manual capture (partial, no refund of the rest, the authorization's
    capture_before, its events), expire_authorization, /_test/disputes with
    charge.dispute.* events, GET /v1/disputes;
  * /_test/requests counting and /_test/faults injection;
  * no pickle file is written; two instances do not share state.
Exits non-zero on any gap. Stdlib only.
"""

import argparse
import fnmatch
import hashlib
import hmac
import http.client
import http.server
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, '..', '..', '..', '..'))
KEY = 'sk_test_selfcheck'
RESOURCES = ('payment_intent', 'charge', 'customer', 'payment_method', 'event',
             'refund', 'dispute')

# Paths (dotted, * wildcard) where the layer may answer null although the
# fixture shows a value: the value makes no sense for this object's state
# (no error yet, not canceled, no address given, no 3DS, ...).
NULLABLE = {
    'payment_intent': [
        'automatic_payment_methods', 'canceled_at', 'last_payment_error',
        'next_action', 'payment_method_configuration_details', 'processing',
        'shipping', 'transfer_data', 'latest_charge', 'payment_method',
        'description', 'customer', 'cancellation_reason',
        'excluded_payment_method_types',
    ],
    'charge': [
        'balance_transaction', 'description', 'outcome', 'receipt_url',
        'shipping', 'transfer_data', 'source', 'payment_method_details',
        'billing_details.name', 'failure_code', 'failure_message',
        'payment_method_details.card.amount_authorized',
        'payment_method_details.card.installments',
        'payment_method_details.card.three_d_secure',
        'payment_method_details.card.wallet', 'payment_intent', 'customer',
    ],
    'customer': [
        'address', 'currency', 'discount', 'shipping',
        'invoice_settings.rendering_options', 'email', 'name',
    ],
    'payment_method': [
        'billing_details.address.*', 'billing_details.email',
        'billing_details.phone', 'billing_details.name',
        'card.generated_from', 'card.wallet', 'customer',
    ],
    'event': ['request.id', 'request.idempotency_key'],
    'refund': [],
    'dispute': [],
}
# Paths whose contents are free-form or another resource; only their own
# presence/type is checked, not their keys.
NO_RECURSE = {
    'payment_intent': ['metadata', 'payment_method_options',
                       'last_payment_error.*', 'next_action.*'],
    'charge': ['metadata', 'source', 'fraud_details', 'refunds.data'],
    'customer': ['metadata', 'discount.*'],
    'payment_method': ['metadata'],
    'event': ['data.object'],
    'refund': ['metadata'],
    'dispute': ['metadata', 'evidence', 'evidence_details.enhanced_eligibility'],
}


# Keys whose fixture value is null but whose type is known: ids of related
# objects (an object only when expanded), and keys that must be gone.
ID_OR_NULL = {
    'payment_intent': ['latest_charge', 'customer', 'payment_method'],
    'charge': ['payment_intent', 'customer', 'balance_transaction',
               'payment_method'],
    'customer': ['default_source'],
    'payment_method': ['customer'],
    'event': [],
    'refund': ['charge', 'payment_intent', 'balance_transaction',
               'failure_balance_transaction', 'customer', 'payment_method'],
    'dispute': ['charge', 'payment_intent'],
}
FORBIDDEN = {
    'payment_intent': ['charges', 'invoice'],
    'charge': ['invoice'],
    'customer': ['account_balance', 'sources', 'subscriptions'],
    'payment_method': [],
    'event': [],
    'refund': ['date'],
    'dispute': [],
}


def id_gaps(kind, obj):
    gaps = ['%s: must be an id string or null, got %s' % (k, jtype(obj.get(k)))
            for k in ID_OR_NULL[kind] if jtype(obj.get(k)) not in
            ('string', 'null')]
    gaps += ['%s: present, current API has no such field' % k
             for k in FORBIDDEN[kind] if k in obj]
    return gaps


def jtype(v):
    if v is None:
        return 'null'
    if isinstance(v, bool):
        return 'bool'
    if isinstance(v, (int, float)):
        return 'number'
    if isinstance(v, str):
        return 'string'
    if isinstance(v, list):
        return 'array'
    if isinstance(v, dict):
        return 'object'
    return type(v).__name__


def _match(path, patterns):
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def shape_gaps(kind, fixture, ours, path=''):
    gaps = []
    for key, fval in fixture.items():
        p = key if not path else path + '.' + key
        if key not in ours:
            gaps.append('%s: missing' % p)
            continue
        oval = ours[key]
        ft, ot = jtype(fval), jtype(oval)
        if ft == 'null':
            continue
        if ot == 'null':
            if not _match(p, NULLABLE.get(kind, [])):
                gaps.append('%s: null, fixture has %s' % (p, ft))
            continue
        if ft != ot:
            gaps.append('%s: %s, fixture has %s' % (p, ot, ft))
            continue
        if _match(p, NO_RECURSE.get(kind, [])):
            continue
        if ft == 'object':
            gaps += shape_gaps(kind, fval, oval, p)
        elif ft == 'array' and fval and oval and \
                isinstance(fval[0], dict) and isinstance(oval[0], dict):
            gaps += shape_gaps(kind, fval[0], oval[0], p + '[]')
    return gaps


def find_fixtures(explicit):
    candidates = [explicit, os.environ.get('PAYBRIDGE_STRIPE_FIXTURES'),
                  os.path.join(REPO, 'tests', 'fixtures', 'stripe',
                               'fixtures3.json'),
                  os.path.join(REPO, '..', 'shared', 'stripe',
                               'fixtures3.json')]
    for c in candidates:
        if c and os.path.isfile(c):
            return c
    sys.exit('selfcheck: fixtures3.json not found (tried %s)'
             % [c for c in candidates if c])


def server_python():
    """The interpreter for compat.py: this one if it has aiohttp, else the
    venv made by setup.sh."""
    if os.environ.get('LOCALSTRIPE_PYTHON_BIN'):
        return os.environ['LOCALSTRIPE_PYTHON_BIN']
    try:
        import aiohttp  # noqa: F401
        import localstripe  # noqa: F401
        return sys.executable
    except ImportError:
        venv = os.environ.get('LOCALSTRIPE_VENV') or \
            os.path.join(REPO, '.tools', 'localstripe-venv')
        return os.path.join(venv, 'bin', 'python')


class Server:
    def __init__(self, verbose):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [server_python(), os.path.join(HERE, 'compat.py'), '--host',
             '127.0.0.1', '--port', '0'],
            stdout=subprocess.PIPE, stderr=None if verbose else self.log,
            text=True)
        q = queue.Queue()
        threading.Thread(target=lambda: q.put(self.proc.stdout.readline()),
                         daemon=True).start()
        try:
            line = q.get(timeout=30)
        except queue.Empty:
            line = ''
        if not line.startswith('LISTENING '):
            self.stop()
            raise SystemExit('selfcheck: compat.py did not print LISTENING '
                             '(got %r); stderr:\n%s' % (line, self.stderr()))
        host, port = line.split()[1].rsplit(':', 1)
        self.host, self.port = host, int(port)
        self.first_line = line

    def stderr(self):
        self.log.seek(0)
        return self.log.read().decode(errors='replace')[-4000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def request(self, method, path, params=None, headers=None, auth=True,
                body=None, timeout=15):
        conn = http.client.HTTPConnection(self.host, self.port,
                                          timeout=timeout)
        hdrs = {'Stripe-Version': '2026-09-30.endive'}
        if auth:
            hdrs['Authorization'] = 'Bearer ' + KEY
        hdrs.update(headers or {})
        if params is not None:
            enc = urllib.parse.urlencode(params)
            if method in ('GET', 'DELETE'):
                path = path + '?' + enc
            else:
                body = enc
                hdrs['Content-Type'] = 'application/x-www-form-urlencoded'
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = raw.decode(errors='replace')
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, \
                data
        finally:
            conn.close()


class Checker:
    def __init__(self, fixtures, verbose):
        self.fixtures = fixtures
        self.verbose = verbose
        self.passed = 0
        self.failed = []
        self.seen = {k: [] for k in RESOURCES}
        self.errors = []

    def check(self, cond, what, detail=''):
        if cond:
            self.passed += 1
            if self.verbose:
                print('ok   ' + what)
        else:
            self.failed.append(what + (': ' + str(detail) if detail else ''))
            print('FAIL ' + what + (': ' + str(detail)[:600] if detail
                                    else ''))
        return cond

    def collect(self, label, data):
        """Remember every object of the five kinds found in a response."""
        if isinstance(data, dict) and label.endswith('error') and \
                isinstance(data.get('error'), dict):
            self.errors.append(data['error'])
        if isinstance(data, dict):
            kind = data.get('object')
            if isinstance(kind, str) and kind in self.seen and 'id' in data:
                self.seen[kind].append((label, data))
            for k, v in data.items():
                self.collect(label + '.' + k, v)
        elif isinstance(data, list):
            for i, v in enumerate(data):
                self.collect('%s[%d]' % (label, i), v)


def form_card(number, prefix='card'):
    return [('%s[number]' % prefix, number), ('%s[exp_month]' % prefix, '12'),
            ('%s[exp_year]' % prefix, '2034'), ('%s[cvc]' % prefix, '123')]


class WebhookSink:
    def __init__(self):
        self.events = []
        sink = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get('Content-Length', 0))
                sink.events.append((self.headers.get('Stripe-Signature'),
                                    self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
        self.url = 'http://127.0.0.1:%d/hook' % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def run(c, s, s2):
    R = s.request
    ok = c.check

    # -- auth -------------------------------------------------------------
    st, _, _ = R('GET', '/v1/customers', auth=False)
    ok(st == 401, 'no Authorization -> 401', st)
    st, _, _ = R('GET', '/v1/customers', auth=False,
                 headers={'Authorization': 'Token abc'})
    ok(st == 401, 'odd Authorization scheme -> 401 (not 500)', st)

    # -- webhooks ---------------------------------------------------------
    sink = WebhookSink()
    secret = 'whsec_selfcheck'
    st, _, _ = R('POST', '/_config/webhooks/selfcheck',
                 [('url', sink.url), ('secret', secret)])
    ok(st == 200, 'register webhook', st)

    # -- customer ---------------------------------------------------------
    st, _, cus = R('POST', '/v1/customers',
                   [('email', 'jane@example.com'), ('name', 'Jane'),
                    ('metadata[tenant]', 'billing')])
    ok(st == 200 and cus.get('object') == 'customer', 'create customer',
       (st, cus))
    c.collect('customer.create', cus)
    st, _, got = R('GET', '/v1/customers/' + cus['id'])
    ok(st == 200 and got['id'] == cus['id'], 'retrieve customer')
    c.collect('customer.get', got)

    # -- payment method ---------------------------------------------------
    st, _, pm = R('POST', '/v1/payment_methods',
                  [('type', 'card')] + form_card('4242424242424242'))
    ok(st == 200 and pm['id'].startswith('pm_'), 'create card pm', (st, pm))
    c.collect('pm.create', pm)
    st, _, got = R('GET', '/v1/payment_methods/' + pm['id'])
    c.collect('pm.get', got)

    # -- create (no pm), then confirm with payment_method -----------------
    st, _, pi = R('POST', '/v1/payment_intents', [
        ('amount', '1099'), ('currency', 'eur'), ('customer', cus['id']),
        ('description', 'Invoice INV-1'), ('metadata[invoice_id]', 'INV-1'),
        ('allowed_payment_method_types[]', 'card'),
        ('expand[]', 'customer')])
    ok(st == 200 and pi.get('status') == 'requires_payment_method',
       'create PI without pm -> requires_payment_method', (st, pi))
    ok(pi.get('description') == 'Invoice INV-1', 'description stored')
    ok(pi.get('payment_method_types') == ['card'] and
       pi.get('allowed_payment_method_types') == ['card'],
       'allowed_payment_method_types -> payment_method_types')
    ok(isinstance(pi.get('customer'), dict), 'expand[]=customer expands')
    c.collect('pi.create.expanded', pi)
    st, _, pi2 = R('POST', '/v1/payment_intents/%s/confirm' % pi['id'],
                   [('payment_method', pm['id']),
                    ('return_url', 'https://app.test/return')])
    ok(st == 200 and pi2.get('status') == 'succeeded',
       'confirm with payment_method -> succeeded', (st, pi2))
    ok(isinstance(pi2.get('latest_charge'), str) and
       pi2['latest_charge'].startswith('ch_'), 'latest_charge is an id')
    ok('charges' not in pi2, 'no inlined charges list')
    ok(pi2.get('amount_received') == 1099 and
       pi2.get('amount_capturable') == 0, 'amount_received/capturable')
    c.collect('pi.confirm', pi2)
    st, _, pi3 = R('GET', '/v1/payment_intents/' + pi['id'],
                   [('expand[]', 'latest_charge')])
    ok(st == 200 and isinstance(pi3.get('latest_charge'), dict) and
       pi3['latest_charge'].get('object') == 'charge',
       'expand[]=latest_charge gives the charge', pi3.get('latest_charge'))
    c.collect('pi.get.expanded', pi3)
    st, _, ch = R('GET', '/v1/charges/' + pi2['latest_charge'])
    ok(st == 200 and ch.get('amount_captured') == 1099 and
       ch.get('payment_intent') == pi['id'], 'charge retrieve', ch)
    c.collect('charge.get', ch)

    # -- automatic_payment_methods + payment_method_data -------------------
    st, _, pa = R('POST', '/v1/payment_intents', [
        ('amount', '2000'), ('currency', 'usd'),
        ('automatic_payment_methods[enabled]', 'true'),
        ('excluded_payment_method_types[]', 'sepa_debit')])
    ok(st == 200 and pa.get('automatic_payment_methods') == {'enabled': True}
       and pa.get('excluded_payment_method_types') == ['sepa_debit'],
       'automatic_payment_methods / excluded types accepted', (st, pa))
    c.collect('pi.auto', pa)
    st, _, pa2 = R('POST', '/v1/payment_intents/%s/confirm' % pa['id'],
                   [('payment_method_data[type]', 'card')] +
                   form_card('4242424242424242', 'payment_method_data[card]'))
    ok(st == 200 and pa2.get('status') == 'succeeded',
       'confirm with payment_method_data -> succeeded', (st, pa2))
    c.collect('pi.auto.confirm', pa2)

    # -- no types given -> card -------------------------------------------
    st, _, pd = R('POST', '/v1/payment_intents',
                  [('amount', '300'), ('currency', 'eur'),
                   ('payment_method', 'pm_card_visa'), ('confirm', 'true')])
    ok(st == 200 and pd['payment_method_types'] == ['card'] and
       pd['status'] == 'succeeded', 'default types = card, pm_card_visa',
       (st, pd))

    # -- declined card ----------------------------------------------------
    st, _, pmd = R('POST', '/v1/payment_methods',
                   [('type', 'card')] + form_card('4000000000000341'))
    st, _, err = R('POST', '/v1/payment_intents', [
        ('amount', '1500'), ('currency', 'eur'), ('payment_method', pmd['id']),
        ('confirm', 'true'), ('metadata[case]', 'decline')])
    e = (err or {}).get('error', {})
    ok(st == 402 and e.get('type') == 'card_error' and
       e.get('code') == 'card_declined', 'decline -> 402 card_error', (st, err))
    epi = e.get('payment_intent') or {}
    ok(epi.get('status') == 'requires_payment_method' and
       isinstance(epi.get('last_payment_error'), dict),
       'decline error carries the PaymentIntent', epi)
    c.collect('decline.error', err)
    st, _, dpi = R('GET', '/v1/payment_intents/' + epi.get('id', 'x'))
    lpe = dpi.get('last_payment_error') or {}
    ok(st == 200 and lpe.get('type') == 'card_error' and
       lpe.get('code') == 'card_declined' and
       isinstance(dpi.get('latest_charge'), str),
       'declined PI: last_payment_error + latest_charge id', dpi)
    c.collect('decline.get', dpi)
    st, _, dch = R('GET', '/v1/charges/' + dpi['latest_charge'])
    ok(st == 200 and dch.get('status') == 'failed' and
       dch.get('amount_captured') == 0, 'failed charge', dch)
    c.collect('decline.charge', dch)
    st, _, retry = R('POST', '/v1/payment_intents/%s/confirm' % dpi['id'],
                     [('payment_method', pm['id'])])
    ok(st == 200 and retry.get('status') == 'succeeded' and
       retry.get('latest_charge') != dpi['latest_charge'],
       're-confirm declined PI with another card -> succeeded', (st, retry))

    # -- 3-D Secure -------------------------------------------------------
    st, _, p3 = R('POST', '/v1/payment_methods',
                  [('type', 'card')] + form_card('4000002760003184'))
    st, _, a = R('POST', '/v1/payment_intents', [
        ('amount', '4200'), ('currency', 'eur'), ('payment_method', p3['id']),
        ('confirm', 'true'), ('return_url', 'https://app.test/ret?x=1')])
    na = a.get('next_action') or {}
    ok(st == 200 and a.get('status') == 'requires_action' and
       na.get('type') == 'redirect_to_url' and
       na['redirect_to_url']['return_url'] == 'https://app.test/ret?x=1',
       '3DS card with return_url -> requires_action redirect_to_url', (st, a))
    c.collect('3ds.create', a)
    st, _, a2 = R('POST', '/v1/payment_intents/%s/_authenticate' % a['id'],
                  [('client_secret', a['client_secret']), ('success', 'true')])
    ok(st == 200 and a2.get('status') == 'succeeded',
       '_authenticate success=true -> succeeded', (st, a2))
    c.collect('3ds.auth', a2)
    # 3DS page of the layer (browser flow)
    st, _, b = R('POST', '/v1/payment_intents', [
        ('amount', '4300'), ('currency', 'eur'), ('payment_method', p3['id']),
        ('confirm', 'true'), ('return_url', 'https://app.test/ret')])
    url = urllib.parse.urlsplit(b['next_action']['redirect_to_url']['url'])
    st, h, _ = R('GET', url.path + '?' + url.query + '&success=true',
                 auth=False)
    loc = urllib.parse.urlsplit(h.get('location', ''))
    q = dict(urllib.parse.parse_qsl(loc.query))
    ok(st == 303 and loc.netloc == 'app.test' and
       q.get('payment_intent') == b['id'] and
       q.get('payment_intent_client_secret') == b['client_secret'] and
       q.get('redirect_status') == 'succeeded',
       '/_test/3ds page redirects to return_url', (st, h.get('location')))
    st, _, d = R('POST', '/v1/payment_intents', [
        ('amount', '4400'), ('currency', 'eur'), ('payment_method', p3['id']),
        ('confirm', 'true')])
    ok(st == 200 and (d.get('next_action') or {}).get('type') ==
       'use_stripe_sdk', '3DS without return_url -> use_stripe_sdk', d)
    st, _, d2 = R('POST', '/v1/payment_intents/%s/_authenticate' % d['id'],
                  [('client_secret', d['client_secret']),
                   ('success', 'false')])
    lpe = (d2 or {}).get('last_payment_error') or {}
    ok(st == 200 and d2.get('status') == 'requires_payment_method' and
       lpe.get('code') == 'payment_intent_authentication_failure' and
       'type' in lpe, '_authenticate success=false -> failure', (st, d2))
    c.collect('3ds.fail', d2)

    # -- cancel -----------------------------------------------------------
    st, _, x = R('POST', '/v1/payment_intents',
                 [('amount', '900'), ('currency', 'eur')])
    st, _, x2 = R('POST', '/v1/payment_intents/%s/cancel' % x['id'],
                  [('cancellation_reason', 'requested_by_customer')])
    ok(st == 200 and x2.get('status') == 'canceled' and
       x2.get('cancellation_reason') == 'requested_by_customer' and
       isinstance(x2.get('canceled_at'), int), 'cancel with reason', (st, x2))
    c.collect('cancel', x2)
    st, _, x3 = R('POST', '/v1/payment_intents/%s/cancel' % x['id'])
    ok(st == 400 and x3['error'].get('code') ==
       'payment_intent_unexpected_state', 'cancel twice -> 400 unexpected '
       'state', (st, x3))
    st, _, x4 = R('POST', '/v1/payment_intents/%s/cancel' % pi['id'])
    ok(st == 400, 'cancel succeeded PI -> 400', st)

    # -- manual capture ---------------------------------------------------
    st, _, m = R('POST', '/v1/payment_intents', [
        ('amount', '800'), ('currency', 'eur'), ('payment_method', pm['id']),
        ('capture_method', 'manual'), ('confirm', 'true')])
    ok(st == 200 and m['status'] == 'requires_capture' and
       m['amount_capturable'] == 800 and m['amount_received'] == 0,
       'manual capture -> requires_capture', (st, m))
    c.collect('capture.pending', m)
    st, _, m2 = R('POST', '/v1/payment_intents/%s/capture' % m['id'])
    ok(st == 200 and m2['status'] == 'succeeded' and
       m2['amount_received'] == 800, 'capture -> succeeded', (st, m2))

    # -- parameter validation --------------------------------------------
    st, _, v = R('POST', '/v1/payment_intents', [
        ('amount', '100'), ('currency', 'eur'),
        ('return_url', 'https://app.test/r')])
    ok(st == 400 and v['error'].get('param') == 'return_url',
       'return_url without confirm -> 400', (st, v))
    st, _, v = R('POST', '/v1/payment_intents', [
        ('amount', '100'), ('currency', 'eur'), ('bogus', '1')])
    ok(st == 400 and v['error'].get('code') == 'parameter_unknown',
       'unknown parameter -> 400 parameter_unknown', (st, v))
    st, _, v = R('GET', '/v1/payment_intents/pi_doesnotexist')
    ok(st == 404 and v['error'].get('code') == 'resource_missing',
       'unknown id -> 404 resource_missing', (st, v))

    # -- idempotency ------------------------------------------------------
    key = 'idem-%d' % time.time_ns()
    params = [('amount', '1234'), ('currency', 'eur'),
              ('metadata[invoice_id]', 'INV-IDEM')]
    st1, h1, r1 = R('POST', '/v1/payment_intents', params,
                    headers={'Idempotency-Key': key})
    st2, h2, r2 = R('POST', '/v1/payment_intents', params,
                    headers={'Idempotency-Key': key})
    ok(st1 == 200 and 'idempotent-replayed' not in h1,
       'idempotency: first answer not a replay', h1)
    ok(st2 == 200 and r2 == r1 and h2.get('idempotent-replayed') == 'true',
       'idempotency: same key replays the first answer', (st2, h2))
    st, _, e = R('POST', '/v1/payment_intents',
                 [('amount', '999'), ('currency', 'eur')],
                 headers={'Idempotency-Key': key})
    ok(st == 400 and e['error'].get('type') == 'idempotency_error',
       'idempotency: other params -> 400 idempotency_error', (st, e))
    st, _, e = R('POST', '/v1/customers', [('email', 'x@example.com')],
                 headers={'Idempotency-Key': key})
    ok(st == 400 and e['error'].get('type') == 'idempotency_error',
       'idempotency: other path -> 400 idempotency_error', (st, e))
    # a decline (402) is stored and replayed too
    dkey = key + '-decline'
    dparams = [('amount', '1500'), ('currency', 'eur'),
               ('payment_method', pmd['id']), ('confirm', 'true')]
    st1, _, r1 = R('POST', '/v1/payment_intents', dparams,
                   headers={'Idempotency-Key': dkey})
    st2, h2, r2 = R('POST', '/v1/payment_intents', dparams,
                    headers={'Idempotency-Key': dkey})
    ok(st1 == 402 and st2 == 402 and r1 == r2 and
       h2.get('idempotent-replayed') == 'true', 'idempotency: 402 replayed')
    # concurrent requests with one key -> one object
    ckey = key + '-concurrent'
    results = []
    lock = threading.Lock()
    # stall the first request so that the others really arrive meanwhile
    R('POST', '/_test/faults', auth=False, body=json.dumps({
        'method': 'POST', 'path_prefix': '/v1/payment_intents', 'times': 1,
        'status': None, 'delay_ms': 300, 'when': 'before'}))

    def worker():
        res = R('POST', '/v1/payment_intents',
                [('amount', '777'), ('currency', 'eur')],
                headers={'Idempotency-Key': ckey})
        with lock:
            results.append(res)
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {r[2].get('id') for r in results if isinstance(r[2], dict)}
    fresh = [r for r in results if 'idempotent-replayed' not in r[1]]
    ok(len(results) == 8 and all(r[0] == 200 for r in results) and
       len(ids) == 1 and len(fresh) == 1,
       'idempotency: 8 concurrent requests, one key -> one object',
       [(r[0], r[2].get('id') if isinstance(r[2], dict) else r[2],
         r[1].get('idempotent-replayed')) for r in results])
    R('DELETE', '/_test/faults', auth=False)

    # -- counting ---------------------------------------------------------
    st, _, z = R('DELETE', '/_test/requests', auth=False)
    ok(st == 200, 'DELETE /_test/requests')
    k2 = key + '-count'
    ids = []
    for i in range(3):
        hdr = {'Idempotency-Key': k2} if i < 2 else {}
        st, _, o = R('POST', '/v1/payment_intents',
                     [('amount', '100'), ('currency', 'eur')], headers=hdr)
        ids.append(o['id'])
    R('GET', '/v1/payment_intents/' + ids[0])
    R('GET', '/v1/payment_intents/' + ids[2])
    R('POST', '/v1/payment_intents/%s/cancel' % ids[2])
    st, _, cnt = R('GET', '/_test/requests', auth=False)
    br = cnt.get('by_route', {})
    ok(st == 200 and cnt.get('total') == 6 and
       br.get('POST /v1/payment_intents') == 3 and
       br.get('GET /v1/payment_intents/{id}') == 2 and
       br.get('POST /v1/payment_intents/{id}/cancel') == 1,
       '/_test/requests counts routes (replays included)', cnt)

    # -- faults -----------------------------------------------------------
    st, _, f = R('POST', '/_test/faults', auth=False, body=json.dumps({
        'method': 'POST', 'path_prefix': '/v1/payment_intents', 'times': 2,
        'status': 503, 'when': 'before'}))
    ok(st == 200 and f.get('remaining') == 2, 'POST /_test/faults', (st, f))
    fkey = key + '-fault-before'
    fp = [('amount', '5100'), ('currency', 'eur')]
    a1 = R('POST', '/v1/payment_intents', fp, headers={'Idempotency-Key': fkey})
    a2 = R('POST', '/v1/payment_intents', fp, headers={'Idempotency-Key': fkey})
    a3 = R('POST', '/v1/payment_intents', fp, headers={'Idempotency-Key': fkey})
    ok(a1[0] == 503 and a2[0] == 503 and
       a1[2]['error']['type'] == 'api_error',
       'fault before: next 2 matching requests -> 503 api_error', (a1, a2))
    ok(a3[0] == 200 and 'idempotent-replayed' not in a3[1],
       'fault before: no work done (third request creates, not replays)', a3)
    st, _, g = R('GET', '/v1/customers/' + cus['id'])
    ok(st == 200, 'fault does not match other paths')
    R('POST', '/_test/faults', auth=False, body=json.dumps({
        'method': 'POST', 'path_prefix': '/v1/payment_intents', 'times': 1,
        'status': 500, 'when': 'after'}))
    akey = key + '-fault-after'
    ap = [('amount', '5200'), ('currency', 'eur')]
    b1 = R('POST', '/v1/payment_intents', ap, headers={'Idempotency-Key': akey})
    b2 = R('POST', '/v1/payment_intents', ap, headers={'Idempotency-Key': akey})
    ok(b1[0] == 500 and b2[0] == 200 and
       b2[1].get('idempotent-replayed') == 'true' and
       b2[2].get('amount') == 5200,
       'fault after: work done, answer lost, retry replays it', (b1, b2))
    R('POST', '/_test/faults', auth=False, body=json.dumps({
        'path_prefix': '/v1/payment_intents/', 'method': 'GET',
        'status': None, 'delay_ms': 400}))
    t0 = time.monotonic()
    st, _, _ = R('GET', '/v1/payment_intents/' + b2[2]['id'])
    ok(st == 200 and time.monotonic() - t0 >= 0.38,
       'fault delay_ms without status stalls then answers')
    R('POST', '/_test/faults', auth=False, body=json.dumps({
        'path_prefix': '/v1/customers', 'status': 0}))
    try:
        st, _, _ = R('GET', '/v1/customers/' + cus['id'])
        dropped = False
    except (ConnectionError, http.client.HTTPException, OSError):
        dropped = True
    ok(dropped, 'fault status 0 drops the connection')
    R('POST', '/_test/faults', auth=False, body=json.dumps({
        'status': 429, 'times': 5, 'headers': {'Stripe-Should-Retry': 'false'},
        'error': {'type': 'invalid_request_error', 'code': 'rate_limit'}}))
    st, _, fl = R('DELETE', '/_test/faults', auth=False)
    st, _, fl = R('GET', '/_test/faults', auth=False)
    st2, _, _ = R('GET', '/v1/customers/' + cus['id'])
    ok(fl == {'faults': []} and st2 == 200, 'DELETE /_test/faults clears')

    # -- refunds ----------------------------------------------------------
    refund_checks(c, s, sink, pm)

    # -- manual capture and disputes -------------------------------------
    capture_dispute_checks(c, s, pm)

    # -- events / webhooks ------------------------------------------------
    st, _, evs = R('GET', '/v1/events', [('limit', '100')])
    ok(st == 200 and evs.get('data'), 'list events', st)
    c.collect('events.list', evs)
    ev_types = {e['type'] for e in evs.get('data', [])}
    ok({'payment_intent.succeeded', 'payment_intent.payment_failed'} <=
       ev_types, 'events of payment_intent.succeeded/payment_failed',
       ev_types)
    st, _, one = R('GET', '/v1/events/' + evs['data'][0]['id'])
    ok(st == 200 and one.get('id') == evs['data'][0]['id'] and
       isinstance(one.get('request'), dict), 'retrieve event')
    c.collect('events.get', one)
    with_key = [e for e in evs['data'] if e['request'].get('idempotency_key')]
    ok(with_key, 'event.request.idempotency_key recorded')
    deadline = time.time() + 10
    while time.time() < deadline and len(sink.events) < 5:
        time.sleep(0.2)
    time.sleep(1.5)
    good_sig = 0
    for sig, payload in sink.events:
        parts = dict(p.split('=', 1) for p in (sig or '').split(','))
        mac = hmac.new(secret.encode(), parts.get('t', '').encode() + b'.' +
                       payload, hashlib.sha256).hexdigest()
        if hmac.compare_digest(mac, parts.get('v1', '')):
            good_sig += 1
        c.collect('webhook', json.loads(payload))
    ok(sink.events and good_sig == len(sink.events),
       'webhooks delivered and signed (%d)' % len(sink.events),
       (len(sink.events), good_sig))
    sink.stop()

    # -- no persistence / isolation ---------------------------------------
    st, _, v = s2.request('GET', '/v1/customers/' + cus['id'])
    ok(st == 404, 'second instance does not see the first one\'s data', st)


def capture_dispute_checks(c, s, pm):
    """capture_method=manual, /capture with amount_to_capture, the
    amount_capturable_updated and canceled events, /_test/payment_intents/
    {id}/expire_authorization, /_test/disputes and GET /v1/disputes."""
    R = s.request
    ok = c.check

    def events_about(event_type, object_id):
        st, _, evs = R('GET', '/v1/events', [('type', event_type),
                                             ('limit', '100')])
        return [e for e in evs.get('data', [])
                if e['data']['object'].get('id') == object_id]

    def authorized(amount):
        st, _, p = R('POST', '/v1/payment_intents', [
            ('amount', str(amount)), ('currency', 'eur'),
            ('capture_method', 'manual'), ('payment_method', pm['id']),
            ('confirm', 'true')])
        assert st == 200, (st, p)
        return p

    p = authorized(1000)
    ok(p['status'] == 'requires_capture' and p['amount_capturable'] == 1000
       and p['amount_received'] == 0 and p['capture_method'] == 'manual',
       'manual: a confirmed intent awaits capture, 1000 capturable', p)
    ok(len(events_about('payment_intent.amount_capturable_updated',
                        p['id'])) == 1,
       'manual: payment_intent.amount_capturable_updated sent')
    st, _, ch = R('GET', '/v1/charges/' + p['latest_charge'])
    before = ch['payment_method_details']['card'].get('capture_before')
    ok(ch['captured'] is False and isinstance(before, int) and
       abs(before - (ch['created'] + 6 * 86400)) < 5,
       'manual: the uncaptured charge says capture_before (6 days)', ch)
    c.collect('capture.charge.uncaptured', ch)
    st, _, r = R('POST', '/v1/refunds', [('payment_intent', p['id'])])
    ok(st == 400, 'manual: an uncaptured intent is not refundable', (st, r))
    st, _, big = R('POST', '/v1/payment_intents/%s/capture' % p['id'],
                   [('amount_to_capture', '1001')])
    ok(st == 400, 'capture above the amount -> 400', (st, big))
    st, _, cap = R('POST', '/v1/payment_intents/%s/capture' % p['id'],
                   [('amount_to_capture', '600')],
                   headers={'Idempotency-Key': 'cap-%d' % time.time_ns()})
    ok(st == 200 and cap['status'] == 'succeeded' and
       cap['amount_received'] == 600 and cap['amount_capturable'] == 0,
       'capture 600 of 1000: succeeded, amount_received 600', cap)
    c.collect('capture.intent', cap)
    st, _, ch = R('GET', '/v1/charges/' + p['latest_charge'])
    ok(ch['amount_captured'] == 600 and ch['amount_refunded'] == 0 and
       'capture_before' not in ch['payment_method_details']['card'],
       'capture: the rest released without a refund', ch)
    st, _, refs = R('GET', '/v1/refunds', [('payment_intent', p['id'])])
    ok(refs.get('data') == [], 'capture: no Refund of the rest', refs)
    st, _, again = R('POST', '/v1/payment_intents/%s/capture' % p['id'])
    ok(st == 400 and again['error'].get('code') ==
       'payment_intent_unexpected_state', 'capture twice -> 400', again)
    st, _, over = R('POST', '/v1/refunds', [('payment_intent', p['id']),
                                            ('amount', '601')])
    ok(st == 400 and over['error'].get('code') == 'amount_too_large',
       'refunds stop at what was captured', over)

    v = authorized(700)
    st, _, voided = R('POST', '/v1/payment_intents/%s/cancel' % v['id'])
    ok(st == 200 and voided['status'] == 'canceled' and
       len(events_about('payment_intent.canceled', v['id'])) == 1,
       'void: cancel of an authorization sends payment_intent.canceled',
       voided)
    x = authorized(800)
    st, _, lapsed = R('POST', '/_test/payment_intents/%s/expire_authorization'
                      % x['id'], auth=False)
    ok(st == 200 and lapsed['status'] == 'canceled' and
       lapsed['cancellation_reason'] == 'automatic' and
       len(events_about('payment_intent.canceled', x['id'])) == 1,
       'expire_authorization: canceled (automatic) with its event', lapsed)
    st, _, twice = R('POST', '/_test/payment_intents/%s/expire_authorization'
                     % x['id'], auth=False)
    ok(st == 400, 'expire_authorization of a canceled intent -> 400')

    st, _, dp = R('POST', '/_test/disputes', auth=False, body=json.dumps({
        'payment_intent': p['id'], 'status': 'needs_response',
        'is_charge_refundable': False}))
    ok(st == 200 and dp['object'] == 'dispute' and
       dp['id'].startswith('dp_') and dp['amount'] == 600 and
       dp['payment_intent'] == p['id'] and dp['charge'] == p['latest_charge']
       and dp['status'] == 'needs_response' and
       isinstance(dp['evidence_details']['due_by'], int),
       'dispute opened on the captured amount', dp)
    c.collect('dispute.opened', dp)
    R('POST', '/_test/disputes', auth=False, body=json.dumps({
        'dispute': dp['id'], 'status': 'under_review'}))
    st, _, lost = R('POST', '/_test/disputes', auth=False, body=json.dumps({
        'dispute': dp['id'], 'status': 'lost'}))
    ok(st == 200 and lost['status'] == 'lost', 'dispute lost', lost)
    kinds = [(t, len(events_about('charge.dispute.' + t, dp['id'])))
             for t in ('created', 'updated', 'closed')]
    ok(kinds == [('created', 1), ('updated', 1), ('closed', 1)],
       'charge.dispute.created, .updated, .closed sent', kinds)
    for t in ('created', 'closed'):
        for e in events_about('charge.dispute.' + t, dp['id']):
            c.collect('dispute.event', e)
    st, _, listed = R('GET', '/v1/disputes', [('payment_intent', p['id']),
                                              ('limit', '100')])
    ok(st == 200 and [d['id'] for d in listed['data']] == [dp['id']] and
       listed['data'][0]['status'] == 'lost' and listed['has_more'] is False,
       'GET /v1/disputes?payment_intent=… lists it', listed)
    st, _, none = R('GET', '/v1/disputes', [('payment_intent', v['id'])])
    ok(st == 200 and none['data'] == [], 'no disputes of another intent')
    st, _, bad = R('POST', '/_test/disputes', auth=False, body=json.dumps({
        'payment_intent': v['id']}))
    ok(st == 400, 'no dispute of an intent without a captured charge', bad)


def refund_checks(c, s, sink, pm):
    """POST/GET /v1/refunds, over-refund refusals, idempotency, list filters,
    /_test/refunds/*, and the refund webhooks."""
    R = s.request
    ok = c.check

    def paid(amount, **extra):
        st, _, p = R('POST', '/v1/payment_intents', [
            ('amount', str(amount)), ('currency', 'eur'),
            ('payment_method', pm['id']), ('confirm', 'true')] +
            list(extra.items()))
        assert st == 200 and \
            p['status'] in ('succeeded', 'requires_capture'), (st, p)
        return p

    def err(res):
        return (res[2] or {}).get('error', {}) if isinstance(res[2], dict) \
            else {}

    def charge(ch_id):
        st, _, ch = R('GET', '/v1/charges/' + ch_id)
        assert st == 200, (st, ch)
        return ch

    t_start = int(time.time())
    rp = paid(1000)
    rch = rp['latest_charge']
    ok(rp['status'] == 'succeeded', 'refunds: a paid PaymentIntent of 1000')
    key = 'refund-%d' % time.time_ns()
    p1 = [('payment_intent', rp['id']), ('amount', '300'),
          ('reason', 'requested_by_customer'),
          ('metadata[paybridge_refund_id]', 'ref_1')]
    st, h1, r1 = R('POST', '/v1/refunds', p1,
                   headers={'Idempotency-Key': key + '-1'})
    ok(st == 200 and r1.get('object') == 'refund' and
       r1.get('status') == 'succeeded' and r1.get('amount') == 300 and
       r1.get('currency') == 'eur' and r1.get('payment_intent') == rp['id']
       and r1.get('charge') == rch and
       r1.get('reason') == 'requested_by_customer' and
       r1.get('metadata') == {'paybridge_refund_id': 'ref_1'} and
       'failure_reason' in r1 and r1['failure_reason'] is None and
       r1.get('destination_details', {}).get('type') == 'card' and
       isinstance(r1.get('balance_transaction'), str),
       'refund create: partial, reason, metadata, ids, status succeeded',
       (st, r1))
    c.collect('refund.create', r1)
    st, h, again = R('POST', '/v1/refunds', p1,
                     headers={'Idempotency-Key': key + '-1'})
    ok(st == 200 and again == r1 and
       h.get('idempotent-replayed') == 'true',
       'refund create: same Idempotency-Key replays the first answer',
       (st, h, again))
    st, _, e = R('POST', '/v1/refunds',
                 [('payment_intent', rp['id']), ('amount', '400')],
                 headers={'Idempotency-Key': key + '-1'})
    ok(st == 400 and e['error'].get('type') == 'idempotency_error',
       'refund create: same key, other amount -> 400 idempotency_error',
       (st, e))
    ch = charge(rch)
    ok(ch.get('amount_refunded') == 300 and ch.get('refunded') is False,
       'refund: replay and refused reuse made no second refund', ch)
    st, _, r2 = R('POST', '/v1/refunds',
                  [('payment_intent', rp['id']), ('amount', '300')],
                  headers={'Idempotency-Key': key + '-2'})
    ok(st == 200 and r2.get('id') != r1['id'] and r2.get('amount') == 300
       and r2.get('reason') is None and r2.get('metadata') == {},
       'two partial refunds of the same amount, other keys -> two refunds '
       '(no metadata: a "Dashboard" refund)', (st, r2))
    c.collect('refund.create.nometa', r2)
    ch = charge(rch)
    ok(ch.get('amount_refunded') == 600 and ch.get('refunded') is False,
       'charge.amount_refunded follows (600 of 1000)', ch)
    c.collect('refund.charge.partial', ch)
    res = R('POST', '/v1/refunds',
            [('payment_intent', rp['id']), ('amount', '500')])
    ok(res[0] == 400 and err(res).get('type') == 'invalid_request_error' and
       err(res).get('code') == 'amount_too_large' and
       err(res).get('param') == 'amount' and
       err(res).get('message') == 'Refund amount ($5.00) is greater than '
       'unrefunded amount on charge ($4.00)',
       'refund above what remains -> 400 amount_too_large', res)
    c.collect('refund.too_large.error', res[2])
    st, _, r3 = R('POST', '/v1/refunds', [('charge', rch)])
    ok(st == 200 and r3.get('amount') == 400 and
       r3.get('payment_intent') == rp['id'] and r3.get('charge') == rch,
       'refund by charge without amount -> what remains (400), '
       'payment_intent set', (st, r3))
    ch = charge(rch)
    ok(ch.get('amount_refunded') == 1000 and ch.get('refunded') is True,
       'fully refunded charge: refunded = true', ch)
    c.collect('refund.charge.full', ch)
    for params, what in (([('payment_intent', rp['id'])], 'no amount'),
                         ([('charge', rch), ('amount', '1')], 'amount 1')):
        res = R('POST', '/v1/refunds', params)
        ok(res[0] == 400 and
           err(res).get('code') == 'charge_already_refunded' and
           err(res).get('message') ==
           'Charge %s has already been refunded.' % rch,
           'refund of a fully refunded charge (%s) -> 400 '
           'charge_already_refunded' % what, res)

    # validation
    pv = paid(500)
    for params, what, want in (
            ([('payment_intent', pv['id']), ('reason', 'changed_mind')],
             'reason outside duplicate/fraudulent/requested_by_customer',
             'reason'),
            ([('payment_intent', pv['id']), ('amount', '0')], 'amount 0',
             'amount'),
            ([('payment_intent', pv['id']), ('amount', '-5')],
             'negative amount', 'amount'),
            ([('payment_intent', pv['id']), ('bogus', '1')],
             'unknown parameter', 'bogus'),
            ([('amount', '100')], 'neither payment_intent nor charge', None),
            ([('payment_intent', 'pi_doesnotexist')], 'unknown intent',
             'payment_intent')):
        res = R('POST', '/v1/refunds', params)
        ok(res[0] == 400 and err(res).get('type') == 'invalid_request_error'
           and err(res).get('param') == want,
           'refund with %s -> 400 invalid_request_error' % what, res)
    for reason in ('duplicate', 'fraudulent', 'requested_by_customer'):
        st, _, rr = R('POST', '/v1/refunds', [('payment_intent', pv['id']),
                                              ('amount', '1'),
                                              ('reason', reason)])
        ok(st == 200 and rr.get('reason') == reason,
           'refund reason %s accepted' % reason, (st, rr))
    st, _, unpaid = R('POST', '/v1/payment_intents',
                      [('amount', '700'), ('currency', 'eur')])
    res = R('POST', '/v1/refunds', [('payment_intent', unpaid['id'])])
    ok(res[0] == 400 and err(res).get('message') ==
       'This PaymentIntent (%s) does not have a successful charge to '
       'refund.' % unpaid['id'] and err(res).get('param') == 'payment_intent',
       'refund of an intent without a succeeded charge -> 400', res)
    held = paid(600, capture_method='manual')
    res = R('POST', '/v1/refunds', [('payment_intent', held['id'])])
    ok(res[0] == 400 and 'does not have a successful charge' in
       err(res).get('message', ''),
       'refund of an uncaptured intent -> 400', res)
    st, _, dec_pm = R('POST', '/v1/payment_methods',
                      [('type', 'card')] + form_card('4000000000000341'))
    st, _, dec = R('POST', '/v1/payment_intents', [
        ('amount', '650'), ('currency', 'eur'),
        ('payment_method', dec_pm['id']), ('confirm', 'true')])
    dec_pi = (dec.get('error') or {}).get('payment_intent') or {}
    res = R('POST', '/v1/refunds', [('payment_intent', dec_pi.get('id', 'x'))])
    ok(res[0] == 400 and 'does not have a successful charge' in
       err(res).get('message', ''), 'refund of a declined intent -> 400', res)
    res = R('POST', '/v1/refunds', [('charge', dec_pi.get('latest_charge')
                                     or 'x')])
    ok(res[0] == 400, 'refund of a failed charge by charge id -> 400', res)

    # retrieve / update
    st, _, g = R('GET', '/v1/refunds/' + r1['id'])
    ok(st == 200 and g == r1, 'GET /v1/refunds/{id}', (st, g))
    c.collect('refund.get', g)
    st, _, g = R('GET', '/v1/refunds/' + r1['id'],
                 [('expand[]', 'charge')])
    ok(st == 200 and isinstance(g.get('charge'), dict) and
       g['charge'].get('id') == rch, 'GET refund expand[]=charge', g)
    c.collect('refund.get.expanded', g)
    st, _, g = R('GET', '/v1/refunds/re_doesnotexist')
    ok(st == 404 and g['error'].get('code') == 'resource_missing',
       'unknown refund -> 404 resource_missing', (st, g))
    st, _, u = R('POST', '/v1/refunds/' + r2['id'],
                 [('metadata[note]', 'dashboard')])
    ok(st == 200 and u.get('metadata') == {'note': 'dashboard'},
       'POST /v1/refunds/{id} updates metadata', (st, u))
    st, _, u = R('POST', '/v1/refunds/' + r2['id'], [('amount', '1')])
    ok(st == 400 and u['error'].get('code') == 'parameter_unknown',
       'refund update: only metadata', (st, u))

    # list
    st, _, li = R('GET', '/v1/refunds', [('payment_intent', rp['id'])])
    ok(st == 200 and li.get('object') == 'list' and
       li.get('url') == '/v1/refunds' and 'total_count' not in li and
       [x['id'] for x in li.get('data', [])] ==
       [r3['id'], r2['id'], r1['id']] and li.get('has_more') is False,
       'list refunds by payment_intent: newest first', (st, li))
    c.collect('refund.list', li)
    st, _, li = R('GET', '/v1/refunds', [('charge', rch)])
    ok(st == 200 and [x['id'] for x in li['data']] ==
       [r3['id'], r2['id'], r1['id']], 'list refunds by charge', li)
    st, _, li = R('GET', '/v1/refunds', [('payment_intent', rp['id']),
                                         ('limit', '2')])
    ok(st == 200 and [x['id'] for x in li['data']] == [r3['id'], r2['id']]
       and li['has_more'] is True, 'list refunds: limit=2 -> has_more', li)
    st, _, li = R('GET', '/v1/refunds', [('payment_intent', rp['id']),
                                         ('limit', '2'),
                                         ('starting_after', r2['id'])])
    ok(st == 200 and [x['id'] for x in li['data']] == [r1['id']] and
       li['has_more'] is False, 'list refunds: starting_after', li)
    st, _, li = R('GET', '/v1/refunds', [('payment_intent', rp['id']),
                                         ('created[gte]', str(t_start))])
    ok(st == 200 and len(li['data']) == 3, 'list refunds: created[gte]',
       li)
    st, _, li = R('GET', '/v1/refunds', [('payment_intent', rp['id']),
                                         ('created[gt]',
                                          str(r3['created']))])
    ok(st == 200 and li['data'] == [], 'list refunds: created[gt] excludes '
       'the second of creation', li)
    st, _, li = R('GET', '/v1/refunds', [('created[gte]', str(t_start)),
                                         ('limit', '100')])
    ok(st == 200 and {r1['id'], r2['id'], r3['id']} <=
       {x['id'] for x in li['data']} and
       all(x['created'] >= t_start for x in li['data']),
       'list all refunds with created[gte]', li)
    st, _, li = R('GET', '/v1/refunds', [('payment_intent', pv['id'])])
    ok(st == 200 and len(li['data']) == 3 and
       all(x['payment_intent'] == pv['id'] for x in li['data']),
       'list refunds: other intent\'s refunds only', li)
    st, _, li = R('GET', '/v1/refunds', [('limit', '0')])
    ok(st == 400, 'list refunds: limit=0 -> 400', st)
    st, _, li = R('GET', '/v1/refunds', [('payment_intent', 'pi_nope')])
    ok(st == 404, 'list refunds: unknown payment_intent -> 404', st)

    # pending refunds, later succeeded / failed / canceled
    pp = paid(2000)
    other = paid(900)
    st, _, rule = R('POST', '/_test/refunds/next_status',
                    [('status', 'pending'), ('payment_intent', pp['id'])],
                    auth=False)
    ok(st == 200 and rule.get('status') == 'pending',
       'POST /_test/refunds/next_status (one intent)', (st, rule))
    st, _, rp1 = R('POST', '/v1/refunds',
                   [('payment_intent', pp['id']), ('amount', '500'),
                    ('metadata[paybridge_refund_id]', 'ref_p')])
    ok(st == 200 and rp1.get('status') == 'pending' and
       rp1.get('pending_reason') == 'processing',
       'next_status=pending: refund starts pending', (st, rp1))
    c.collect('refund.pending', rp1)
    st, _, ro = R('POST', '/v1/refunds',
                  [('payment_intent', other['id']), ('amount', '100')])
    ok(st == 200 and ro.get('status') == 'succeeded',
       'next_status for one intent leaves other intents alone', (st, ro))
    ok(charge(pp['latest_charge']).get('amount_refunded') == 500,
       'a pending refund counts in amount_refunded')
    res = R('POST', '/v1/refunds',
            [('payment_intent', pp['id']), ('amount', '1600')])
    ok(res[0] == 400 and err(res).get('code') == 'amount_too_large' and
       '($15.00)' in err(res).get('message', ''),
       'a pending refund counts against what remains', res)
    st, _, mv = R('POST', '/_test/refunds/%s/status' % rp1['id'],
                  [('status', 'succeeded')], auth=False)
    ok(st == 200 and mv.get('status') == 'succeeded' and
       mv.get('pending_reason') is None,
       '/_test/refunds/{id}/status pending -> succeeded', (st, mv))
    st, _, mv = R('POST', '/_test/refunds/%s/status' % rp1['id'],
                  [('status', 'pending')], auth=False)
    ok(st == 400, '/_test/refunds/{id}/status succeeded -> pending refused',
       (st, mv))
    st, _, mv = R('POST', '/_test/refunds/%s/status' % rp1['id'],
                  [('status', 'failed'), ('failure_reason', 'nope')],
                  auth=False)
    ok(st == 400 and mv['error'].get('param') == 'failure_reason',
       '/_test/refunds/{id}/status with an unknown failure_reason -> 400',
       (st, mv))
    st, _, mv = R('POST', '/_test/refunds/%s/status' % rp1['id'],
                  [('status', 'failed'),
                   ('failure_reason', 'expired_or_canceled_card')],
                  auth=False)
    ok(st == 200 and mv.get('status') == 'failed' and
       mv.get('failure_reason') == 'expired_or_canceled_card' and
       isinstance(mv.get('failure_balance_transaction'), str),
       'a succeeded refund fails later (expired_or_canceled_card)', (st, mv))
    c.collect('refund.failed', mv)
    st, _, g = R('GET', '/v1/refunds/' + rp1['id'])
    ok(st == 200 and g.get('status') == 'failed', 'failed refund retrieved')
    ok(charge(pp['latest_charge']).get('amount_refunded') == 0,
       'a failed refund gives its amount back (amount_refunded 0)')
    st, _, mv = R('POST', '/_test/refunds/%s/status' % rp1['id'],
                  [('status', 'succeeded')], auth=False)
    ok(st == 400, 'failed is final', (st, mv))
    # the rule for pp is sticky until cleared or replaced
    st, _, rp2 = R('POST', '/v1/refunds', [('payment_intent', pp['id'])])
    ok(st == 200 and rp2.get('amount') == 2000 and
       rp2.get('status') == 'pending',
       'after the failure the whole amount is refundable again (pending)',
       (st, rp2))
    st, _, mv = R('POST', '/_test/refunds/%s/status' % rp2['id'],
                  [('status', 'canceled')], auth=False)
    ok(st == 200 and mv.get('status') == 'canceled' and
       mv.get('failure_reason') is None, 'pending -> canceled', (st, mv))
    c.collect('refund.canceled', mv)
    ok(charge(pp['latest_charge']).get('amount_refunded') == 0,
       'a canceled refund gives its amount back')
    st, _, rules = R('DELETE', '/_test/refunds/next_status', auth=False)
    ok(st == 200 and rules == {'rules': {}}, 'DELETE /_test/refunds/'
       'next_status clears the rules', (st, rules))
    st, _, rp3 = R('POST', '/v1/refunds', [('payment_intent', pp['id']),
                                           ('amount', '100')])
    ok(st == 200 and rp3.get('status') == 'succeeded',
       'without rules refunds succeed at once again', (st, rp3))
    # a global rule with times=1, status requires_action, and cancel
    st, _, rule = R('POST', '/_test/refunds/next_status', auth=False,
                    body=json.dumps({'status': 'requires_action',
                                     'times': 1}),
                    headers={'Content-Type': 'application/json'})
    ok(st == 200 and rule.get('remaining') == 1,
       'next_status as JSON, times=1', (st, rule))
    st, _, ra = R('POST', '/v1/refunds', [('payment_intent', pp['id']),
                                          ('amount', '100')])
    ok(st == 200 and ra.get('status') == 'requires_action' and
       (ra.get('next_action') or {}).get('type') == 'display_details',
       'next_status=requires_action: refund with next_action', (st, ra))
    c.collect('refund.requires_action', ra)
    st, _, rb = R('POST', '/v1/refunds', [('payment_intent', pp['id']),
                                          ('amount', '100')])
    ok(st == 200 and rb.get('status') == 'succeeded',
       'times=1 rule used up after one refund', (st, rb))
    st, _, rc = R('POST', '/v1/refunds/%s/cancel' % rb['id'])
    ok(st == 400, 'POST /v1/refunds/{id}/cancel of a succeeded refund -> '
       '400', (st, rc))
    st, _, rc = R('POST', '/v1/refunds/%s/cancel' % ra['id'])
    ok(st == 200 and rc.get('status') == 'canceled',
       'POST /v1/refunds/{id}/cancel (requires_action) -> canceled',
       (st, rc))
    ok(charge(pp['latest_charge']).get('amount_refunded') == 200,
       'amount_refunded = succeeded refunds only (100 + 100)')
    st, _, bad = R('POST', '/_test/refunds/next_status',
                   [('status', 'failed')], auth=False)
    ok(st == 400, 'next_status=failed refused (refunds fail later)', st)
    st, _, bad = R('POST', '/_test/refunds/re_nope/status',
                   [('status', 'failed')], auth=False)
    ok(st == 404, '/_test/refunds/{unknown}/status -> 404', st)

    # events (API) and webhooks
    st, _, evs = R('GET', '/v1/events', [('type', 'refund.failed')])
    ok(st == 200 and [e['data']['object']['id'] for e in evs['data']] ==
       [rp1['id']] and evs['data'][0]['request'] ==
       {'id': None, 'idempotency_key': None},
       'refund.failed event (request null: no API request caused it)', evs)
    st, _, evs = R('GET', '/v1/events', [('type', 'refund.created'),
                                         ('limit', '100')])
    created_ev = [e for e in evs.get('data', [])
                  if e['data']['object']['id'] == r1['id']]
    ok(len(created_ev) == 1 and created_ev[0]['request'].get(
        'idempotency_key') == key + '-1' and
       created_ev[0]['request'].get('id', '').startswith('req_'),
       'one refund.created per refund (replay sends none), request '
       'recorded', created_ev)

    def hook_events():
        out = []
        for _, payload in list(sink.events):
            ev = json.loads(payload)
            out.append((ev['type'], ev['data']['object'].get('id'),
                        ev['data']['object'].get('status'), ev))
        return out

    want = [('refund.created', r1['id'], 'succeeded'),
            ('refund.created', rp1['id'], 'pending'),
            ('refund.updated', rp1['id'], 'succeeded'),
            ('charge.refund.updated', rp1['id'], 'succeeded'),
            ('refund.updated', rp1['id'], 'failed'),
            ('charge.refund.updated', rp1['id'], 'failed'),
            ('refund.failed', rp1['id'], 'failed'),
            ('refund.updated', rp2['id'], 'canceled'),
            ('refund.updated', rc['id'], 'canceled')]
    deadline = time.time() + 15
    while time.time() < deadline:
        got = {(t, i, s_) for t, i, s_, _ in hook_events()}
        if all(w in got for w in want):
            break
        time.sleep(0.2)
    got = hook_events()
    got_keys = [(t, i, s_) for t, i, s_, _ in got]
    missing = [w for w in want if w not in got_keys]
    ok(not missing, 'refund webhooks sent (created, updated, '
       'charge.refund.updated, failed)', missing)
    dup = [w for w in want if got_keys.count(w) != 1]
    ok(not dup, 'each refund webhook sent once', dup)
    ok(not [k for k in got_keys if k[0] == 'refund.failed' and
            k[1] != rp1['id']], 'refund.failed only for the failed refund')
    refunded = [ev['data']['object'] for t, _, _, ev in got
                if t == 'charge.refunded' and
                ev['data']['object'].get('id') == rch]
    ok(sorted(o['amount_refunded'] for o in refunded) == [300, 600, 1000] and
       [o['refunded'] for o in refunded if o['amount_refunded'] == 1000] ==
       [True], 'charge.refunded per refund, with the charge then', [
           (o['amount_refunded'], o['refunded']) for o in refunded])
    ok(all(t != 'refund.created' or i != rp1['id'] or
           ev['data']['object']['status'] == 'pending' for t, i, _, ev in got),
       'refund.created carries the refund as created (pending)')
    # the payloads are checked for shape in main() (webhook objects)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--fixtures')
    ap.add_argument('-v', '--verbose', action='store_true')
    ap.add_argument('--dump-objects', metavar='FILE',
                    help='write every checked object as "kind<TAB>json" '
                         'lines (for parsing them with the Rust client)')
    args = ap.parse_args()
    path = find_fixtures(args.fixtures)
    with open(path) as f:
        fixtures = json.load(f)['resources']
    pickle_path = os.path.join('/tmp', 'localstripe.pickle')
    before = os.stat(pickle_path).st_mtime_ns \
        if os.path.exists(pickle_path) else None

    c = Checker(fixtures, args.verbose)
    s = Server(args.verbose)
    s2 = Server(args.verbose)
    c.check(s.first_line.strip() == 'LISTENING 127.0.0.1:%d' % s.port,
            'exactly "LISTENING 127.0.0.1:<port>"', s.first_line)
    try:
        run(c, s, s2)
    except Exception as e:  # a crash is a failure, with context
        import traceback
        traceback.print_exc()
        c.check(False, 'flows ran to the end', repr(e))
    finally:
        s.stop()
        s2.stop()
    if c.failed and not args.verbose:
        print('--- compat.py stderr (tail) ---\n' + s.stderr())

    after = os.stat(pickle_path).st_mtime_ns \
        if os.path.exists(pickle_path) else None
    c.check(before == after, 'no pickle file written', (before, after))

    # -- the shape criterion ------------------------------------------------
    for kind in RESOURCES:
        objs = c.seen[kind]
        c.check(objs, 'responses contained %s objects (%d)' % (kind,
                                                                len(objs)))
        gaps = {}
        for label, obj in objs:
            if 'expanded' in label:
                # an expanded id field holds the object: compare its id
                obj = dict(obj, **{k: obj[k]['id'] for k in ID_OR_NULL[kind]
                                   if isinstance(obj.get(k), dict)})
            found = shape_gaps(kind, fixtures[kind], obj)
            if 'expanded' not in label:
                found += id_gaps(kind, obj)
            for g in found:
                gaps.setdefault(g, label)
        c.check(not gaps, 'shape of %s matches fixtures3.json (%d objects)'
                % (kind, len(objs)),
                '; '.join('%s (in %s)' % kv for kv in sorted(gaps.items())))
    # event payloads: data.object of payment_intent.* events
    pi_events = [o for _, o in c.seen['event']
                 if o.get('type', '').startswith('payment_intent.')]
    c.check(pi_events and all(
        not shape_gaps('payment_intent', fixtures['payment_intent'],
                       e['data']['object']) for e in pi_events),
        'payment_intent.* events carry current-shape PaymentIntents')
    # refund.* / charge.refund.updated carry refunds, charge.refunded a charge
    ref_events = [o for _, o in c.seen['event']
                  if o.get('type', '').startswith(('refund.',
                                                   'charge.refund'))]
    kinds = {}
    for o in ref_events:
        kind = 'charge' if o['type'] == 'charge.refunded' else 'refund'
        obj = o['data']['object']
        kinds.setdefault(o['type'], 0)
        kinds[o['type']] += 1
        gaps = shape_gaps(kind, fixtures[kind], obj) + id_gaps(kind, obj)
        if obj.get('object') != kind or gaps:
            kinds.setdefault('bad', []).append((o['type'], gaps))
    c.check(set(kinds) == {'refund.created', 'refund.updated',
                           'refund.failed', 'charge.refunded',
                           'charge.refund.updated'},
            'refund.* and charge.refunded/charge.refund.updated events carry '
            'current-shape refunds/charges %s' % sorted(kinds.items(),
                                                       key=str), kinds)
    refund_objs = [o for _, o in c.seen['refund']]
    c.check(refund_objs and all(
        isinstance(o.get('charge'), (str, dict)) and
        isinstance(o.get('payment_intent'), (str, dict)) and
        'failure_reason' in o and
        (o['failure_reason'] is None) == (o.get('status') != 'failed') and
        o.get('status') in ('pending', 'requires_action', 'succeeded',
                            'failed', 'canceled') for o in refund_objs),
        'every refund has charge, payment_intent, status, failure_reason '
        '(set only when failed)')

    if args.dump_objects:
        with open(args.dump_objects, 'w') as f:
            for kind in RESOURCES:
                for label, obj in c.seen[kind]:
                    if 'expanded' not in label:
                        f.write('%s\t%s\n' % (kind, json.dumps(obj)))
            for err in c.errors:
                f.write('error\t%s\n' % json.dumps(err))

    print('selfcheck: %d passed, %d failed' % (c.passed, len(c.failed)))
    sys.exit(1 if c.failed else 0)


if __name__ == '__main__':
    main()
