//! WeChat Pay API v2's flat XML: `<xml><key>value</key>…</xml>`, one level deep.
//!
//! Pure functions between that wire form and a `BTreeMap` of fields, which is
//! what the v2 `sign` is computed over. The parser is deliberately strict and
//! small: it reads untrusted callback bodies, so it refuses DTDs (no entity
//! expansion, no XXE), nesting, duplicate keys, unknown entities, trailing
//! content and oversized input, rather than guessing what a sender meant.

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::escape::resolve_xml_entity;
use quick_xml::events::{BytesRef, Event};

/// Largest document [`parse_xml`] accepts.
pub const MAX_XML_BYTES: usize = 64 * 1024;

/// The name of the root element.
const ROOT: &str = "xml";

/// Why a v2 XML document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("XML document exceeds {MAX_XML_BYTES} bytes")]
    TooLarge,
    #[error("XML document is not valid UTF-8")]
    InvalidUtf8,
    #[error("DOCTYPE / entity declarations are not allowed")]
    DoctypeForbidden,
    #[error("root element must be <xml>, found <{0}>")]
    BadRoot(String),
    #[error("no <xml> root element")]
    MissingRoot,
    #[error("element <{0}> is nested deeper than one level")]
    TooDeep(String),
    #[error("duplicate field <{0}>")]
    DuplicateKey(String),
    #[error("unexpected text outside a field")]
    UnexpectedText,
    #[error("unknown entity reference &{0};")]
    UnknownEntity(String),
    #[error("content after the </xml> root")]
    TrailingContent,
    #[error("malformed XML: {0}")]
    Malformed(String),
}

/// Serializes fields as `<xml><k><![CDATA[v]]></k>…</xml>` in map order.
///
/// Keys must be XML names (WeChat's are `[a-z_]+`). A value containing `]]>`
/// is split across two CDATA sections so it survives intact.
pub fn to_xml(params: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(
        16 + params
            .iter()
            .map(|(k, v)| 2 * k.len() + v.len() + 17)
            .sum::<usize>(),
    );
    out.push_str("<xml>");
    for (k, v) in params {
        debug_assert!(is_xml_name(k), "not an XML element name: {k:?}");
        out.push('<');
        out.push_str(k);
        out.push_str("><![CDATA[");
        out.push_str(&v.replace("]]>", "]]]]><![CDATA[>"));
        out.push_str("]]></");
        out.push_str(k);
        out.push('>');
    }
    out.push_str("</xml>");
    out
}

