/*-------------------------------------------------------------------------
 *
 * sender.c
 *		The "mpqr sender" background worker: drains the outbox of API
 *		requests with libcurl.
 *
 * The sender only moves bytes; what to send and what an answer means are
 * decided by the extension's SQL.  Each turn of the loop:
 *
 *	- waits on one WaitEventSet holding the latch (set by backends at the
 *	  commit of a transaction that queued work), postmaster death and the
 *	  HTTP client's epoll fd, with a timeout taken from curl's timer, the
 *	  poll interval and the recording deadline;
 *	- lets curl do its socket work and collects the finished requests;
 *	- records finished requests with mpqr.record_responses() in one
 *	  transaction, once the batch is done or the oldest outcome is
 *	  RECORD_INTERVAL_MS old, so that a slow request never holds back the
 *	  others;
 *	- about once per mpqr.poll_interval runs mpqr.tick() in a transaction of
 *	  its own;
 *	- when there may be work and fewer than mpqr.max_in_flight requests are
 *	  in flight, claims more with mpqr.claim_requests() in one short
 *	  transaction, and starts them once it has committed.
 *
 * No transaction is ever open while requests are on the wire.  Each unit of
 * work is its own transaction; an error in one is logged, kept as the
 * sender's last error, and followed by a short pause.  A request whose
 * outcome is never recorded (an error, a crash, SIGTERM) is found again by
 * the SQL through its expired lease.
 *
 * The extension may be created, dropped and created again while the worker
 * runs.  Every transaction checks that it exists; outcomes are tagged with
 * the OID of the extension they were claimed under and dropped if it has
 * changed, since request ids start again in a new extension.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "http_client.h"
#include "sender.h"
#include "shmem.h"
#include "worker.h"

#ifndef MPQR_VERSION
#define MPQR_VERSION "0.1.0"
#endif

/* record outcomes at least this often while requests are still running */
#define RECORD_INTERVAL_MS 50

/* attempts to record one set of outcomes before it is given up */
#define RECORD_MAX_TRIES 3

/* pause after a failed unit of work: doubles from min to max */
#define ERROR_DELAY_MIN_MS 250
#define ERROR_DELAY_MAX_MS 10000

#define CLAIM_SQL \
	"SELECT id, method, path, body, token, idempotency_key, attempt " \
	"FROM mpqr.claim_requests($1)"
#define RECORD_SQL "SELECT mpqr.record_responses($1, $2, $3, $4, $5, $6)"
#define TICK_SQL "SELECT mpqr.tick()"

/* one row of mpqr.claim_requests(), copied out of SPI */
typedef struct ClaimedRequest
{
	int64		id;
	char	   *method;
	char	   *path;
	char	   *body;
	char	   *token;
	char	   *idempotency_key;
	int32		attempt;		/* handed back, so a late outcome of an
								 * older attempt is never recorded */
} ClaimedRequest;

/* a pause after failures of one kind of unit of work */
typedef struct Backoff
{
	int			delay_ms;		/* 0 after a success */
	TimestampTz until;			/* no attempt before this */
} Backoff;

typedef struct SenderState
{
	MpqrHttpClient *client;
	WaitEventSet *wait_set;
	MemoryContext loop_cxt;		/* reset at the bottom of every turn */
	MemoryContext results_cxt;	/* outcomes not yet recorded */

	MpqrHttpResult *results;	/* in results_cxt */
	int			nresults;
	int			results_size;
	TimestampTz first_result_at;	/* when the oldest of them finished */
	int			record_failures;

	bool		work_possible;	/* latch set, poll due or last claim full */
	TimestampTz next_poll;
	Backoff		work_backoff;	/* claims and records */
	Backoff		tick_backoff;	/* mpqr.tick(), so that it never starves
								 * the claims */
} SenderState;

PGDLLEXPORT void MpqrSenderMain(Datum main_arg);

/*
 * Register the sender worker.  Called from _PG_init at preload.
 */
void
MpqrSenderRegister(void)
{
	MpqrWorkerRegister("mpqr sender", "MpqrSenderMain");
}

/*
 * on_proc_exit callback: close connections and free what curl holds.
 */
static void
sender_exit(int code, Datum arg)
{
	MpqrHttpDestroy((MpqrHttpClient *) DatumGetPointer(arg));
}

