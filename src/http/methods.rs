//! `GET /api/v1/payment-methods`: which payment methods this server can take now,
//! through which provider, in which currencies, and whether the buyer scans a QR
//! code or is sent to the provider's page. The checkout page offers exactly these,
//! so a buyer never picks a method that would answer `payment_method_unavailable`.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use payd_actors::commands;
use payd_actors::model::{PaymentMethod, ProviderKind};
use serde::Serialize;

use crate::http::AppState;
use crate::http::error::ApiError;

#[derive(Serialize)]
struct PaymentMethodView {
    method: &'static str,
    provider: &'static str,
    /// Currencies of the packages on sale that this method can take.
    currencies: Vec<String>,
    /// `qr`: the order carries a QR code to scan; `redirect`: a payment URL.
    flow: &'static str,
}

pub(super) async fn payment_methods(State(state): State<AppState>) -> Result<Response, ApiError> {
    let on_sale: BTreeSet<_> = {
        let view = state.store.read()?;
        commands::list_packages(&view, true)?
            .into_iter()
            .map(|p| p.currency)
            .collect()
    };
    let items: Vec<PaymentMethodView> = PaymentMethod::ALL
        .into_iter()
        .filter_map(|method| {
            let provider = if state.config.payment.mock_mode {
                Some(ProviderKind::Mock)
            } else {
                state.providers.for_method(method)
            }?;
            Some(PaymentMethodView {
                method: method.as_str(),
                provider: provider.as_str(),
                currencies: on_sale
                    .iter()
                    .filter(|c| method.supports_currency(c))
                    .map(|c| c.as_str().to_string())
                    .collect(),
                flow: if method.is_qr() { "qr" } else { "redirect" },
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "items": items,
        "mock_mode": state.config.payment.mock_mode,
        "payments_enabled": state.config.payment.enabled,
    }))
    .into_response())
}
