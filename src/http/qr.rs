//! `GET /api/v1/orders/{order_no}/qr.svg`: the order's current QR code as an SVG
//! image, so a page can show it without a script library or a third-party image
//! service (which would learn every payment link).
//!
//! Owner-only like every order route (anyone else gets 404). The image may be cached
//! by the buyer's browser only until the QR code's display expiry: after that the
//! page asks for a fresh code (`POST …/qr`).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use payd_actors::model::OrderStatus;
use payd_actors::tables::ORDERS;
use qrcode::QrCode;
use qrcode::render::svg;

use crate::http::AppState;
use crate::http::error::ApiError;
use crate::http::extract::AuthUser;
use crate::order_no::looks_like_order_no;

pub(super) async fn qr_svg(
    State(state): State<AppState>,
    user: AuthUser,
    Path(order_no): Path<String>,
) -> Result<Response, ApiError> {
    if !looks_like_order_no(&order_no) {
        return Err(ApiError::not_found("no such order"));
    }
    let order = {
        let view = state.store.read()?;
        view.get(&ORDERS, &order_no)?
    }
    .filter(|o| o.user_id == user.user_id)
    .ok_or_else(|| ApiError::not_found("no such order"))?;
    if order.status != OrderStatus::Pending {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "order_not_pending",
            format!(
                "the order is {} and has no QR code to pay",
                order.status.as_str()
            ),
        ));
    }
    let (Some(url), Some(expire_at)) = (&order.qr_code_url, order.qr_code_expire_at) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "qr_not_available",
            "this order is paid on the provider's page (payment_url), not by QR code",
        ));
    };
    let remaining_ms = expire_at.ms() - state.clock.now().ms();
    if remaining_ms <= 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "qr_expired",
            "the QR code has expired; get a new one with POST /api/v1/orders/{order_no}/qr",
        ));
    }
    let code = QrCode::new(url.as_bytes())
        .map_err(|e| ApiError::internal(format!("the QR code could not be drawn: {e}")))?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(240, 240)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .quiet_zone(true)
        .build();
    let max_age = remaining_ms / 1000;
    let mut response = (StatusCode::OK, image).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("private, max-age={max_age}")) {
        headers.insert(header::CACHE_CONTROL, v);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Opened directly, the image must not be able to run anything.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    Ok(response)
}
