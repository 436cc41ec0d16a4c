-- 0004_audit_jcs: audit chain version 3 (HMAC-SHA256 over the RFC 8785 body;
-- same as the SQLite migration of the same name).
--
-- No table changes: every row already states its chain version, so rows
-- written before this migration (versions 1 and 2) keep verifying in their
-- own form and new keyed rows are version 3. This migration fences older
-- binaries off the database: they cannot verify version-3 rows and would
-- extend the chain with version-2 rows after them (a version going down,
-- which the verifier reports as a break), so a binary that does not know
-- this migration refuses to open the database.
COMMENT ON COLUMN audit.version IS
    'audit chain version: 1 = SHA-256, legacy canonical body; 2 = HMAC-SHA256 (key_id), legacy canonical body; 3 = HMAC-SHA256 (key_id), RFC 8785 body';
