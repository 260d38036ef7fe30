/*-------------------------------------------------------------------------
 *
 * listener.c
 *		The "mpqr listener" background worker: receives Mercado Pago's
 *		notifications over HTTP and stores them with group commit.
 *
 * One process, one loop.  The worker waits on its latch, postmaster death
 * and the epoll fd of its libmicrohttpd daemon (listener_http.c), never
 * longer than the daemon allows.  Each run of the daemon leaves the
 * complete requests in a pending list, their connections suspended.  The
 * worker then stores the whole batch in one transaction, one call of
 * mpqr.ingest_notification() per request through SPI, commits with
 * synchronous commit, and only then queues each answer and resumes its
 * connection; then it runs the daemon again at once, since a resume does
 * not wake the loop.  So a 200 always means the row is on disk, and the
 * batch costs one WAL flush however many requests it holds.
 *
 * What the SQL function answers is the HTTP status: 200 stored, 401 a
 * wrong signature under mpqr.signature_policy = enforce, 400 malformed.
 * If a request's data makes the transaction fail (bad JSON: class 22; JSON
 * nested too deep: class 54), the batch is redone with one subtransaction
 * per request, so that only the bad ones get 400; that is not logged, since
 * anyone can send bad JSON.  Any other failure (a lock or statement
 * timeout, a read-only database) is logged and answers the whole batch 503,
 * and Mercado Pago retries.  Until the extension exists, every
 * notification gets 503, with one LOG line when that starts and one when
 * it ends.  GET /healthz rides in the same batches: 200 when the batch
 * transaction could store and committed, else 503.
 *
 * No PostgreSQL error may unwind through libmicrohttpd's frames: all the
 * database work happens here, after MHD_run() has returned.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <netdb.h>
#include <sys/socket.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "guc.h"
#include "listener.h"
#include "listener_http.h"
#include "shmem.h"
#include "worker.h"

PGDLLEXPORT void MpqrListenerMain(Datum main_arg) pg_attribute_noreturn();

/* how often to retry a failed bind, and to repeat its WARNING */
#define BIND_RETRY_MS			5000
#define BIND_WARNING_MS			60000

/* at most one WARNING a minute about rejected signatures */
#define REJECTION_WARNING_MS	60000

/* libmicrohttpd messages logged per minute, at most */
#define HTTP_LOG_LINES_PER_MIN	10

#define INGEST_QUERY \
	"SELECT mpqr.ingest_notification($1, $2, $3, $4, $5)"

static SPIPlanPtr ingest_plan = NULL;

/* readiness as last seen: -1 unknown, 0 answering 503, 1 storing */
static int	last_ready = -1;

/* signature rejections not yet reported in the log */
static uint64 rejected_unreported = 0;
static TimestampTz rejected_reported_at = 0;

/* rate limit of libmicrohttpd's messages */
static TimestampTz http_log_window_start = 0;
static int	http_log_lines_in_window = 0;
static unsigned long http_log_suppressed = 0;

/*
 * Register the listener worker.  Called from _PG_init.
 */
void
MpqrListenerRegister(void)
{
	MpqrWorkerRegister("mpqr listener", "MpqrListenerMain");
}

/*
 * Forget the bound port when the worker exits.
 */
static void
clear_listen_port(int code, Datum arg)
{
	SpinLockAcquire(&MpqrState->mutex);
	MpqrState->listen_port = 0;
	SpinLockRelease(&MpqrState->mutex);
}

/*
 * Write libmicrohttpd's messages to the server log, at most
 * HTTP_LOG_LINES_PER_MIN a minute; the rest are counted and the count is
 * logged when the next minute starts.
 */
