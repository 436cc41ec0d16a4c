//! The three modules together, as the MLLP source uses them:
//! frame decoder → parser → ACK → framed reply.

use hl7v2::ack::{build, AckCode, AckSpec};
use hl7v2::mllp::{frame, FrameDecoder, FrameEvent};
use hl7v2::{parse, ErrorCode, ParseOptions};

const ADT: &str = include_str!("data/adt_a01.hl7");

fn ack_for(payload: &[u8]) -> String {
    let parsed = parse(payload, &ParseOptions::default());
    let header = parsed.message.as_ref().map(|m| m.header());
    let code = if parsed.has_errors() {
        AckCode::AE
    } else {
        AckCode::AA
    };
    build(&AckSpec {
        original: header.as_ref(),
        code,
        control_id: "GW-1",
        timestamp: "20261123151500+0000",
        text: None,
        errors: &parsed.diagnostics,
        sending_application: "CWSGW",
    })
}

#[test]
fn framed_message_is_acknowledged() {
    let mut d = FrameDecoder::new(64 * 1024);
    let wire = frame(ADT.as_bytes());
    // Arrives in two TCP reads.
    d.push(&wire[..500]);
    assert_eq!(d.next_event(), None);
    d.push(&wire[500..]);
    let Some(FrameEvent::Frame(payload)) = d.next_event() else {
        panic!("expected a frame");
    };
    let ack = ack_for(&payload);
    assert_eq!(
        ack,
        "MSH|^~\\&|CWSGW|COUNTY_CWS|HOSP_ADT^2.16.840.1.113883.3.999.1^ISO|GENHOSP^2.16.840.1.113883.3.999^ISO|20261123151500+0000||ACK^A01^ACK|GW-1|P|2.5.1||||||UNICODE UTF-8\rMSA|AA|MSG00001"
    );
    let reply = frame(ack.as_bytes());
    let mut back = FrameDecoder::new(4096);
    back.push(&reply);
    assert_eq!(back.next_event(), Some(FrameEvent::Frame(ack.into_bytes())));
}

#[test]
fn oversize_frame_head_still_identifies_the_message() {
    let mut big = ADT.to_string();
    for i in 0..200 {
        big.push_str(&format!("NTE|{i}||{}\r", "x".repeat(100)));
    }
    let mut d = FrameDecoder::new(4096);
    d.push(&frame(big.as_bytes()));
    let Some(FrameEvent::Oversize { head, len }) = d.next_event() else {
        panic!("expected oversize");
    };
    assert_eq!(len, big.len());
    assert_eq!(head.len(), 4096);
    let parsed = parse(&head, &ParseOptions::default());
    let header = parsed.message.expect("head parses").header();
    assert_eq!(header.control_id, "MSG00001");
    let errors = [hl7v2::Diagnostic::error(
        ErrorCode::ApplicationInternalError,
        None,
        format!("message of {len} bytes exceeds the limit of 4096 bytes"),
    )];
    let ack = build(&AckSpec {
        original: Some(&header),
        code: AckCode::AE,
        control_id: "GW-2",
        timestamp: "20261123151500+0000",
        text: Some("message too large"),
        errors: &errors,
        sending_application: "CWSGW",
    });
    let segs: Vec<_> = ack.split('\r').collect();
    assert_eq!(segs[1], "MSA|AE|MSG00001|message too large");
    assert!(segs[2].starts_with("ERR|||207^Application internal error^HL70357|E||||message of "));
}

#[test]
fn unparseable_payload_gets_ae_with_err() {
    let ack = ack_for(b"this is not hl7");
    let segs: Vec<_> = ack.split('\r').collect();
    assert_eq!(
        segs,
        [
            "MSH|^~\\&|CWSGW||||20261123151500+0000||ACK|GW-1|P|2.5.1",
            "MSA|AE|",
            "ERR||MSH^1|100^Segment sequence error^HL70357|E||||message does not start with an MSH segment",
        ]
    );
}

#[test]
fn missing_control_id_reported_with_location() {
    let ack = ack_for(b"MSH|^~\\&|A|F|G|C|20261123||ADT^A04|||2.5.1");
    let segs: Vec<_> = ack.split('\r').collect();
    assert_eq!(
        segs[0],
        "MSH|^~\\&|G|C|A|F|20261123151500+0000||ACK^A04^ACK|GW-1|P|2.5.1"
    );
    assert_eq!(segs[1], "MSA|AE|");
    assert_eq!(
        segs[2],
        "ERR||MSH^1^10|101^Required field missing^HL70357|E||||MSH-10 (message control id) is missing"
    );
}

#[test]
fn non_standard_delimiters_are_reencoded_in_the_ack() {
    let ack = ack_for(b"MSH#$*!%#APP$X#FAC#GW$Y#CWS#20261123##ADT$A01#C!F!1#T#2.5");
    let segs: Vec<_> = ack.split('\r').collect();
    assert_eq!(
        segs[0],
        "MSH|^~\\&|GW^Y|CWS|APP^X|FAC|20261123151500+0000||ACK^A01^ACK|GW-1|T|2.5"
    );
    // The original control id is "C#1": escaped for standard delimiters.
    assert_eq!(segs[1], "MSA|AA|C#1");
    let parsed = parse(ack.as_bytes(), &ParseOptions::default());
    assert!(!parsed.has_errors());
}
