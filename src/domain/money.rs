//! Money: an amount in minor units and a currency Stripe supports. Never a float.
//!
//! Source of truth for every list and rule here: Stripe's "Supported currencies" page,
//! <https://docs.stripe.com/currencies> (presentment currencies, "Zero-decimal currencies",
//! "Three-decimal currencies" and the "Special cases" table). Checked against a transcription of
//! that page retrieved 2026-09. What the page says, and what follows here:
//!
//! * Amounts are in the currency's minor unit; two decimals unless listed otherwise.
//! * Zero-decimal: BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF — the amount is
//!   whole units (`500` is ¥500).
//! * Three-decimal (BHD JOD KWD OMR TND): amounts in thousandths, but "these API calls require the
//!   least-significant (last) digit to be 0" → an amount here must be a multiple of 10.
//! * Special cases:
//!   - ISK and UGX "transitioned to a zero-decimal currency, but backward compatibility requires
//!     you to represent it as a two-decimal value, where the decimal amount is always 00. For
//!     example, to charge 5 ISK, provide an amount value of 500." → two-decimal on the wire, and
//!     the amount must be a multiple of 100. UGX is therefore NOT zero-decimal for a charge even
//!     though it appears in the zero-decimal list: the special case is the more specific rule, and
//!     charges are all paybridge makes.
//!   - HUF and TWD are zero-decimal "for payouts, even though you can charge two-decimal amounts"
//!     → for a charge they are ordinary two-decimal currencies with no extra rule.
//! * Stripe's per-currency minimum charge (e.g. 0.50 USD) depends on the settlement currency and
//!   moves with exchange rates, so it is left to Stripe to refuse.

use std::fmt;

use super::validation::FieldViolation;

/// Stripe's supported presentment currencies (lowercase ISO 4217), plus the three-decimal ones
/// that Stripe enables per account. Sorted, so that look-up is a binary search.
const SUPPORTED: &[&str] = &[
    "aed", "afn", "all", "amd", "ang", "aoa", "ars", "aud", "awg", "azn", "bam", "bbd", "bdt",
    "bhd", "bif", "bmd", "bnd", "bob", "brl", "bsd", "bwp", "byn", "bzd", "cad", "cdf", "chf",
    "clp", "cny", "cop", "crc", "cve", "czk", "djf", "dkk", "dop", "dzd", "egp", "etb", "eur",
    "fjd", "fkp", "gbp", "gel", "gip", "gmd", "gnf", "gtq", "gyd", "hkd", "hnl", "htg", "huf",
    "idr", "ils", "inr", "isk", "jmd", "jod", "jpy", "kes", "kgs", "khr", "kmf", "krw", "kwd",
    "kyd", "kzt", "lak", "lbp", "lkr", "lrd", "lsl", "mad", "mdl", "mga", "mkd", "mmk", "mnt",
    "mop", "mur", "mvr", "mwk", "mxn", "myr", "mzn", "nad", "ngn", "nio", "nok", "npr", "nzd",
    "omr", "pab", "pen", "pgk", "php", "pkr", "pln", "pyg", "qar", "ron", "rsd", "rub", "rwf",
    "sar", "sbd", "scr", "sek", "sgd", "shp", "sle", "srd", "szl", "thb", "tjs", "tnd", "top",
    "try", "ttd", "twd", "tzs", "uah", "ugx", "usd", "uyu", "uzs", "vnd", "vuv", "wst", "xaf",
    "xcd", "xcg", "xof", "xpf", "yer", "zar", "zmw",
];

/// Stripe's zero-decimal list, less UGX (see the module comment: its special case governs).
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "vnd", "vuv", "xaf",
    "xof", "xpf",
];

/// Two-decimal on the wire with the decimals always `00`.
const WHOLE_UNITS_AS_TWO_DECIMAL: &[&str] = &["isk", "ugx"];

