//! Parser behaviour, rule by rule, plus property tests (never panics).

use hl7v2::{
    parse, Charset, Delimiters, ErrorCode, Location, Message, ParseOptions, Parsed, Severity,
};
use proptest::prelude::*;

const ADT: &str = include_str!("data/adt_a01.hl7");

fn p(s: &str) -> Parsed {
    parse(s.as_bytes(), &ParseOptions::default())
}

fn msg(s: &str) -> Message {
    let parsed = p(s);
    assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
    parsed.message.expect("message")
}

fn codes(p: &Parsed) -> Vec<(Severity, ErrorCode)> {
    p.diagnostics.iter().map(|d| (d.severity, d.code)).collect()
}

const MIN: &str = "MSH|^~\\&|APP|FAC|GW|CWS|20261123||ADT^A01|C1|P|2.5.1";

#[test]
fn sample_adt_parses_cleanly() {
    let parsed = p(ADT);
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let m = parsed.message.unwrap();
    assert_eq!(m.segment_count(), 9);
    assert_eq!(m.charset(), Charset::Utf8);
    assert_eq!(m.delimiters(), &Delimiters::default());
    let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
    assert_eq!(
        ids,
        ["MSH", "EVN", "PID", "NK1", "NK1", "PV1", "PV2", "DG1", "DG1"]
    );
    // Text is the segments joined by CR, no trailing CR.
    assert_eq!(m.text(), ADT.trim_end_matches('\r'));
    assert!(!m.text().ends_with('\r'));
}

#[test]
fn header_fields() {
    let m = msg(ADT);
    let h = m.header();
    assert_eq!(h.msh3, "HOSP_ADT^2.16.840.1.113883.3.999.1^ISO");
    assert_eq!(h.msh4, "GENHOSP^2.16.840.1.113883.3.999^ISO");
    assert_eq!(h.msh5, "CWSGW");
    assert_eq!(h.msh6, "COUNTY_CWS");
    assert_eq!(h.sending_application, "HOSP_ADT");
    assert_eq!(h.sending_facility, "GENHOSP");
    assert_eq!(h.timestamp, "20261123101500-0800");
    assert_eq!(h.message_code, "ADT");
    assert_eq!(h.trigger_event, "A01");
    assert_eq!(h.message_structure, "ADT_A01");
    assert_eq!(h.control_id, "MSG00001");
    assert_eq!(h.processing_id, "P");
    assert_eq!(h.version, "2.5.1");
    assert_eq!(h.accept_ack_type, "AL");
    assert_eq!(h.application_ack_type, "NE");
    assert_eq!(h.charset, "UNICODE UTF-8");
}

#[test]
fn msh_field_numbering() {
    let m = msg(MIN);
    let msh = m.first("MSH").unwrap();
    assert_eq!(msh.field(0).raw(), "MSH");
    assert_eq!(msh.field(1).raw(), "|");
    assert_eq!(msh.field(2).raw(), "^~\\&");
    // MSH-2 is never split or unescaped.
    assert_eq!(msh.field(2).repetition_count(), 1);
    assert_eq!(msh.value(2, 1, 0, 0).as_deref(), Some("^~\\&"));
    assert_eq!(msh.value(2, 1, 1, 1).as_deref(), Some("^~\\&"));
    assert_eq!(m.get("MSH-2").as_deref(), Some("^~\\&"));
    assert_eq!(m.get("MSH-1").as_deref(), Some("|"));
    assert_eq!(msh.field(3).raw(), "APP");
    assert_eq!(msh.field(9).raw(), "ADT^A01");
    assert_eq!(msh.field(12).raw(), "2.5.1");
    assert_eq!(msh.field_count(), 12);
    assert!(msh.field(13).is_empty());
    assert!(msh.field(1000).is_empty());
}