static void
log_http_messages(void)
{
	const char *line;
	unsigned long dropped = MpqrHttpdLogLinesDropped();
	TimestampTz now = 0;

	http_log_suppressed += dropped;
	while ((line = MpqrHttpdNextLogLine()) != NULL)
	{
		if (now == 0)
			now = GetCurrentTimestamp();
		if (TimestampDifferenceExceeds(http_log_window_start, now, 60000))
		{
			if (http_log_suppressed > 0)
				ereport(LOG,
						(errmsg("%lu more messages of the HTTP server were not logged",
								http_log_suppressed)));
			http_log_window_start = now;
			http_log_lines_in_window = 0;
			http_log_suppressed = 0;
		}
		if (http_log_lines_in_window++ < HTTP_LOG_LINES_PER_MIN)
			ereport(LOG, (errmsg("HTTP server: %s", line)));
		else
			http_log_suppressed++;
	}
}

/*
 * Resolve mpqr.listen_address and mpqr.listen_port into addr.  An empty
 * address or "*" means every IPv4 interface.
 */
static bool
resolve_listen_address(struct sockaddr_storage *addr, const char **reason)
{
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	char		port[16];
	const char *host = mpqr_listen_address;
	int			rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if (host == NULL || host[0] == '\0' || strcmp(host, "*") == 0)
	{
		host = NULL;
		hints.ai_family = AF_INET;
	}
	snprintf(port, sizeof(port), "%d", mpqr_listen_port);

	rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0 || res == NULL)
	{
		*reason = gai_strerror(rc);
		return false;
	}
	memset(addr, 0, sizeof(*addr));
	memcpy(addr, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	return true;
}

/*
 * Tell PostgreSQL's fd accounting about the daemon's sockets, which it
 * cannot see: one per connection, plus the listen socket, the epoll fd and
 * the resume eventfd.  Returns the connection limit that fits.
 */
static unsigned int
reserve_fds(unsigned int limit)
{
	unsigned int want = limit + 3;
	unsigned int got = 0;

	while (got < want && AcquireExternalFD())
		got++;
	if (got < want)
	{
		unsigned int fits = got > 4 ? got - 3 : 1;

		ereport(WARNING,
				(errmsg("listener limited to %u connections instead of %u",
						fits, limit),
				 errdetail("The server's limit on open files leaves room for %u more.",
						   got),
				 errhint("Lower \"mpqr.max_connections\", or raise \"max_files_per_process\" and the operating system's limit.")));
		limit = fits;
	}
	return limit;
}

/*
 * Bind the HTTP daemon, retrying every few seconds while the address is
 * taken, and publish the port in shared memory.
 */
static void
start_http(void)
{
	unsigned int limit = reserve_fds((unsigned int) mpqr_max_connections);
	TimestampTz warned_at = 0;
	int			port;

	for (;;)
	{
		struct sockaddr_storage addr;
		const char *reason = NULL;
		const char *line;
		char		detail[256];
		char		message[MPQR_ERROR_LEN];

		detail[0] = '\0';
		if (resolve_listen_address(&addr, &reason) &&
			MpqrHttpdStart((struct sockaddr *) &addr, limit,
						  (unsigned int) mpqr_connection_timeout_s))
			break;

		while ((line = MpqrHttpdNextLogLine()) != NULL)
			strlcpy(detail, line, sizeof(detail));
		if (reason != NULL)
			strlcpy(detail, reason, sizeof(detail));

		if (warned_at == 0 ||
			TimestampDifferenceExceeds(warned_at, GetCurrentTimestamp(),
									   BIND_WARNING_MS))
		{
			ereport(WARNING,
					(errmsg("could not listen for notifications on \"%s\" port %d",
							mpqr_listen_address, mpqr_listen_port),
					 detail[0] ? errdetail("%s", detail) : 0,
					 errhint("The listener retries every %d seconds.",
							 BIND_RETRY_MS / 1000)));
			warned_at = GetCurrentTimestamp();
		}
		snprintf(message, sizeof(message), "could not listen on \"%s\" port %d: %s",
				 mpqr_listen_address, mpqr_listen_port, detail);
		MpqrWorkerSetError(&MpqrState->listener, message);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 BIND_RETRY_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		MpqrReloadConfigIfPending();
	}
	log_http_messages();

	port = MpqrHttpdPort();
	SpinLockAcquire(&MpqrState->mutex);
	MpqrState->listen_port = port;
	SpinLockRelease(&MpqrState->mutex);

	ereport(LOG,
			(errmsg("listening for notifications on \"%s\" port %d",
					mpqr_listen_address, port)));
}

