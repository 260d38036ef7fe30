/*-------------------------------------------------------------------------
 *
 * sender.c
 *		The "mpqr sender" background worker: drains the outbox of API
 *		requests with libcurl, and runs the periodic duties.
 *
 * The sender only moves bytes; what to send and what an answer means are
 * decided by the extension's SQL (sql/code/30_outbox.sql), through the
 * typed contract of outbox_sql.c.  Each turn of the loop:
 *
 *	- waits on one WaitEventSet holding the latch (set at the commit of a
 *	  transaction that queued work), postmaster death and the HTTP client's
 *	  epoll fd, until curl's timer, the next due request, the next tick, or
 *	  a unit's backoff; with nothing due it sleeps until woken;
 *	- lets curl do its socket work and collects the finished requests;
 *	- records them with mpqr.record_responses() in one transaction, as soon
 *	  as nothing else is in flight or the oldest is RECORD_INTERVAL_MS old;
 *	- runs mpqr.tick() when it is due (it says when it is next due);
 *	- when there may be work and there is room, claims more with
 *	  mpqr.claim_requests() in one short transaction, and starts them once
 *	  it has committed.
 *
 * No transaction is ever open while requests are on the wire.  Every unit
 * of work goes through MpqrRunUnit() (worker.c), which takes the
 * extension's lock first; a unit that fails is retried after a pause that
 * doubles up to ERROR_DELAY_MAX_MS.
 *
 * Each start of the worker is an incarnation, with a random id that its
 * claims carry as the lease's owner.  The first claim of an incarnation
 * recovers at once every request a dead one held (they may have been sent:
 * the SQL checks before sending again where that matters), so a crash
 * costs seconds, not a lease.
 *
 * The extension may be created, dropped and created again while the worker
 * runs.  Outcomes are tagged with the OID of the extension they were
 * claimed under and dropped if it has changed, since request ids start
 * again in a new extension.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "http_client.h"
#include "outbox_sql.h"
#include "sender.h"
#include "shmem.h"
#include "worker.h"

#ifndef MPQR_VERSION
#define MPQR_VERSION "0.2.0"
#endif

/* record outcomes at least this often while requests are still running */
#define RECORD_INTERVAL_MS 10

/* attempts to record one set of outcomes before it is given up */
#define RECORD_MAX_TRIES 3

/* pause after a failed unit of work: doubles from min to max */
#define ERROR_DELAY_MIN_MS 250
#define ERROR_DELAY_MAX_MS 10000

/* while the extension is not ready: look again this often */
#define NOT_READY_RECHECK_MS 5000

/*
 * A commit that woke the sender may have changed what the tick schedules
 * (an order put, an account added): it runs again within this, but never
 * more often, however many commits wake the sender.
 */
#define TICK_AFTER_WAKE_MS 1000

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
	int64		incarnation;	/* this start's id, the owner of its leases */

	MpqrHttpResult *results;	/* in results_cxt */
	int			nresults;
	int			results_size;
	TimestampTz first_result_at;	/* when the oldest of them finished */
	int			record_failures;

	bool		ready;			/* the extension was ready at the last unit */
	bool		work_possible;	/* latch set, or the last claim was full */
	TimestampTz outbox_due;		/* when the next delayed request is due */
	TimestampTz tick_due;		/* when mpqr.tick() is due */
	TimestampTz last_tick_at;	/* when it last ran */
	TimestampTz poll_due;		/* the safety net, while the outbox is busy */
	Backoff		work_backoff;	/* claims and records */
	Backoff		tick_backoff;	/* mpqr.tick(), so that it never starves
								 * the claims */
} SenderState;

/* what one claim unit hands back */
typedef struct ClaimUnit
{
	SenderState *st;
	int			want;
	int			n;
	Oid			ext;
	MpqrClaimedRequest *rows;
} ClaimUnit;

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
	b->delay_ms = Min(Max(b->delay_ms * 2, ERROR_DELAY_MIN_MS), ERROR_DELAY_MAX_MS);
	b->until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), b->delay_ms);
}

static bool
backoff_active(const Backoff *b, TimestampTz now)
{
	return b->until != 0 && now < b->until;
}

