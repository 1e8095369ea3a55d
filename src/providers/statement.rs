//! What every statement parser shares: the error that fails a reconciliation run,
//! decimal money to minor units, Beijing wall times, and the day a statement covers.
//!
//! Statement files are money: a parser refuses anything it does not fully
//! understand (a column it does not know, a number with too many decimals, a
//! missing summary) rather than guess, and the run fails with the reason.

use payd_actors::model::Timestamp;
use payd_actors::reconcile::{DayWindow, Statement};

use crate::providers::executor::Executor;

/// Why a statement could not be had or read. Fails the run; changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    /// The provider could not be reached or refused; may work later.
    #[error("statement download failed: {0}")]
    Download(String),
    /// The file arrived but does not hash to what the provider said.
    #[error("statement integrity check failed: {0}")]
    Integrity(String),
    /// The file is not in the provider's format.
    #[error("statement is malformed: {0}")]
    Malformed(String),
}

impl StatementError {
    pub fn malformed(s: impl Into<String>) -> Self {
        StatementError::Malformed(s.into())
    }
}

/// A statement day: `YYYY-MM-DD` in the provider's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementDay {
    pub date: time::Date,
    /// Hours east of UTC of the statement's time zone (8 for Beijing, 0 for UTC).
    pub offset_hours: i8,
}

impl StatementDay {
    pub fn parse(s: &str, offset_hours: i8) -> Option<StatementDay> {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        let date = time::Date::parse(s, &fmt).ok()?;
        Some(StatementDay { date, offset_hours })
    }

    pub fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}",
            self.date.year(),
            u8::from(self.date.month()),
            self.date.day()
        )
    }

    pub fn compact(&self) -> String {
        self.iso().replace('-', "")
    }

    pub fn window(&self) -> DayWindow {
        let midnight = self.date.midnight().assume_utc().unix_timestamp() * 1000;
        let start = midnight - i64::from(self.offset_hours) * 3_600_000;
        DayWindow {
            start: Timestamp(start),
            end: Timestamp(start + 86_400_000),
        }
    }

    /// The statement day containing `at` (the day before is `previous`).
    pub fn containing(at: Timestamp, offset_hours: i8) -> StatementDay {
        let local = at.ms() + i64::from(offset_hours) * 3_600_000;
        let date = time::OffsetDateTime::from_unix_timestamp(local.div_euclid(1000))
            .map(|d| d.date())
            .unwrap_or(time::Date::MIN);
        StatementDay { date, offset_hours }
    }

    pub fn previous(&self) -> StatementDay {
        StatementDay {
            date: self.date.previous_day().unwrap_or(self.date),
            offset_hours: self.offset_hours,
        }
    }
}

/// `"12.34"` → 1234 at `scale` 2. A sign is allowed; more decimals than `scale`,
/// or anything else, is refused.
pub fn decimal_minor(s: &str, scale: u32) -> Option<i64> {
    let s = s.trim();
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > scale as usize
        || whole.len() > 15
    {
        return None;
    }
    let mut value: i64 = whole.parse().ok()?;
    let mut frac_value: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    frac_value *= 10i64.pow(scale - frac.len() as u32);
    value = value
        .checked_mul(10i64.pow(scale))?
        .checked_add(frac_value)?;
    Some(if negative { -value } else { value })
}

/// `"2026-11-22 20:00:00"` at UTC+`offset_hours` → a timestamp.
pub fn wall_time(s: &str, offset_hours: i8) -> Option<Timestamp> {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(s.trim(), &fmt).ok()?;
    let secs = t.assume_utc().unix_timestamp() - i64::from(offset_hours) * 3600;
    Some(Timestamp(secs * 1000))
}

/// A statement on its way.
pub type StatementFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Statement, StatementError>> + Send + 'a>,
>;

/// Where reconciliation gets a provider's statement: each provider adapter.
pub trait StatementSource: Send + Sync {
    /// Statement days are in this time zone (hours east of UTC).
    fn offset_hours(&self) -> i8;
    fn fetch(&self, day: StatementDay) -> StatementFuture<'_>;
}

/// Downloads a file through the provider's executor (retries, breaker, redacted logs).
pub async fn download(
    exec: &Executor,
    op: &'static str,
    build: impl Fn() -> Result<
        crate::providers::executor::OutboundRequest,
        payd_actors::provider::ProviderError,
    >,
) -> Result<Vec<u8>, StatementError> {
    let resp = exec
        .send(op, build)
        .await
        .map_err(|e| StatementError::Download(e.message))?;
    if resp.status != 200 {
        return Err(StatementError::Download(format!(
            "the file download answered HTTP {}",
            resp.status
        )));
    }
    Ok(resp.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_become_minor_units_and_anything_else_is_refused() {
        assert_eq!(decimal_minor("0.01", 2), Some(1));
        assert_eq!(decimal_minor("12.3", 2), Some(1230));
        assert_eq!(decimal_minor("-0.00600", 5), Some(-600));
        assert_eq!(decimal_minor("7", 2), Some(700));
        assert_eq!(decimal_minor("0.001", 2), None);
        assert_eq!(decimal_minor("1e3", 2), None);
        assert_eq!(decimal_minor("", 2), None);
        assert_eq!(decimal_minor(".5", 2), None);
    }

    #[test]
    fn a_beijing_day_starts_at_sixteen_hundred_utc_the_day_before() {
        let day = StatementDay::parse("2026-11-22", 8).unwrap();
        let w = day.window();
        assert_eq!(w.start, wall_time("2026-11-21 16:00:00", 0).unwrap());
        assert_eq!(w.end.ms() - w.start.ms(), 86_400_000);
        assert_eq!(
            StatementDay::containing(wall_time("2026-11-22 23:59:59", 8).unwrap(), 8),
            day
        );
    }
}