/*
 * Can a notification be stored right now?  ext is what the unit found (see
 * MpqrRunUnit); logs when the answer changes.
 *
 * Caller must be inside the batch transaction.
 */
static bool
database_ready(Oid ext)
{
	const char *why = NULL;

	if (!OidIsValid(ext))
		why = MpqrNotReadyReason();
	else if (XactReadOnly)
		why = "transactions are read-only";

	if (why != NULL && last_ready != 0)
		ereport(LOG,
				(errmsg("listener answers notifications with 503 until it can store them"),
				 errdetail("In database \"%s\", %s.", mpqr_database, why)));
	else if (why == NULL && last_ready == 0)
		ereport(LOG,
				(errmsg("listener stores notifications again")));
	last_ready = (why == NULL);
	return why == NULL;
}

/*
 * Does this error come from one request's data, so that the batch should
 * be redone request by request?  Data exceptions (class 22: bad JSON, bad
 * encoding, out-of-range numbers) and program limits (class 54: JSON
 * nested too deep for the stack) do; anything else is the database's
 * trouble, and answers the whole batch 503.
 */
static bool
is_request_error(int sqlerrcode)
{
	int			category = ERRCODE_TO_CATEGORY(sqlerrcode);

	return category == ERRCODE_DATA_EXCEPTION ||
		category == ERRCODE_PROGRAM_LIMIT_EXCEEDED;
}

/*
 * Build a text[] of the names (or the values) of n fields, leaving out
 * those marked in skip.
 */
static Datum
fields_array(const MpqrRequest *req, const MpqrField *fields, int n,
			 const bool *skip, bool values)
{
	Datum	   *elems = palloc(sizeof(Datum) * (n + 1));
	bool	   *nulls = palloc(sizeof(bool) * (n + 1));
	int			count = 0;
	int			dims[1];
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
	{
		const char *s;
		size_t		len;

		if (skip[i])
			continue;
		s = values ? MpqrFieldValue(req, &fields[i]) : MpqrFieldName(req, &fields[i]);
		len = values ? fields[i].value_len : fields[i].name_len;
		nulls[count] = (s == NULL);
		elems[count] = s ? PointerGetDatum(cstring_to_text_with_len(s, len)) : (Datum) 0;
		count++;
	}
	dims[0] = count;
	if (count == 0)
		return PointerGetDatum(construct_empty_array(TEXTOID));
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs,
											  TEXTOID, -1, false,
											  TYPALIGN_INT));
}

static bool
valid_text(const char *s, size_t len)
{
	return s == NULL || pg_verifymbstr(s, (int) len, true);
}

/*
 * Turn a request into the five arguments of mpqr.ingest_notification().
 * Returns false when the request cannot be stored as text: a query
 * argument or a body that is not valid in the database encoding (or holds
 * a NUL byte).  Headers that are not valid are left out.
 */
static bool
ingest_arguments(const MpqrRequest *req, Datum *values, char *nulls)
{
	bool		skip_query[MPQR_REQUEST_MAX_QUERY];
	bool		skip_headers[MPQR_REQUEST_MAX_HEADERS];

	if (req->body_len > (size_t) MaxAllocSize - VARHDRSZ ||
		!valid_text(req->body, req->body_len))
		return false;
	for (int i = 0; i < req->nquery; i++)
	{
		const MpqrField *f = &req->query[i];

		if (!valid_text(MpqrFieldName(req, f), f->name_len) ||
			!valid_text(MpqrFieldValue(req, f), f->value_len))
			return false;
		skip_query[i] = false;
	}
	for (int i = 0; i < req->nheaders; i++)
	{
		const MpqrField *f = &req->headers[i];

		skip_headers[i] = !valid_text(MpqrFieldName(req, f), f->name_len) ||
			!valid_text(MpqrFieldValue(req, f), f->value_len);
	}

	values[0] = fields_array(req, req->query, req->nquery, skip_query, false);
	values[1] = fields_array(req, req->query, req->nquery, skip_query, true);
	values[2] = fields_array(req, req->headers, req->nheaders, skip_headers, false);
	values[3] = fields_array(req, req->headers, req->nheaders, skip_headers, true);
	memset(nulls, ' ', 5);
	if (req->body_len > 0)
		values[4] = PointerGetDatum(cstring_to_text_with_len(req->body,
															 req->body_len));
	else
	{
		values[4] = (Datum) 0;
		nulls[4] = 'n';
	}
	return true;
}