#[test]
fn non_msh_field_numbering_and_counts() {
    let m = msg(&format!("{MIN}\rPID|1||A~B||X^Y||\rZZ1"));
    let pid = m.first("PID").unwrap();
    assert_eq!(pid.field(0).raw(), "PID");
    assert_eq!(pid.field(1).raw(), "1");
    assert_eq!(pid.field(3).raw(), "A~B");
    assert_eq!(pid.field(5).raw(), "X^Y");
    assert_eq!(pid.field_count(), 7);
    let z = m.first("ZZ1").unwrap();
    assert_eq!(z.field_count(), 0);
    assert_eq!(z.raw(), "ZZ1");
    assert!(z.field(1).is_empty());
}

#[test]
fn repetitions_components_subcomponents() {
    let m = msg(ADT);
    let pid = m.first("PID").unwrap();
    let f3 = pid.field(3);
    assert_eq!(f3.repetition_count(), 2);
    let reps: Vec<_> = f3.repetitions().map(|r| r.raw()).collect();
    assert_eq!(
        reps,
        ["MRN0012345^^^GENHOSP^MR", "99999999A^^^CA_MEDI_CAL^MC"]
    );
    let r2 = f3.repetition(2);
    assert_eq!(r2.component_count(), 5);
    assert_eq!(r2.component(1).raw(), "99999999A");
    assert!(r2.component(2).is_empty());
    assert_eq!(r2.value(4, 0).as_deref(), Some("CA_MEDI_CAL"));
    assert_eq!(r2.value(2, 0), None);
    assert!(f3.repetition(3).is_empty());
    assert!(f3.repetition(0).is_empty());
    assert_eq!(pid.value(3, 2, 5, 1).as_deref(), Some("MC"));
    assert_eq!(
        pid.value(3, 1, 0, 0).as_deref(),
        Some("MRN0012345^^^GENHOSP^MR")
    );
    assert_eq!(pid.value(3, 3, 1, 1), None);
    assert_eq!(pid.value(2, 1, 1, 1), None);
    // Empty field yields no repetitions.
    assert_eq!(pid.field(2).repetitions().count(), 0);
    assert_eq!(pid.field(2).repetition_count(), 0);

    let m = msg(&format!("{MIN}\rPID|1||ID1^^^AUTH&1.2.3&ISO^MR"));
    let c = m.first("PID").unwrap().field(3).repetition(1).component(4);
    assert_eq!(
        c.subcomponents().collect::<Vec<_>>(),
        ["AUTH", "1.2.3", "ISO"]
    );
    assert_eq!(c.subcomponent(2), "1.2.3");
    assert_eq!(c.subcomponent(4), "");
    assert_eq!(c.subcomponent(0), "");
    assert_eq!(c.value(3).as_deref(), Some("ISO"));
    assert_eq!(c.value(0).as_deref(), Some("AUTH&1.2.3&ISO"));
    assert_eq!(c.text(), "AUTH&1.2.3&ISO");
    assert_eq!(m.get("PID-3.4.2").as_deref(), Some("1.2.3"));
    assert_eq!(m.get("PID-3.4").as_deref(), Some("AUTH"));
}

#[test]
fn terser_paths() {
    let m = msg(ADT);
    assert_eq!(m.get("PID-3").as_deref(), Some("MRN0012345"));
    assert_eq!(m.get("PID-3[2]").as_deref(), Some("99999999A"));
    assert_eq!(m.get("PID-3[2].4").as_deref(), Some("CA_MEDI_CAL"));
    assert_eq!(m.get("PID-5.2").as_deref(), Some("Alex"));
    assert_eq!(m.get("PID-5[2].2").as_deref(), Some("AJ"));
    assert_eq!(m.get("MSH-9.2").as_deref(), Some("A01"));
    assert_eq!(m.get("MSH-9").as_deref(), Some("ADT"));
    assert_eq!(m.get("MSH-10").as_deref(), Some("MSG00001"));
    // First occurrence of a repeated segment.
    assert_eq!(m.get("NK1-3.1").as_deref(), Some("GRD"));
    assert_eq!(m.get("DG1-3.1").as_deref(), Some("R51"));
    // Absent or empty → None; malformed path → None.
    assert_eq!(m.get("PID-2"), None);
    assert_eq!(m.get("OBX-3"), None);
    assert_eq!(m.get("PID-999"), None);
    assert_eq!(m.get("PID"), None);
    assert_eq!(m.get("PID-3[x]"), None);
}

