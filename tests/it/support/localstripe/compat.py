#!/usr/bin/env python3
"""localstripe, patched to speak the current Stripe API dialect for paybridge's tests.

Run with the venv made by setup.sh:

    <venv>/bin/python tests/it/support/localstripe/compat.py --host 127.0.0.1 --port 0

When the server accepts connections, exactly one line ``LISTENING <host>:<port>``
is printed on stdout (flushed). Everything else (logs) goes to stderr.

What this changes in stock localstripe 1.15.10 (see README.md for the why):
  * no pickle persistence: every process starts empty and keeps state in memory;
  * response shapes of PaymentIntent, Charge, Customer, PaymentMethod and Event
    follow the current API (fields added, inlined Charge objects replaced by ids);
  * parameters that current Stripe accepts (allowed_payment_method_types,
    automatic_payment_methods, description, return_url, confirm with
    payment_method / payment_method_data, cancellation_reason, ...);
  * Stripe-shaped errors (card_error with payment_intent, resource_missing, ...);
  * Idempotency-Key honoured (stored first answer replayed, mismatch -> 400);
  * refunds like current Stripe: reason, amount_too_large /
    charge_already_refunded refusals, pending / requires_action / failed /
    canceled refunds, list filters, refund.* and charge.refunded events;
  * /_test/requests (request counting), /_test/faults (fault injection) and
    /_test/refunds/* (refund start status, later status changes).
"""

import argparse
import asyncio
import contextvars
import hashlib
import json
import logging
import os
import random
import re
import signal
import socket
import string
import sys
import time
import traceback
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from localstripe import errors as ls_errors
from localstripe import resources as R
from localstripe import server as S
from localstripe import webhooks as W

log = logging.getLogger('localstripe.compat')

API_VERSION = '2026-09-30.endive'   # overridable with --api-version

# Per-request context (request id, idempotency key, origin), readable from
# resource code (events record it in `request`, 3DS redirect URLs need origin).
_ctx = contextvars.ContextVar('paybridge_localstripe_ctx', default=None)


def _rand(n, alphabet=string.ascii_letters + string.digits):
    return ''.join(random.choice(alphabet) for _ in range(n))


# ---------------------------------------------------------------------------
# 1. No shared pickle file
# ---------------------------------------------------------------------------
# Stock Store.__setitem__/__delitem__ and the server's save_store_middleware
# dump the whole store to /tmp/localstripe.pickle after every write, and
# start() loads it. Make both no-ops: state lives in this process only.
R.Store.dump_to_disk = lambda self: None
R.Store.try_load_from_disk = lambda self: None


# ---------------------------------------------------------------------------
# 2. Errors shaped like Stripe's
# ---------------------------------------------------------------------------
UserError = ls_errors.UserError


def _user_error_init(self, code, message=None, contents=None):
    Exception.__init__(self)
    self.code = code
    err = dict(contents or {})
    err.setdefault('type', 'invalid_request_error')
    if message is not None:
        err['message'] = message
    self.body = {'error': err}


UserError.__init__ = _user_error_init


def _unknown_params(params):
    name = sorted(params)[0]
    return UserError(400, 'Received unknown parameter: %s' % name,
                     {'code': 'parameter_unknown', 'param': name})


def _unexpected_state(obj, action):
    return UserError(
        400,
        'You cannot %s this PaymentIntent because it has a status of %s.'
        % (action, obj.status),
        {'code': 'payment_intent_unexpected_state',
         'payment_intent': obj._export()})


def _bad_param(param, message):
    return UserError(400, message, {'code': 'parameter_invalid_empty'
                                    if message.startswith('Empty') else
                                    'parameter_invalid', 'param': param})


_orig_retrieve = R.StripeObject._api_retrieve.__func__


def _retrieve(cls, id):
    obj = R.store.get(cls.object + ':' + id)
    if obj is None:
        raise UserError(404, "No such %s: '%s'" % (cls.object, id),
                        {'code': 'resource_missing', 'param': 'id'})
    return obj


R.StripeObject._api_retrieve = classmethod(_retrieve)


# ---------------------------------------------------------------------------
# 3. Current API shapes (applied on every _export, so responses, expanded
#    objects, event payloads and error bodies all agree)
# ---------------------------------------------------------------------------
_orig_export = R.StripeObject._export


def _address(a):
    a = a if isinstance(a, dict) else {}
    return {k: a.get(k) for k in ('city', 'country', 'line1', 'line2',
                                  'postal_code', 'state')}


def _billing_details(bd):
    bd = bd if isinstance(bd, dict) else {}
    return {
        'address': _address(bd.get('address')),
        'email': bd.get('email'),
        'name': bd.get('name'),
        'phone': bd.get('phone'),
        'tax_id': bd.get('tax_id'),
    }


def _lookup_pm(pm_id):
    """The stored PaymentMethod/Card/Source for an id, without side effects."""
    if not isinstance(pm_id, str):
        return None
    for prefix in ('payment_method:', 'card:', 'source:'):
        obj = R.store.get(prefix + pm_id)
        if obj is not None:
            return obj
    return None


def _card_of(pm):
    """Card facts of a PaymentMethod (or legacy Card) object."""
    if pm is None:
        return None
    if isinstance(pm, R.PaymentMethod) and pm.type == 'card':
        return pm.card
    if isinstance(pm, R.Card):
        return {'brand': 'visa', 'country': pm.country,
                'exp_month': pm.exp_month, 'exp_year': pm.exp_year,
                'fingerprint': pm.fingerprint, 'funding': pm.funding,
                'last4': pm.last4}
    return None


_PI_DEFAULTS = {
    'allowed_payment_method_types': None,
    'amount_capturable': 0,
    'amount_details': {'tip': {}},
    'amount_received': 0,
    'application': None,
    'application_fee_amount': None,
    'automatic_payment_methods': None,
    'canceled_at': None,
    'cancellation_reason': None,
    'capture_method': 'automatic_async',
    'confirmation_method': 'automatic',
    'description': None,
    'excluded_payment_method_types': None,
    'last_payment_error': None,
    'next_action': None,
    'on_behalf_of': None,
    'payment_method_configuration_details': None,
    'payment_method_options': {},
    'payment_method_types': ['card'],
    'processing': None,
    'receipt_email': None,
    'review': None,
    'setup_future_usage': None,
    'shipping': None,
    'source': None,
    'statement_descriptor': None,
    'statement_descriptor_suffix': None,
    'transfer_data': None,
    'transfer_group': None,
}


def _fix_payment_intent(self, obj, expand):
    charge = self.latest_charge
    # `charges` (a list of whole Charge objects) is gone from the current API;
    # `latest_charge` is an id (expandable), `invoice` is gone too.
    obj.pop('charges', None)
    obj.pop('invoice', None)
    if isinstance(charge, R.StripeObject):
        obj['latest_charge'] = charge.id
    else:
        obj['latest_charge'] = getattr(self, '_compat_last_charge_id', None)
    for k, v in _PI_DEFAULTS.items():
        if k not in obj:
            obj[k] = json.loads(json.dumps(v))
    status = obj['status']
    obj['amount_capturable'] = self.amount if status == 'requires_capture' else 0
    received = 0
    if isinstance(charge, R.StripeObject) and charge.status == 'succeeded' \
            and charge.captured:
        received = _amount_captured(charge)
    obj['amount_received'] = received
    if status == 'processing':
        obj['processing'] = {'type': 'card', 'card': {}}
    lpe = obj.get('last_payment_error')
    if isinstance(lpe, dict):
        lpe = dict(lpe)
        pm = _lookup_pm(getattr(self, '_compat_failed_pm', None) or
                        self.payment_method)
        if lpe.get('code') == 'payment_intent_authentication_failure':
            lpe.setdefault('type', 'invalid_request_error')
        else:
            lpe.setdefault('type', 'card_error')
            lpe.setdefault('decline_code', 'generic_decline')
        lpe.setdefault('doc_url', None)
        if isinstance(pm, R.PaymentMethod) and 'payment_method' not in lpe:
            lpe['payment_method'] = pm._export()
        obj['last_payment_error'] = lpe
    return obj


def _charge_outcome(self):
    if self.status == 'succeeded':
        return {'advice_code': None, 'network_advice_code': None,
                'network_decline_code': None,
                'network_status': 'approved_by_network', 'reason': None,
                'risk_level': 'normal', 'risk_score': 20,
                'seller_message': 'Payment complete.', 'type': 'authorized'}
    if self.status == 'failed':
        return {'advice_code': 'try_again_later', 'network_advice_code': None,
                'network_decline_code': None,
                'network_status': 'declined_by_network',
                'reason': 'generic_decline', 'risk_level': 'normal',
                'risk_score': 20,
                'seller_message': 'The bank did not return any further '
                                  'details with this decline.',
                'type': 'issuer_declined'}
    return None


# How long the fake's card authorizations hold (seconds): see _fix_charge.
_AUTHORIZATION_VALIDITY = 6 * 24 * 3600


