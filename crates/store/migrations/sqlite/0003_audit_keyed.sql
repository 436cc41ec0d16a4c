-- 0003_audit_keyed: keyed audit chain (version 2) and the patient index of
-- audit records.
--
-- Existing rows are version 1 (unkeyed SHA-256) and keep verifying as such;
-- new rows written with an audit key are version 2 (HMAC-SHA256) and name
-- the key that sealed them. The head remembers its version so a store
-- without a key never extends a keyed chain with unkeyed records.
ALTER TABLE audit ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit ADD COLUMN key_id TEXT;
ALTER TABLE audit_head ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

-- One row per (patient named by a record, record): one audit record may
-- concern many patients (one search, one delivery).
CREATE TABLE audit_patients (
    patient_id TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (patient_id, seq)
) WITHOUT ROWID;
INSERT INTO audit_patients (patient_id, seq)
SELECT patient_id, seq FROM audit WHERE patient_id IS NOT NULL;
-- The patient filter reads audit_patients now; the column index is unused.
DROP INDEX audit_patient;
