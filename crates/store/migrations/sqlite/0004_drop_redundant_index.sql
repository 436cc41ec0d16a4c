-- resources_type_updated (resource_type, last_updated) is a prefix of
-- resources_type_updated_id (resource_type, last_updated, id), which serves
-- every query the shorter one did. Each resource write maintained both: one
-- B-tree insert per write for nothing (PostgreSQL never had it).
DROP INDEX IF EXISTS resources_type_updated;
