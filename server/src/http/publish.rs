//! `POST /publish`: the handler, a batch's parsing, and each envelope's answer written
//! straight to JSON.

use super::*;

/// `POST /publish`: any backend publishes an event to a user, a thread, a room or a tenant.
///
/// The admin key is checked before the body is read, so that a caller without it cannot make
/// the server buffer anything; the body is then read within the route's [`PublishBody`] bounds.
pub(super) async fn publish(State(app): State<AppState>, request: Request) -> Response {
    let c = &app.counters;
    if !bearer(request.headers()).is_some_and(|key| app.admin_key.matches(key)) {
        c.publish_unauthorized.fetch_add(1, Ordering::Relaxed);
        let mut res = error(StatusCode::UNAUTHORIZED, "unauthorized", "admin key required");
        res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    }
    let rejected = |status, code, message: String| {
        c.publish_rejected.fetch_add(1, Ordering::Relaxed);
        error(status, code, message)
    };
    let bounds = app.publish_body;
    let too_large = || {
        c.publish_too_large.fetch_add(1, Ordering::Relaxed);
        let why = format!("the body is over {} bytes", bounds.max_bytes);
        let mut res = error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", why);
        // The rest of the body is not read: the connection cannot carry another request.
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        res
    };
    // A body announced as too large is refused before any of it is read.
    let announced = request.headers().get(header::CONTENT_LENGTH);
    let announced = announced.and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > bounds.max_bytes as u64) {
        return too_large();
    }
    // `Bytes` honours the route's `DefaultBodyLimit`: 413 over it, without reading further.
    let body = match tokio::time::timeout(bounds.timeout, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large();
        }
        Ok(Err(rejection)) => {
            return rejected(rejection.status(), "bad_body", rejection.body_text());
        }
        Err(_) => {
            c.publish_body_timeouts.fetch_add(1, Ordering::Relaxed);
            let why = format!("the body did not arrive within {} ms", bounds.timeout.as_millis());
            let mut res = error(StatusCode::REQUEST_TIMEOUT, "body_timeout", why);
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return res;
        }
    };
    // A JSON array is a batch: each envelope published in order, each with its own answer.
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if batch {
        // Each entry kept as text and parsed on its own, so that one bad entry is refused alone.
        let requests: Vec<&RawValue> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return rejected(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
        };
        if requests.is_empty() || requests.len() > MAX_BATCH {
            let why = format!("a batch holds 1 to {MAX_BATCH} envelopes");
            return rejected(StatusCode::BAD_REQUEST, "bad_batch", why);
        }
        // Parsed one by one (a bad entry is refused alone), then published as one command: the
        // hub takes them in this order in one turn, so what they queue for one connection goes
        // out in one write, and in cluster mode their appends share pipelines.
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(requests.len());
        let mut prepared = Vec::with_capacity(requests.len());
        for request in requests {
            let parsed = serde_json::from_str::<PublishRequest>(request.get())
                .map_err(|e| {
                    Outcome::refused(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
                })
                .and_then(prepare);
            match parsed {
                Ok(entry) => {
                    prepared.push(entry);
                    outcomes.push(None);
                }
                Err(refused) => outcomes.push(Some(refused)),
            }
        }
        let excluded = resolve_excludes(&app, &mut prepared).await;
        let envelopes = prepared.into_iter().map(|(envelope, _)| envelope).collect();
        let mut results = app.handle.publish_batch(envelopes).await.into_iter().zip(excluded);
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|slot| {
                slot.unwrap_or_else(|| {
                    let (result, excluded) = results.next().expect("one answer per envelope");
                    outcome(result, excluded)
                })
            })
            .collect();
        // The answer is written straight out: no tree of `Value`s per envelope.
        let mut out = Vec::with_capacity(16 + outcomes.len() * 96);
        out.extend_from_slice(b"{\"results\":[");
        for (i, outcome) in outcomes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            outcome.count(c);
            outcome.write_json(&mut out, true);
        }
        out.extend_from_slice(b"]}");
        return json_response(StatusCode::OK, out);
    }
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return rejected(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let outcome = publish_one(&app, request).await;
    outcome.count(c);
    outcome.into_response()
}

/// A response with `body`, JSON text, as it is.
fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
        .into_response()
}

/// The most envelopes one `POST /publish` batch may hold.
pub const MAX_BATCH: usize = 100;

/// What became of one envelope of `POST /publish`: the status and body its answer carries (alone,
/// or as one entry of a batch's `results`).
struct Outcome {
    status: StatusCode,
    answer: Answer,
    /// Seconds for `Retry-After` (the bus was down).
    retry_after: Option<u64>,
    /// Which `switchboard_http_publish_requests_total` outcome it counts as.
    counted: PublishCount,
}