def _fix_charge(self, obj, expand):
    pm = _lookup_pm(self.payment_method)
    card = _card_of(pm)
    succeeded = self.status == 'succeeded'
    obj.pop('invoice', None)
    obj['amount_captured'] = _amount_captured(self) \
        if succeeded and self.captured else 0
    obj.setdefault('application', None)
    obj.setdefault('application_fee', None)
    obj.setdefault('application_fee_amount', None)
    obj['billing_details'] = _billing_details(
        getattr(pm, 'billing_details', None))
    obj.setdefault('calculated_statement_descriptor', 'LOCALSTRIPE')
    obj.setdefault('disputed', False)
    obj.setdefault('failure_balance_transaction', None)
    obj.setdefault('fraud_details', {})
    obj.setdefault('on_behalf_of', None)
    obj['outcome'] = _charge_outcome(self)
    if card is not None:
        obj['payment_method_details'] = {'type': 'card', 'card': {
            'amount_authorized': self.amount if succeeded else None,
            'authorization_code': None,
            'brand': card.get('brand', 'visa'),
            'checks': {'address_line1_check': None,
                       'address_postal_code_check': None,
                       'cvc_check': 'pass'},
            'country': card.get('country'),
            'exp_month': card.get('exp_month'),
            'exp_year': card.get('exp_year'),
            'extended_authorization': {'status': 'disabled'},
            'fingerprint': card.get('fingerprint'),
            'funding': card.get('funding', 'credit'),
            'incremental_authorization': {'status': 'unavailable'},
            'installments': None,
            'last4': card.get('last4'),
            'mandate': None,
            'multicapture': {'status': 'unavailable'},
            'network': 'visa',
            'network_token': {'used': False},
            'network_transaction_id': None,
            'overcapture': {'maximum_amount_capturable': self.amount,
                            'status': 'unavailable'},
            'regulated_status': 'unregulated',
            'three_d_secure': None,
            'wallet': None,
        }}
        if succeeded and not self.captured:
            # An authorization awaiting capture says when it lapses. Stripe's is
            # usually 7 days; the fake says 6, so that a test tells Stripe's
            # deadline from a client's own 7-day assumption.
            obj['payment_method_details']['card']['capture_before'] = \
                self.created + _AUTHORIZATION_VALIDITY
    elif pm is not None and getattr(pm, 'type', None) == 'sepa_debit':
        obj['payment_method_details'] = {'type': 'sepa_debit',
                                         'sepa_debit': dict(pm.sepa_debit)}
    else:
        obj.setdefault('payment_method_details', None)
    obj.setdefault('receipt_url', None)
    obj.setdefault('review', None)
    obj.setdefault('shipping', None)
    obj.setdefault('source', None)
    obj.setdefault('source_transfer', None)
    obj.setdefault('statement_descriptor_suffix', None)
    obj.setdefault('transfer_data', None)
    obj.setdefault('transfer_group', None)
    refunds = obj.get('refunds')
    if isinstance(refunds, dict):
        refunds.pop('total_count', None)
    return obj


def _fix_customer(self, obj, expand):
    top_expanded = {p.split('.')[0] for p in expand}
    # Old-dialect fields and lists that the current API no longer inlines.
    for k in ('account_balance', 'business_vat_id'):
        obj.pop(k, None)
    for k in ('sources', 'subscriptions', 'tax_ids'):
        if k not in top_expanded:
            obj.pop(k, None)
    obj['balance'] = -getattr(self, 'account_balance', 0)
    # Stripe sets a customer's currency only when it is first billed.
    obj['currency'] = getattr(self, '_compat_currency', None)
    if obj.get('address') is not None:
        obj['address'] = _address(obj['address'])
    obj['invoice_prefix'] = hashlib.sha1(
        self.id.encode()).hexdigest()[:8].upper()
    obj.setdefault('next_invoice_sequence', 1)
    obj.setdefault('tax_exempt', 'none')
    obj.setdefault('test_clock', None)
    if obj.get('preferred_locales') is None:
        obj['preferred_locales'] = []
    inv = dict(obj.get('invoice_settings') or {})
    inv.setdefault('custom_fields', None)
    inv.setdefault('default_payment_method', None)
    inv.setdefault('footer', None)
    inv.setdefault('rendering_options', None)
    obj['invoice_settings'] = inv
    obj.setdefault('discount', None)
    obj.setdefault('shipping', None)
    obj.setdefault('default_source', None)
    return obj


def _fix_payment_method(self, obj, expand):
    obj['billing_details'] = _billing_details(obj.get('billing_details'))
    obj.setdefault('allow_redisplay', 'unspecified')
    if self.type == 'card' and isinstance(obj.get('card'), dict):
        card = dict(obj['card'])
        card.setdefault('checks', {'address_line1_check': None,
                                   'address_postal_code_check': None,
                                   'cvc_check': 'pass'})
        card.setdefault('display_brand', card.get('brand', 'visa'))
        card.setdefault('generated_from', None)
        card.setdefault('networks', {'available': [card.get('brand', 'visa')],
                                     'preferred': None})
        card.setdefault('three_d_secure_usage', {'supported': True})
        card.setdefault('wallet', None)
        card.setdefault('regulated_status', 'unregulated')
        obj['card'] = card
    return obj


def _fix_event(self, obj, expand):
    obj['api_version'] = API_VERSION
    obj.setdefault('pending_webhooks', 0)
    obj.setdefault('request', {'id': None, 'idempotency_key': None})
    return obj


_FIXUPS = {
    R.PaymentIntent: _fix_payment_intent,
    R.Charge: _fix_charge,
    R.Customer: _fix_customer,
    R.PaymentMethod: _fix_payment_method,
    R.Event: _fix_event,
}


def _apply_expand(obj, path):
    """Expand one dotted path in place; lenient (unknown paths are ignored)."""
    if isinstance(obj, list):
        for item in obj:
            _apply_expand(item, path)
        return
    if not isinstance(obj, dict):
        return
    key, _, rest = path.partition('.')
    if key not in obj:
        return
    value = obj[key]
    if isinstance(value, str):
        cls = R.StripeObject._get_class_for_id(value)
        if cls is None:
            return
        try:
            obj[key] = cls._api_retrieve(value)._export()
        except UserError:
            return
    if rest and obj[key] is not None:
        _apply_expand(obj[key], rest)


def _export(self, expand=None):
    if expand is None:
        expand = []
    if isinstance(expand, str):
        expand = [expand]
    if not isinstance(expand, list) or \
            not all(isinstance(e, str) for e in expand):
        raise UserError(400, 'Invalid expand', {'param': 'expand'})
    if any(len(p.split('.')) > 4 for p in expand):
        raise UserError(400, 'You cannot expand more than 4 levels of a '
                             'property', {'param': 'expand'})
    obj = _orig_export(self)
    fix = _FIXUPS.get(type(self))
    if fix is not None:
        obj = fix(self, obj, expand)
    for path in expand:
        _apply_expand(obj, path)
    return obj


R.StripeObject._export = _export


# Events: record the request that caused them, and how many webhook endpoints
# will receive them; use the current API version.
_orig_event_init = R.Event.__init__


def _event_init(self, type, data):
    _orig_event_init(self, type, data)
    ctx = _ctx.get()
    if ctx is not None:
        self.request = {'id': ctx['request_id'],
                        'idempotency_key': ctx['idempotency_key']}
    else:
        self.request = {'id': None, 'idempotency_key': None}
    self.pending_webhooks = sum(
        1 for wh in W._webhooks.values()
        if wh.events is None or type in wh.events)
    self.api_version = API_VERSION


R.Event.__init__ = _event_init


# ---------------------------------------------------------------------------
# 4. Parameters of the current API
# ---------------------------------------------------------------------------
def _bool(value, param):
    value = R.try_convert_to_bool(value)
    if not isinstance(value, bool):
        raise _bad_param(param, 'Invalid boolean: %r' % (value,))
    return value


def _str_list(value, param):
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or \
            not all(isinstance(v, str) and v for v in value):
        raise _bad_param(param, 'Invalid array')
    return value


def _resolve_payment_method(pm_id=None, pm_data=None, param='payment_method'):
    """Returns the stored id of the PaymentMethod to use (or None)."""
    if pm_data is not None:
        if pm_id is not None:
            raise UserError(400, 'You cannot provide both payment_method and '
                                 'payment_method_data.',
                            {'param': 'payment_method_data'})
        if not isinstance(pm_data, dict):
            raise _bad_param('payment_method_data', 'Invalid hash')
        return R.PaymentMethod._api_create(**pm_data).id
    if pm_id is None:
        return None
    if not isinstance(pm_id, str) or not pm_id:
        raise _bad_param(param, 'Invalid string')
    try:
        # (test ids such as pm_card_visa are turned into stored objects here)
        return R.PaymentMethod._api_retrieve(pm_id).id
    except UserError as e:
        if e.code == 404:
            raise UserError(400, "No such PaymentMethod: '%s'" % pm_id,
                            {'code': 'resource_missing', 'param': param})
        raise


_orig_pm_create = R.PaymentMethod._api_create.__func__


def _pm_create(cls, allow_redisplay=None, **data):
    obj = _orig_pm_create(cls, **data)
    if allow_redisplay is not None:
        if allow_redisplay not in ('always', 'limited', 'unspecified'):
            raise _bad_param('allow_redisplay', 'Invalid allow_redisplay')
        obj.allow_redisplay = allow_redisplay
    return obj


R.PaymentMethod._api_create = classmethod(_pm_create)


_PI_SIMPLE_STR = ('description', 'receipt_email', 'statement_descriptor',
                  'statement_descriptor_suffix', 'transfer_group')
