//! `POST /publish` keeps `data` as the JSON text it arrived as ([`RawData`]): the validation the
//! request already goes through notes whether that text is compact, so that the hub copies it
//! into the frame instead of scanning it (issue 16 item 5).

use switchboard::{Payload, RawData};
use switchboard_server::http::PublishRequest;

fn raw(body: &str) -> RawData {
    let request: PublishRequest = serde_json::from_str(body).expect("a publish request");
    match request.envelope().expect("a valid envelope").data {
        Payload::Raw(raw) => raw,
        other => panic!("data kept as {other:?}, not as its text"),
    }
}

#[test]
fn compact_data_is_found_compact_by_the_request_validation() {
    let data = r#"{"tool":{"args":{"q":"a b","api_key":"k"}},"n":[1,2.5,null]}"#;
    let compact =
        raw(&format!(r#"{{"tenant":"t","user":"u","kind":"tool_executing","data":{data}}}"#));
    assert_eq!(compact.as_str(), data);
    assert!(compact.is_compact());
    // Whitespace around the value is the request's, not the data's.
    let spaced_around =
        raw(&format!("{{\"tenant\":\"t\",\"user\":\"u\",\"kind\":\"k\",\"data\" :\n {data} \n}}"));
    assert_eq!(spaced_around.as_str(), data);
    assert!(spaced_around.is_compact());
    // Whitespace inside it is scanned away when the frame is written.
    let spaced = raw(r#"{"tenant":"t","user":"u","kind":"k","data":{"a": [1, 2]}}"#);
    assert!(!spaced.is_compact());
}

/// `data` that a JSON reader could not take back is refused with the request, though the request
/// itself parses: a `\u` escape of half a surrogate pair (serde_json's raw value takes it, its
/// reading of a string does not), anywhere in the data. A whole pair passes.
#[test]
fn data_with_a_lone_surrogate_escape_is_refused() {
    let request = |data: &str| {
        let body = format!(r#"{{"tenant":"t","user":"u","kind":"k","data":{data}}}"#);
        serde_json::from_str::<PublishRequest>(&body).expect("the request parses").envelope()
    };
    for data in [r#""\ud800""#, r#"{"a":["x\udc00"]}"#, r#"{"\ud83d":1}"#] {
        let refused = request(data).err().unwrap_or_else(|| panic!("{data} was taken"));
        assert!(refused.contains("not valid JSON"), "{data}: {refused}");
    }
    let pair = request(r#"{"smile":"\ud83d\ude00"}"#).expect("a whole pair is a character");
    let Payload::Raw(raw) = pair.data else { panic!("data kept as its text") };
    assert_eq!(raw.as_str(), r#"{"smile":"\ud83d\ude00"}"#);
}