/*
 * Note a failed unit of work: keep its message as the last error and abort
 * the transaction.
 *
 * Caller must be in the PG_CATCH block of the unit; cxt is a context that
 * survives the abort.
 */
static void
unit_failed(MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	MpqrTxCleanupAfterError();
	MpqrWorkerSetError(&MpqrState->sender, edata->message);
	FreeErrorData(edata);
}

/*
 * Pause longer after each consecutive failure, or not at all after a
 * success.
 */
static void
backoff_update(Backoff *b, bool ok)
{
	if (ok)
	{
		b->delay_ms = 0;
		b->until = 0;
		return;
	}
	b->delay_ms = Min(Max(b->delay_ms * 2, ERROR_DELAY_MIN_MS),
					  ERROR_DELAY_MAX_MS);
	b->until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), b->delay_ms);
}

/*
 * Is this kind of unit of work pausing after a failure?
 */
static bool
backoff_active(const Backoff *b, TimestampTz now)
{
	return b->until != 0 && now < b->until;
}

/*
 * The OID of the extension, if it exists and has committed.
 *
 * Caller must be inside a transaction.
 */
static Oid
extension_oid(void)
{
	if (!MpqrExtensionReady())
		return InvalidOid;
	return get_extension_oid("mpqr", true);
}

/*
 * Make room for one more outcome and return it, zeroed.
 */
static MpqrHttpResult *
new_result(SenderState *st)
{
	MpqrHttpResult *r;

	if (st->nresults >= st->results_size)
	{
		int			size = Max(st->results_size * 2, 64);

		if (st->results == NULL)
			st->results = MemoryContextAlloc(st->results_cxt,
											 size * sizeof(MpqrHttpResult));
		else
			st->results = repalloc(st->results, size * sizeof(MpqrHttpResult));
		st->results_size = size;
	}
	if (st->nresults == 0)
		st->first_result_at = GetCurrentTimestamp();
	r = &st->results[st->nresults++];
	memset(r, 0, sizeof(MpqrHttpResult));
	return r;
}

/*
 * Forget every outcome not yet recorded.
 */
static void
discard_results(SenderState *st)
{
	MemoryContextReset(st->results_cxt);
	st->results = NULL;
	st->nresults = 0;
	st->results_size = 0;
	st->record_failures = 0;
}

/*
 * Collect the requests curl has finished, count them, and keep the last
 * failure as the sender's last error.
 */
static void
harvest(SenderState *st)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(st->results_cxt);
	MpqrHttpResult result;
	char		last_error[MPQR_ERROR_LEN];

	last_error[0] = '\0';
	while (MpqrHttpNextResult(st->client, &result))
	{
		MpqrHttpResult *r = new_result(st);

		*r = result;
		MpqrCount(MPQR_CTR_REQUESTS_SENT, 1);
		if (r->status == 0)
		{
			MpqrCount(MPQR_CTR_REQUESTS_NETWORK_ERROR, 1);
			snprintf(last_error, sizeof(last_error), "%s: %s",
					 r->label, r->error);
		}
		else if (r->status >= 200 && r->status <= 299)
			MpqrCount(MPQR_CTR_REQUESTS_2XX, 1);
		else
		{
			if (r->status >= 400 && r->status <= 499)
				MpqrCount(MPQR_CTR_REQUESTS_4XX, 1);
			else if (r->status >= 500)
				MpqrCount(MPQR_CTR_REQUESTS_5XX, 1);
			snprintf(last_error, sizeof(last_error), "%s answered %d",
					 r->label, r->status);
		}
	}
	MemoryContextSwitchTo(oldcxt);

	if (last_error[0] != '\0')
		MpqrWorkerSetError(&MpqrState->sender, last_error);
}

/*
 * Replace every byte that is not part of a valid UTF-8 character (NUL
 * included) with U+FFFD.
 */
static char *
utf8_repair(const char *s, int len, int *newlen)
{
	StringInfoData buf;

	initStringInfo(&buf);
	while (len > 0)
	{
		const unsigned char *u = (const unsigned char *) s;
		int			l = pg_utf_mblen(u);

		if (*u != '\0' && l <= len && pg_utf8_islegal(u, l))
		{
			appendBinaryStringInfo(&buf, s, l);
			s += l;
			len -= l;
		}
		else
		{
			appendBinaryStringInfo(&buf, "\xEF\xBF\xBD", 3);
			s++;
			len--;
		}
	}
	*newlen = buf.len;
	return buf.data;
}