_PI_CREATE_EXTRA = set(_PI_SIMPLE_STR) | {
    'allowed_payment_method_types', 'excluded_payment_method_types',
    'automatic_payment_methods', 'return_url', 'setup_future_usage',
    'shipping', 'confirmation_method', 'payment_method_data',
    'error_on_requires_action', 'use_stripe_sdk', 'mandate_data',
    'mandate', 'payment_method_configuration', 'radar_options',
    'confirmation_token', 'off_session', 'confirm'}
_PI_STOCK_INIT = {'amount', 'currency', 'customer', 'payment_method',
                  'metadata', 'payment_method_types', 'capture_method',
                  'payment_method_options'}


def _pi_set_common(obj, extra, creating):
    for k in _PI_SIMPLE_STR:
        if k in extra:
            v = extra[k]
            if v == '':
                v = None
            if v is not None and not isinstance(v, str):
                raise _bad_param(k, 'Invalid string')
            setattr(obj, k, v)
    if 'setup_future_usage' in extra:
        v = extra['setup_future_usage'] or None
        if v not in (None, 'on_session', 'off_session'):
            raise _bad_param('setup_future_usage', 'Invalid setup_future_usage')
        obj.setup_future_usage = v
    if 'shipping' in extra:
        v = extra['shipping'] or None
        if v is not None:
            if not isinstance(v, dict):
                raise _bad_param('shipping', 'Invalid hash')
            v = {'address': _address(v.get('address')),
                 'carrier': v.get('carrier'), 'name': v.get('name'),
                 'phone': v.get('phone'),
                 'tracking_number': v.get('tracking_number')}
        obj.shipping = v
    if extra.get('return_url') is not None:
        if not isinstance(extra['return_url'], str):
            raise _bad_param('return_url', 'Invalid string')
        obj._compat_return_url = extra['return_url']


def _pi_create(cls, confirm=None, off_session=None, **data):
    unknown = set(data) - _PI_CREATE_EXTRA - _PI_STOCK_INIT
    if unknown:
        raise _unknown_params(unknown)
    confirm = _bool(confirm, 'confirm') if confirm is not None else False
    if off_session is not None:
        off_session = R.try_convert_to_bool(off_session)
        if off_session not in (True, False, 'one_off', 'recurring'):
            raise _bad_param('off_session', 'Invalid off_session')
        if not confirm:
            raise UserError(400, 'off_session can only be used with '
                                 'confirm=true.', {'param': 'off_session'})
    if data.get('return_url') is not None and not confirm:
        raise UserError(400, 'The parameter return_url can only be passed '
                             'when confirm is set to true.',
                        {'param': 'return_url'})
    extra = {k: data.pop(k) for k in list(data) if k in _PI_CREATE_EXTRA}

    # Payment method types: payment_method_types (older clients),
    # allowed_payment_method_types (async-stripe 1.0), or automatic.
    types = allowed = None
    if data.get('payment_method_types') is not None:
        types = _str_list(data['payment_method_types'],
                          'payment_method_types')
    if extra.get('allowed_payment_method_types') is not None:
        if types is not None:
            raise UserError(400, 'You may only specify one of these '
                                 'parameters: allowed_payment_method_types, '
                                 'payment_method_types.',
                            {'param': 'allowed_payment_method_types'})
        types = allowed = _str_list(extra['allowed_payment_method_types'],
                                    'allowed_payment_method_types')
    data.pop('payment_method_types', None)
    apm = extra.get('automatic_payment_methods')
    if apm is not None:
        if not isinstance(apm, dict) or 'enabled' not in apm:
            raise _bad_param('automatic_payment_methods[enabled]',
                             'Missing required param: '
                             'automatic_payment_methods[enabled].')
        enabled = _bool(apm['enabled'], 'automatic_payment_methods[enabled]')
        apm = {'enabled': enabled}
        if extra['automatic_payment_methods'].get('allow_redirects'):
            apm['allow_redirects'] = \
                extra['automatic_payment_methods']['allow_redirects']
        if enabled and types is not None:
            raise UserError(400, 'You may only specify one of these '
                                 'parameters: automatic_payment_methods, '
                                 'payment_method_types.',
                            {'param': 'automatic_payment_methods'})
        if not enabled:
            apm = None
    elif types is None:
        apm = {'enabled': True}
    excluded = None
    if extra.get('excluded_payment_method_types') is not None:
        excluded = _str_list(extra['excluded_payment_method_types'],
                             'excluded_payment_method_types')
    cm = extra.get('confirmation_method')
    if cm is not None and cm not in ('automatic', 'manual'):
        raise _bad_param('confirmation_method', 'Invalid confirmation_method')

    pm_id = _resolve_payment_method(data.pop('payment_method', None),
                                    extra.get('payment_method_data'))
    if pm_id is not None:
        data['payment_method'] = pm_id
    pmo = data.pop('payment_method_options', None)
    if pmo is not None and not isinstance(pmo, dict):
        raise _bad_param('payment_method_options', 'Invalid hash')

    obj = cls(**data)   # stock constructor: amount, currency, customer, ...
    obj.payment_method_types = types or ['card']
    obj.allowed_payment_method_types = allowed
    obj.automatic_payment_methods = apm
    obj.excluded_payment_method_types = excluded
    obj.confirmation_method = cm or 'automatic'
    obj.payment_method_options = {}
    obj.cancellation_reason = None
    obj.canceled_at = None
    for k in _PI_SIMPLE_STR:
        setattr(obj, k, None)
    obj.setup_future_usage = None
    obj.shipping = None
    _pi_set_common(obj, extra, creating=True)

    if confirm:
        if obj.payment_method is None:
            raise UserError(400, 'You cannot confirm this PaymentIntent '
                                 'because it\'s missing a payment method.',
                            {'code': 'payment_intent_unexpected_state',
                             'payment_intent': obj._export()})
        obj._confirm(on_failure_now=obj._report_failure)
    return obj


R.PaymentIntent._api_create = classmethod(_pi_create)


_PI_CONFIRM_PARAMS = {
    'payment_method', 'payment_method_data', 'return_url', 'off_session',
    'receipt_email', 'setup_future_usage', 'shipping', 'mandate_data',
    'mandate', 'error_on_requires_action', 'use_stripe_sdk',
    'capture_method', 'payment_method_types', 'payment_method_options',
    'client_secret', 'radar_options', 'confirmation_token'}


def _pi_confirm(cls, id, **data):
    unknown = set(data) - _PI_CONFIRM_PARAMS
    if unknown:
        raise _unknown_params(unknown)
    obj = cls._api_retrieve(id)
    if data.get('client_secret') is not None and \
            data['client_secret'] != obj.client_secret:
        raise UserError(400, 'The client_secret provided does not match the '
                             'client_secret associated with the '
                             'PaymentIntent.', {'param': 'client_secret'})
    if obj.status not in ('requires_payment_method', 'requires_confirmation',
                          'requires_action'):
        raise _unexpected_state(obj, 'confirm')
    pm_id = _resolve_payment_method(data.get('payment_method'),
                                    data.get('payment_method_data'))
    if data.get('capture_method') is not None:
        if data['capture_method'] not in ('automatic', 'automatic_async',
                                          'manual'):
            raise _bad_param('capture_method', 'Invalid capture_method')
    if data.get('payment_method_types') is not None:
        obj.payment_method_types = _str_list(data['payment_method_types'],
                                             'payment_method_types')
    if pm_id is None and obj.payment_method is None:
        raise UserError(400, 'You cannot confirm this PaymentIntent because '
                             'it\'s missing a payment method. To confirm '
                             'the PaymentIntent, pass a payment_method.',
                        {'code': 'payment_intent_unexpected_state',
                         'payment_intent': obj._export()})
    # Start a fresh attempt: a previous failed charge stays reachable as
    # latest_charge until a new one exists.
    if obj.latest_charge is not None and \
            obj.latest_charge.status == 'failed':
        obj._compat_last_charge_id = obj.latest_charge.id
        obj.latest_charge = None
    obj.next_action = None
    obj._authentication_failed = False
    obj._compat_failed_pm = None
    if pm_id is not None:
        obj.payment_method = pm_id
    if data.get('capture_method') is not None:
        obj.capture_method = data['capture_method']
    _pi_set_common(obj, data, creating=False)
    obj._confirm(on_failure_now=obj._report_failure)
    return obj


_orig_pi_confirm_internal = R.PaymentIntent._confirm


def _pi_confirm_internal(self, on_failure_now):
    _orig_pi_confirm_internal(self, on_failure_now)
    if self.status == 'requires_capture':
        # Stripe tells an authorization by this event; stock localstripe sends none.
        R.schedule_webhook(
            R.Event('payment_intent.amount_capturable_updated', self))
    if self.next_action is not None:
        ctx = _ctx.get() or {}
        return_url = getattr(self, '_compat_return_url', None)
        if return_url:
            url = '%s/_test/3ds/%s?%s' % (
                ctx.get('origin', ''), self.id,
                urlencode({'client_secret': self.client_secret}))
            self.next_action = {'type': 'redirect_to_url',
                                'redirect_to_url': {'return_url': return_url,
                                                    'url': url}}
        else:
            self.next_action = {
                'type': 'use_stripe_sdk',
                'use_stripe_sdk': {'type': 'three_d_secure_redirect',
                                   'stripe_js': ''}}


R.PaymentIntent._confirm = _pi_confirm_internal


