-- 0003_audit_keyed: keyed audit chain (version 2) and the patient index of
-- audit records (same as the SQLite migration of the same name).
ALTER TABLE audit ADD COLUMN version int NOT NULL DEFAULT 1;
ALTER TABLE audit ADD COLUMN key_id text COLLATE "C";
ALTER TABLE audit_head ADD COLUMN version int NOT NULL DEFAULT 1;

CREATE TABLE audit_patients (
    patient_id text   NOT NULL,
    seq        bigint NOT NULL,
    PRIMARY KEY (patient_id, seq)
);
INSERT INTO audit_patients (patient_id, seq)
SELECT patient_id, seq FROM audit WHERE patient_id IS NOT NULL;
-- The patient filter reads audit_patients now; the column index is unused.
DROP INDEX audit_patient;
