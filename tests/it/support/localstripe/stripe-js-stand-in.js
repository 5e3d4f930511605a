// A stand-in for Stripe.js v3, for tests only: served by compat.py at /_test/stripe-js/v3/ and
// loaded by paybridge's hosted payment page through PAYBRIDGE_STRIPE_JS_URL (the machines the
// tests run on cannot reach Stripe). It implements the calls the page makes, and makes the
// requests Stripe.js would make to the server it was loaded from:
//
//   Stripe(pk)                          checks the publishable key
//   stripe.elements({clientSecret})     remembers the PaymentIntent's client secret
//   elements.create('payment').mount(t) card number, expiry and CVC fields in t
//   stripe.confirmPayment({elements, confirmParams: {return_url}})
//       POST /v1/payment_methods (key=pk), then POST /v1/payment_intents/{id}/confirm
//       (key=pk, client_secret, payment_method, return_url). A decline or incomplete details
//       resolve {error: {type, code, message}} and the page stays; a card that needs 3-D Secure
//       shows an authentication dialog here (as Stripe's modal does), which settles it with
//       POST /v1/payment_intents/{id}/_authenticate; then the browser goes to return_url with
//       Stripe's three parameters (payment_intent, payment_intent_client_secret,
//       redirect_status).
(function () {
  'use strict';

  var api = new URL(document.currentScript.src).origin;

  function encode(params) {
    return Object.keys(params).map(function (key) {
      return encodeURIComponent(key) + '=' + encodeURIComponent(params[key]);
    }).join('&');
  }

  // A form POST, as Stripe.js sends (a simple request: no CORS preflight).
  function post(path, params) {
    return fetch(api + path, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: encode(params),
      credentials: 'omit',
      referrerPolicy: 'no-referrer'
    }).then(function (response) {
      return response.json().then(function (body) {
        return { ok: response.ok, body: body };
      });
    });
  }

  function field(container, id, labelText, attributes) {
    var label = document.createElement('label');
    label.htmlFor = id;
    label.textContent = labelText;
    var input = document.createElement('input');
    input.id = id;
    input.type = 'text';
    Object.keys(attributes).forEach(function (name) {
      input.setAttribute(name, attributes[name]);
    });
    container.appendChild(label);
    container.appendChild(input);
    return input;
  }

  function returnTo(returnUrl, intent, clientSecret) {
    var status = { succeeded: 'succeeded', processing: 'pending', requires_capture: 'succeeded' };
    var url = new URL(returnUrl);
    url.searchParams.set('payment_intent', intent.id);
    url.searchParams.set('payment_intent_client_secret', clientSecret);
    url.searchParams.set('redirect_status', status[intent.status] || 'failed');
    window.location.assign(url.toString());
    return new Promise(function () {}); // the page is leaving
  }

  // Stripe's 3-D Secure modal, reduced to its two outcomes.
  function authenticate(intent, clientSecret, publishableKey) {
    return new Promise(function (resolve) {
      var dialog = document.createElement('div');
      dialog.id = 'stand-in-3ds';
      dialog.setAttribute('role', 'dialog');
      dialog.setAttribute('aria-label', '3-D Secure authentication (test)');
      var text = document.createElement('p');
      text.textContent = 'Test bank: authenticate this payment?';
      var complete = document.createElement('button');
      complete.type = 'button';
      complete.id = 'stand-in-3ds-complete';
      complete.textContent = 'Complete authentication';
      var fail = document.createElement('button');
      fail.type = 'button';
      fail.id = 'stand-in-3ds-fail';
      fail.textContent = 'Fail authentication';
      dialog.appendChild(text);
      dialog.appendChild(complete);
      dialog.appendChild(fail);
      document.body.appendChild(dialog);
      function settle(success) {
        dialog.remove();
        post('/v1/payment_intents/' + intent.id + '/_authenticate', {
          key: publishableKey,
          client_secret: clientSecret,
          success: success ? 'true' : 'false'
        }).then(resolve);
      }
      complete.addEventListener('click', function () { settle(true); });
      fail.addEventListener('click', function () { settle(false); });
    });
  }

  function Stripe(publishableKey) {
    if (typeof publishableKey !== 'string' || publishableKey.indexOf('pk_') !== 0) {
      throw new Error('Stripe(): a publishable key (pk_...) is required');
    }
    return {
      elements: function (options) {
        if (!options || typeof options.clientSecret !== 'string') {
          throw new Error('elements(): clientSecret is required');
        }
        var elements = { clientSecret: options.clientSecret, fields: null };
        elements.create = function (type) {
          if (type !== 'payment') {
            throw new Error('create(): the stand-in makes the payment element only');
          }
          return {
            mount: function (target) {
              var container = typeof target === 'string' ? document.querySelector(target) : target;
              container.textContent = '';
              elements.fields = {
                number: field(container, 'stand-in-card-number', 'Card number',
                  { autocomplete: 'cc-number', inputmode: 'numeric', placeholder: '1234 1234 1234 1234' }),
                expiry: field(container, 'stand-in-card-expiry', 'Expiry (MM / YY)',
                  { autocomplete: 'cc-exp', inputmode: 'numeric', placeholder: 'MM / YY' }),
                cvc: field(container, 'stand-in-card-cvc', 'CVC',
                  { autocomplete: 'cc-csc', inputmode: 'numeric', placeholder: '123' })
              };
            }
          };
        };
        return elements;
      },

      confirmPayment: function (options) {
        var elements = options.elements;
        var returnUrl = options.confirmParams && options.confirmParams.return_url;
        var clientSecret = elements.clientSecret;
        var intentId = clientSecret.split('_secret_')[0];
        var fields = elements.fields;
        var number = fields.number.value.replace(/\s+/g, '');
        var expiry = fields.expiry.value.replace(/\s+/g, '').split('/');
        if (!/^\d{12,19}$/.test(number)) {
          return Promise.resolve({ error: { type: 'validation_error', code: 'incomplete_number',
            message: 'Your card number is incomplete.' } });
        }
        if (expiry.length !== 2 || !/^\d{2}$/.test(expiry[0]) || !/^\d{2}$/.test(expiry[1])) {
          return Promise.resolve({ error: { type: 'validation_error', code: 'incomplete_expiry',
            message: "Your card's expiration date is incomplete." } });
        }
        return post('/v1/payment_methods', {
          type: 'card',
          'card[number]': number,
          'card[exp_month]': expiry[0],
          'card[exp_year]': '20' + expiry[1],
          'card[cvc]': fields.cvc.value,
          key: publishableKey
        }).then(function (method) {
          if (!method.ok) {
            return { error: method.body.error };
          }
          return post('/v1/payment_intents/' + intentId + '/confirm', {
            payment_method: method.body.id,
            client_secret: clientSecret,
            return_url: returnUrl,
            key: publishableKey
          }).then(function (confirmed) {
            if (!confirmed.ok) {
              return { error: confirmed.body.error }; // a decline: Stripe's message, no redirect
            }
            var intent = confirmed.body;
            if (intent.status !== 'requires_action') {
              return returnTo(returnUrl, intent, clientSecret);
            }
            return authenticate(intent, clientSecret, publishableKey).then(function (settled) {
              var after = settled.body;
              if (settled.ok && after.status !== 'requires_payment_method') {
                return returnTo(returnUrl, after, clientSecret);
              }
              var error = (after && after.last_payment_error) || (after && after.error) || {};
              return { error: { type: error.type || 'card_error', code: error.code,
                message: error.message || 'We are unable to authenticate your payment method.' } };
            });
          });
        });
      }
    };
  }

  window.Stripe = Stripe;
})();
