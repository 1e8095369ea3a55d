//! Alipay's trade bill (`bill_type=trade`): `alipay.data.dataservice.bill.downloadurl.query`
//! answers a short-lived URL; the file behind it is a zip of two GBK-encoded CSV
//! files, the detail (`…_业务明细.csv`) and its summary (`…_业务明细(汇总).csv`).
//!
//! The detail: `#` comment lines (account, period), a header of Chinese column
//! names, one line per trade or refund with values padded by a tab, an end marker,
//! and trailer comments counting the trades and refunds (`#交易合计：N笔…`,
//! `#退款合计：M笔…`). Columns are found by name; an unknown column, a missing one,
//! counts that disagree with the rows, a zip that does not open or check out (CRC),
//! or text that is not GBK fail the statement.

use std::collections::HashMap;
use std::io::Read;

use payd_actors::model::Currency;
use payd_actors::reconcile::{RowKind, Statement, StatementRow};

use crate::providers::statement::{StatementError, decimal_minor, wall_time};

const TRADE_NO: &str = "支付宝交易号";
const OUT_TRADE_NO: &str = "商户订单号";
const BIZ_TYPE: &str = "业务类型";
const FINISHED: &str = "完成时间";
const ORDER_AMOUNT: &str = "订单金额（元）";
const RECEIVED: &str = "商家实收（元）";
const REQUEST_NO: &str = "退款批次号/请求号";
const SERVICE_FEE: &str = "服务费（元）";

/// The columns of the trade detail payd knows.
const KNOWN: [&str; 25] = [
    TRADE_NO,
    OUT_TRADE_NO,
    BIZ_TYPE,
    "商品名称",
    "创建时间",
    FINISHED,
    "门店编号",
    "门店名称",
    "操作员",
    "终端号",
    "对方账户",
    ORDER_AMOUNT,
    RECEIVED,
    "支付宝红包（元）",
    "集分宝（元）",
    "支付宝优惠（元）",
    "商家优惠（元）",
    "券核销金额（元）",
    "券名称",
    "商家红包消费金额（元）",
    "卡消费金额（元）",
    REQUEST_NO,
    SERVICE_FEE,
    "分润（元）",
    "备注",
];
const REQUIRED: [&str; 8] = [
    TRADE_NO,
    OUT_TRADE_NO,
    BIZ_TYPE,
    FINISHED,
    ORDER_AMOUNT,
    RECEIVED,
    REQUEST_NO,
    SERVICE_FEE,
];
const END_MARKER: &str = "业务明细列表结束";
const TRADE_COUNT: &str = "#交易合计：";
const REFUND_COUNT: &str = "#退款合计：";

/// Opens the zip and parses its detail file (the summary must be there too).
pub fn parse_bill_zip(bytes: &[u8]) -> Result<Statement, StatementError> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
        StatementError::malformed(format!("the bill zip does not open (truncated?): {e}"))
    })?;
    let mut detail = None;
    let mut summary = false;
    for i in 0..zip.len() {
        let mut file = zip
            .by_index(i)
            .map_err(|e| StatementError::malformed(format!("bill zip entry {i}: {e}")))?;
        let name = file_name(file.name_raw());
        let mut content = Vec::new();
        // Reading to the end checks the entry's CRC-32.
        file.read_to_end(&mut content)
            .map_err(|e| StatementError::malformed(format!("bill zip entry {name}: {e}")))?;
        if name.ends_with("业务明细(汇总).csv") {
            decode_gbk(&content)?;
            summary = true;
        } else if name.ends_with("业务明细.csv") {
            detail = Some(content);
        }
    }
    let detail = detail.ok_or_else(|| StatementError::malformed("the zip has no 业务明细.csv"))?;
    if !summary {
        return Err(StatementError::malformed(
            "the zip has no 业务明细(汇总).csv",
        ));
    }
    parse_detail(&decode_gbk(&detail)?)
}

/// Entry names are GBK unless the zip flags them UTF-8.
fn file_name(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) => s.to_string(),
        Err(_) => encoding_rs::GBK
            .decode_without_bom_handling(raw)
            .0
            .into_owned(),
    }
}

/// GBK to text, refusing bytes that are not GBK — and UTF-8, which a GBK decoder
/// would read as plausible-looking nonsense.
pub fn decode_gbk(bytes: &[u8]) -> Result<String, StatementError> {
    if !bytes.is_ascii() && std::str::from_utf8(bytes).is_ok() {
        return Err(StatementError::malformed(
            "the bill is UTF-8 encoded; Alipay's bills are GBK",
        ));
    }
    encoding_rs::GBK
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(|s| s.into_owned())
        .ok_or_else(|| StatementError::malformed("the bill is not valid GBK text"))
}

fn value(field: &str) -> &str {
    field.trim_matches(|c: char| c == '\t' || c == ' ' || c == '\r')
}