/*
 * Note whether the extension was ready in the last unit; when it was not,
 * look again later even if nothing wakes the sender (a restore that ends,
 * say).
 */
static void
note_ready(SenderState *st, Oid ext)
{
	st->ready = OidIsValid(ext);
	if (!st->ready)
	{
		TimestampTz again = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														NOT_READY_RECHECK_MS);

		st->tick_due = Min(st->tick_due, again);
	}
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
			st->results = MemoryContextAlloc(st->results_cxt, size * sizeof(MpqrHttpResult));
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
			snprintf(last_error, sizeof(last_error), "%s: %s", r->label, r->error);
		}
		else if (r->status >= 200 && r->status <= 299)
			MpqrCount(MPQR_CTR_REQUESTS_2XX, 1);
		else
		{
			if (r->status >= 400 && r->status <= 499)
				MpqrCount(MPQR_CTR_REQUESTS_4XX, 1);
			else if (r->status >= 500)
				MpqrCount(MPQR_CTR_REQUESTS_5XX, 1);
			snprintf(last_error, sizeof(last_error), "%s answered %d", r->label, r->status);
		}
	}
	MemoryContextSwitchTo(oldcxt);

	if (last_error[0] != '\0')
		MpqrWorkerSetError(&MpqrState->sender, last_error);
}

/*
 * Give a claimed row an outcome without sending it: skipped (nothing to
 * send), or a network error (it could not be started; the SQL retries it,
 * checking first where that matters).
 */
static void
local_outcome(SenderState *st, const MpqrClaimedRequest *c, Oid ext, int status,
			  const char *why)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(st->results_cxt);
	MpqrHttpResult *r = new_result(st);

	r->id = c->id;
	r->tag = ext;
	r->attempt = c->attempt;
	r->status = status;
	r->retry_after = -1;
	r->error = why ? pstrdup(why) : NULL;
	snprintf(r->label, sizeof(r->label), "request " INT64_FORMAT, c->id);
	MemoryContextSwitchTo(oldcxt);
	if (status == MPQR_OUTCOME_NETWORK_ERROR)
	{
		char		message[MPQR_ERROR_LEN];

		snprintf(message, sizeof(message), "%s: %s", r->label, why);
		MpqrWorkerSetError(&MpqrState->sender, message);
	}
}

/*
 * The body of a record unit.
 */
static void
record_body(Oid ext, void *arg)
{
	SenderState *st = (SenderState *) arg;

	note_ready(st, ext);
	if (OidIsValid(ext) &&
		MpqrRecordResponses(st->results, st->nresults, ext, st->incarnation) > 0)
		MpqrCount(MPQR_CTR_SENDER_BATCHES, 1);
}

/*
 * Record the outcomes collected so far, in one transaction.  If that fails
 * RECORD_MAX_TRIES times, they are dropped, and the leases bring the
 * requests back.
 */
static void
record_results(SenderState *st)
{
	bool		ok = MpqrRunUnit(&MpqrState->sender, "mpqr sender: recording outcomes",
								 record_body, st, NULL) == 0;

	backoff_update(&st->work_backoff, ok);
	if (ok)
	{
		discard_results(st);
		/* answers free serial successors and queue follow-ups */
		st->work_possible = true;
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
 * The body of a tick unit.
 */
static void
tick_body(Oid ext, void *arg)
{
	SenderState *st = (SenderState *) arg;

	note_ready(st, ext);
	if (OidIsValid(ext))
	{
		TimestampTz next = MpqrTick();
		TimestampTz soon = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 10);

		st->tick_due = (next == DT_NOEND) ? DT_NOEND : Max(next, soon);
	}
	else if (st->tick_due == DT_NOEND)
		st->tick_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), NOT_READY_RECHECK_MS);
}

/*
 * Run mpqr.tick() in its own transaction.
 */
static void
run_tick(SenderState *st)
{
	TimestampTz prev_due = st->tick_due;
	bool		ok;

	st->tick_due = DT_NOEND;
	st->last_tick_at = GetCurrentTimestamp();
	ok = MpqrRunUnit(&MpqrState->sender, "mpqr sender: periodic duties", tick_body, st,
					 NULL) == 0;
	backoff_update(&st->tick_backoff, ok);
	if (!ok)
		st->tick_due = Max(prev_due, st->tick_backoff.until);
}