/*
 * A response body as text in the database encoding.  Mercado Pago answers
 * in UTF-8; invalid bytes are replaced rather than failing the batch.
 */
static Datum
body_to_text(const char *body, int len)
{
	const char *s = body;

	if (!pg_verify_mbstr(PG_UTF8, s, len, true))
		s = utf8_repair(body, len, &len);
	if (GetDatabaseEncoding() != PG_UTF8)
	{
		s = pg_any_to_server(s, len, PG_UTF8);
		len = strlen(s);
	}
	return PointerGetDatum(cstring_to_text_with_len(s, len));
}

/*
 * Record the outcomes collected so far with mpqr.record_responses(), in one
 * transaction.
 *
 * Outcomes of requests claimed under another incarnation of the extension
 * are dropped.  If recording fails RECORD_MAX_TRIES times, the outcomes are
 * dropped too, and the leases bring the requests back.
 */
static void
record_results(SenderState *st)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = false;
	volatile int nrecorded = 0;

	PG_TRY();
	{
		Oid			ext;

		MpqrTxBegin(RECORD_SQL);
		ext = extension_oid();
		if (OidIsValid(ext))
		{
			int			n = st->nresults;
			Datum	   *ids = palloc(n * sizeof(Datum));
			Datum	   *statuses = palloc(n * sizeof(Datum));
			Datum	   *bodies = palloc(n * sizeof(Datum));
			bool	   *bodies_null = palloc(n * sizeof(bool));
			Datum	   *errors = palloc(n * sizeof(Datum));
			bool	   *errors_null = palloc(n * sizeof(bool));
			Datum	   *retry = palloc(n * sizeof(Datum));
			bool	   *retry_null = palloc(n * sizeof(bool));
			Datum	   *attempts = palloc(n * sizeof(Datum));
			int			k = 0;

			for (int i = 0; i < n; i++)
			{
				MpqrHttpResult *r = &st->results[i];

				if (r->tag != ext)
					continue;
				ids[k] = Int64GetDatum(r->id);
				statuses[k] = Int32GetDatum(r->status);
				bodies_null[k] = (r->body == NULL);
				bodies[k] = r->body ? body_to_text(r->body, r->body_len) : (Datum) 0;
				errors_null[k] = (r->error == NULL);
				errors[k] = r->error ? CStringGetTextDatum(r->error) : (Datum) 0;
				retry_null[k] = (r->retry_after < 0);
				retry[k] = Int32GetDatum(Max(r->retry_after, 0));
				attempts[k] = Int32GetDatum(r->attempt);
				k++;
			}

			if (k > 0)
			{
				int			dims[1] = {k};
				int			lbs[1] = {1};
				Oid			argtypes[6] = {INT8ARRAYOID, INT4ARRAYOID,
					TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID, INT4ARRAYOID};
				Datum		args[6];
				int			ret;

				args[0] = PointerGetDatum(construct_array(ids, k, INT8OID,
														  sizeof(int64), FLOAT8PASSBYVAL,
														  TYPALIGN_DOUBLE));
				args[1] = PointerGetDatum(construct_array(statuses, k, INT4OID,
														  sizeof(int32), true,
														  TYPALIGN_INT));
				args[2] = PointerGetDatum(construct_md_array(bodies, bodies_null,
															 1, dims, lbs, TEXTOID,
															 -1, false, TYPALIGN_INT));
				args[3] = PointerGetDatum(construct_md_array(errors, errors_null,
															 1, dims, lbs, TEXTOID,
															 -1, false, TYPALIGN_INT));
				args[4] = PointerGetDatum(construct_md_array(retry, retry_null,
															 1, dims, lbs, INT4OID,
															 sizeof(int32), true,
															 TYPALIGN_INT));
				args[5] = PointerGetDatum(construct_array(attempts, k, INT4OID,
														  sizeof(int32), true,
														  TYPALIGN_INT));

				ret = SPI_execute_with_args(RECORD_SQL, 6, argtypes, args, NULL,
											false, 0);
				if (ret != SPI_OK_SELECT)
					elog(ERROR, "SPI_execute_with_args failed: error code %d", ret);
			}
			nrecorded = k;
		}
		MpqrTxCommit();
		ok = true;
	}
	PG_CATCH();
	{
		unit_failed(cxt);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);

	backoff_update(&st->work_backoff, ok);
	if (ok)
	{
		if (nrecorded > 0)
			MpqrCount(MPQR_CTR_SENDER_BATCHES, 1);
		discard_results(st);
	}
	else if (++st->record_failures >= RECORD_MAX_TRIES)
	{
		ereport(LOG,
				(errmsg("dropped the outcomes of %d API requests that could not be recorded",
						st->nresults),
				 errdetail("Their leases will expire and the requests will be checked and sent again.")));
		discard_results(st);
	}
}

