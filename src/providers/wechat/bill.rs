//! WeChat Pay's trade bill (交易账单), the same text for API v3 (`/v3/bill/tradebill`,
//! then a signed download) and API v2 (`/pay/downloadbill`).
//!
//! The file: a header line of Chinese column names, one line per trade event with
//! every value prefixed by a backtick (so spreadsheets keep long ids as text), then a
//! summary header (`总交易单数,…`) and one summary line. Amounts are yuan with two
//! decimals, fees with five. With `bill_type=ALL` payments are `SUCCESS` rows and
//! refunds `REFUND` rows carrying the refund numbers. Columns are found by name; a
//! column payd does not know, a missing one, or a summary that does not count the
//! rows, fails the statement rather than be guessed at.

use std::collections::HashMap;

use payd_actors::model::Currency;
use payd_actors::reconcile::{RowKind, Statement, StatementRow};

use crate::providers::statement::{StatementError, decimal_minor, wall_time};

const TRADE_TIME: &str = "交易时间";
const TRANSACTION_ID: &str = "微信订单号";
const OUT_TRADE_NO: &str = "商户订单号";
const TRADE_STATE: &str = "交易状态";
const CURRENCY: &str = "货币种类";
const SETTLEMENT_AMOUNT: &str = "应结订单金额";
const REFUND_ID: &str = "微信退款单号";
const OUT_REFUND_NO: &str = "商户退款单号";
const REFUND_AMOUNT: &str = "退款金额";
const FEE: &str = "手续费";
const ORDER_AMOUNT: &str = "订单金额";
const REQUESTED_REFUND: &str = "申请退款金额";

/// Every column of the trade bill payd knows (direct merchants and service providers).
const KNOWN: [&str; 27] = [
    TRADE_TIME,
    "公众账号ID",
    "商户号",
    "特约商户号",
    "设备号",
    TRANSACTION_ID,
    OUT_TRADE_NO,
    "用户标识",
    "交易类型",
    TRADE_STATE,
    "付款银行",
    CURRENCY,
    SETTLEMENT_AMOUNT,
    "代金券金额",
    REFUND_ID,
    OUT_REFUND_NO,
    REFUND_AMOUNT,
    "充值券退款金额",
    "退款类型",
    "退款状态",
    "商品名称",
    "商户数据包",
    FEE,
    "费率",
    ORDER_AMOUNT,
    REQUESTED_REFUND,
    "费率备注",
];
const REQUIRED: [&str; 9] = [
    TRADE_TIME,
    TRANSACTION_ID,
    OUT_TRADE_NO,
    TRADE_STATE,
    CURRENCY,
    SETTLEMENT_AMOUNT,
    OUT_REFUND_NO,
    REFUND_AMOUNT,
    FEE,
];
const SUMMARY_HEADER: &str = "总交易单数";

fn value(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('`').unwrap_or(f)
}