def _pi_report_failure(self):
    R.schedule_webhook(R.Event('payment_intent.payment_failed', self))
    if self.invoice:
        R.Invoice._api_retrieve(self.invoice)._on_payment_failure_now()
    charge = self.latest_charge
    pm = _lookup_pm(self.payment_method)
    err = {'type': 'card_error', 'code': charge.failure_code,
           'decline_code': 'generic_decline', 'charge': charge.id,
           'doc_url': None, 'payment_intent': self._export()}
    if isinstance(pm, R.PaymentMethod):
        err['payment_method'] = pm._export()
    raise UserError(402, charge.failure_message, err)


def _charge_raise_failure(self):
    raise UserError(402, self.failure_message,
                    {'type': 'card_error', 'code': self.failure_code,
                     'decline_code': 'generic_decline', 'charge': self.id,
                     'doc_url': None})


R.PaymentIntent._report_failure = _pi_report_failure


def _amount_captured(charge):
    """What a captured charge took: all of it, or what a partial capture
    asked for (`amount_to_capture`)."""
    return getattr(charge, '_compat_amount_captured', None) or charge.amount


def _charge_capture(self, amount, on_success=None):
    """Stock localstripe makes a Refund of the uncaptured rest; Stripe (this
    API version) releases it instead: `amount_captured` is what was taken,
    `amount_refunded` stays 0, and no refund event is sent."""
    if amount is None:
        amount = self.amount
    amount = R.try_convert_to_int(amount)
    if not isinstance(amount, int) or isinstance(amount, bool) or \
            not 0 < amount <= self.amount:
        raise _bad_param('amount_to_capture',
                         'The amount to capture must be a positive integer '
                         'no greater than the amount capturable.')
    if self.captured or self.status != 'succeeded':
        raise UserError(400, 'This PaymentIntent could not be captured '
                             'because it has a status of %s.' % (
                                 'succeeded' if self.captured
                                 else self.status),
                        {'code': 'payment_intent_unexpected_state'})

    def on_success_capture():
        self.captured = True
        self._compat_amount_captured = amount
        if on_success:
            on_success()

    self._trigger_payment(on_success=on_success_capture)


R.Charge._capture = _charge_capture


def _pi_capture(cls, id, amount_to_capture=None, **kwargs):
    if kwargs:
        raise _unknown_params(kwargs)
    obj = cls._api_retrieve(id)
    if obj.status != 'requires_capture':
        raise _unexpected_state(obj, 'capture')
    obj.latest_charge._capture(amount=amount_to_capture,
                               on_success=obj._on_success)
    return obj


R.PaymentIntent._api_capture = classmethod(_pi_capture)
R.Charge._raise_failure = _charge_raise_failure


_CANCELLATION_REASONS = ('duplicate', 'fraudulent', 'requested_by_customer',
                         'abandoned')


def _pi_cancel(cls, id, cancellation_reason=None, **kwargs):
    if kwargs:
        raise _unknown_params(kwargs)
    if cancellation_reason is not None and \
            cancellation_reason not in _CANCELLATION_REASONS:
        raise _bad_param('cancellation_reason', 'Invalid cancellation_reason')
    obj = cls._api_retrieve(id)
    if obj.status not in ('requires_payment_method', 'requires_capture',
                          'requires_confirmation', 'requires_action'):
        raise _unexpected_state(obj, 'cancel')
    obj._canceled = True
    obj.next_action = None
    obj.cancellation_reason = cancellation_reason
    obj.canceled_at = int(time.time())
    R.schedule_webhook(R.Event('payment_intent.canceled', obj))
    return obj


_orig_pi_authenticate = R.PaymentIntent._api_authenticate.__func__


def _pi_authenticate(cls, id, client_secret=None, success=False, **kwargs):
    obj = cls._api_retrieve(id)
    pm_before = obj.payment_method
    res = _orig_pi_authenticate(cls, id, client_secret=client_secret,
                                success=success, **kwargs)
    if obj._authentication_failed:
        obj._compat_failed_pm = pm_before
    return res


R.PaymentIntent._api_authenticate = classmethod(_pi_authenticate)
R.PaymentIntent._api_confirm = classmethod(_pi_confirm)
R.PaymentIntent._api_cancel = classmethod(_pi_cancel)

# extra_apis captured the original functions at import time; re-point them.
_REPOINT = {
    ('POST', '/v1/payment_intents/{id}/confirm'): R.PaymentIntent._api_confirm,
    ('POST', '/v1/payment_intents/{id}/cancel'): R.PaymentIntent._api_cancel,
    ('POST', '/v1/payment_intents/{id}/capture'): R.PaymentIntent._api_capture,
    ('POST', '/v1/payment_intents/{id}/_authenticate'):
        R.PaymentIntent._api_authenticate,
}


_CUSTOMER_EXTRA = {'shipping', 'tax_exempt', 'invoice_prefix',
                   'next_invoice_sequence', 'test_clock', 'tax',
                   'cash_balance'}
_orig_customer_create = R.Customer._api_create.__func__


def _customer_create(cls, **data):
    extra = {k: data.pop(k) for k in list(data) if k in _CUSTOMER_EXTRA}
    if extra.get('tax_exempt') not in (None, 'none', 'exempt', 'reverse'):
        raise _bad_param('tax_exempt', 'Invalid tax_exempt')
    obj = _orig_customer_create(cls, **data)
    obj.tax_exempt = extra.get('tax_exempt') or 'none'
    shipping = extra.get('shipping')
    if isinstance(shipping, dict):
        obj.shipping = {'address': _address(shipping.get('address')),
                        'name': shipping.get('name'),
                        'phone': shipping.get('phone')}
    return obj


R.Customer._api_create = classmethod(_customer_create)


# ---------------------------------------------------------------------------
# 4b. Refunds (current API): reason, over-refund refusals, pending/failed
#     refunds, list filters, refund.* / charge.refunded events
# ---------------------------------------------------------------------------
_REFUND_REASONS = ('duplicate', 'fraudulent', 'requested_by_customer')
_REFUND_FAILURE_REASONS = (
    'lost_or_stolen_card', 'expired_or_canceled_card',
    'charge_for_pending_refund_disputed', 'insufficient_funds', 'declined',
    'merchant_request', 'unknown')
# Refunds in these states do not count against the charge (money given back).
_REFUND_VOID = ('failed', 'canceled')
# Status a refund may start with (set by /_test/refunds/next_status).
_REFUND_START = ('succeeded', 'pending', 'requires_action')
# Allowed moves through /_test/refunds/{id}/status (Stripe: a succeeded card
# refund can still fail later; failed and canceled are final).
_REFUND_MOVES = {
    'pending': ('succeeded', 'failed', 'canceled', 'requires_action'),
    'requires_action': ('pending', 'succeeded', 'failed', 'canceled'),
    'succeeded': ('failed',),
    'failed': (),
    'canceled': (),
}
_REFUND_CREATE_EXTRA = {'instructions_email', 'refund_application_fee',
                        'reverse_transfer', 'origin'}
_ZERO_DECIMAL = {'bif', 'clp', 'djf', 'gnf', 'jpy', 'kmf', 'krw', 'mga',
                 'pyg', 'rwf', 'ugx', 'vnd', 'vuv', 'xaf', 'xof', 'xpf'}

# scope ('*' or a payment intent id) -> {'status', 'remaining' (None = until
# changed), 'payment_intent'}
REFUND_RULES = {}
_refund_seq = [0]