/*
 * Run mpqr.tick() in its own transaction.  Returns false only when it found
 * that the extension does not exist.
 */
static bool
run_tick(SenderState *st)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ready = true;
	volatile bool ok = false;

	PG_TRY();
	{
		MpqrTxBegin(TICK_SQL);
		if (!MpqrExtensionReady())
			ready = false;
		else
		{
			int			ret = SPI_execute(TICK_SQL, false, 0);

			if (ret != SPI_OK_SELECT)
				elog(ERROR, "SPI_execute failed: error code %d", ret);
		}
		MpqrTxCommit();
		ok = true;
	}
	PG_CATCH();
	{
		unit_failed(cxt);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);

	backoff_update(&st->tick_backoff, ok);
	return ready;
}

/*
 * Copy a text column of the current SPI row, or NULL.
 */
static char *
spi_text(HeapTuple tuple, TupleDesc desc, int col, MemoryContext cxt)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, col, &isnull);
	MemoryContext oldcxt;
	char	   *s;

	if (isnull)
		return NULL;
	oldcxt = MemoryContextSwitchTo(cxt);
	s = TextDatumGetCString(d);
	MemoryContextSwitchTo(oldcxt);
	return s;
}

/*
 * Claim up to max_rows requests with mpqr.claim_requests(), in one short
 * transaction.  The rows are copied into the current memory context.
 * Returns the number claimed, or -1 after an error; *ext is set to the
 * OID of the extension they were claimed under (InvalidOid if none).
 */
static int
claim(SenderState *st, int max_rows, ClaimedRequest **rows, Oid *ext)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int nrows = -1;
	ClaimedRequest *volatile out = NULL;
	volatile Oid claimed_ext = InvalidOid;

	PG_TRY();
	{
		Oid			ext_now;

		MpqrTxBegin(CLAIM_SQL);
		ext_now = extension_oid();
		if (!OidIsValid(ext_now))
			nrows = 0;
		else
		{
			Oid			argtypes[1] = {INT4OID};
			Datum		args[1] = {Int32GetDatum(max_rows)};
			TupleDesc	desc;
			int			ret;

			ret = SPI_execute_with_args(CLAIM_SQL, 1, argtypes, args, NULL,
										false, 0);
			if (ret != SPI_OK_SELECT)
				elog(ERROR, "SPI_execute_with_args failed: error code %d", ret);

			desc = SPI_tuptable->tupdesc;
			if (desc->natts != 7 ||
				SPI_gettypeid(desc, 1) != INT8OID ||
				SPI_gettypeid(desc, 2) != TEXTOID ||
				SPI_gettypeid(desc, 3) != TEXTOID ||
				SPI_gettypeid(desc, 4) != TEXTOID ||
				SPI_gettypeid(desc, 5) != TEXTOID ||
				SPI_gettypeid(desc, 6) != TEXTOID ||
				SPI_gettypeid(desc, 7) != INT4OID)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("function mpqr.claim_requests returned an unexpected row type")));

			out = MemoryContextAllocZero(cxt, Max(SPI_processed, 1) *
										 sizeof(ClaimedRequest));
			for (uint64 i = 0; i < SPI_processed; i++)
			{
				HeapTuple	tuple = SPI_tuptable->vals[i];
				ClaimedRequest *c = &out[i];
				bool		isnull;

				c->id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
				c->method = spi_text(tuple, desc, 2, cxt);
				c->path = spi_text(tuple, desc, 3, cxt);
				c->body = spi_text(tuple, desc, 4, cxt);
				c->token = spi_text(tuple, desc, 5, cxt);
				c->idempotency_key = spi_text(tuple, desc, 6, cxt);
				c->attempt = DatumGetInt32(SPI_getbinval(tuple, desc, 7, &isnull));
			}
			nrows = (int) SPI_processed;
			claimed_ext = ext_now;
		}
		MpqrTxCommit();
	}
	PG_CATCH();
	{
		unit_failed(cxt);
		nrows = -1;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);

	backoff_update(&st->work_backoff, nrows >= 0);
	*rows = out;
	*ext = claimed_ext;
	return nrows;
}

