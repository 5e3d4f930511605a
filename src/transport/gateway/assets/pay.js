// paybridge's hosted payment page: mounts Stripe's Payment Element and confirms the payment.
// Served as a static file (the page's Content-Security-Policy allows no inline script). The
// page hands over what it needs in data attributes of the form; nothing here reads the URL.
(function () {
  'use strict';

  var form = document.getElementById('payment-form');
  if (!form) {
    return; // A paid, processing or cancelled payment: the page shows its state, no form.
  }
  var button = document.getElementById('pay-button');
  var message = document.getElementById('payment-message');
  var label = button.textContent;

  function show(text) {
    message.textContent = text;
    message.hidden = false;
  }

  function busy(on) {
    button.disabled = on;
    button.setAttribute('aria-busy', on ? 'true' : 'false');
    button.textContent = on ? 'Processing\u2026' : label;
  }

  if (typeof window.Stripe !== 'function') {
    show('The payment form could not be loaded. Please check your connection and reload this page.');
    button.disabled = true;
    return;
  }

  var stripe = window.Stripe(form.dataset.publishableKey);
  var elements = stripe.elements({ clientSecret: form.dataset.clientSecret });
  elements.create('payment').mount('#payment-element');
  button.disabled = false;

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    busy(true);
    message.hidden = true;
    stripe
      .confirmPayment({
        elements: elements,
        confirmParams: { return_url: form.dataset.returnUrl }
      })
      .then(function (result) {
        // Reached only when the payment did not leave for return_url: a declined card or
        // details to correct. Stripe's message says what to do; the customer may try again.
        if (result && result.error) {
          show(result.error.message || 'The payment did not go through. Please try again.');
        }
        busy(false);
      }, function () {
        show('The payment could not be sent. Please check your connection and try again.');
        busy(false);
      });
  });
})();