fn count_after(line: &str, prefix: &str) -> Option<usize> {
    let rest = line.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Parses the decoded detail CSV.
pub fn parse_detail(text: &str) -> Result<Statement, StatementError> {
    let mut lines = text.lines().enumerate();
    let mut columns: Vec<String> = Vec::new();
    for (_, line) in lines.by_ref() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        columns = line.split(',').map(|c| value(c).to_string()).collect();
        break;
    }
    if columns.is_empty() {
        return Err(StatementError::malformed("the bill detail has no header"));
    }
    let mut at: HashMap<&str, usize> = HashMap::new();
    for (i, c) in columns.iter().enumerate() {
        if !KNOWN.contains(&c.as_str()) {
            return Err(StatementError::malformed(format!(
                "unknown column {c:?} in the bill header"
            )));
        }
        if at.insert(c.as_str(), i).is_some() {
            return Err(StatementError::malformed(format!(
                "column {c:?} appears twice"
            )));
        }
    }
    if let Some(missing) = REQUIRED.iter().find(|c| !at.contains_key(*c)) {
        return Err(StatementError::malformed(format!(
            "the bill has no {missing:?} column"
        )));
    }
    let cny = Currency::parse("CNY").ok_or_else(|| StatementError::malformed("CNY"))?;
    let mut rows = Vec::new();
    let mut ended = false;
    let (mut trades, mut refunds) = (0usize, 0usize);
    let (mut trade_count, mut refund_count) = (None, None);
    for (n, line) in lines {
        let line_no = n + 1;
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') {
            ended |= line.contains(END_MARKER);
            trade_count = trade_count.or(count_after(line, TRADE_COUNT));
            refund_count = refund_count.or(count_after(line, REFUND_COUNT));
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        if ended {
            return Err(StatementError::malformed(format!(
                "line {line_no}: a row after the end of the list"
            )));
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
        let kind = match get(BIZ_TYPE) {
            "交易" => {
                trades += 1;
                RowKind::Payment
            }
            "退款" => {
                refunds += 1;
                RowKind::Refund
            }
            other => {
                return Err(StatementError::malformed(format!(
                    "line {line_no}: unknown business type {other:?}"
                )));
            }
        };
        let amount_minor = match kind {
            RowKind::Payment => {
                decimal_minor(get(ORDER_AMOUNT), 2).ok_or_else(|| bad(ORDER_AMOUNT))?
            }
            // The merchant's side of a refund is negative: what went back.
            RowKind::Refund => decimal_minor(get(RECEIVED), 2)
                .ok_or_else(|| bad(RECEIVED))?
                .abs(),
        };
        // Alipay writes the fee as a deduction (negative) and gives it back on a
        // refund (positive); payd sums what was charged.
        let fee = decimal_minor(get(SERVICE_FEE), 2).ok_or_else(|| bad(SERVICE_FEE))?;
        let at_time = wall_time(get(FINISHED), 8).ok_or_else(|| bad(FINISHED))?;
        let (order_no, transaction_id) = (get(OUT_TRADE_NO), get(TRADE_NO));
        if order_no.is_empty() || transaction_id.is_empty() {
            return Err(StatementError::malformed(format!(
                "line {line_no}: a row without its order number or trade number"
            )));
        }
        let refund_no = match kind {
            RowKind::Payment => None,
            RowKind::Refund => Some(get(REQUEST_NO).to_string()).filter(|s| !s.is_empty()),
        };
        if kind == RowKind::Refund && refund_no.is_none() {
            return Err(bad(REQUEST_NO));
        }
        rows.push(StatementRow {
            kind,
            order_no: order_no.to_string(),
            transaction_id: transaction_id.to_string(),
            refund_no,
            provider_refund_id: None,
            amount_minor,
            currency: cny.clone(),
            fee_currency: cny.clone(),
            fee_milli_minor: -fee * 1000,
            at: at_time,
            raw: line.to_string(),
        });
    }
    if !ended {
        return Err(StatementError::malformed(
            "the bill detail ends without its end marker (truncated?)",
        ));
    }
    if trade_count != Some(trades) || refund_count != Some(refunds) {
        return Err(StatementError::malformed(format!(
            "the trailer counts {trade_count:?} trades and {refund_count:?} refunds, the bill lists {trades} and {refunds}"
        )));
    }
    Ok(Statement { rows })
}

/// Test and sandbox helper: the detail file of `rows` as Alipay writes it (UTF-8;
/// encode with GBK for the zip).
pub fn detail_text(account: &str, date: &str, rows: &[String]) -> String {
    let trades = rows.iter().filter(|r| r.contains("交易\t")).count();
    let refunds = rows.iter().filter(|r| r.contains("退款\t")).count();
    let mut s = format!(
        "#支付宝业务明细查询\r\n#账号：[{account}]\r\n#起始日期：[{date} 00:00:00]\r\n#-----------------------------------------业务明细列表----------------------------------------\r\n{}\r\n",
        KNOWN.join(",")
    );
    for r in rows {
        s.push_str(r);
        s.push_str("\r\n");
    }
    s.push_str("#-----------------------------------------业务明细列表结束------------------------------------\r\n");
    s.push_str(&format!(
        "#交易合计：{trades}笔\r\n#退款合计：{refunds}笔\r\n"
    ));
    s
}

/// Test and sandbox helper: one detail row. `refund_no`: a refund row of `amount`.
pub fn detail_row(
    trade_no: &str,
    order_no: &str,
    finished: &str,
    amount: i64,
    refund_no: Option<&str>,
) -> String {
    let yuan = |fen: i64| {
        format!(
            "{}{}.{:02}",
            if fen < 0 { "-" } else { "" },
            fen.abs() / 100,
            fen.abs() % 100
        )
    };
    // 0.6 %, to the fen, charged on trades and given back on refunds.
    let fee = (amount * 6 + 500) / 1000;
    let (biz, received, fee) = match refund_no {
        None => ("交易", amount, -fee),
        Some(_) => ("退款", -amount, fee),
    };
    let fields: Vec<String> = vec![
        trade_no.into(),
        order_no.into(),
        biz.into(),
        "payd".into(),
        finished.into(),
        finished.into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        "buyer***@example.com".into(),
        yuan(amount),
        yuan(received),
        "0.00".into(),
        "0.00".into(),
        "0.00".into(),
        "0.00".into(),
        "0.00".into(),
        String::new(),
        "0.00".into(),
        "0.00".into(),
        refund_no.unwrap_or_default().into(),
        yuan(fee),
        "0.00".into(),
        String::new(),
    ];
    fields
        .iter()
        .map(|f| format!("{f}\t"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Test and sandbox helper: the zip Alipay serves, GBK inside.
pub fn bill_zip(account: &str, date: &str, detail: &str) -> Vec<u8> {
    use std::io::Write;
    let compact = date.replace('-', "");
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let summary = format!(
        "#支付宝业务汇总查询\r\n#账号：[{account}]\r\n门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,服务费（元）,实收净额（元）\r\n#导出时间：[{date}]\r\n"
    );
    let files = [
        (
            format!("{account}_{compact}_业务明细.csv"),
            detail.to_string(),
        ),
        (format!("{account}_{compact}_业务明细(汇总).csv"), summary),
    ];
    for (name, text) in files {
        let _ = w.start_file(name, options);
        let _ = w.write_all(&encoding_rs::GBK.encode(&text).0);
    }
    w.finish().map(|c| c.into_inner()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let rows = [
            detail_row("2026112222001", "PD1", "2026-11-22 20:00:00", 990, None),
            detail_row(
                "2026112222001",
                "PD1",
                "2026-11-22 21:00:00",
                100,
                Some("RF1"),
            ),
        ];
        bill_zip(
            "2088000000000001",
            "2026-11-22",
            &detail_text("2088000000000001", "2026-11-22", &rows),
        )
    }

    #[test]
    fn the_zip_of_gbk_csv_files_is_read_with_refunds_and_fees() {
        let s = parse_bill_zip(&sample()).unwrap();
        assert_eq!(s.rows.len(), 2);
        let (p, r) = (&s.rows[0], &s.rows[1]);
        assert_eq!(
            (
                p.kind,
                p.order_no.as_str(),
                p.transaction_id.as_str(),
                p.amount_minor
            ),
            (RowKind::Payment, "PD1", "2026112222001", 990)
        );
        assert_eq!(p.fee_milli_minor, 6000);
        assert_eq!(
            (
                r.kind,
                r.refund_no.as_deref(),
                r.amount_minor,
                r.fee_milli_minor
            ),
            (RowKind::Refund, Some("RF1"), 100, -1000)
        );
        assert_eq!(p.at, wall_time("2026-11-22 12:00:00", 0).unwrap());
        assert!(p.raw.starts_with("2026112222001\t,PD1\t,交易\t"));
    }

    #[test]
    fn a_cut_zip_utf8_text_or_a_reshaped_detail_is_refused_with_its_reason() {
        let zip = sample();
        let cut = parse_bill_zip(&zip[..zip.len() - 30]).unwrap_err();
        assert!(cut.to_string().contains("does not open"), "{cut}");
        // A byte flipped inside the first entry's compressed data: the inflate or
        // the CRC-32 check refuses it.
        let mut flipped = zip.clone();
        let name_len = u16::from_le_bytes([zip[26], zip[27]]) as usize;
        let extra_len = u16::from_le_bytes([zip[28], zip[29]]) as usize;
        flipped[30 + name_len + extra_len + 20] ^= 0x55;
        let bad = parse_bill_zip(&flipped).unwrap_err();
        assert!(bad.to_string().contains("bill zip entry"), "{bad}");
        let rows = [detail_row("T1", "PD1", "2026-11-22 20:00:00", 990, None)];
        let text = detail_text("A", "2026-11-22", &rows);
        assert!(
            decode_gbk(text.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
        assert!(
            parse_detail(&text.replace("#交易合计：1笔", "#交易合计：2笔"))
                .unwrap_err()
                .to_string()
                .contains("trailer")
        );
        assert!(
            parse_detail(&text.replace("分润（元）", "花呗分期"))
                .unwrap_err()
                .to_string()
                .contains("unknown column")
        );
        let no_end = text.replace(END_MARKER, "");
        assert!(
            parse_detail(&no_end)
                .unwrap_err()
                .to_string()
                .contains("end marker")
        );
    }
}