/// Three-decimal; the last digit must be 0.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// An amount in the currency's minor unit (Stripe's `amount`): 1 to 99,999,999.
///
/// The upper bound is Stripe's eight-digit limit on `amount` (999,999.99 in a two-decimal
/// currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    pub const MIN: i64 = 1;
    pub const MAX: i64 = 99_999_999;
    const FIELD: &'static str = "amount";

    pub fn parse(minor_units: i64) -> Result<Amount, FieldViolation> {
        if minor_units < Self::MIN {
            return Err(FieldViolation::new(
                Self::FIELD,
                "must be a positive number of minor units (e.g. cents)",
            ));
        }
        if minor_units > Self::MAX {
            return Err(FieldViolation::new(
                Self::FIELD,
                format!("must be at most {} minor units", Self::MAX),
            ));
        }
        Ok(Amount(minor_units))
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A lowercase ISO 4217 code from the currencies Stripe supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(&'static str);

impl Currency {
    const FIELD: &'static str = "currency";

    pub fn parse(raw: &str) -> Result<Currency, FieldViolation> {
        if raw.is_empty() {
            return Err(FieldViolation::new(Self::FIELD, "is required"));
        }
        if let Ok(i) = SUPPORTED.binary_search(&raw) {
            return Ok(Currency(SUPPORTED[i]));
        }
        let lower = raw.to_ascii_lowercase();
        if lower != raw && SUPPORTED.binary_search(&lower.as_str()).is_ok() {
            return Err(FieldViolation::new(
                Self::FIELD,
                format!("must be lowercase: use \"{lower}\""),
            ));
        }
        Err(FieldViolation::new(
            Self::FIELD,
            "must be a lowercase ISO 4217 code of a currency Stripe supports (e.g. \"usd\")",
        ))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }

    /// Whether Stripe takes this currency's `amount` in whole units (`500` is ¥500). False for
    /// UGX and ISK, which Stripe takes as two-decimal values (see the module comment).
    pub fn is_zero_decimal(self) -> bool {
        ZERO_DECIMAL.contains(&self.0)
    }

    /// Whether Stripe takes this currency's `amount` in thousandths (BHD, JOD, KWD, OMR, TND).
    pub fn is_three_decimal(self) -> bool {
        THREE_DECIMAL.contains(&self.0)
    }

    /// How many of the amount's digits are decimals in Stripe's representation: 0, 2 or 3.
    pub fn decimals(self) -> u32 {
        if self.is_zero_decimal() {
            0
        } else if self.is_three_decimal() {
            3
        } else {
            2
        }
    }

    /// The amount must be a multiple of this, and why.
    fn amount_step(self) -> Option<(i64, &'static str)> {
        if self.is_three_decimal() {
            Some((
                10,
                "Stripe requires the last digit of a three-decimal amount to be 0",
            ))
        } else if WHOLE_UNITS_AS_TWO_DECIMAL.contains(&self.0) {
            Some((
                100,
                "Stripe takes this currency as a two-decimal value whose decimals are always 00",
            ))
        } else {
            None
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// An amount in a currency, with the currency's own amount rules applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount: Amount,
    currency: Currency,
}

impl Money {
    /// Applies the per-currency rule (multiples of 10 or 100); a violation names `amount`.
    pub fn new(amount: Amount, currency: Currency) -> Result<Money, FieldViolation> {
        if let Some((step, why)) = currency.amount_step()
            && amount.minor_units() % step != 0
        {
            return Err(FieldViolation::new(
                Amount::FIELD,
                format!("must be a multiple of {step} for {currency}: {why}"),
            ));
        }
        Ok(Money { amount, currency })
    }

    /// Parses both fields; reports the first problem found (amount, then currency, then the
    /// per-currency rule). To report both fields' problems at once, parse [`Amount`] and
    /// [`Currency`] separately and then call [`Money::new`].
    pub fn parse(amount: i64, currency: &str) -> Result<Money, FieldViolation> {
        let amount = Amount::parse(amount)?;
        let currency = Currency::parse(currency)?;
        Money::new(amount, currency)
    }

    pub fn amount(self) -> Amount {
        self.amount
    }

    pub fn currency(self) -> Currency {
        self.currency
    }

    /// The amount as a customer reads it, in the currency's own unit with its decimals and the
    /// code after it: `1,234.56 USD`, `1,500 JPY`, `12.340 KWD`, `5 ISK` (ISK and UGX travel as
    /// two-decimal values whose decimals are always 00, so they show none).
    pub fn for_display(self) -> String {
        let minor = self.amount.minor_units();
        let wire = self.currency.decimals();
        let shown = if WHOLE_UNITS_AS_TWO_DECIMAL.contains(&self.currency.0) {
            0
        } else {
            wire
        };
        let unit = 10_i64.pow(wire);
        let whole = minor / unit;
        let fraction = (minor % unit) / 10_i64.pow(wire - shown);
        let digits = whole.to_string();
        let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        let code = self.currency.0.to_ascii_uppercase();
        if shown == 0 {
            format!("{grouped} {code}")
        } else {
            format!(
                "{grouped}.{fraction:0width$} {code}",
                width = shown as usize
            )
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_display_in_the_currencys_own_unit() {
        let shown = |amount, currency| Money::parse(amount, currency).unwrap().for_display();
        assert_eq!(shown(4200, "usd"), "42.00 USD");
        assert_eq!(shown(5, "eur"), "0.05 EUR");
        assert_eq!(shown(12_345_678, "eur"), "123,456.78 EUR");
        assert_eq!(shown(1500, "jpy"), "1,500 JPY");
        assert_eq!(shown(99_999_999, "krw"), "99,999,999 KRW");
        assert_eq!(shown(12_340, "kwd"), "12.340 KWD");
        assert_eq!(shown(1_000_010, "bhd"), "1,000.010 BHD");
        assert_eq!(shown(500, "isk"), "5 ISK");
        assert_eq!(shown(100_000, "ugx"), "1,000 UGX");
    }

    #[test]
    fn supported_list_is_sorted_unique_lowercase_three_letters() {
        assert!(SUPPORTED.windows(2).all(|w| w[0] < w[1]));
        assert!(
            SUPPORTED
                .iter()
                .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase()))
        );
        for list in [ZERO_DECIMAL, WHOLE_UNITS_AS_TWO_DECIMAL, THREE_DECIMAL] {
            for c in list {
                assert!(SUPPORTED.contains(c), "{c} is special but not supported");
            }
        }
    }

    // --- Amount ---

    #[test]
    fn amount_accepts_one_to_99_999_999() {
        assert_eq!(Amount::parse(1).unwrap().minor_units(), 1);
        assert_eq!(Amount::parse(99_999_999).unwrap().minor_units(), 99_999_999);
    }

    #[test]
    fn amount_refuses_zero_and_negative() {
        for raw in [0, -1, i64::MIN] {
            let err = Amount::parse(raw).unwrap_err();
            assert_eq!(err.field, "amount");
            assert!(err.description.contains("positive"));
        }
    }

    #[test]
    fn amount_refuses_more_than_eight_digits() {
        for raw in [100_000_000, i64::MAX] {
            let err = Amount::parse(raw).unwrap_err();
            assert!(err.description.contains("99999999"));
        }
    }

    // --- Currency ---

    #[test]
    fn currency_accepts_supported_lowercase_codes() {
        for raw in [
            "usd", "eur", "gbp", "jpy", "chf", "kwd", "isk", "huf", "twd", "ugx", "xcg",
        ] {
            assert_eq!(Currency::parse(raw).unwrap().as_str(), raw);
        }
    }

    #[test]
    fn currency_in_uppercase_is_refused_with_a_hint() {
        for (raw, hint) in [("USD", "\"usd\""), ("Eur", "\"eur\""), ("jPY", "\"jpy\"")] {
            let err = Currency::parse(raw).unwrap_err();
            assert_eq!(err.field, "currency");
            assert!(err.description.contains("lowercase"), "{raw}");
            assert!(err.description.contains(hint), "{raw}: {}", err.description);
        }
    }

    #[test]
    fn currency_is_required() {
        assert_eq!(Currency::parse("").unwrap_err().description, "is required");
    }

    #[test]
    fn unknown_or_unsupported_currencies_are_refused() {
        // xxx: ISO "no currency"; xau: gold; ves/vef/hrk: not (or no longer) on Stripe's list.
        for raw in [
            "xxx", "xau", "ves", "hrk", "us", "usdd", " usd", "usd ", "$", "XYZ",
        ] {
            let err = Currency::parse(raw).unwrap_err();
            assert_eq!(err.field, "currency");
            assert!(err.description.contains("Stripe supports"), "{raw}");
        }
    }

    #[test]
    fn zero_decimal_currencies_follow_stripes_list() {
        for c in [
            "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "vnd", "vuv",
            "xaf", "xof", "xpf",
        ] {
            let currency = Currency::parse(c).unwrap();
            assert!(currency.is_zero_decimal(), "{c}");
            assert_eq!(currency.decimals(), 0);
        }
        for c in ["usd", "eur", "kwd", "huf", "twd", "isk"] {
            assert!(!Currency::parse(c).unwrap().is_zero_decimal(), "{c}");
        }
    }

    #[test]
    fn ugx_is_listed_zero_decimal_but_charged_as_two_decimal() {
        let ugx = Currency::parse("ugx").unwrap();
        assert!(!ugx.is_zero_decimal());
        assert_eq!(ugx.decimals(), 2);
    }

    #[test]
    fn three_decimal_currencies_have_three_decimals() {
        for c in ["bhd", "jod", "kwd", "omr", "tnd"] {
            let currency = Currency::parse(c).unwrap();
            assert!(currency.is_three_decimal(), "{c}");
            assert_eq!(currency.decimals(), 3);
        }
        assert!(!Currency::parse("usd").unwrap().is_three_decimal());
    }

    // --- Money ---

    #[test]
    fn money_parses_ordinary_amounts() {
        let money = Money::parse(1099, "usd").unwrap();
        assert_eq!(money.amount().minor_units(), 1099);
        assert_eq!(money.currency().as_str(), "usd");
        assert_eq!(money.to_string(), "1099 usd");
        assert!(Money::parse(1, "eur").is_ok());
        assert!(Money::parse(7, "jpy").is_ok());
    }

    #[test]
    fn three_decimal_amounts_must_end_in_zero() {
        assert!(Money::parse(5120, "kwd").is_ok());
        for c in ["bhd", "jod", "kwd", "omr", "tnd"] {
            let err = Money::parse(5121, c).unwrap_err();
            assert_eq!(err.field, "amount", "{c}");
            assert!(err.description.contains("multiple of 10"), "{c}");
        }
    }

    #[test]
    fn isk_and_ugx_amounts_must_be_whole_units() {
        for c in ["isk", "ugx"] {
            assert!(Money::parse(500, c).is_ok(), "{c}");
            let err = Money::parse(550, c).unwrap_err();
            assert_eq!(err.field, "amount");
            assert!(err.description.contains("multiple of 100"), "{c}");
            assert!(Money::parse(1, c).is_err(), "{c}");
        }
    }

    #[test]
    fn huf_and_twd_charge_two_decimal_amounts_freely() {
        // Their divisible-by-100 rule is for payouts only.
        assert!(Money::parse(1045, "huf").is_ok());
        assert!(Money::parse(1045, "twd").is_ok());
    }

    #[test]
    fn money_parse_reports_the_amount_before_the_currency() {
        assert_eq!(Money::parse(0, "USD").unwrap_err().field, "amount");
        assert_eq!(Money::parse(10, "USD").unwrap_err().field, "currency");
    }

    #[test]
    fn money_new_applies_the_currency_rule_to_parsed_parts() {
        let amount = Amount::parse(15).unwrap();
        assert!(Money::new(amount, Currency::parse("usd").unwrap()).is_ok());
        assert_eq!(
            Money::new(amount, Currency::parse("omr").unwrap())
                .unwrap_err()
                .field,
            "amount"
        );
    }
}