/// A conservative XML name check: ASCII letter or `_` first, then letters,
/// digits, `_`, `-`, `.`.
fn is_xml_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Parses a flat `<xml>` document into its fields.
///
/// Values may be CDATA, escaped text (the five predefined entities and
/// character references), or a mix; they are kept exactly, without trimming.
/// `<k/>` yields an empty value. Whitespace between fields, comments and an
/// XML declaration are allowed. Rejected: input over [`MAX_XML_BYTES`],
/// invalid UTF-8, any DOCTYPE (so no entity declarations — no XXE), a root
/// other than `<xml>`, elements nested inside a field, duplicate fields, text
/// directly inside `<xml>`, unknown entities, and anything after `</xml>`
/// other than whitespace and comments.
pub fn parse_xml(input: &[u8]) -> Result<BTreeMap<String, String>, XmlError> {
    if input.len() > MAX_XML_BYTES {
        return Err(XmlError::TooLarge);
    }
    let text = std::str::from_utf8(input).map_err(|_| XmlError::InvalidUtf8)?;
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.expand_empty_elements = false;
    config.allow_dangling_amp = false;
    config.trim_text(false);

    enum State {
        BeforeRoot,
        InRoot,
        InField { name: String, value: String },
        AfterRoot,
    }

    let mut fields = BTreeMap::new();
    let mut state = State::BeforeRoot;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Malformed(e.to_string()))?;
        // A DOCTYPE is refused wherever it appears.
        if matches!(event, Event::DocType(_)) {
            return Err(XmlError::DoctypeForbidden);
        }
        state = match state {
            State::BeforeRoot => match event {
                Event::Decl(_) | Event::Comment(_) => State::BeforeRoot,
                Event::Text(t) if is_blank(&t) => State::BeforeRoot,
                Event::Start(e) => {
                    let name = element_name(e.name().as_ref())?;
                    if name != ROOT {
                        return Err(XmlError::BadRoot(name));
                    }
                    State::InRoot
                }
                Event::Empty(e) => {
                    let name = element_name(e.name().as_ref())?;
                    if name != ROOT {
                        return Err(XmlError::BadRoot(name));
                    }
                    State::AfterRoot
                }
                Event::Eof => return Err(XmlError::MissingRoot),
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => {
                    return Err(XmlError::UnexpectedText);
                }
                Event::PI(_) => {
                    return Err(XmlError::Malformed(
                        "processing instructions are not allowed".into(),
                    ));
                }
                Event::End(_) | Event::DocType(_) => {
                    return Err(XmlError::Malformed("unexpected end tag".into()));
                }
            },
            State::InRoot => match event {
                Event::Comment(_) => State::InRoot,
                Event::Text(t) if is_blank(&t) => State::InRoot,
                Event::Start(e) => State::InField {
                    name: element_name(e.name().as_ref())?,
                    value: String::new(),
                },
                Event::Empty(e) => {
                    let name = element_name(e.name().as_ref())?;
                    insert(&mut fields, name, String::new())?;
                    State::InRoot
                }
                // check_end_names guarantees this closes <xml>.
                Event::End(_) => State::AfterRoot,
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => {
                    return Err(XmlError::UnexpectedText);
                }
                Event::Eof => return Err(XmlError::Malformed("unclosed <xml>".into())),
                Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {
                    return Err(XmlError::Malformed(
                        "declaration or processing instruction inside <xml>".into(),
                    ));
                }
            },
            State::InField { name, mut value } => match event {
                Event::Text(t) => {
                    let s = t
                        .xml10_content()
                        .map_err(|e| XmlError::Malformed(e.to_string()))?;
                    value.push_str(&s);
                    State::InField { name, value }
                }
                Event::CData(c) => {
                    let s = c
                        .xml10_content()
                        .map_err(|e| XmlError::Malformed(e.to_string()))?;
                    value.push_str(&s);
                    State::InField { name, value }
                }
                Event::GeneralRef(r) => {
                    resolve_reference(&r, &mut value)?;
                    State::InField { name, value }
                }
                Event::Comment(_) => State::InField { name, value },
                Event::Start(e) | Event::Empty(e) => {
                    return Err(XmlError::TooDeep(element_name(e.name().as_ref())?));
                }
                // check_end_names guarantees this closes the field.
                Event::End(_) => {
                    insert(&mut fields, name, value)?;
                    State::InRoot
                }
                Event::Eof => {
                    return Err(XmlError::Malformed(format!("unclosed <{name}>")));
                }
                Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {
                    return Err(XmlError::Malformed(
                        "declaration or processing instruction inside a field".into(),
                    ));
                }
            },
            State::AfterRoot => match event {
                Event::Eof => return Ok(fields),
                Event::Comment(_) => State::AfterRoot,
                Event::Text(t) if is_blank(&t) => State::AfterRoot,
                _ => return Err(XmlError::TrailingContent),
            },
        };
    }
}

fn insert(
    fields: &mut BTreeMap<String, String>,
    name: String,
    value: String,
) -> Result<(), XmlError> {
    if fields.contains_key(&name) {
        return Err(XmlError::DuplicateKey(name));
    }
    fields.insert(name, value);
    Ok(())
}

/// An element's name, refused unless it is an XML name: quick-xml reads any bytes up
/// to `>` or a space as the name (`<transaction]id>`), and a field name payd could not
/// write back with [`to_xml`] is not one WeChat sends (found by the
/// `wechat_v2_signed` fuzz target).
fn element_name(raw: &[u8]) -> Result<String, XmlError> {
    let name = std::str::from_utf8(raw).map_err(|_| XmlError::InvalidUtf8)?;
    if !is_xml_name(name) {
        return Err(XmlError::Malformed(format!(
            "element name {name:?} is not an XML name"
        )));
    }
    Ok(name.to_owned())
}

