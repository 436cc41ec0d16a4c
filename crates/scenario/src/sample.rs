//! Synthetic sample input: realistic, PHI-free HL7 v2 messages for the
//! benchmarks, the batch example and the tests. Every value is made up.

/// A realistic ~1 KB ADT^A01 with a unique control id and visit number.
pub fn sample_adt(n: u64) -> String {
    format!(
        "MSH|^~\\&|EPIC|STMARY|CWSGW|CWSGW|20260115083000||ADT^A01^ADT_A01|BENCH{n:09}|P|2.5.1\r\
EVN|A01|20260115083000\r\
PID|1||MRN{m:07}^^^STMARY^MR~91{m:07}A^^^CA-DHCS^MA||Rivera^Alex^J^^^^L||20100315|M|||123 Main St^^Fresno^CA^93721^USA^H||^PRN^PH^^^559^5550100|||||||||||||||||N\r\
NK1|1|Rivera^Maria^^^^^L|MTH^Mother^HL70063|123 Main St^^Fresno^CA^93721^USA|^PRN^PH^^^559^5550101\r\
PV1|1|I|3EAST^301^A^STMARY^^^^^3 East||||1234567^Chen^Linda^^^Dr^MD|||MED||||7|||1234567^Chen^Linda^^^Dr^MD|IN||MC|||||||||||||||||||STMARY||||||20260115082500\r\
PV2|||R50.9^Fever, unspecified^I10\r\
DG1|1||R50.9^Fever, unspecified^I10||20260115|A\r\
DG1|2||J18.9^Pneumonia, unspecified organism^I10||20260115|W\r",
        m = n % 10_000_000
    )
}

/// [`sample_adt`] asking for enhanced-mode acknowledgement: a commit ACK
/// (MSH-15 `AL`) and no application ACK (MSH-16 `NE`).
pub fn sample_adt_enhanced(n: u64) -> String {
    sample_adt(n).replacen("|P|2.5.1\r", "|P|2.5.1|||AL|NE\r", 1)
}
