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
