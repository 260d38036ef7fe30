-- mpqr install script, assembled at build time: sql/schema/*.sql (the data
-- definitions), then sql/code/*.sql (functions, views and privileges), each
-- in name order.  An upgrade script is its own schema step followed by the
-- same code files (see the Makefile and sql/upgrade/).
\echo Use "CREATE EXTENSION mpqr" to load this file. \quit

-- The extension's data lives in schema mpqr.  Its API functions (mpqr_*) live
-- in the schema the extension is created in, public by default.  Tables that
-- hold secrets are never readable by PUBLIC; the API functions run as the
-- extension's owner (SECURITY DEFINER, with a pinned search_path) and are
-- granted to the roles mpqr_admin and mpqr_user (see README).
CREATE SCHEMA mpqr;
COMMENT ON SCHEMA mpqr IS 'Mercado Pago in-store QR payments: data of the mpqr extension';
