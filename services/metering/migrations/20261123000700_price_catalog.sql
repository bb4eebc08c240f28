-- migrate:up
-- Every revision of the price catalog, kept for ever: the newest is in force. Each
-- row holds the whole catalog after the change (PriceCatalog.to_mapping), what
-- changed, and who changed it. A worker reads the newest when max(revision) moves.
CREATE TABLE metering.price_catalogs (
    revision   bigserial PRIMARY KEY,
    loaded_at  timestamptz NOT NULL DEFAULT now(),
    loaded_by  text NOT NULL,
    mode       text NOT NULL CHECK (mode IN ('seed', 'load', 'replace')),
    source     text NOT NULL DEFAULT '',
    changes    text[] NOT NULL,
    catalog    jsonb NOT NULL
);
CREATE FUNCTION metering.price_catalogs_are_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'metering.price_catalogs is append-only: load a new revision';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER price_catalogs_append_only BEFORE UPDATE OR DELETE ON metering.price_catalogs
    FOR EACH ROW EXECUTE FUNCTION metering.price_catalogs_are_append_only();

-- migrate:down
DROP TRIGGER price_catalogs_append_only ON metering.price_catalogs;
DROP FUNCTION metering.price_catalogs_are_append_only();
DROP TABLE metering.price_catalogs;