def _money(amount, currency):
    if (currency or '').lower() in _ZERO_DECIMAL:
        return '$%d' % amount
    return '$%d.%02d' % (amount // 100, amount % 100)


def _refunds_of_charge(charge_id):
    return [v for k, v in R.store.items()
            if k.startswith('refund:') and v.charge == charge_id]


def _charge_amount_refunded(self):
    return sum(r.amount for r in _refunds_of_charge(self.id)
               if getattr(r, 'status', 'succeeded') not in _REFUND_VOID)


R.Charge.amount_refunded = property(_charge_amount_refunded)
R.Charge.refunded = property(
    lambda self: self.amount > 0 and self.amount_refunded >= self.amount)


def _refund_destination_details(charge):
    pm = _lookup_pm(charge.payment_method)
    kind = getattr(pm, 'type', None) or 'card'
    if kind == 'card' or isinstance(pm, R.Card):
        return {'type': 'card', 'card': {'reference': None,
                                         'reference_status': 'pending',
                                         'reference_type':
                                             'acquirer_reference_number',
                                         'type': 'refund'}}
    return {'type': kind, kind: {}}


def _refund_next_action(obj):
    if obj.status != 'requires_action':
        return None
    now = int(time.time())
    return {'type': 'display_details',
            'display_details': {
                'email_sent': {'email_sent_at': now,
                               'email_sent_to': obj.instructions_email or
                               'customer@example.com'},
                'expires_at': now + 7 * 86400}}


def _fix_refund(self, obj, expand):
    obj.pop('date', None)
    charge = R.store.get('charge:' + str(self.charge))
    if obj.get('payment_intent') is None and charge is not None:
        obj['payment_intent'] = charge.payment_intent
    obj.setdefault('reason', None)
    obj.setdefault('receipt_number', None)
    obj.setdefault('source_transfer_reversal', None)
    obj.setdefault('transfer_reversal', None)
    obj.setdefault('failure_reason', None)
    obj.setdefault('failure_balance_transaction', None)
    obj.setdefault('instructions_email', None)
    obj.setdefault('description', None)
    obj['customer'] = getattr(charge, 'customer', None)
    obj['payment_method'] = getattr(charge, 'payment_method', None)
    obj['pending_reason'] = 'processing' if obj['status'] == 'pending' \
        else None
    if 'destination_details' not in obj:
        obj['destination_details'] = _refund_destination_details(charge) \
            if charge is not None else None
    if obj['status'] != 'requires_action':
        obj['next_action'] = None
    elif obj.get('next_action') is None:
        obj['next_action'] = _refund_next_action(self)
    return obj


class RefundList(R.List):
    """A refund list: newest first, without the old `total_count`."""


def _fix_refund_list(self, obj, expand):
    obj.pop('total_count', None)
    return obj


_FIXUPS[R.Refund] = _fix_refund
_FIXUPS[RefundList] = _fix_refund_list


def _no_successful_charge(pi_id):
    return UserError(400, 'This PaymentIntent (%s) does not have a '
                          'successful charge to refund.' % pi_id,
                     {'param': 'payment_intent'})


def _refund_create(cls, charge=None, payment_intent=None, amount=None,
                   reason=None, metadata=None, **extra):
    unknown = set(extra) - _REFUND_CREATE_EXTRA
    if unknown:
        raise _unknown_params(unknown)
    for name, v in (('charge', charge), ('payment_intent', payment_intent)):
        if v is not None and (not isinstance(v, str) or not v):
            raise _bad_param(name, 'Invalid string')
    if charge is None and payment_intent is None:
        raise UserError(400, 'One of the following params should be provided '
                             'for this request: payment_intent or charge.')
    if amount is not None:
        amount = R.try_convert_to_int(amount)
        if not isinstance(amount, int) or isinstance(amount, bool) or \
                amount <= 0:
            raise _bad_param('amount', 'Invalid positive integer')
    if reason == '':
        reason = None
    if reason is not None and reason not in _REFUND_REASONS:
        raise UserError(400, 'Invalid reason: must be one of duplicate, '
                             'fraudulent, or requested_by_customer',
                        {'code': 'parameter_invalid', 'param': 'reason'})
    if metadata == '':
        metadata = {}
    if metadata is not None and (
            not isinstance(metadata, dict) or
            not all(isinstance(v, str) for v in metadata.values())):
        raise _bad_param('metadata', 'Invalid hash')
    ie = extra.get('instructions_email')
    if ie is not None and not isinstance(ie, str):
        raise _bad_param('instructions_email', 'Invalid string')

    pi_obj = None
    if payment_intent is not None:
        try:
            pi_obj = R.PaymentIntent._api_retrieve(payment_intent)
        except UserError as e:
            if e.code == 404:
                raise UserError(400, "No such payment_intent: '%s'"
                                % payment_intent,
                                {'code': 'resource_missing',
                                 'param': 'payment_intent'})
            raise
    if charge is not None:
        try:
            charge_obj = R.Charge._api_retrieve(charge)
        except UserError as e:
            if e.code == 404:
                raise UserError(400, "No such charge: '%s'" % charge,
                                {'code': 'resource_missing',
                                 'param': 'charge'})
            raise
        if pi_obj is not None and charge_obj.payment_intent != pi_obj.id:
            raise UserError(400, 'Charge %s does not belong to PaymentIntent '
                                 '%s.' % (charge, pi_obj.id),
                            {'param': 'charge'})
    else:
        charge_obj = pi_obj.latest_charge
        if not isinstance(charge_obj, R.Charge):
            raise _no_successful_charge(pi_obj.id)
    if charge_obj.status != 'succeeded' or not charge_obj.captured:
        if charge_obj.payment_intent:
            raise _no_successful_charge(charge_obj.payment_intent)
        raise UserError(400, 'Charge %s has not succeeded and cannot be '
                             'refunded.' % charge_obj.id, {'param': 'charge'})

    remaining = _amount_captured(charge_obj) - charge_obj.amount_refunded
    if remaining <= 0:
        raise UserError(400, 'Charge %s has already been refunded.'
                        % charge_obj.id,
                        {'code': 'charge_already_refunded'})
    if amount is None:
        amount = remaining
    if amount > remaining:
        raise UserError(400, 'Refund amount (%s) is greater than unrefunded '
                             'amount on charge (%s)'
                        % (_money(amount, charge_obj.currency),
                           _money(remaining, charge_obj.currency)),
                        {'code': 'amount_too_large', 'param': 'amount'})

    status = 'succeeded'
    pi_id = charge_obj.payment_intent
    rule = REFUND_RULES.get(pi_id) if pi_id else None
    scope = pi_id
    if rule is None:
        rule, scope = REFUND_RULES.get('*'), '*'
    if rule is not None:
        status = rule['status']
        if rule['remaining'] is not None:
            rule['remaining'] -= 1
            if rule['remaining'] <= 0:
                del REFUND_RULES[scope]

    # All exceptions must be raised before this point.
    obj = cls.__new__(cls)
    R.StripeObject.__init__(obj)
    _refund_seq[0] += 1
    obj._compat_seq = _refund_seq[0]
    obj.amount = amount
    obj.charge = charge_obj.id
    obj.payment_intent = pi_id
    obj.currency = charge_obj.currency
    obj.metadata = dict(metadata or {})
    obj.reason = reason
    obj.status = status
    obj.receipt_number = None
    obj.failure_reason = None
    obj.failure_balance_transaction = None
    obj.instructions_email = ie
    obj.destination_details = _refund_destination_details(charge_obj)
    obj.next_action = _refund_next_action(obj)
    txn = R.BalanceTransaction(amount=-amount, currency=obj.currency,
                               description='REFUND FOR CHARGE',
                               exchange_rate=1.0, reporting_category='refund',
                               source=obj.id, type='refund')
    obj.balance_transaction = txn.id
    R.schedule_webhook(R.Event('refund.created', obj))
    R.schedule_webhook(R.Event('charge.refunded', charge_obj))
    return obj


def refund_set_status(obj, status, failure_reason=None):
    """Move a refund to another status and send the events Stripe sends."""
    if status not in _REFUND_MOVES:
        raise _bad_param('status', 'Invalid status: must be one of %s'
                         % ', '.join(sorted(_REFUND_MOVES)))
    if status not in _REFUND_MOVES[obj.status]:
        raise UserError(400, 'A refund with status %s cannot move to %s.'
                        % (obj.status, status),
                        {'code': 'refund_unexpected_state',
                         'param': 'status'})
    if status == 'failed':
        failure_reason = failure_reason or 'unknown'
        if failure_reason not in _REFUND_FAILURE_REASONS:
            raise _bad_param('failure_reason', 'Invalid failure_reason: must '
                             'be one of %s'
                             % ', '.join(_REFUND_FAILURE_REASONS))
    elif failure_reason:
        raise UserError(400, 'failure_reason is only allowed with '
                             'status=failed.', {'param': 'failure_reason'})
    obj.status = status
    obj.next_action = _refund_next_action(obj)
    if status == 'failed':
        obj.failure_reason = failure_reason
        txn = R.BalanceTransaction(amount=obj.amount, currency=obj.currency,
                                   description='REFUND FAILURE',
                                   exchange_rate=1.0,
                                   reporting_category='refund',
                                   source=obj.id, type='refund')
        txn.type = 'refund_failure'
        txn.reporting_category = 'refund_failure'
        obj.failure_balance_transaction = txn.id
    R.schedule_webhook(R.Event('refund.updated', obj))
    R.schedule_webhook(R.Event('charge.refund.updated', obj))
    if status == 'failed':
        R.schedule_webhook(R.Event('refund.failed', obj))
    return obj


def _refund_cancel(cls, id, **kwargs):
    if kwargs:
        raise _unknown_params(kwargs)
    obj = cls._api_retrieve(id)
    if obj.status != 'requires_action':
        raise UserError(400, 'You can only cancel refunds with a status of '
                             'requires_action; this refund has a status of '
                             '%s.' % obj.status,
                        {'code': 'refund_unexpected_state'})
    return refund_set_status(obj, 'canceled')


def _refund_update(cls, id, metadata=None, **kwargs):
    if kwargs:
        raise _unknown_params(kwargs)
    obj = cls._api_retrieve(id)
    if metadata == '':
        obj.metadata = {}
    elif metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad_param('metadata', 'Invalid hash')
        md = dict(obj.metadata or {})
        for k, v in metadata.items():
            if v == '':
                md.pop(k, None)
            else:
                md[k] = v
        obj.metadata = md
    return obj


def _created_filter(created):
    if created is None:
        return lambda ts: True
    if isinstance(created, str):
        v = R.try_convert_to_int(created)
        if not isinstance(v, int):
            raise _bad_param('created', 'Invalid integer: %s' % created)
        return lambda ts: ts == v
    if not isinstance(created, dict) or not created or \
            not set(created) <= {'gt', 'gte', 'lt', 'lte'}:
        raise _bad_param('created', 'Invalid created: use created[gt], '
                                    'created[gte], created[lt], created[lte]')
    bounds = {}
    for k, v in created.items():
        iv = R.try_convert_to_int(v)
        if not isinstance(iv, int):
            raise _bad_param('created[%s]' % k, 'Invalid integer: %s' % v)
        bounds[k] = iv
    ops = {'gt': lambda a, b: a > b, 'gte': lambda a, b: a >= b,
           'lt': lambda a, b: a < b, 'lte': lambda a, b: a <= b}
    return lambda ts: all(ops[k](ts, b) for k, b in bounds.items())


def _refund_list(cls, url, charge=None, payment_intent=None, created=None,
                 limit=None, starting_after=None, ending_before=None,
                 **kwargs):
    if kwargs:
        raise _unknown_params(kwargs)
    if limit is not None:
        lv = R.try_convert_to_int(limit)
        if not isinstance(lv, int) or not 1 <= lv <= 100:
            raise _bad_param('limit', 'Invalid limit: must be between 1 and '
                                      '100')
    if payment_intent is not None:
        R.PaymentIntent._api_retrieve(payment_intent)   # 404 if unknown
    if charge is not None:
        R.Charge._api_retrieve(charge)
    in_range = _created_filter(created)
    items = [v for k, v in R.store.items() if k.startswith('refund:')
             and (charge is None or v.charge == charge)
             and (payment_intent is None or
                  _refund_pi(v) == payment_intent)
             and in_range(v.created)]
    items.sort(key=lambda r: (r.created, getattr(r, '_compat_seq', 0)),
               reverse=True)
    for cursor, param in ((starting_after, 'starting_after'),
                          (ending_before, 'ending_before')):
        if cursor is not None and not any(r.id == cursor for r in items):
            raise UserError(400, "No such refund: '%s'" % cursor,
                            {'code': 'resource_missing', 'param': param})
    if ending_before is not None:
        # The page just before the cursor (still newest first).
        pos = next(i for i, r in enumerate(items) if r.id == ending_before)
        lv = R.try_convert_to_int(limit) if limit is not None else 10
        items = items[max(0, pos - lv):pos]
    li = RefundList(url, limit=limit, starting_after=starting_after)
    li._list = items
    return li


def _refund_pi(refund):
    if refund.payment_intent:
        return refund.payment_intent
    charge = R.store.get('charge:' + str(refund.charge))
    return getattr(charge, 'payment_intent', None)


R.Refund._api_create = classmethod(_refund_create)
R.Refund._api_update = classmethod(_refund_update)
R.Refund._api_list_all = classmethod(_refund_list)
R.Refund._api_cancel = classmethod(_refund_cancel)
_EXTRA_ROUTES = [('POST', '/v1/refunds/{id}/cancel', R.Refund._api_cancel)]


# ---------------------------------------------------------------------------
# Disputes (stock localstripe has none): opened, changed and closed through
# /_test/disputes, each change sending Stripe's charge.dispute.* event; listed
# by GET /v1/disputes?payment_intent=….
# ---------------------------------------------------------------------------
_DISPUTE_STATUSES = ('warning_needs_response', 'warning_under_review',
                     'warning_closed', 'needs_response', 'under_review',
                     'won', 'lost', 'prevented')
_DISPUTE_EVENTS = ('created', 'updated', 'closed', 'funds_withdrawn',
                   'funds_reinstated')


class Dispute(R.StripeObject):
    object = 'dispute'
    _id_prefix = 'dp_'

    def __init__(self, charge, status, reason, amount, due_by,
                 is_charge_refundable):
        super().__init__()
        self.amount = amount
        self.balance_transactions = []
        self.charge = charge.id
        self.currency = charge.currency
        self.evidence = {k: None for k in (
            'access_activity_log', 'billing_address', 'cancellation_policy',
            'cancellation_policy_disclosure', 'cancellation_rebuttal',
            'customer_communication', 'customer_email_address',
            'customer_name', 'customer_purchase_ip', 'customer_signature',
            'duplicate_charge_documentation', 'duplicate_charge_explanation',
            'duplicate_charge_id', 'product_description', 'receipt',
            'refund_policy', 'refund_policy_disclosure',
            'refund_refusal_explanation', 'service_date',
            'service_documentation', 'shipping_address', 'shipping_carrier',
            'shipping_date', 'shipping_documentation',
            'shipping_tracking_number', 'uncategorized_file',
            'uncategorized_text')}
        self.evidence['enhanced_evidence'] = {}
        self.evidence_details = {'due_by': due_by, 'has_evidence': False,
                                 'past_due': False, 'submission_count': 0,
                                 'enhanced_eligibility': {}}
        self.is_charge_refundable = is_charge_refundable
        self.metadata = {}
        self.payment_intent = charge.payment_intent
        self.payment_method_details = {
            'card': {'brand': 'visa',
                     'case_type': 'inquiry' if status.startswith('warning')
                     else 'chargeback',
                     'network_reason_code': '10.4'},
            'type': 'card'}
        self.reason = reason
        self.status = status
        self.enhanced_eligibility_types = []


def _dispute_list(payment_intent=None, charge=None, limit=None,
                  starting_after=None, **kwargs):
    if kwargs:
        raise _unknown_params(kwargs)
    if limit is not None:
        lv = R.try_convert_to_int(limit)
        if not isinstance(lv, int) or not 1 <= lv <= 100:
            raise _bad_param('limit', 'Invalid limit: must be between 1 and '
                                      '100')
    items = [v for k, v in R.store.items() if k.startswith('dispute:')
             and (payment_intent is None or v.payment_intent == payment_intent)
             and (charge is None or v.charge == charge)]
    items.sort(key=lambda d: d.created, reverse=True)
    li = R.List('/v1/disputes', limit=limit, starting_after=starting_after)
    li._list = items
    return li


_EXTRA_ROUTES.append(('GET', '/v1/disputes', _dispute_list))


async def _dispute_test_endpoint(request):
    """POST /_test/disputes {payment_intent | dispute, status, reason,
    amount, evidence_due_by, is_charge_refundable, event}: opens a dispute of
    a paid intent's charge (or changes one by id) and sends the signed
    `charge.dispute.<event>` event (created when opened, else updated unless
    given) to the webhook endpoints; the event is kept in /v1/events."""
    _ctx.set({'request_id': None, 'idempotency_key': None,
              'origin': '%s://%s' % (request.scheme, request.host),
              'replayed': False, 'fault': None})
    try:
        body = await request.json()
        assert isinstance(body, dict)
    except (AssertionError, ValueError, json.JSONDecodeError):
        return _json({'error': {'type': 'invalid_request_error',
                                'message': 'a JSON object is expected'}}, 400)
    status = body.get('status')
    event = body.get('event')
    if status is not None and status not in _DISPUTE_STATUSES:
        return _json({'error': {'type': 'invalid_request_error',
                                'message': 'unknown status'}}, 400)
    if event is not None and event not in _DISPUTE_EVENTS:
        return _json({'error': {'type': 'invalid_request_error',
                                'message': 'unknown event'}}, 400)
    if body.get('dispute'):
        try:
            dispute = Dispute._api_retrieve(body['dispute'])
        except UserError:
            return _json({'error': {'type': 'invalid_request_error',
                                    'message': 'no such dispute'}}, 404)
        for key in ('status', 'reason', 'amount', 'is_charge_refundable'):
            if body.get(key) is not None:
                setattr(dispute, key, body[key])
        if 'evidence_due_by' in body:
            dispute.evidence_details['due_by'] = body['evidence_due_by']
        event = event or ('closed' if dispute.status in
                          ('won', 'lost', 'warning_closed', 'prevented')
                          else 'updated')
    else:
        try:
            pi = R.PaymentIntent._api_retrieve(body.get('payment_intent'))
        except (UserError, TypeError):
            return _json({'error': {'type': 'invalid_request_error',
                                    'message': 'no such payment intent'}},
                         404)
        charge = pi.latest_charge
        if not isinstance(charge, R.Charge) or not charge.captured:
            return _json({'error': {'type': 'invalid_request_error',
                                    'message': 'the intent has no paid '
                                               'charge'}}, 400)
        dispute = Dispute(
            charge, status or 'needs_response',
            body.get('reason') or 'fraudulent',
            body.get('amount') or _amount_captured(charge),
            body.get('evidence_due_by', int(time.time()) + 7 * 86400),
            bool(body.get('is_charge_refundable', False)))
        event = event or 'created'
    R.schedule_webhook(R.Event('charge.dispute.' + event, dispute))
    return _json(dispute._export())


async def _authorization_test_endpoint(request, pi_id):
    """POST /_test/payment_intents/{id}/expire_authorization: the
    authorization of an intent awaiting capture lapses; Stripe cancels it
    (`cancellation_reason` automatic) and sends payment_intent.canceled."""
    _ctx.set({'request_id': None, 'idempotency_key': None,
              'origin': '%s://%s' % (request.scheme, request.host),
              'replayed': False, 'fault': None})
    try:
        pi = R.PaymentIntent._api_retrieve(pi_id)
    except UserError:
        return _json({'error': {'type': 'invalid_request_error',
                                'message': 'no such payment intent'}}, 404)
    if pi.status != 'requires_capture':
        return _json({'error': {'type': 'invalid_request_error',
                                'message': 'the intent awaits no capture'}},
                     400)
    pi._canceled = True
    pi.cancellation_reason = 'automatic'
    pi.canceled_at = int(time.time())
    R.schedule_webhook(R.Event('payment_intent.canceled', pi))
    return _json(pi._export())


async def _form_or_json(request):
    if request.content_type == 'application/json':
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError('JSON object expected')
        return {k: (str(v) if isinstance(v, int) and
                    not isinstance(v, bool) else v)
                for k, v in body.items()}
    form = dict(await request.post())
    form.update(request.query)
    return form


async def _refund_test_endpoint(request, path):
    """/_test/refunds/next_status and /_test/refunds/{id}/status."""
    # Changes made here are Stripe's own (no API request caused them).
    _ctx.set({'request_id': None, 'idempotency_key': None,
              'origin': '%s://%s' % (request.scheme, request.host),
              'replayed': False, 'fault': None})

    def bad(message, status=400, **extra):
        return _stripe_error(status, 'invalid_request_error', message,
                             **extra)
    if path == '/_test/refunds/next_status':
        if request.method == 'GET':
            return _json({'rules': REFUND_RULES})
        if request.method == 'DELETE':
            REFUND_RULES.clear()
            return _json({'rules': {}})
        if request.method != 'POST':
            return bad('method not allowed', 405)
        try:
            spec = await _form_or_json(request)
        except (ValueError, json.JSONDecodeError):
            return bad('bad body: form or JSON object expected')
        unknown = set(spec) - {'status', 'payment_intent', 'times'}
        if unknown:
            return bad('unknown parameter: %s' % sorted(unknown)[0],
                       code='parameter_unknown', param=sorted(unknown)[0])
        status = spec.get('status')
        if status not in _REFUND_START:
            return bad('status must be one of %s' % ', '.join(_REFUND_START),
                       param='status')
        times = spec.get('times')
        if times is not None:
            times = R.try_convert_to_int(times)
            if not isinstance(times, int) or times < 1:
                return bad('times must be a positive integer', param='times')
        pi = spec.get('payment_intent') or None
        if pi is not None and R.store.get('payment_intent:' + pi) is None:
            return bad("No such payment_intent: '%s'" % pi, 404,
                       code='resource_missing', param='payment_intent')
        rule = {'status': status, 'payment_intent': pi, 'remaining': times}
        REFUND_RULES[pi or '*'] = rule
        return _json(rule)
    m = re.match(r'^/_test/refunds/([A-Za-z0-9_]+)/status$', path)
    if m and request.method == 'POST':
        obj = R.store.get('refund:' + m.group(1))
        if obj is None:
            return bad("No such refund: '%s'" % m.group(1), 404,
                       code='resource_missing', param='id')
        try:
            spec = await _form_or_json(request)
        except (ValueError, json.JSONDecodeError):
            return bad('bad body: form or JSON object expected')
        unknown = set(spec) - {'status', 'failure_reason'}
        if unknown:
            return bad('unknown parameter: %s' % sorted(unknown)[0],
                       code='parameter_unknown', param=sorted(unknown)[0])
        try:
            refund_set_status(obj, spec.get('status'),
                              spec.get('failure_reason') or None)
        except UserError as e:
            return _json(e.body, e.code)
        return _json(obj._export())
    return None


# ---------------------------------------------------------------------------
# 5. Test-only state: request counting, faults, idempotency
# ---------------------------------------------------------------------------
class TestState:
    def __init__(self):
        self.total = 0
        self.by_route = {}
        self.log = []
        self.faults = []
        self.idem = {}          # key -> record
        self.idem_locks = {}    # key -> asyncio.Lock

    def count(self, route_key, entry):
        self.total += 1
        self.by_route[route_key] = self.by_route.get(route_key, 0) + 1
        self.log.append(entry)
        if len(self.log) > 20000:
            del self.log[:1000]


STATE = TestState()

_ID_SEGMENT = re.compile(r'^[a-z]{1,8}_[A-Za-z0-9_]*[A-Z0-9][A-Za-z0-9_]*$')


def _route_key(request):
    try:
        canonical = request.match_info.route.resource.canonical
    except AttributeError:
        canonical = None
    if canonical:
        path = re.sub(r'\{[^}]*\}', '{id}', canonical)
    else:
        path = '/'.join('{id}' if _ID_SEGMENT.match(s) else s
                        for s in request.path.split('/'))
    return '%s %s' % (request.method, path)


def _json(body, status=200, headers=None):
    return web.Response(
        body=(json.dumps(body, indent=2, sort_keys=True) + '\n').encode(),
        status=status, content_type='application/json', headers=headers)


def _stripe_error(status, err_type, message, **extra):
    body = {'error': dict({'type': err_type, 'message': message}, **extra)}
    return _json(body, status=status)


def _request_fingerprint(request, raw):
    ctype = request.headers.get('Content-Type', '')
    if 'application/x-www-form-urlencoded' in ctype or not ctype:
        params = sorted(parse_qsl(raw.decode('utf-8', 'replace'),
                                  keep_blank_values=True))
        body = json.dumps(params)
    else:
        body = raw.decode('utf-8', 'replace')
    return hashlib.sha256(body.encode()).hexdigest()


async def _idempotent(request, handler, key):
    """Serialize per key; replay the stored first answer."""
    if len(key) > 255:
        return _stripe_error(400, 'invalid_request_error',
                             'Idempotency key is too long (max 255 chars).',
                             param='Idempotency-Key')
    raw = await request.read()
    fingerprint = _request_fingerprint(request, raw)
    lock = STATE.idem_locks.setdefault(key, asyncio.Lock())
    async with lock:
        rec = STATE.idem.get(key)
        if rec is not None:
            if rec['method'] != request.method or rec['path'] != request.path:
                return _stripe_error(
                    400, 'idempotency_error',
                    'Keys for idempotent requests can only be used for the '
                    'same endpoint they were first used for (%s %s vs %s %s). '
                    "Try using a key other than '%s' if you meant to execute "
                    'a different request.' % (rec['method'], rec['path'],
                                              request.method, request.path,
                                              key))
            if rec['fingerprint'] != fingerprint:
                return _stripe_error(
                    400, 'idempotency_error',
                    'Keys for idempotent requests can only be used with the '
                    'same parameters they were first used with. Try using a '
                    "key other than '%s' if you meant to execute a different "
                    'request.' % key)
            _ctx.get()['replayed'] = True
            return web.Response(
                body=rec['body'], status=rec['status'],
                headers={'Content-Type': rec['content_type'],
                         'Idempotent-Replayed': 'true',
                         'Original-Request': rec['request_id']})
        resp = await handler(request)
        status = resp.status
        # Like Stripe: store the answer once the endpoint ran (successes,
        # declines, server errors); not for validation/auth/not-found errors.
        if status < 400 or status == 402 or status >= 500:
            body = resp.body if isinstance(resp.body, (bytes, bytearray)) \
                else b''
            STATE.idem[key] = {'method': request.method,
                               'path': request.path,
                               'fingerprint': fingerprint,
                               'status': status, 'body': bytes(body),
                               'content_type': resp.headers.get(
                                   'Content-Type', 'application/json'),
                               'request_id': _ctx.get()['request_id']}
        return resp


def _take_fault(request):
    for fault in STATE.faults:
        if fault['remaining'] <= 0:
            continue
        if fault.get('method') and \
                fault['method'].upper() != request.method:
            continue
        if fault.get('path_prefix') and \
                not request.path.startswith(fault['path_prefix']):
            continue
        fault['remaining'] -= 1
        fault['hits'] += 1
        return fault
    return None


async def _fault_response(request, fault):
    if fault['delay_ms']:
        await asyncio.sleep(fault['delay_ms'] / 1000.0)
    status = fault['status']
    if status is None:
        return None
    if status == 0:
        # Drop the connection without an answer (transport error).
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError()
    err = {'type': 'api_error',
           'message': 'Injected fault: %d (%s, localstripe compat layer)'
                      % (status, fault['when'])}
    err.update(fault.get('error') or {})
    resp = _json({'error': err}, status=status)
    for k, v in (fault.get('headers') or {}).items():
        resp.headers[k] = str(v)
    return resp


# The stand-in Stripe.js (issue 18): what paybridge's hosted payment page loads in tests. It
# calls this server as Stripe.js calls Stripe (publishable key and client secret in the form).
_STRIPE_JS_STAND_IN = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   'stripe-js-stand-in.js')


