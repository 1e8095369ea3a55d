//! The JSON shapes of API.md, built from domain records. Money stays integer minor
//! units; times are RFC 3339 UTC.

use payd_actors::model::{Entitlements, Order, Package, PackageSnapshot, Timestamp};
use serde::Serialize;

/// Always with exactly three fraction digits (`2026-11-23T06:22:27.980Z`), so that
/// times compare as strings the way they compare as instants: the well-known RFC
/// 3339 format drops trailing zeros (`27.98Z`, `27Z`), and `27.98Z` sorts after
/// `27.982Z`.
pub fn rfc3339(t: Timestamp) -> String {
    const MILLIS: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let nanos = i128::from(t.ms()) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|d| d.format(MILLIS).ok())
        .unwrap_or_default()
}

#[derive(Serialize)]
pub struct PackageView {
    pub id: String,
    pub kind: &'static str,
    pub name: String,
    pub description: String,
    pub amount: i64,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queries_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bonus_points: Option<u64>,
    pub is_active: bool,
    pub sort_order: i32,
}

impl From<&Package> for PackageView {
    fn from(p: &Package) -> Self {
        PackageView {
            id: p.id.clone(),
            kind: p.kind.as_str(),
            name: p.name.clone(),
            description: p.description.clone(),
            amount: p.amount_minor,
            currency: p.currency.as_str().to_string(),
            membership_type: p.membership_type.clone(),
            validity_days: p.validity_days,
            queries_count: p.queries_count,
            points: p.points,
            bonus_points: p.bonus_points,
            is_active: p.is_active,
            sort_order: p.sort_order,
        }
    }
}

#[derive(Serialize)]
pub struct SnapshotView<'a> {
    pub name: &'a str,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queries_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bonus_points: Option<u64>,
}

impl<'a> From<&'a PackageSnapshot> for SnapshotView<'a> {
    fn from(p: &'a PackageSnapshot) -> Self {
        SnapshotView {
            name: &p.name,
            kind: p.kind.as_str(),
            membership_type: p.membership_type.as_deref(),
            validity_days: p.validity_days,
            queries_count: p.queries_count,
            points: p.points,
            bonus_points: p.bonus_points,
        }
    }
}

/// Borrows the order's strings: building the answer to every create and read
/// copied each of them only to serialize and drop it.
#[derive(Serialize)]
pub struct OrderView<'a> {
    pub order_no: &'a str,
    pub user_id: &'a str,
    pub package_id: &'a str,
    pub package: SnapshotView<'a>,
    pub amount: i64,
    pub currency: &'a str,
    pub payment_method: &'static str,
    pub provider: &'static str,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr_code_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr_code_expire_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_url: Option<&'a str>,
    pub expire_at: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<String>,
    /// When the order first left pending (paid, cancelled, expired or failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_transaction_id: Option<&'a str>,
    pub refunded_amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<&'a str>,
    pub late_payment: bool,
    /// How an upgrade order's price was computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<serde_json::Value>,
}

impl OrderView<'_> {
    pub fn with_upgrade(mut self, u: Option<&payd_actors::model::UpgradePricing>) -> Self {
        self.upgrade = u.map(|u| {
            serde_json::json!({
                "from_type": u.from_type,
                "list_price": u.list_price_minor,
                "credit": u.credit_minor,
                "price": u.price_minor,
                "minimum_applied": u.minimum_applied,
            })
        });
        self
    }
}

impl<'a> From<&'a Order> for OrderView<'a> {
    fn from(o: &'a Order) -> Self {
        OrderView {
            order_no: &o.order_no,
            user_id: &o.user_id,
            package_id: &o.package_id,
            package: (&o.package).into(),
            amount: o.amount_minor,
            currency: o.currency.as_str(),
            payment_method: o.payment_method.as_str(),
            provider: o.provider.as_str(),
            status: o.status.as_str(),
            qr_code_url: o.qr_code_url.as_deref(),
            qr_code_expire_at: o.qr_code_expire_at.map(rfc3339),
            payment_url: o.payment_url.as_deref(),
            expire_at: rfc3339(o.expire_at),
            created_at: rfc3339(o.created_at),
            paid_at: o.paid_at.map(rfc3339),
            cancelled_at: o.cancelled_at.map(rfc3339),
            settled_at: o.settled_at.map(rfc3339),
            provider_transaction_id: o.provider_transaction_id.as_deref(),
            refunded_amount: o.refunded_amount_minor,
            failure_reason: o.failure_reason.as_deref(),
            late_payment: o.late_payment,
            upgrade: None,
        }
    }
}

#[derive(Serialize)]
pub struct MembershipView {
    #[serde(rename = "type")]
    pub membership_type: String,
    pub expires_at: String,
    pub queries_remaining: u64,
}

#[derive(Serialize)]
pub struct EntitlementsView {
    pub membership: Option<MembershipView>,
    /// Paid plus bonus points.
    pub points: u64,
    pub paid_points: u64,
    pub bonus_points: u64,
}

impl EntitlementsView {
    pub fn new(e: &Entitlements, now: Timestamp) -> Self {
        EntitlementsView {
            membership: e.active_membership(now).map(|m| MembershipView {
                membership_type: m.membership_type.clone(),
                expires_at: rfc3339(m.expires_at),
                queries_remaining: m.queries_remaining,
            }),
            points: e.points_paid + e.points_bonus,
            paid_points: e.points_paid,
            bonus_points: e.points_bonus,
        }
    }
}

#[derive(Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: usize,
    pub page_size: usize,
    pub total: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_three_fraction_digits_and_sort_as_strings() {
        let at = |ms: i64| rfc3339(Timestamp(ms));
        assert_eq!(at(1_763_879_000_000), "2025-11-23T06:23:20.000Z");
        assert_eq!(at(1_763_879_000_980), "2025-11-23T06:23:20.980Z");
        assert_eq!(at(1_763_879_000_982), "2025-11-23T06:23:20.982Z");
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        let mut instants = vec![1_763_879_000_982, 1_763_879_000_980, 1_763_879_000_000];
        instants.extend([1_763_879_001_000, 1_763_878_999_999, 1_763_879_000_098]);
        let mut by_string = instants.clone();
        by_string.sort_by_key(|ms| at(*ms));
        instants.sort_unstable();
        assert_eq!(by_string, instants);
        // Still RFC 3339: it parses back to the same instant.
        let parsed = time::OffsetDateTime::parse(
            &at(1_763_879_000_980),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(parsed.unix_timestamp_nanos(), 1_763_879_000_980_000_000);
    }
}