fn is_blank(text: &[u8]) -> bool {
    text.iter().all(u8::is_ascii_whitespace)
}

/// Appends the character a `&…;` reference stands for: a character reference
/// or one of the five predefined entities. Anything else is an error (there is
/// no DTD to declare it in).
fn resolve_reference(r: &BytesRef<'_>, value: &mut String) -> Result<(), XmlError> {
    if let Some(ch) = r
        .resolve_char_ref()
        .map_err(|e| XmlError::Malformed(e.to_string()))?
    {
        value.push(ch);
        return Ok(());
    }
    let name = r.decode().map_err(|e| XmlError::Malformed(e.to_string()))?;
    match resolve_xml_entity(&name) {
        Some(s) => {
            value.push_str(s);
            Ok(())
        }
        None => Err(XmlError::UnknownEntity(name.into_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const V2: &str = include_str!("../../../tests/fixtures/vectors/wechatpay_v2.json");

    fn v2() -> Value {
        serde_json::from_str(V2).unwrap()
    }
    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn unifiedorder_vector_xml_parses_to_params() {
        let v = v2();
        let uo = &v["unifiedorder_native_request"];
        let parsed = parse_xml(uo["xml"].as_str().unwrap().as_bytes()).unwrap();
        let mut expected: BTreeMap<String, String> = uo["params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        expected.insert("sign".into(), uo["sign"].as_str().unwrap().into());
        assert_eq!(parsed, expected);
        assert_eq!(parse_xml(to_xml(&parsed).as_bytes()).unwrap(), parsed);
    }

    #[test]
    fn element_names_that_are_not_xml_names_are_refused() {
        // The fuzz crasher (corpus/wechat_v2_signed/crash-element-name-with-bracket):
        // accepted, it could not be written back by `to_xml`.
        for doc in [
            "<xml><transaction]id>1</transaction]id></xml>",
            "<xml><1a>x</1a></xml>",
            "<xml><a/b>x</a/b></xml>",
        ] {
            assert!(
                matches!(parse_xml(doc.as_bytes()), Err(XmlError::Malformed(_))),
                "{doc}"
            );
        }
        assert_eq!(
            parse_xml(b"<xml><out_trade_no>PD1</out_trade_no></xml>").unwrap(),
            map(&[("out_trade_no", "PD1")])
        );
    }

    #[test]
    fn payment_notify_vector_xml_round_trips() {
        let v = v2();
        let n = &v["payment_notify"];
        let parsed = parse_xml(n["xml"].as_str().unwrap().as_bytes()).unwrap();
        assert_eq!(parsed.len(), 16);
        assert_eq!(parsed["total_fee"], "100");
        assert_eq!(parsed["sign"], n["sign"].as_str().unwrap());
        assert_eq!(parse_xml(to_xml(&parsed).as_bytes()).unwrap(), parsed);
    }

    #[test]
    fn success_reply_matches_vector() {
        let v = v2();
        let reply = map(&[("return_code", "SUCCESS"), ("return_msg", "OK")]);
        assert_eq!(
            to_xml(&reply),
            v["payment_notify"]["reply_ok"].as_str().unwrap()
        );
        assert_eq!(
            parse_xml(v["payment_notify"]["reply_ok"].as_str().unwrap().as_bytes()).unwrap(),
            reply
        );
    }

    #[test]
    fn cdata_terminator_in_value_survives() {
        let m = map(&[
            ("a", "x]]>y"),
            ("b", "]]>]]>"),
            ("c", "<tag> & \"q\" 'a' 中文"),
            ("d", ""),
            ("e", " padded \n"),
        ]);
        let xml = to_xml(&m);
        assert_eq!(parse_xml(xml.as_bytes()).unwrap(), m);
    }

    #[test]
    fn escaped_text_mixed_content_and_decl() {
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- hi -->\n<xml>\n  \
                   <a>1 &lt; 2 &amp;&amp; &#x4E2D;&#25991;</a>\n  <b/>\n  \
                   <c>x<![CDATA[<y>]]>z</c><d></d>\n</xml>\n<!-- bye -->\n";
        assert_eq!(
            parse_xml(xml.as_bytes()).unwrap(),
            map(&[("a", "1 < 2 && 中文"), ("b", ""), ("c", "x<y>z"), ("d", "")])
        );
        assert_eq!(parse_xml(b"<xml/>").unwrap(), BTreeMap::new());
        assert_eq!(parse_xml(b"<xml></xml>").unwrap(), BTreeMap::new());
    }

    #[test]
    fn rejects_doctype_and_entities() {
        let xxe = b"<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]><xml><a>&xxe;</a></xml>";
        assert_eq!(parse_xml(xxe), Err(XmlError::DoctypeForbidden));
        assert_eq!(
            parse_xml(b"<!DOCTYPE xml><xml></xml>"),
            Err(XmlError::DoctypeForbidden)
        );
        assert_eq!(
            parse_xml(b"<xml><a>&xxe;</a></xml>"),
            Err(XmlError::UnknownEntity("xxe".into()))
        );
        assert!(matches!(
            parse_xml(b"<xml><a>a & b</a></xml>"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_nesting() {
        assert_eq!(
            parse_xml(b"<xml><a><b>1</b></a></xml>"),
            Err(XmlError::TooDeep("b".into()))
        );
        assert_eq!(
            parse_xml(b"<xml><a>1<b/></a></xml>"),
            Err(XmlError::TooDeep("b".into()))
        );
    }

    #[test]
    fn rejects_duplicates() {
        assert_eq!(
            parse_xml(b"<xml><a>1</a><a>2</a></xml>"),
            Err(XmlError::DuplicateKey("a".into()))
        );
        assert_eq!(
            parse_xml(b"<xml><a>1</a><a/></xml>"),
            Err(XmlError::DuplicateKey("a".into()))
        );
    }

    #[test]
    fn rejects_wrong_root_and_structure() {
        assert_eq!(
            parse_xml(b"<root><a>1</a></root>"),
            Err(XmlError::BadRoot("root".into()))
        );
        assert_eq!(
            parse_xml(b"<XML></XML>"),
            Err(XmlError::BadRoot("XML".into()))
        );
        assert_eq!(parse_xml(b""), Err(XmlError::MissingRoot));
        assert_eq!(parse_xml(b"  \n"), Err(XmlError::MissingRoot));
        assert_eq!(
            parse_xml(b"garbage<xml></xml>"),
            Err(XmlError::UnexpectedText)
        );
        assert_eq!(
            parse_xml(b"<xml>text<a>1</a></xml>"),
            Err(XmlError::UnexpectedText)
        );
        assert_eq!(
            parse_xml(b"<xml><a>1</a></xml><xml></xml>"),
            Err(XmlError::TrailingContent)
        );
        assert_eq!(
            parse_xml(b"<xml><a>1</a></xml>junk"),
            Err(XmlError::TrailingContent)
        );
        assert!(matches!(
            parse_xml(b"<xml><a>1</b></xml>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            parse_xml(b"<xml><a>1</a>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            parse_xml(b"<xml><a>1"),
            Err(XmlError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_oversize_and_bad_utf8() {
        let mut big = String::from("<xml><a>");
        big.push_str(&"x".repeat(MAX_XML_BYTES));
        big.push_str("</a></xml>");
        assert_eq!(parse_xml(big.as_bytes()), Err(XmlError::TooLarge));
        // Exactly at the limit is fine.
        let filler = MAX_XML_BYTES - "<xml><a></a></xml>".len();
        let at_limit = format!("<xml><a>{}</a></xml>", "y".repeat(filler));
        assert_eq!(at_limit.len(), MAX_XML_BYTES);
        assert_eq!(parse_xml(at_limit.as_bytes()).unwrap()["a"].len(), filler);
        assert_eq!(
            parse_xml(b"<xml><a>\xff\xfe</a></xml>"),
            Err(XmlError::InvalidUtf8)
        );
    }
}