async def _test_endpoint(request):
    path, method = request.path, request.method
    if path == '/_test/stripe-js/v3/' and method == 'GET':
        with open(_STRIPE_JS_STAND_IN, encoding='utf-8') as f:
            return web.Response(text=f.read(), content_type='text/javascript',
                                headers={'Cache-Control': 'no-store'})
    if path == '/_test/requests':
        if method == 'GET':
            since = request.query.get('since_ms')
            if since is not None:
                # Every request kept (the last 19,000 at least) that arrived since then.
                since = int(since)
                kept = [e for e in STATE.log if e['at_ms'] - e['ms'] >= since]
            else:
                kept = STATE.log[-1000:]
            return _json({'total': STATE.total,
                          'by_route': dict(sorted(STATE.by_route.items())),
                          'requests': kept})
        if method == 'DELETE':
            STATE.total = 0
            STATE.by_route = {}
            STATE.log = []
            return _json({'total': 0, 'by_route': {}, 'requests': []})
    if path == '/_test/faults':
        if method == 'GET':
            return _json({'faults': STATE.faults})
        if method == 'DELETE':
            STATE.faults = []
            return _json({'faults': []})
        if method == 'POST':
            try:
                spec = await request.json()
                assert isinstance(spec, dict)
                when = spec.get('when', 'before')
                assert when in ('before', 'after')
                times = int(spec.get('times', 1))
                assert times >= 1
                status = spec.get('status', 500)
                assert status is None or (isinstance(status, int) and
                                          (status == 0 or
                                           100 <= status <= 599))
                delay_ms = int(spec.get('delay_ms', 0))
                assert delay_ms >= 0
                method_f = spec.get('method')
                assert method_f is None or isinstance(method_f, str)
                prefix = spec.get('path_prefix')
                assert prefix is None or isinstance(prefix, str)
                assert isinstance(spec.get('error', {}), dict)
                assert isinstance(spec.get('headers', {}), dict)
            except (AssertionError, ValueError, TypeError,
                    json.JSONDecodeError):
                return _json({'error': {'type': 'invalid_request_error',
                                        'message': 'bad fault spec'}}, 400)
            fault = {'id': 'fault_%d' % (len(STATE.faults) + 1),
                     'method': method_f.upper() if method_f else None,
                     'path_prefix': prefix, 'times': times,
                     'remaining': times, 'hits': 0, 'status': status,
                     'when': when, 'delay_ms': delay_ms,
                     'error': spec.get('error') or {},
                     'headers': spec.get('headers') or {}}
            STATE.faults.append(fault)
            return _json(fault)
    m = re.match(r'^/_test/3ds/([A-Za-z0-9_]+)$', path)
    if m and method == 'GET':
        return _three_ds_page(request, m.group(1))
    if path.startswith('/_test/refunds/'):
        resp = await _refund_test_endpoint(request, path)
        if resp is not None:
            return resp
    if path == '/_test/disputes' and method == 'POST':
        return await _dispute_test_endpoint(request)
    m = re.match(r'^/_test/payment_intents/([A-Za-z0-9_]+)/expire_authorization$',
                 path)
    if m and method == 'POST':
        return await _authorization_test_endpoint(request, m.group(1))
    if path == '/_test/health':
        return _json({'ok': True})
    return _json({'error': {'type': 'invalid_request_error',
                            'message': 'unknown test endpoint'}}, 404)