/*
 * Give a claimed row that cannot be sent an outcome of its own, a network
 * error, so that the SQL retries or fails it.
 */
static void
reject_request(SenderState *st, const ClaimedRequest *c, Oid ext,
			   const char *why)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(st->results_cxt);
	MpqrHttpResult *r = new_result(st);
	char		message[MPQR_ERROR_LEN];

	r->id = c->id;
	r->tag = ext;
	r->attempt = c->attempt;
	r->status = 0;
	r->retry_after = -1;
	r->error = pstrdup(why);
	snprintf(r->label, sizeof(r->label), "request " INT64_FORMAT, c->id);
	MemoryContextSwitchTo(oldcxt);

	snprintf(message, sizeof(message), "%s: %s", r->label, why);
	MpqrWorkerSetError(&MpqrState->sender, message);
}

/*
 * Does a header value hold a line break, which would forge headers?
 */
static bool
bad_header_value(const char *value)
{
	return value != NULL && strpbrk(value, "\r\n") != NULL;
}

/*
 * Start the HTTP request of one claimed row.
 */
static void
start_request(SenderState *st, const ClaimedRequest *c, Oid ext)
{
	const char *headers[6];
	int			nheaders = 0;
	const char *base = mpqr_api_base_url ? mpqr_api_base_url : "";
	int			baselen = strlen(base);
	MpqrHttpRequest req;
	const char *query;
	char	   *label;

	if (c->method == NULL || c->path == NULL || c->path[0] != '/')
	{
		reject_request(st, c, ext,
					   "the request has no method or no path starting with \"/\"");
		return;
	}
	if (bad_header_value(c->token) || bad_header_value(c->idempotency_key))
	{
		reject_request(st, c, ext,
					   "the access token or the idempotency key holds a line break");
		return;
	}

	if (baselen > 0 && base[baselen - 1] == '/')
		baselen--;

	/* the label names the request in errors; the query string is left out */
	query = strchr(c->path, '?');
	label = psprintf("%s %.*s", c->method,
					 query ? (int) (query - c->path) : (int) strlen(c->path),
					 c->path);

	if (c->token != NULL)
		headers[nheaders++] = psprintf("Authorization: Bearer %s", c->token);
	headers[nheaders++] = "Accept: application/json";
	if (c->body != NULL)
		headers[nheaders++] = "Content-Type: application/json";
	if (c->idempotency_key != NULL)
		headers[nheaders++] = psprintf("X-Idempotency-Key: %s", c->idempotency_key);
	headers[nheaders] = NULL;

	memset(&req, 0, sizeof(req));
	req.id = c->id;
	req.tag = ext;
	req.attempt = c->attempt;
	req.method = c->method;
	req.url = psprintf("%.*s%s", baselen, base, c->path);
	req.body = c->body;
	req.headers = headers;
	req.user_agent = "mpqr/" MPQR_VERSION;
	req.label = label;

	MpqrHttpStart(st->client, &req);
}

/*
 * Claim what there is room for, and start it.
 */
static void
claim_and_start(SenderState *st)
{
	int			room = mpqr_max_in_flight - MpqrHttpInFlight(st->client);
	int			want = Min(room, mpqr_batch_size);
	ClaimedRequest *rows;
	Oid			ext;
	int			n;

	n = claim(st, want, &rows, &ext);
	if (n < 0)
		return;					/* try again after the pause */

	/* a full batch means there is probably more */
	st->work_possible = (n == want);

	for (int i = 0; i < n; i++)
		start_request(st, &rows[i], ext);
}

/*
 * Should the sender claim now?  Only when there may be work and there is
 * room.  While requests are in flight it waits for a quarter of
 * mpqr.max_in_flight to free up, so that a backlog is drained in batches
 * rather than one claim transaction per finished request.
 */