/*
 * The body of a claim unit.
 */
static void
claim_body(Oid ext, void *arg)
{
	ClaimUnit  *u = (ClaimUnit *) arg;

	note_ready(u->st, ext);
	u->ext = ext;
	u->n = 0;
	if (!OidIsValid(ext))
		return;
	u->n = MpqrClaimRequests(u->want, u->st->incarnation, &u->rows);
	if (u->n < u->want)
		u->st->outbox_due = MpqrOutboxNextDue();
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
 * Start the HTTP request of one claimed row, or give it an outcome of its
 * own when it cannot be sent.
 */
static void
start_request(SenderState *st, const MpqrClaimedRequest *c, Oid ext)
{
	const char *headers[16];
	int			nheaders = 0;
	const char *base = mpqr_api_base_url ? mpqr_api_base_url : "";
	int			baselen = strlen(base);
	MpqrHttpRequest req;
	const char *query;
	char		error[MPQR_ERROR_LEN];

	if (c->method == NULL)
	{
		local_outcome(st, c, ext, MPQR_OUTCOME_SKIPPED, NULL);
		return;
	}
	if (c->path == NULL || c->path[0] != '/')
	{
		local_outcome(st, c, ext, MPQR_OUTCOME_NETWORK_ERROR,
					  "the request has no path starting with \"/\"");
		return;
	}
	if (bad_header_value(c->token) || bad_header_value(c->idempotency_key) ||
		c->nheaders > 8)
	{
		local_outcome(st, c, ext, MPQR_OUTCOME_NETWORK_ERROR,
					  "the request's headers hold a line break, or are too many");
		return;
	}
	for (int i = 0; i < c->nheaders; i++)
	{
		if (bad_header_value(c->headers[i]))
		{
			local_outcome(st, c, ext, MPQR_OUTCOME_NETWORK_ERROR,
						  "the request's headers hold a line break");
			return;
		}
	}

	if (baselen > 0 && base[baselen - 1] == '/')
		baselen--;

	if (c->token != NULL)
		headers[nheaders++] = psprintf("Authorization: Bearer %s", c->token);
	headers[nheaders++] = "Accept: application/json";
	if (c->body != NULL)
		headers[nheaders++] = "Content-Type: application/json";
	if (c->idempotency_key != NULL)
		headers[nheaders++] = psprintf("X-Idempotency-Key: %s", c->idempotency_key);
	for (int i = 0; i < c->nheaders; i++)
		headers[nheaders++] = c->headers[i];
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
	/* the label names the request in errors; the query string is left out */
	query = strchr(c->path, '?');
	req.label = psprintf("%s %.*s", c->method,
						 query ? (int) (query - c->path) : (int) strlen(c->path), c->path);

	if (!MpqrHttpStart(st->client, &req, error, sizeof(error)))
		local_outcome(st, c, ext, MPQR_OUTCOME_NETWORK_ERROR, error);
}

/*
 * Claim what there is room for, and start it.
 */
static void
claim_and_start(SenderState *st)
{
	ClaimUnit	u;
	bool		ok;

	memset(&u, 0, sizeof(u));
	u.st = st;
	u.want = Min(mpqr_max_in_flight - MpqrHttpInFlight(st->client), mpqr_batch_size);
	st->outbox_due = DT_NOEND;
	ok = MpqrRunUnit(&MpqrState->sender, "mpqr sender: claiming requests", claim_body, &u,
					 NULL) == 0;
	backoff_update(&st->work_backoff, ok);
	if (!ok)
		return;					/* try again after the pause */

	/* a full batch means there is probably more */
	st->work_possible = (u.n == u.want);
	for (int i = 0; i < u.n; i++)
		start_request(st, &u.rows[i], u.ext);
	if (u.n > 0 || MpqrHttpInFlight(st->client) > 0)
		st->poll_due = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), mpqr_poll_interval_ms);
	else
		st->poll_due = DT_NOEND;
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

	if (backoff_active(&st->work_backoff, now) || !st->ready)
		return false;
	if (!st->work_possible && now < st->outbox_due && now < st->poll_due)
		return false;
	return room > 0 && (in_flight == 0 || room >= min_room);
}