def _three_ds_page(request, pi_id):
    """Stand-in for the bank's 3-D Secure page that next_action.redirect_to_url
    points to. Without `success`, a page with two links; with it, settles the
    authentication and sends the browser to return_url like Stripe does."""
    client_secret = request.query.get('client_secret', '')
    success = request.query.get('success')
    obj = R.store.get('payment_intent:' + pi_id)
    if obj is None or client_secret != obj.client_secret:
        return web.Response(status=404, text='unknown payment intent')
    if success is None:
        base = '/_test/3ds/%s?%s' % (pi_id,
                                     urlencode({'client_secret':
                                                client_secret}))
        html = ('<!doctype html><title>3D Secure test page</title>'
                '<h1>3D Secure test payment</h1>'
                '<a id="complete" href="%s&success=true">Complete</a> '
                '<a id="fail" href="%s&success=false">Fail</a>' % (base, base))
        return web.Response(text=html, content_type='text/html')
    if obj.status == 'requires_action':
        R.PaymentIntent._api_authenticate(
            pi_id, client_secret=client_secret,
            success='true' if success == 'true' else 'false')
    return_url = getattr(obj, '_compat_return_url', None) or '/'
    redirect_status = {'succeeded': 'succeeded', 'processing': 'pending',
                       'requires_capture': 'succeeded'}.get(obj.status,
                                                            'failed')
    sep = '&' if '?' in return_url else '?'
    location = return_url + sep + urlencode({
        'payment_intent': pi_id,
        'payment_intent_client_secret': client_secret,
        'redirect_status': redirect_status})
    raise web.HTTPSeeOther(location)