static bool
claim_due(SenderState *st, TimestampTz now)
{
	int			in_flight = MpqrHttpInFlight(st->client);
	int			room = mpqr_max_in_flight - in_flight;
	int			min_room = Max(1, Min(mpqr_max_in_flight / 4, mpqr_batch_size));

	if (!st->work_possible || backoff_active(&st->work_backoff, now))
		return false;
	return room > 0 && (in_flight == 0 || room >= min_room);
}

/*
 * Milliseconds to wait for events before the next turn of the loop.
 */
static long
wait_timeout(SenderState *st)
{
	TimestampTz now = GetCurrentTimestamp();
	long		timeout = TimestampDifferenceMilliseconds(now, st->next_poll);
	long		curl_timeout = MpqrHttpTimeout(st->client);

	if (curl_timeout >= 0)
		timeout = Min(timeout, curl_timeout);

	if (backoff_active(&st->work_backoff, now))
		timeout = Min(timeout,
					  TimestampDifferenceMilliseconds(now, st->work_backoff.until));
	else
	{
		if (st->nresults > 0)
		{
			TimestampTz due = TimestampTzPlusMilliseconds(st->first_result_at,
														  RECORD_INTERVAL_MS);

			if (MpqrHttpInFlight(st->client) == 0)
				timeout = 0;
			else
				timeout = Min(timeout, TimestampDifferenceMilliseconds(now, due));
		}
		if (claim_due(st, now))
			timeout = 0;
	}
	return timeout;
}

/*
 * Main entry point of the sender worker.
 */
void
MpqrSenderMain(Datum main_arg)
{
	SenderState st;

	MpqrWorkerStart(&MpqrState->sender);

	memset(&st, 0, sizeof(st));
	st.loop_cxt = AllocSetContextCreate(TopMemoryContext,
										"mpqr sender loop context",
										ALLOCSET_DEFAULT_SIZES);
	st.results_cxt = AllocSetContextCreate(TopMemoryContext,
										   "mpqr sender results",
										   ALLOCSET_DEFAULT_SIZES);
	st.client = MpqrHttpCreate();
	on_proc_exit(sender_exit, PointerGetDatum(st.client));

	st.wait_set = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(st.wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(st.wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(st.wait_set, WL_SOCKET_READABLE,
					  MpqrHttpSocket(st.client), NULL, NULL);

	/* look for work, and tick, right away */
	st.work_possible = true;
	st.next_poll = GetCurrentTimestamp();

	for (;;)
	{
		WaitEvent	events[3];
		int			nevents;
		TimestampTz now;

		nevents = WaitEventSetWait(st.wait_set, wait_timeout(&st), events,
								   lengthof(events), PG_WAIT_EXTENSION);
		for (int i = 0; i < nevents; i++)
		{
			if (events[i].events & WL_LATCH_SET)
			{
				ResetLatch(MyLatch);
				st.work_possible = true;
			}
		}

		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			TimestampTz next;

			MpqrReloadConfigIfPending();
			MpqrHttpConfigure(st.client);
			/* a shorter poll interval applies at once */
			next = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											   mpqr_poll_interval_ms);
			st.next_poll = Min(st.next_poll, next);
		}

		MemoryContextSwitchTo(st.loop_cxt);

		MpqrHttpDrive(st.client);
		harvest(&st);

		now = GetCurrentTimestamp();
		if (st.nresults > 0 && !backoff_active(&st.work_backoff, now) &&
			(MpqrHttpInFlight(st.client) == 0 ||
			 TimestampDifferenceExceeds(st.first_result_at, now,
										RECORD_INTERVAL_MS)))
			record_results(&st);

		now = GetCurrentTimestamp();
		if (now >= st.next_poll)
		{
			st.next_poll = TimestampTzPlusMilliseconds(now, mpqr_poll_interval_ms);
			st.work_possible = true;
			/* the tick also tells whether the extension is there at all */
			if (!backoff_active(&st.tick_backoff, now) && !run_tick(&st))
				st.work_possible = false;
		}

		now = GetCurrentTimestamp();
		if (claim_due(&st, now))
			claim_and_start(&st);

		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(st.loop_cxt);
	}
}