/// The body of one envelope's answer, written as JSON by [`Outcome::write_json`] (keys in
/// alphabetical order, as a `serde_json::Value` object would have them).
enum Answer {
    /// Accepted: where it went, and (on a single node) to whom.
    Published {
        /// The stream and position it took, if it was logged.
        position: Option<(String, StreamPos)>,
        /// Whether its idempotency key had been seen.
        duplicate: bool,
        /// Single node: delivered, skipped, closed, held, and whether it was buffered. Clustered:
        /// `None` (delivery happens on every node when the message comes back over the bus, so
        /// this node cannot count it).
        counts: Option<([usize; 4], bool)>,
        /// Whether `exclude` named an open connection (`None`: no `exclude` given).
        excluded: Option<bool>,
    },
    /// Refused or failed.
    Error { code: &'static str, message: String },
}

#[derive(Clone, Copy)]
enum PublishCount {
    Accepted,
    Rejected,
    Unavailable,
}

impl Outcome {
    fn refused(status: StatusCode, code: &'static str, message: String) -> Self {
        Outcome {
            status,
            answer: Answer::Error { code, message },
            retry_after: None,
            counted: PublishCount::Rejected,
        }
    }

    fn count(&self, c: &HttpCounters) {
        let counter = match self.counted {
            PublishCount::Accepted => &c.publish_accepted,
            PublishCount::Rejected => &c.publish_rejected,
            PublishCount::Unavailable => &c.publish_unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the answer's JSON object to `out`, with the `status` field a batch's entries
    /// carry when `with_status`.
    fn write_json(&self, out: &mut Vec<u8>, with_status: bool) {
        use std::io::Write as _;
        // Writing into a `Vec` cannot fail.
        let status = self.status.as_u16();
        match &self.answer {
            Answer::Published { position, duplicate, counts, excluded } => {
                out.push(b'{');
                if let Some(([delivered, _, closed, _], buffered)) = counts {
                    let _ = write!(
                        out,
                        "\"buffered\":{buffered},\"closed\":{closed},\"delivered\":{delivered},"
                    );
                }
                let _ = write!(out, "\"duplicate\":{duplicate},");
                write_opt(out, "epoch", position.as_ref().map(|p| p.1.epoch));
                if let Some(excluded) = excluded {
                    let _ = write!(out, ",\"excluded\":{excluded}");
                }
                if let Some(([_, _, _, held], _)) = counts {
                    let _ = write!(out, ",\"held\":{held}");
                }
                out.push(b',');
                write_opt(out, "seq", position.as_ref().map(|p| p.1.seq));
                if let Some(([_, skipped, _, _], _)) = counts {
                    let _ = write!(out, ",\"skipped\":{skipped}");
                }
                if with_status {
                    let _ = write!(out, ",\"status\":{status}");
                }
                out.extend_from_slice(b",\"stream\":");
                match position {
                    Some((name, _)) => write_string(out, name),
                    None => out.extend_from_slice(b"null"),
                }
                out.push(b'}');
            }
            Answer::Error { code, message } => {
                out.extend_from_slice(b"{\"error\":");
                write_string(out, code);
                out.extend_from_slice(b",\"message\":");
                write_string(out, message);
                if with_status {
                    let _ = write!(out, ",\"status\":{status}");
                }
                out.push(b'}');
            }
        }
    }

    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(160);
        self.write_json(&mut body, false);
        let mut res = json_response(self.status, body);
        if let Some(secs) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// Writes `"key":n`, or `"key":null`.
fn write_opt(out: &mut Vec<u8>, key: &str, n: Option<u64>) {
    use std::io::Write as _;
    let _ = match n {
        Some(n) => write!(out, "\"{key}\":{n}"),
        None => write!(out, "\"{key}\":null"),
    };
}

/// Writes `text` as a JSON string (serializing a `str` into a `Vec` cannot fail).
fn write_string(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(&mut *out, text);
}

/// One envelope of `POST /publish` ready for the hub, with the connection its `exclude` names
/// (as the client knows it), or the answer refusing it.
fn prepare(mut request: PublishRequest) -> Result<(Envelope, Option<String>), Outcome> {
    let exclude = request.exclude.take();
    match request.envelope() {
        Ok(envelope) => Ok((envelope, exclude)),
        Err(why) => Err(Outcome::refused(StatusCode::BAD_REQUEST, "bad_target", why.into())),
    }
}

/// Resolves the `exclude` of each prepared envelope on the hub (one call for all of them): only
/// an id of an open connection excludes anyone. Returns, per envelope, whether it named one
/// (`None`: no `exclude` given).
async fn resolve_excludes(
    app: &AppState,
    prepared: &mut [(Envelope, Option<String>)],
) -> Vec<Option<bool>> {
    let wires: Vec<Option<String>> = prepared.iter_mut().map(|(_, wire)| wire.take()).collect();
    if wires.iter().all(Option::is_none) {
        return vec![None; prepared.len()];
    }
    let asked: Vec<bool> = wires.iter().map(Option::is_some).collect();
    let found = app
        .handle
        .with_hub(move |hub, _| {
            wires.iter().map(|w| w.as_deref().and_then(|w| hub.find_connection(w))).collect()
        })
        .await
        .unwrap_or_else(|| vec![None; prepared.len()]);
    prepared
        .iter_mut()
        .zip(found)
        .zip(asked)
        .map(|(((envelope, _), conn), asked)| {
            envelope.exclude = conn;
            asked.then_some(conn.is_some())
        })
        .collect()
}

/// Publishes one envelope of `POST /publish`.
async fn publish_one(app: &AppState, request: PublishRequest) -> Outcome {
    let mut prepared = match prepare(request) {
        Ok(entry) => [entry],
        Err(refused) => return refused,
    };
    let excluded = resolve_excludes(app, &mut prepared).await.pop().flatten();
    let [(envelope, _)] = prepared;
    outcome(app.handle.publish_receipt(envelope).await, excluded)
}

/// The answer to one envelope from what the hub (or the bus) made of it.
fn outcome(result: Result<Receipt, PublishFailed>, excluded: Option<bool>) -> Outcome {
    match result {
        Ok(Receipt { published, duplicate }) => {
            let position = published.position.as_ref().map(|(name, pos)| (name.to_string(), *pos));
            let counts = published.op.is_none().then_some((
                [published.delivered, published.skipped, published.closed, published.held],
                published.buffered,
            ));
            Outcome {
                status: StatusCode::OK,
                answer: Answer::Published { position, duplicate, counts, excluded },
                retry_after: None,
                counted: PublishCount::Accepted,
            }
        }
        Err(failed @ (PublishFailed::Bus(_) | PublishFailed::Hub(PublishError::Bus(_)))) => {
            let retry = failed.is_retryable();
            let why = match &failed {
                PublishFailed::Bus(f) | PublishFailed::Hub(PublishError::Bus(f)) => f.to_string(),
                _ => "the bus failed".to_owned(),
            };
            let status =
                if retry { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::BAD_GATEWAY };
            Outcome {
                status,
                answer: Answer::Error { code: "unavailable", message: why },
                retry_after: retry.then_some(RETRY_BUS_SECS),
                counted: PublishCount::Unavailable,
            }
        }
        Err(PublishFailed::Hub(err)) => {
            let status = match err {
                PublishError::GlobalBroadcastDisabled => StatusCode::FORBIDDEN,
                // It could never be delivered: no connection may hold a frame this large.
                PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            Outcome::refused(status, "refused", err.to_string())
        }
        Err(PublishFailed::Stopped) => Outcome::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the server is shutting down".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(outcome: &Outcome, with_status: bool) -> String {
        let mut out = Vec::new();
        outcome.write_json(&mut out, with_status);
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    #[test]
    fn answers_are_written_as_serde_json_would_write_them() {
        let pos = StreamPos { epoch: u64::MAX, seq: 7 };
        let published = |counts, excluded| Outcome {
            status: StatusCode::OK,
            answer: Answer::Published {
                position: Some(("u/a\"c".into(), pos)),
                duplicate: true,
                counts,
                excluded,
            },
            retry_after: None,
            counted: PublishCount::Accepted,
        };
        let solo = json!({"buffered": true, "closed": 3, "delivered": 1, "duplicate": true, "epoch": u64::MAX, "excluded": false, "held": 4, "seq": 7, "skipped": 2, "status": 200, "stream": "u/a\"c"});
        let counts = Some(([1, 2, 3, 4], true));
        assert_eq!(written(&published(counts, Some(false)), true), solo.to_string());
        let clustered = json!({"duplicate": true, "epoch": u64::MAX, "seq": 7, "stream": "u/a\"c"});
        assert_eq!(written(&published(None, None), false), clustered.to_string());
        let error =
            Outcome::refused(StatusCode::BAD_REQUEST, "bad_request", "a \"quote\"\n".into());
        let expected = json!({"error": "bad_request", "message": "a \"quote\"\n", "status": 400});
        assert_eq!(written(&error, true), expected.to_string());
    }
}
