-- Accounts and points of sale: validation, defaults, privileges.
\set SHOW_CONTEXT never
SET client_min_messages = warning;

SELECT mpqr_add_account('main', collector_id => 123456789, access_token => 'APP_USR-main',
                        webhook_secret => 'secret-main', site_id => 'MLA', api => 'instore');
SELECT mpqr_add_account('chile', 555, 'APP_USR-cl', NULL, 'MLC', 'orders');
SELECT name, collector_id, site_id, api, is_default, webhook_secret IS NOT NULL AS has_secret
  FROM mpqr.accounts ORDER BY name;

-- every argument is checked
SELECT mpqr_add_account(NULL, 1, 'APP_USR-tok');
SELECT mpqr_add_account('bad name', 1, 'APP_USR-tok');
SELECT mpqr_add_account('x', NULL, 'APP_USR-tok');
SELECT mpqr_add_account('x', -5, 'APP_USR-tok');
SELECT mpqr_add_account('x', 1, NULL);
SELECT mpqr_add_account('x', 1, '');
SELECT mpqr_add_account('x', 1, 'short');
SELECT mpqr_add_account('x', 1, repeat('t', 1025));
SELECT mpqr_add_account('x', 1, E'APP_USR-\x01-control');
SELECT mpqr_add_account('x', 1, 'APP_USR-ok', webhook_secret => 'has space in it');
SELECT mpqr_add_account(repeat('n', 100000), 1, 'APP_USR-tok');
SELECT mpqr_add_account('x', 1, 'APP_USR-tok', site_id => 'XXX');
SELECT mpqr_add_account('x', 1, 'APP_USR-tok', site_id => NULL);
SELECT mpqr_add_account('x', 1, 'APP_USR-tok', api => 'v3');
SELECT mpqr_add_account('main', 2, 'APP_USR-tok');
SELECT mpqr_add_account('other', 123456789, 'APP_USR-tok');

-- a new account uses the Orders API unless told otherwise
SELECT mpqr_add_account('neworders', 777, 'APP_USR-new');
SELECT api FROM mpqr.accounts WHERE name = 'neworders';
-- where each account was configured: here
SELECT name, mpqr.account_is_here(a) AS here FROM mpqr.accounts a ORDER BY name;

-- set: a rotated token, a removed secret, another default; NULL keeps a value
SELECT mpqr_set_account('main', access_token => 'APP_USR-rotated', webhook_secret => '');
SELECT mpqr_set_account('chile', is_default => true);
SELECT name, access_token, webhook_secret, is_default FROM mpqr.accounts ORDER BY name;
SELECT mpqr_set_account('nobody', access_token => 'x');
SELECT mpqr_set_account('main', site_id => 'ZZZ');
SELECT mpqr_set_account('main', is_default => true);

-- the tokens are not PUBLIC's
CREATE ROLE mpqr_regress_reader;
GRANT USAGE ON SCHEMA mpqr TO mpqr_regress_reader;
SET ROLE mpqr_regress_reader;
SELECT access_token FROM mpqr.accounts;
SELECT name FROM mpqr.accounts;
SELECT mpqr_add_account('sneaky', 9, 'APP_USR-tok');
RESET ROLE;
REVOKE USAGE ON SCHEMA mpqr FROM mpqr_regress_reader;
DROP ROLE mpqr_regress_reader;

-- POS linked without an API call
SELECT mpqr_add_pos('SUC001POS001', store => 'SUC001', name => 'Caja 1', register => false);
SELECT mpqr_add_pos('CL1POS1', 'CL1', 'Caja', account => 'chile', register => false);
SELECT external_id, account, store_external_id, name, status FROM mpqr.pos ORDER BY external_id;
SELECT count(*) AS requests FROM mpqr.requests;
SELECT mpqr_add_pos('SUC001POS001', 'SUC001', 'Caja 1', register => false);
SELECT mpqr_add_pos('SUC001-POS2', 'SUC001', 'Caja 2', register => false);
SELECT mpqr_add_pos(repeat('A', 40), 'SUC001', 'Caja 2', register => false);
SELECT mpqr_add_pos('SUC001POS2', 'SUC001', repeat('n', 45), register => false);
SELECT mpqr_add_pos('SUC001POS2', NULL, 'Caja 2', register => false);
SELECT mpqr_add_pos('SUC001POS2', 'SUC001', 'Caja 2', account => 'nobody', register => false);
-- register => true needs a store mpqr knows
SELECT mpqr_add_pos('SUC009POS1', 'SUC009', 'Caja', account => 'main');

-- clean up for the next test
DROP EXTENSION mpqr CASCADE;
CREATE EXTENSION mpqr;
