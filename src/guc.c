/*-------------------------------------------------------------------------
 *
 * guc.c
 *		Every mpqr.* setting.
 *
 * Settings that only the extension's SQL reads (expiry, sweep and retry
 * tuning) are defined here too, so that they exist, are validated and show
 * up in pg_settings; SQL reads them with current_setting().  The prefix is
 * reserved after the last definition: doing it earlier makes the
 * postmaster drop values set in postgresql.conf.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "utils/guc.h"

#include "guc.h"

char	   *mpqr_database = NULL;
char	   *mpqr_api_base_url = NULL;
char	   *mpqr_ca_file = NULL;
int			mpqr_poll_interval_ms = 1000;
int			mpqr_batch_size = 1000;
int			mpqr_max_in_flight = 64;
int			mpqr_http_timeout_ms = 10000;
int			mpqr_connect_timeout_ms = 5000;

char	   *mpqr_listen_address = NULL;
int			mpqr_listen_port = 8484;
int			mpqr_max_body = 64 * 1024;
int			mpqr_signature_policy = MPQR_SIGNATURE_RECORD;
int			mpqr_max_connections = 256;
int			mpqr_connection_timeout_s = 30;
int			mpqr_listen_request_timeout_ms = 5000;
int			mpqr_worker_lock_timeout_ms = 5000;
int			mpqr_worker_statement_timeout_ms = 10000;

/* read by the extension's SQL only */
static char *public_url = NULL;
static int	default_expires_in_s = 10 * 60;
static int	reconcile_interval_s = 60;
static int	late_payment_grace_s = 60 * 60;
static int	max_attempts = 10;
static int	retry_base_delay_ms = 1000;
static int	retry_max_delay_s = 300;
static int	request_lease_s = 60;
static int	signature_tolerance_s = 300;
static int	unknown_fetch_rate = 10;
static int	sweep_rate = 20;
static int	fast_check_after_s = 30;
static int	fast_check_interval_s = 5;
static int	retention_min = 90 * 24 * 60;
static int	fetch_debounce_ms = 1000;
static int	unknown_fetch_per_order = 8;
static int	catchup_interval_s = 300;

static const struct config_enum_entry signature_policy_options[] = {
	{"enforce", MPQR_SIGNATURE_ENFORCE, false},
	{"record", MPQR_SIGNATURE_RECORD, false},
	{NULL, 0, false}
};

/*
 * Define every mpqr.* setting.
 */