/*
 * Call mpqr.ingest_notification() for one request; return the HTTP status
 * it chose.
 */
static int
ingest(Datum *values, char *nulls)
{
	static Oid	argtypes[5] = {TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, TEXTOID};
	int			ret;
	bool		isnull;
	int			status;

	if (ingest_plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(INGEST_QUERY, 5, argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s",
				 INGEST_QUERY, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		ingest_plan = plan;
	}

	ret = SPI_execute_plan(ingest_plan, values, nulls, false, 1);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "mpqr.ingest_notification() failed: %s",
			 SPI_result_code_string(ret));
	status = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	if (isnull || status < 100 || status > 599)
		status = 500;
	return status;
}

/*
 * Call ingest() inside a subtransaction: a data error rolls back just this
 * request and answers it 400; any other error is thrown on.
 */
static int
ingest_in_subxact(Datum *values, char *nulls)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile int status = 400;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);

	PG_TRY();
	{
		status = ingest(values, nulls);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/*
		 * Roll the subtransaction back before anything is thrown on: the
		 * abort of the outer transaction would otherwise abort only this
		 * subtransaction, and leave the worker in a failed block.
		 */
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (!is_request_error(edata->sqlerrcode))
			ReThrowError(edata);
		status = 400;
	}
	PG_END_TRY();

	return status;
}

/* one batch, and how to store it */
typedef struct BatchUnit
{
	MpqrRequest *batch;
	bool		per_request;	/* each request in a subtransaction */
} BatchUnit;

/*
 * The body of a batch unit: store each request, setting its status.
 */
static void
store_batch_body(Oid ext, void *arg)
{
	BatchUnit  *u = (BatchUnit *) arg;
	bool		ready = database_ready(ext);

	for (MpqrRequest *req = u->batch; req != NULL; req = req->next)
	{
		Datum		values[5];
		char		nulls[5];

		req->status = 503;
		if (!ready)
			continue;
		if (req->route == MPQR_ROUTE_HEALTHZ)
			req->status = 200;
		else if (!ingest_arguments(req, values, nulls))
			req->status = 400;
		else if (u->per_request)
			req->status = ingest_in_subxact(values, nulls);
		else
			req->status = ingest(values, nulls);
	}
}

/*
 * Answer the whole batch 503 after a failed transaction.
 */
static void
batch_unavailable(MpqrRequest *batch)
{
	for (MpqrRequest *req = batch; req != NULL; req = req->next)
		req->status = 503;
}

/*
 * Store a batch, deciding each request's answer: once for the whole batch,
 * then, if one request's data broke it, once more request by request.  A
 * data error is not logged: anyone can send bad JSON, and logging it would
 * let anyone fill the log.
 */
static void
store_batch(MpqrRequest *batch)
{
	BatchUnit	u = {batch, false};
	int			code;

	code = MpqrRunUnit(&MpqrState->listener, "mpqr listener: storing notifications",
					   store_batch_body, &u, is_request_error);
	if (code != 0 && is_request_error(code))
	{
		u.per_request = true;
		code = MpqrRunUnit(&MpqrState->listener,
						   "mpqr listener: storing notifications one by one",
						   store_batch_body, &u, NULL);
	}
	if (code != 0)
		batch_unavailable(batch);
}