#[test]
fn segments_named_and_ordinals() {
    let m = msg(ADT);
    let nk1: Vec<_> = m.segments_named("NK1").collect();
    assert_eq!(nk1.len(), 2);
    assert_eq!(nk1[0].ordinal(), 1);
    assert_eq!(nk1[1].ordinal(), 2);
    assert_eq!(nk1[1].index(), 4);
    assert_eq!(nk1[1].value(2, 1, 1, 0).as_deref(), Some("County CWS"));
    assert_eq!(m.first("PID").unwrap().ordinal(), 1);
    assert_eq!(m.first("PID").unwrap().index(), 2);
    assert!(m.first("OBX").is_none());
    assert_eq!(
        m.segments_named("DG1")
            .map(|s| s.ordinal())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    // Debug output shows structure only.
    let dbg = format!("{:?}", m.first("PID").unwrap());
    assert!(dbg.contains("PID") && !dbg.contains("Testchild"), "{dbg}");
}

#[test]
fn escapes_are_decoded_in_values() {
    let m = msg(&format!(
        "{MIN}\rNTE|1||Dose 5\\F\\10 mg\\.br\\next \\S\\ \\T\\ \\R\\ \\E\\ \\H\\b\\N\\ \\Z\\\rOBX|1|ST|X^Y||caf\\XC3A9\\"
    ));
    assert_eq!(
        m.get("NTE-3").as_deref(),
        Some("Dose 5|10 mg\nnext ^ & ~ \\ b \\Z\\")
    );
    assert_eq!(m.get("OBX-5").as_deref(), Some("café"));
    assert_eq!(m.unescape("a\\F\\b"), "a|b");
    assert!(matches!(m.unescape("plain"), std::borrow::Cow::Borrowed(_)));
    // Escaped delimiters do not split.
    let nte = m.first("NTE").unwrap();
    assert_eq!(nte.field(3).repetition_count(), 1);
    assert_eq!(nte.field(3).repetition(1).component_count(), 1);
}

#[test]
fn latin1_message_and_hex_escape() {
    let mut bytes = b"MSH|^~\\&|A|F|G|C|20261123||ADT^A01|C1|P|2.5.1||||||8859/1\rPID|1||X||Mu\xF1oz^Jos\\XE9\\".to_vec();
    let parsed = parse(&bytes, &ParseOptions::default());
    assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
    let m = parsed.message.unwrap();
    assert_eq!(m.charset(), Charset::Latin1);
    assert_eq!(m.get("PID-5.1").as_deref(), Some("Muñoz"));
    assert_eq!(m.get("PID-5.2").as_deref(), Some("José"));
    assert_eq!(m.header().charset, "8859/1");
    // Same bytes with UTF-8 declared: lossy decode + warning.
    bytes =
        b"MSH|^~\\&|A|F|G|C|20261123||ADT^A01|C1|P|2.5.1||||||UNICODE UTF-8\rPID|1||X||Mu\xF1oz"
            .to_vec();
    let parsed = parse(&bytes, &ParseOptions::default());
    assert_eq!(
        codes(&parsed),
        [(Severity::Warning, ErrorCode::DataTypeError)]
    );
    let m = parsed.message.unwrap();
    assert_eq!(m.get("PID-5").as_deref(), Some("Mu\u{FFFD}oz"));
}

#[test]
fn charset_default_and_detection() {
    // No MSH-18 → default from the options.
    let opts = ParseOptions {
        default_charset: Charset::Latin1,
        ..ParseOptions::default()
    };
    let bytes = format!("{MIN}\rPID|1||X||\u{e9}").into_bytes();
    let parsed = parse(&bytes, &opts);
    assert!(parsed.diagnostics.is_empty());
    let m = parsed.message.unwrap();
    assert_eq!(m.charset(), Charset::Latin1);
    // UTF-8 bytes of é read as Latin-1 → two characters.
    assert_eq!(m.get("PID-5").as_deref(), Some("\u{c3}\u{a9}"));

    // Valid UTF-8 with the UTF-8 default.
    let parsed = parse(&bytes, &ParseOptions::default());
    assert!(parsed.diagnostics.is_empty());
    assert_eq!(parsed.message.unwrap().get("PID-5").as_deref(), Some("é"));

    // ASCII declared, non-ASCII bytes → Latin-1 + warning.
    let bytes =
        b"MSH|^~\\&|A|F|G|C|20261123||ADT^A01|C1|P|2.5.1||||||ASCII\rPID|1||X||\xE9".to_vec();
    let parsed = parse(&bytes, &ParseOptions::default());
    assert_eq!(
        codes(&parsed),
        [(Severity::Warning, ErrorCode::DataTypeError)]
    );
    let m = parsed.message.unwrap();
    assert_eq!(m.charset(), Charset::Ascii);
    assert_eq!(m.get("PID-5").as_deref(), Some("é"));

    // Unknown MSH-18 → warning + default.
    let parsed = p("MSH|^~\\&|A|F|G|C|20261123||ADT^A01|C1|P|2.5.1||||||KLINGON~UTF-8");
    assert_eq!(
        codes(&parsed),
        [(Severity::Warning, ErrorCode::TableValueNotFound)]
    );
    assert_eq!(
        parsed.diagnostics[0].location,
        Some(Location::field("MSH", 1, 18))
    );
    assert_eq!(parsed.message.unwrap().charset(), Charset::Utf8);

    // MSH-18 non-UTF-8 bytes → same warning.
    let parsed = parse(
        b"MSH|^~\\&|A|F|G|C|20261123||ADT^A01|C1|P|2.5.1||||||\xFF\xFE",
        &ParseOptions::default(),
    );
    assert_eq!(parsed.diagnostics[0].code, ErrorCode::TableValueNotFound);
    assert!(parsed.message.is_some());
}

#[test]
fn line_endings_bom_and_blank_lines_are_normalised() {
    let cr = msg(ADT);
    let lf = msg(&ADT.replace('\r', "\n"));
    let crlf = msg(&ADT.replace('\r', "\r\n"));
    let messy = msg(&format!(
        "\u{feff}\r\n \n{}\n\n   \r\n\t\n",
        ADT.replace('\r', "\r\n\r\n")
    ));
    for m in [&lf, &crlf, &messy] {
        assert_eq!(m.text(), cr.text());
        assert_eq!(m.segment_count(), 9);
    }
    assert_eq!(messy.header().control_id, "MSG00001");
}

#[test]
fn not_hl7_yields_no_message() {
    for (input, code) in [
        ("", ErrorCode::RequiredFieldMissing),
        ("   \r\n", ErrorCode::RequiredFieldMissing),
        ("PID|1||X", ErrorCode::SegmentSequenceError),
        ("hello world", ErrorCode::SegmentSequenceError),
        ("MSH", ErrorCode::RequiredFieldMissing),
        ("MSH\rPID|1", ErrorCode::RequiredFieldMissing),
    ] {
        let parsed = p(input);
        assert!(parsed.message.is_none(), "{input:?}");
        assert!(parsed.has_errors());
        assert_eq!(parsed.diagnostics.len(), 1);
        assert_eq!(parsed.diagnostics[0].code, code, "{input:?}");
        assert_eq!(parsed.diagnostics[0].severity, Severity::Error);
    }
}

#[test]
fn bad_delimiters_are_rejected() {
    for input in [
        "MSHA^~\\&|x",           // alphanumeric field separator
        "MSH|^~\\A|x",           // alphanumeric encoding char
        "MSH|^^\\&|x",           // duplicate
        "MSH|^|\\&|x",           // duplicate with the field separator
        "MSH|^|x",               // too short (1 char)
        "MSH|^~\\&#!|x",         // too long (6 chars)
        "MSH| ~\\&|x",           // space is not punctuation
        "MSH|^&\\|ADT^A01|C1|P", // no subcomponent given, default '&' taken
        "MSH\u{e9}^~\\&|x",      // non-ASCII field separator
    ] {
        let parsed = p(input);
        assert!(parsed.message.is_none(), "{input:?}");
        assert_eq!(
            codes(&parsed),
            [(Severity::Error, ErrorCode::DataTypeError)],
            "{input:?}"
        );
    }
}

#[test]
fn non_standard_delimiters() {
    let m =
        msg("MSH#$*!%#APP$X#FAC#GW#CWS#20261123##ADT$A01#C1#P#2.5.1\rPID#1##A*B##Sm|th$J!S!o%x");
    let d = m.delimiters();
    assert_eq!(
        (d.field, d.component, d.repetition, d.escape, d.subcomponent),
        ('#', '$', '*', Some('!'), '%')
    );
    assert_eq!(m.first("MSH").unwrap().field(1).raw(), "#");
    assert_eq!(m.get("MSH-2").as_deref(), Some("$*!%"));
    assert_eq!(m.get("PID-3[2]").as_deref(), Some("B"));
    assert_eq!(m.get("PID-5.1").as_deref(), Some("Sm|th"));
    assert_eq!(m.get("PID-5.2").as_deref(), Some("J$o"));
    assert_eq!(m.get("PID-5.2.2").as_deref(), Some("x"));
    // Header raw fields are re-encoded to standard delimiters for the ACK.
    assert_eq!(m.header().msh3, "APP^X");
    assert_eq!(m.header().message_code, "ADT");
}

#[test]
fn two_and_five_encoding_characters() {
    let m = msg("MSH|^~|A|F|G|C|20261123||ADT^A01|C1|P|2.5.1\rNTE|1||a\\F\\b&c");
    assert_eq!(m.delimiters().escape, None);
    assert_eq!(m.delimiters().subcomponent, '&');
    assert_eq!(m.get("NTE-3.1.0").as_deref(), None); // sub 0 not a valid path number
    assert_eq!(
        m.first("NTE").unwrap().value(3, 1, 1, 0).as_deref(),
        Some("a\\F\\b&c")
    );

    // `^~&`: the escape character left out (as in published sample
    // messages), not `&` as the escape character.
    let m = msg("MSH|^~&|A|F|G|C|20261123||ADT^A04|C1|P|2.4\rPID|||ID1||JONES^W^A^III&Jr");
    assert_eq!(m.delimiters().escape, None);
    assert_eq!(m.delimiters().subcomponent, '&');
    assert_eq!(m.get("PID-5.4.2").as_deref(), Some("Jr"));
    assert_eq!(m.header().message_code, "ADT");

    let m = msg("MSH|^~\\&#|A|F|G|C|20261123||ADT^A01|C1|P|2.7\rNTE|1||cut\\P\\off");
    assert_eq!(m.delimiters().truncation, Some('#'));
    assert_eq!(m.get("MSH-2").as_deref(), Some("^~\\&#"));
    assert_eq!(m.get("NTE-3").as_deref(), Some("cut#off"));
}

#[test]
fn required_msh_fields() {
    let parsed = p("MSH|^~\\&|A|F|G|C|20261123||||P|2.5.1\rPID|1");
    assert!(parsed.has_errors());
    let m = parsed.message.as_ref().expect("message still returned");
    assert_eq!(m.segment_count(), 2);
    let d = Delimiters::default();
    let errs: Vec<_> = parsed
        .diagnostics
        .iter()
        .map(|x| (x.code, x.location.as_ref().map(|l| l.to_erl(&d))))
        .collect();
    assert_eq!(
        errs,
        [
            (ErrorCode::RequiredFieldMissing, Some("MSH^1^9".to_string())),
            (
                ErrorCode::RequiredFieldMissing,
                Some("MSH^1^10".to_string())
            ),
        ]
    );
    // MSH-9 with only the trigger is still missing its message code.
    let parsed = p("MSH|^~\\&|A|F|G|C|20261123||^A01|C1|P|2.5.1");
    assert_eq!(
        codes(&parsed),
        [(Severity::Error, ErrorCode::RequiredFieldMissing)]
    );
}

#[test]
fn version_checks() {
    for v in ["2.3", "2.3.1", "2.4", "2.5.1", "2.6", "2.7.1", "2.8"] {
        let parsed = p(&format!("MSH|^~\\&|A|F|G|C|20261123||ADT^A01|C1|P|{v}"));
        assert!(parsed.diagnostics.is_empty(), "{v}");
    }
    let parsed = p("MSH|^~\\&|A|F|G|C|20261123||ADT^A01|C1|P|2.2");
    assert_eq!(
        codes(&parsed),
        [(Severity::Warning, ErrorCode::UnsupportedVersionId)]
    );
    assert!(!parsed.has_errors());
    assert!(parsed.message.is_some());
    let parsed = p("MSH|^~\\&|A|F|G|C|20261123||ADT^A01|C1|P|2.5^USA");
    assert!(parsed.diagnostics.is_empty());
    let parsed = p("MSH|^~\\&|A|F|G|C|20261123||ADT^A01|C1|P");
    assert_eq!(
        codes(&parsed),
        [(Severity::Warning, ErrorCode::RequiredFieldMissing)]
    );
}

#[test]
fn segment_ids_and_z_segments() {
    let parsed = p(&format!("{MIN}\rZCW|1|custom\rpid|1\rPIDX|1\rP-D|1"));
    assert_eq!(
        codes(&parsed),
        vec![(Severity::Warning, ErrorCode::SegmentSequenceError); 3]
    );
    assert!(!parsed.has_errors());
    let m = parsed.message.unwrap();
    assert_eq!(m.segment_count(), 5);
    assert_eq!(m.get("ZCW-2").as_deref(), Some("custom"));
    assert_eq!(m.first("pid").unwrap().field(1).raw(), "1");
    assert_eq!(m.first("PIDX").unwrap().index(), 3);
    // No content in the diagnostic text.
    assert!(parsed.diagnostics[0].text.contains("index 2"));
    assert!(!parsed.diagnostics[0].text.contains("pid"));
}

#[test]
fn size_limit() {
    let opts = ParseOptions {
        max_bytes: 100,
        ..ParseOptions::default()
    };
    let parsed = parse(ADT.as_bytes(), &opts);
    assert!(parsed.message.is_none());
    assert_eq!(
        codes(&parsed),
        [(Severity::Error, ErrorCode::ApplicationInternalError)]
    );
    let parsed = parse(&ADT.as_bytes()[..100], &opts);
    assert!(parsed.message.is_some());
}

#[test]
fn segment_limit() {
    let opts = ParseOptions {
        max_segments: 8,
        ..ParseOptions::default()
    };
    let parsed = parse(ADT.as_bytes(), &opts);
    assert!(parsed.message.is_none());
    assert_eq!(
        codes(&parsed),
        [(Severity::Error, ErrorCode::ApplicationInternalError)]
    );
    let opts = ParseOptions {
        max_segments: 9,
        ..ParseOptions::default()
    };
    assert!(parse(ADT.as_bytes(), &opts).message.is_some());
}

#[test]
fn field_limit_truncates_with_warning() {
    let opts = ParseOptions {
        max_fields_per_segment: 12,
        ..ParseOptions::default()
    };
    let parsed = parse(
        format!("{MIN}|AL\rNTE|1|2|3|4|5|6|7|8|9|10|11|12|13|14").as_bytes(),
        &opts,
    );
    assert!(!parsed.has_errors());
    let locs: Vec<_> = parsed
        .diagnostics
        .iter()
        .map(|d| (d.severity, d.code, d.location.clone()))
        .collect();
    assert_eq!(
        locs,
        [
            (
                Severity::Warning,
                ErrorCode::ApplicationInternalError,
                Some(Location::segment("MSH", 1))
            ),
            (
                Severity::Warning,
                ErrorCode::ApplicationInternalError,
                Some(Location::segment("NTE", 1))
            ),
        ]
    );
    let m = parsed.message.unwrap();
    let nte = m.first("NTE").unwrap();
    assert_eq!(nte.field_count(), 12);
    assert_eq!(nte.field(12).raw(), "12");
    assert!(nte.field(13).is_empty());
    let msh = m.first("MSH").unwrap();
    assert_eq!(msh.field_count(), 12);
    assert_eq!(m.header().version, "2.5.1");
}

#[test]
fn diagnostics_carry_no_message_content() {
    let bytes = b"MSH|^~\\&|A|F|G|C|20261123||||P|9.9|||||||SECRETCS\rSecretName Line\rPID|1||X||Secr\xFFet".to_vec();
    let parsed = parse(&bytes, &ParseOptions::default());
    assert!(parsed.diagnostics.len() >= 5, "{:?}", parsed.diagnostics);
    for d in &parsed.diagnostics {
        assert!(!d.text.contains("Secr"), "{d:?}");
        assert!(!d.text.contains("SECRET"), "{d:?}");
        if let Some(l) = &d.location {
            assert!(!l.segment.contains("Secr"), "{d:?}");
        }
    }
}

#[test]
fn message_is_clone_and_debug() {
    let m = msg(MIN);
    let c = m.clone();
    assert_eq!(c.text(), m.text());
    let parsed = p(ADT);
    let dbg = format!("{parsed:?}");
    assert!(
        dbg.contains("Parsed") && dbg.contains("segments: 9"),
        "{dbg}"
    );
    assert!(
        !dbg.contains("Testchild") && !dbg.contains("20140315"),
        "{dbg}"
    );
}

fn walk(m: &Message) -> usize {
    let mut n = 0;
    for s in m.segments() {
        n += s.id().len() + s.raw().len() + s.ordinal() + s.index();
        for f in 0..=s.field_count() + 1 {
            let field = s.field(f);
            for r in field.repetitions() {
                for c in r.components() {
                    n += c.text().len();
                    n += c.subcomponents().count();
                    n += c.value(1).map(|v| v.len()).unwrap_or(0);
                }
                n += r.value(0, 0).map(|v| v.len()).unwrap_or(0);
            }
            n += s.value(f, 1, 1, 1).map(|v| v.len()).unwrap_or(0);
        }
    }
    let h = m.header();
    n + h.control_id.len() + m.get("PID-3[2].4.1").map(|v| v.len()).unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let parsed = parse(&bytes, &ParseOptions::default());
        if let Some(m) = &parsed.message {
            walk(m);
        }
    }

    #[test]
    fn never_panics_on_msh_prefixed_bytes(
        tail in proptest::collection::vec(prop_oneof![
            any::<u8>(), Just(b'|'), Just(b'^'), Just(b'~'), Just(b'\\'), Just(b'&'), Just(b'\r'), Just(b'\n')
        ], 0..400)
    ) {
        let mut bytes = b"MSH".to_vec();
        bytes.extend(tail);
        let parsed = parse(&bytes, &ParseOptions::default());
        if let Some(m) = &parsed.message {
            walk(m);
        }
    }

    #[test]
    fn never_panics_on_mutated_messages(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..12),
        limits in (1usize..20, 1usize..30),
    ) {
        let mut bytes = ADT.as_bytes().to_vec();
        for (pos, b, kind) in edits {
            let i = pos % (bytes.len() + 1);
            match kind {
                0 if i < bytes.len() => bytes[i] = b,
                1 => bytes.insert(i, b),
                _ if i < bytes.len() => { bytes.remove(i); }
                _ => {}
            }
        }
        for opts in [
            ParseOptions::default(),
            ParseOptions { max_segments: limits.0, max_fields_per_segment: limits.1, ..ParseOptions::default() },
            ParseOptions { default_charset: Charset::Latin1, ..ParseOptions::default() },
        ] {
            let parsed = parse(&bytes, &opts);
            if let Some(m) = &parsed.message {
                prop_assert!(m.segment_count() <= opts.max_segments);
                for s in m.segments() {
                    prop_assert!(s.field_count() <= opts.max_fields_per_segment);
                }
                walk(m);
            } else {
                prop_assert!(parsed.has_errors());
            }
        }
    }

    #[test]
    fn values_round_trip_through_escape(s in "\\PC{0,40}") {
        let d = Delimiters::default();
        let text = format!("{MIN}\rNTE|1||{}", hl7v2::escape(&s, &d));
        let m = msg(&text);
        let got = m.first("NTE").unwrap().value(3, 1, 1, 1).map(|c| c.into_owned()).unwrap_or_default();
        prop_assert_eq!(got, s);
    }
}