void
MpqrGucInit(void)
{
	DefineCustomStringVariable("mpqr.database",
							   "Database that the mpqr background workers serve.",
							   NULL,
							   &mpqr_database,
							   "postgres",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("mpqr.api_base_url",
							   "Base URL of the Mercado Pago API.",
							   "Tests point it at a simulator.",
							   &mpqr_api_base_url,
							   "https://api.mercadopago.com",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("mpqr.ca_file",
							   "CA bundle used instead of the system one to verify the API's TLS certificate.",
							   "Empty means the system CAs.",
							   &mpqr_ca_file,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("mpqr.listen_address",
							   "Address the notification listener binds to.",
							   NULL,
							   &mpqr_listen_address,
							   "127.0.0.1",
							   PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.listen_port",
							"TCP port of the notification listener.",
							"0 picks a free port; mpqr_status() shows the port bound.",
							&mpqr_listen_port,
							8484, 0, 65535,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("mpqr.public_url",
							   "Public base URL where Mercado Pago reaches the listener.",
							   "Orders are sent with notification_url = public_url || '/notifications?account=' || account.",
							   &public_url,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.max_body",
							"Largest notification body the listener accepts.",
							NULL,
							&mpqr_max_body,
							64 * 1024, 1024, 16 * 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("mpqr.signature_policy",
							 "What the listener does with a webhook whose signature is wrong.",
							 "record (the default) stores it as invalid and still fetches, under the rate limits; enforce answers 401 and stores nothing, also for an unsigned webhook of an account with a secret.",
							 &mpqr_signature_policy,
							 MPQR_SIGNATURE_RECORD,
							 signature_policy_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.signature_tolerance",
							"Age of a signature timestamp above which a valid signature is stored as stale.",
							NULL,
							&signature_tolerance_s,
							300, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.max_connections",
							"Most connections the listener keeps open at once.",
							NULL,
							&mpqr_max_connections,
							256, 4, 10000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.connection_timeout",
							"Idle time after which the listener closes a connection.",
							NULL,
							&mpqr_connection_timeout_s,
							30, 1, 3600,
							PGC_POSTMASTER, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.listen_request_timeout",
							"Longest time the listener waits for a whole request to arrive.",
							"Counted from the connection's accept for its first request, and from the request line for later ones; headers and body included.",
							&mpqr_listen_request_timeout_ms,
							5000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.worker_lock_timeout",
							"lock_timeout of the workers' transactions.",
							NULL,
							&mpqr_worker_lock_timeout_ms,
							5000, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.worker_statement_timeout",
							"Statement timeout the workers arm for each of their transactions.",
							NULL,
							&mpqr_worker_statement_timeout_ms,
							10000, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.default_expires_in",
							"Expiry of orders put without expires_in.",
							"Static QR orders live at most 10 minutes at Mercado Pago: a longer default is cut to that for them.",
							&default_expires_in_s,
							10 * 60, 30, 3600 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.poll_interval",
							"The sender's safety-net poll when no commit woke it.",
							"It polls only while requests are queued or in flight: an idle sender sleeps until a commit wakes it or something is due.",
							&mpqr_poll_interval_ms,
							1000, 10, 60 * 60 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.reconcile_interval",
							"How often open orders past the fast window are re-checked.",
							NULL,
							&reconcile_interval_s,
							60, 1, 24 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.late_payment_grace",
							"How long cancelled, superseded and expired orders are still watched for late money.",
							NULL,
							&late_payment_grace_s,
							60 * 60, 0, 30 * 24 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.fast_check_after",
							"Age after which an open order without news is checked every mpqr.fast_check_interval.",
							NULL,
							&fast_check_after_s,
							30, 1, 24 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.fast_check_interval",
							"Interval of the checks of open orders younger than their expiry.",
							NULL,
							&fast_check_interval_s,
							5, 1, 24 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.unknown_fetch_rate",
							"Fetches per second allowed for resources mpqr does not know, shared by all notifications.",
							NULL,
							&unknown_fetch_rate,
							10, 1, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.unknown_fetch_per_order",
							"Fetches of resources mpqr has not seen yet that each order waiting for news adds to their budget.",
							NULL,
							&unknown_fetch_per_order,
							8, 0, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.fetch_debounce",
							"News of a resource fetched less than this ago makes one more fetch after this window, not one each.",
							NULL,
							&fetch_debounce_ms,
							1000, 0, 60 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.catchup_interval",
							"How often each account searches its payments by date_last_updated, for what notifications missed.",
							NULL,
							&catchup_interval_s,
							300, 10, 24 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.sweep_rate",
							"Status checks per second that the reconciliation sweep may queue.",
							NULL,
							&sweep_rate,
							20, 1, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.batch_size",
							"Most requests the sender claims at once.",
							NULL,
							&mpqr_batch_size,
							1000, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.max_in_flight",
							"Most API requests the sender has in flight at once.",
							NULL,
							&mpqr_max_in_flight,
							64, 1, 4096,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.http_timeout",
							"Total time allowed for one API request.",
							NULL,
							&mpqr_http_timeout_ms,
							10000, 100, 10 * 60 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.connect_timeout",
							"Time allowed to connect to the API.",
							NULL,
							&mpqr_connect_timeout_ms,
							5000, 100, 10 * 60 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.max_attempts",
							"Attempts of a retryable API request before it is given up and shown as stuck.",
							NULL,
							&max_attempts,
							10, 1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.retry_base_delay",
							"First retry delay of a failed API request; it doubles with each attempt, with jitter.",
							NULL,
							&retry_base_delay_ms,
							1000, 10, 60 * 60 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.retry_max_delay",
							"Longest delay between two attempts of an API request.",
							NULL,
							&retry_max_delay_s,
							300, 1, 24 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.request_lease",
							"How long a claimed request stays with the sender before it counts as possibly sent.",
							NULL,
							&request_lease_s,
							60, 5, 24 * 60 * 60,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("mpqr.retention",
							"Age after which finished requests and handled notifications are deleted.",
							NULL,
							&retention_min,
							90 * 24 * 60, 60, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MIN,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("mpqr");
}