/*
 * Log how many signatures were rejected, at most once a minute.
 */
static void
report_rejections(void)
{
	TimestampTz now;

	if (rejected_unreported == 0)
		return;
	now = GetCurrentTimestamp();
	if (rejected_reported_at != 0 &&
		!TimestampDifferenceExceeds(rejected_reported_at, now,
									REJECTION_WARNING_MS))
		return;

	ereport(WARNING,
			(errmsg_plural("rejected " UINT64_FORMAT " notification with an invalid signature",
						   "rejected " UINT64_FORMAT " notifications with an invalid signature",
						   rejected_unreported, rejected_unreported),
			 errdetail("Under \"mpqr.signature_policy\" = \"enforce\" they were answered 401 and not stored. This is the count since the previous report."),
			 errhint("Check that each account's webhook_secret is the secret shown in Mercado Pago's application panel.")));
	rejected_unreported = 0;
	rejected_reported_at = now;
}

/*
 * How long the loop may sleep: as the daemon allows, and no later than the
 * next report of rejected signatures.
 */
static long
loop_timeout(void)
{
	long		timeout = MpqrHttpdTimeout();

	if (rejected_unreported > 0)
	{
		TimestampTz due = TimestampTzPlusMilliseconds(rejected_reported_at,
													  REJECTION_WARNING_MS);
		long		secs;
		int			usecs;
		long		ms;

		TimestampDifference(GetCurrentTimestamp(), due, &secs, &usecs);
		ms = secs * 1000 + usecs / 1000 + 1;
		if (timeout < 0 || ms < timeout)
			timeout = ms;
	}
	return timeout;
}

/*
 * Queue each request's answer and resume its connection.
 *
 * Note: the requests are freed by the next run of the daemon.
 */
static void
answer_batch(MpqrRequest *batch)
{
	uint64		stored = 0;
	MpqrRequest *req = batch;

	while (req != NULL)
	{
		MpqrRequest *next = req->next;

		if (req->route == MPQR_ROUTE_NOTIFICATIONS)
		{
			if (req->status == 200)
				stored++;
			else if (req->status == 401)
				rejected_unreported++;
		}
		MpqrHttpdAnswer(req, req->status);
		req = next;
	}
	if (stored > 0)
		MpqrCount(MPQR_CTR_NOTIFICATIONS_STORED, stored);
	MpqrCount(MPQR_CTR_LISTENER_BATCHES, 1);
}

/*
 * Entry point of the listener worker.
 */
void
MpqrListenerMain(Datum main_arg)
{
	MemoryContext loop_cxt;
	WaitEventSet *wes;

	MpqrWorkerStart(&MpqrState->listener);
	before_shmem_exit(clear_listen_port, (Datum) 0);

	loop_cxt = AllocSetContextCreate(TopMemoryContext,
									 "mpqr listener loop context",
									 ALLOCSET_DEFAULT_SIZES);

	start_http();

	wes = CreateWaitEventSet(TopMemoryContext, 3);
	AddWaitEventToSet(wes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wes, WL_SOCKET_READABLE, MpqrHttpdEpollFd(), NULL, NULL);

	for (;;)
	{
		WaitEvent	event;
		MpqrRequest *batch;

		(void) WaitEventSetWait(wes, loop_timeout(), &event, 1,
								PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		MpqrReloadConfigIfPending();

		MpqrHttpdRun();
		log_http_messages();

		/*
		 * Nothing may wait while a connection is suspended: it could not
		 * time out.  So store and answer until no request is pending.
		 */
		while ((batch = MpqrHttpdTakePending()) != NULL)
		{
			MemoryContextSwitchTo(loop_cxt);
			store_batch(batch);
			answer_batch(batch);
			MpqrHttpdRun();		/* a resume does not wake the loop */
			log_http_messages();
			MemoryContextSwitchTo(TopMemoryContext);
			MemoryContextReset(loop_cxt);

			CHECK_FOR_INTERRUPTS();
			MpqrReloadConfigIfPending();
		}
		report_rejections();
	}
}