/// Parses a trade bill (`bill_type=ALL`).
pub fn parse_trade_bill(text: &str) -> Result<Statement, StatementError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = lines
        .next()
        .ok_or_else(|| StatementError::malformed("the bill is empty"))?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (i, c) in columns.iter().enumerate() {
        if !KNOWN.contains(c) {
            return Err(StatementError::malformed(format!(
                "unknown column {c:?} in the trade bill header"
            )));
        }
        if at.insert(c, i).is_some() {
            return Err(StatementError::malformed(format!(
                "column {c:?} appears twice"
            )));
        }
    }
    if let Some(missing) = REQUIRED.iter().find(|c| !at.contains_key(*c)) {
        return Err(StatementError::malformed(format!(
            "the trade bill has no {missing:?} column"
        )));
    }
    let mut rows = Vec::new();
    let mut summary: Option<(usize, &str)> = None;
    for (n, line) in lines.by_ref().enumerate() {
        let line_no = n + 2;
        if line.trim_start().starts_with(SUMMARY_HEADER) {
            summary = Some((line_no, line));
            break;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != columns.len() {
            return Err(StatementError::malformed(format!(
                "line {line_no} has {} fields, the header {}",
                fields.len(),
                columns.len()
            )));
        }
        let get = |c: &str| at.get(c).map(|&i| value(fields[i])).unwrap_or("");
        let bad = |what: &str| {
            StatementError::malformed(format!("line {line_no}: bad {what} {:?}", get(what)))
        };
        let kind = match get(TRADE_STATE) {
            "SUCCESS" => RowKind::Payment,
            "REFUND" => RowKind::Refund,
            // Revoked trades moved no money.
            "REVOKED" => continue,
            other => {
                return Err(StatementError::malformed(format!(
                    "line {line_no}: unknown trade state {other:?}"
                )));
            }
        };
        let amount_minor = match kind {
            RowKind::Payment => {
                let column = if at.contains_key(ORDER_AMOUNT) {
                    ORDER_AMOUNT
                } else {
                    SETTLEMENT_AMOUNT
                };
                decimal_minor(get(column), 2).ok_or_else(|| bad(column))?
            }
            RowKind::Refund => {
                let column = if at.contains_key(REQUESTED_REFUND) {
                    REQUESTED_REFUND
                } else {
                    REFUND_AMOUNT
                };
                decimal_minor(get(column), 2).ok_or_else(|| bad(column))?
            }
        };
        // Yuan to 0.00001: thousandths of a fen.
        let fee_milli_minor = decimal_minor(get(FEE), 5).ok_or_else(|| bad(FEE))?;
        let currency = Currency::parse(get(CURRENCY)).ok_or_else(|| bad(CURRENCY))?;
        let at_time = wall_time(get(TRADE_TIME), 8).ok_or_else(|| bad(TRADE_TIME))?;
        let order_no = get(OUT_TRADE_NO).to_string();
        let transaction_id = get(TRANSACTION_ID).to_string();
        if order_no.is_empty() || transaction_id.is_empty() {
            return Err(StatementError::malformed(format!(
                "line {line_no}: a row without its order number or transaction id"
            )));
        }
        let refund_no = (kind == RowKind::Refund).then(|| get(OUT_REFUND_NO).to_string());
        if refund_no.as_deref() == Some("") {
            return Err(bad(OUT_REFUND_NO));
        }
        rows.push(StatementRow {
            kind,
            order_no,
            transaction_id,
            refund_no,
            provider_refund_id: (kind == RowKind::Refund)
                .then(|| get(REFUND_ID).to_string())
                .filter(|s| !s.is_empty()),
            amount_minor,
            fee_currency: currency.clone(),
            currency,
            fee_milli_minor,
            at: at_time,
            raw: line.to_string(),
        });
    }
    let Some((line_no, _)) = summary else {
        return Err(StatementError::malformed(
            "the bill ends without its summary (truncated?)",
        ));
    };
    let totals = lines
        .next()
        .ok_or_else(|| StatementError::malformed("the summary has no values (truncated?)"))?;
    let count: usize = totals
        .split(',')
        .next()
        .map(value)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| StatementError::malformed(format!("line {}: bad summary", line_no + 1)))?;
    let data_rows = line_no - 2;
    if count != data_rows {
        return Err(StatementError::malformed(format!(
            "the summary counts {count} trades, the bill lists {data_rows}"
        )));
    }
    Ok(Statement { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const HEADER: &str = "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注";

    fn bill(rows: &[&str], count: usize) -> String {
        let mut s = format!("{HEADER}\r\n");
        for r in rows {
            s.push_str(r);
            s.push_str("\r\n");
        }
        s.push_str("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n");
        s.push_str(&format!(
            "`{count},`9.90,`1.00,`0.00,`0.05340,`9.90,`1.00\r\n"
        ));
        s
    }

    const PAY: &str = "`2026-11-22 20:00:00,`wx01,`1900000001,`0,`,`4200001,`PD1,`oBuyer,`NATIVE,`SUCCESS,`OTHERS,`CNY,`9.90,`0.00,`0,`0,`0.00,`0.00,`,`,`basic,`,`0.05940,`0.60%,`9.90,`0.00,`";
    const REFUND: &str = "`2026-11-22 21:00:00,`wx01,`1900000001,`0,`,`4200001,`PD1,`oBuyer,`NATIVE,`REFUND,`OTHERS,`CNY,`9.90,`0.00,`50301,`RF1,`1.00,`0.00,`ORIGINAL,`SUCCESS,`basic,`,`-0.00600,`0.60%,`9.90,`1.00,`";

    #[test]
    fn payments_and_refunds_are_read_with_their_fees() {
        let s = parse_trade_bill(&bill(&[PAY, REFUND], 2)).unwrap();
        assert_eq!(s.rows.len(), 2);
        let (p, r) = (&s.rows[0], &s.rows[1]);
        assert_eq!(
            (p.kind, p.order_no.as_str(), p.transaction_id.as_str()),
            (RowKind::Payment, "PD1", "4200001")
        );
        assert_eq!((p.amount_minor, p.fee_milli_minor), (990, 5940));
        assert_eq!(p.at, wall_time("2026-11-22 12:00:00", 0).unwrap());
        assert_eq!(
            (
                r.kind,
                r.refund_no.as_deref(),
                r.amount_minor,
                r.fee_milli_minor
            ),
            (RowKind::Refund, Some("RF1"), 100, -600)
        );
        assert_eq!(r.provider_refund_id.as_deref(), Some("50301"));
        assert_eq!(p.raw, PAY);
    }

    #[test]
    fn a_truncated_or_reshaped_bill_is_refused_with_its_reason() {
        let full = bill(&[PAY, REFUND], 2);
        let cut = &full[..full.find("总交易单数").unwrap()];
        assert!(
            matches!(parse_trade_bill(cut), Err(StatementError::Malformed(m)) if m.contains("summary"))
        );
        assert!(
            matches!(parse_trade_bill(&bill(&[PAY], 2)), Err(StatementError::Malformed(m)) if m.contains("counts 2"))
        );
        let renamed = full.replacen("费率备注", "新列", 1);
        assert!(
            matches!(parse_trade_bill(&renamed), Err(StatementError::Malformed(m)) if m.contains("unknown column \"新列\""))
        );
        let odd = bill(&[&PAY.replace("`0.05940", "`0.0594x")], 1);
        assert!(
            matches!(parse_trade_bill(&odd), Err(StatementError::Malformed(m)) if m.contains("line 2"))
        );
        assert!(parse_trade_bill("").is_err());
    }
}