/*
 * Should the outcomes collected so far be recorded now?
 */
static bool
record_due(SenderState *st, TimestampTz now)
{
	if (st->nresults == 0 || backoff_active(&st->work_backoff, now))
		return false;
	return MpqrHttpInFlight(st->client) == 0 ||
		TimestampDifferenceExceeds(st->first_result_at, now, RECORD_INTERVAL_MS);
}

/*
 * Milliseconds until a time, at least 0; -1 for DT_NOEND.
 */
static long
ms_until(TimestampTz now, TimestampTz when)
{
	if (when == DT_NOEND)
		return -1;
	return TimestampDifferenceMilliseconds(now, when);
}

/*
 * The shorter of two timeouts, where -1 means none.
 */
static long
min_timeout(long a, long b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return Min(a, b);
}

/*
 * Milliseconds to wait for events before the next turn of the loop; -1
 * when nothing is due at all.
 */
static long
wait_timeout(SenderState *st)
{
	TimestampTz now = GetCurrentTimestamp();
	long		timeout = MpqrHttpTimeout(st->client);

	if (record_due(st, now) || claim_due(st, now))
		return 0;
	if (st->nresults > 0)
		timeout = min_timeout(timeout,
							  backoff_active(&st->work_backoff, now)
							  ? ms_until(now, st->work_backoff.until)
							  : ms_until(now, TimestampTzPlusMilliseconds(st->first_result_at,
																		  RECORD_INTERVAL_MS)));
	timeout = min_timeout(timeout, ms_until(now, Max(st->tick_due, st->tick_backoff.until)));
	if (st->ready)
	{
		TimestampTz due = Min(st->outbox_due, st->poll_due);

		if (due != DT_NOEND)
			timeout = min_timeout(timeout, ms_until(now, Max(due, st->work_backoff.until)));
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
	if (!pg_strong_random(&st.incarnation, sizeof(st.incarnation)))
		st.incarnation = ((int64) MyProcPid << 32) ^ (int64) GetCurrentTimestamp();
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
	AddWaitEventToSet(st.wait_set, WL_SOCKET_READABLE, MpqrHttpSocket(st.client), NULL, NULL);

	/* look for work, and tick, right away */
	st.ready = true;
	st.work_possible = true;
	st.outbox_due = DT_NOEND;
	st.poll_due = DT_NOEND;
	st.tick_due = GetCurrentTimestamp();

	for (;;)
	{
		WaitEvent	events[3];
		int			nevents;
		TimestampTz now;

		nevents = WaitEventSetWait(st.wait_set, wait_timeout(&st), events,
								   lengthof(events), PG_WAIT_EXTENSION);
		for (int i = 0; i < nevents; i++)
		{
			if ((events[i].events & WL_LATCH_SET) != 0)
				ResetLatch(MyLatch);
			if ((events[i].events & WL_LATCH_SET) != 0 && MpqrSenderWasWoken())
			{
				/* a commit queued work, or the extension appeared */
				st.work_possible = true;
				if (!st.ready)
					st.tick_due = GetCurrentTimestamp();
				else
					st.tick_due = Min(st.tick_due,
									  TimestampTzPlusMilliseconds(st.last_tick_at,
																  TICK_AFTER_WAKE_MS));
			}
		}

		CHECK_FOR_INTERRUPTS();

		if (ConfigReloadPending)
		{
			MpqrReloadConfigIfPending();
			MpqrHttpConfigure(st.client);
			/* settings the tick reads may have changed */
			st.tick_due = GetCurrentTimestamp();
		}

		MemoryContextSwitchTo(st.loop_cxt);

		MpqrHttpDrive(st.client);
		harvest(&st);

		now = GetCurrentTimestamp();
		if (record_due(&st, now))
			record_results(&st);

		now = GetCurrentTimestamp();
		if (now >= st.tick_due && !backoff_active(&st.tick_backoff, now))
			run_tick(&st);

		now = GetCurrentTimestamp();
		if (claim_due(&st, now))
			claim_and_start(&st);

		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(st.loop_cxt);
	}
}