# Stripe.js authenticates with the publishable key sent as `key` in the form: it creates
# PaymentMethods and confirms PaymentIntents (with their client secret) that way. Stock
# localstripe accepts that only for tokens and sources; accept it here for those two calls too.
_PUBLISHABLE_KEY_PATHS = (
    re.compile(r'^/v1/payment_methods$'),
    re.compile(r'^/v1/payment_intents/\w+/confirm$'),
)
_PUBLISHABLE_KEY_STAND_IN = 'sk_test_publishable_key_stand_in'


async def _accept_publishable_key(request):
    if request.method != 'POST' or 'Authorization' in request.headers:
        return request
    if not any(p.match(request.path) for p in _PUBLISHABLE_KEY_PATHS):
        return request
    form = parse_qsl((await request.read()).decode('utf-8'))
    if not any(k == 'key' and v.startswith('pk_') for k, v in form):
        return request
    if request.path.endswith('/confirm') and not any(
            k == 'client_secret' and v for k, v in form):
        return request   # with a publishable key, Stripe requires the client secret
    request['paybridge_publishable_key'] = True
    return request


@web.middleware
async def compat_middleware(request, handler):
    if request.path.startswith('/_test/'):
        return await _test_endpoint(request)
    request = await _accept_publishable_key(request)

    request_id = 'req_' + _rand(14)
    idem_key = request.headers.get('Idempotency-Key')
    ctx = {'request_id': request_id, 'idempotency_key': idem_key,
           'origin': '%s://%s' % (request.scheme, request.host),
           'replayed': False, 'fault': None}
    _ctx.set(ctx)
    is_api = request.path.startswith('/v1/')
    started = time.monotonic()
    status = None
    try:
        resp = await _dispatch(request, handler, ctx, is_api, idem_key)
        status = resp.status
        resp.headers['Request-Id'] = request_id
        if is_api:
            resp.headers['Stripe-Version'] = request.headers.get(
                'Stripe-Version', API_VERSION)
            if idem_key and request.method == 'POST':
                resp.headers['Idempotency-Key'] = idem_key
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        if is_api:
            STATE.count(_route_key(request), {
                'method': request.method, 'path': request.path,
                'route': _route_key(request), 'status': status,
                'idempotency_key': idem_key, 'replayed': ctx['replayed'],
                'fault': ctx['fault'], 'request_id': request_id,
                'ms': int((time.monotonic() - started) * 1000),
                'at_ms': int(time.time() * 1000),
                'key_tail': _key_tail(request)})


async def _dispatch(request, handler, ctx, is_api, idem_key):
    fault = _take_fault(request) if is_api else None
    if fault is not None:
        ctx['fault'] = fault['id']
    if fault is not None and fault['when'] == 'before':
        resp = await _fault_response(request, fault)
        if resp is not None:
            return resp
    try:
        if is_api and idem_key and request.method == 'POST':
            resp = await _idempotent(request, handler, idem_key)
        else:
            resp = await handler(request)
    except web.HTTPException as e:
        if not is_api or e.status < 400:
            raise
        resp = _stripe_error(e.status, 'invalid_request_error',
                             'Unrecognized request URL (%s: %s).'
                             % (request.method, request.path))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.error('internal error on %s %s:\n%s', request.method,
                  request.path, traceback.format_exc())
        resp = _stripe_error(500, 'api_error',
                             'Internal error in localstripe')
    if fault is not None and fault['when'] == 'after':
        faulted = await _fault_response(request, fault)
        if faulted is not None:
            return faulted
    return resp


def _key_tail(request):
    """The last 4 characters of the request's secret key: tells apart the processes that share
    one (test) account through different keys, without logging a key."""
    key = _patched_get_api_key(request)
    if not key or request.get('paybridge_publishable_key'):
        return None
    return key[-4:]


def _patched_get_api_key(request):
    if request.get('paybridge_publishable_key'):
        return _PUBLISHABLE_KEY_STAND_IN
    parts = request.headers.get('Authorization', '').split(' ')
    if len(parts) != 2:
        return None
    scheme, value = parts
    if scheme == 'Basic':
        import base64
        try:
            value = base64.b64decode(value.encode()).decode().split(':')[0]
        except Exception:
            return None
    elif scheme != 'Bearer':
        return None
    if value.startswith('sk_') and len(value) > 5:
        return value
    return None


S.get_api_key = _patched_get_api_key


def _install():
    app = S.app
    app.middlewares.insert(0, compat_middleware)
    # Re-point routes whose handlers were captured from extra_apis at import.
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource else None
        func = _REPOINT.get((route.method, canonical))
        if func is not None:
            route._handler = S.api_extra(func, canonical)
    for method, url, func in _EXTRA_ROUTES:
        app.router.add_route(method, url, S.api_extra(func, url))
    return app


# ---------------------------------------------------------------------------
# 6. Serving
# ---------------------------------------------------------------------------
async def _serve(args):
    app = _install()
    access = logging.getLogger('aiohttp.access')
    runner = web.AppRunner(app, access_log=access, handle_signals=False)
    await runner.setup()
    family = socket.AF_INET6 if ':' in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    host = '[%s]' % args.host if family == socket.AF_INET6 else args.host
    log.info('localstripe %s (compat layer, API %s) on %s:%d',
             getattr(__import__('localstripe'), '__version__', '?'),
             API_VERSION, host, port)
    sys.stdout.write('LISTENING %s:%d\n' % (host, port))
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.exit_with_parent:
        parent = os.getppid()

        async def watch_parent():
            while not stop.is_set():
                if os.getppid() != parent:
                    log.info('parent process gone; exiting')
                    stop.set()
                    return
                await asyncio.sleep(0.5)
        asyncio.ensure_future(watch_parent())
    await stop.wait()
    await runner.cleanup()


def main(argv=None):
    global API_VERSION
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=0,
                   help='0 picks a free port (default)')
    p.add_argument('--api-version', default=API_VERSION,
                   help='api_version written into events')
    p.add_argument('--log-level', default='INFO')
    p.add_argument('--exit-with-parent', action='store_true',
                   help='exit when the parent process dies')
    args = p.parse_args(argv)
    API_VERSION = args.api_version
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format='%(asctime)s %(name)s %(levelname)s '
                               '%(message)s')
    asyncio.run(_serve(args))


if __name__ == '__main__':
    main()
