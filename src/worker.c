/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The pieces that the sender and the listener workers share.
 *
 * Both workers are static background workers, registered at preload and
 * restarted after a crash.  Both connect to mpqr.database as the bootstrap
 * superuser.  A database that does not exist is waited for without a
 * connection to it, checking again with a backoff of up to a minute and
 * one log line per check, instead of a restart every second.
 *
 * Every unit of work of either worker runs in MpqrRunUnit(): one
 * transaction with SPI, a snapshot, a statement timeout armed by hand
 * (statement_timeout is not enforced for SPI in a background worker) and
 * pgstat reporting.  Its first act is to take a share lock on the extension
 * itself, so that DROP EXTENSION (which locks it exclusively before anything
 * else) waits for the unit to end instead of deadlocking with it on the
 * extension's tables.  The unit then learns whether the extension is
 * ready: it exists, at the version this library was built for, and is not
 * being restored.  An error is caught, logged, kept as the worker's last
 * error, and the transaction aborted; the caller decides how to go on.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "guc.h"
#include "worker.h"

#ifndef MPQR_VERSION
#define MPQR_VERSION "0.2.0"
#endif

/* seconds before the postmaster restarts a worker that exited non-zero */
#define MPQR_WORKER_RESTART_SECONDS 1

/* longest wait between two checks for a missing database */
#define DATABASE_CHECK_MAX_SECONDS 60

/* why the last unit found the extension not ready, or NULL */
static const char *not_ready_reason = NULL;
static char version_reason[256];

/*
 * Register a static background worker that runs function() of this library.
 */
void
MpqrWorkerRegister(const char *type, const char *function)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = MPQR_WORKER_RESTART_SECONDS;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "mpqr");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s", type);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", type);
	worker.bgw_main_arg = (Datum) 0;
	worker.bgw_notify_pid = 0;
	RegisterBackgroundWorker(&worker);
}

/*
 * Does a database of this name exist?  Read with a plain scan of
 * pg_database, as the autovacuum launcher does: a process connected to no
 * database cannot open the catalog's indexes before the shared relcache
 * init file exists (get_database_oid fails with "cannot read pg_class
 * without having selected a database" on a new cluster).
 *
 * Caller must be inside a transaction.
 */
static bool
database_exists(const char *name)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	bool		found = false;

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!found && (tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		found = strcmp(NameStr(((Form_pg_database) GETSTRUCT(tuple))->datname), name) == 0;
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * Wait for mpqr.database to exist, connected to no database (only the
 * shared catalogs), then exit so that the postmaster starts the worker
 * again, which then connects to it.  Never returns.
 */
static void
wait_for_database(MpqrWorkerSlot *slot)
{
	int			delay_s = 1;

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	for (;;)
	{
		bool		exists;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		exists = database_exists(mpqr_database);
		CommitTransactionCommand();

		if (exists)
		{
			SpinLockAcquire(&MpqrState->mutex);
			slot->database_missing = false;
			SpinLockRelease(&MpqrState->mutex);
			ereport(LOG,
					(errmsg("database \"%s\" exists now: the worker starts again to serve it",
							mpqr_database)));
			proc_exit(1);
		}
		ereport(LOG,
				(errmsg("database \"%s\" named by \"mpqr.database\" does not exist", mpqr_database),
				 errdetail("The worker checks again in %d seconds.", delay_s),
				 errhint("Create the database, or set \"mpqr.database\" and restart the server.")));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 delay_s * 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		MpqrReloadConfigIfPending();
		delay_s = Min(delay_s * 2, DATABASE_CHECK_MAX_SECONDS);
	}
}

/*
 * Set up the calling background worker: signals, the database connection,
 * session settings, and its slot in shared memory.
 */
void
MpqrWorkerStart(MpqrWorkerSlot *slot)
{
	char		buf[32];
	bool		missing;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/*
	 * A worker that died while connecting (FATAL: the database does not
	 * exist) left its slot marked: this one waits for the database instead.
	 */
	SpinLockAcquire(&MpqrState->mutex);
	if (slot->connecting)
		slot->database_missing = true;
	missing = slot->database_missing;
	slot->connecting = !missing;
	SpinLockRelease(&MpqrState->mutex);
	if (missing)
		wait_for_database(slot);

	BackgroundWorkerInitializeConnection(mpqr_database, NULL, 0);

	SpinLockAcquire(&MpqrState->mutex);
	slot->connecting = false;
	SpinLockRelease(&MpqrState->mutex);

	/*
	 * The workers run the extension's SQL as the bootstrap superuser: pin the
	 * search path, so that no object a user can create is found first.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_SESSION);

	/*
	 * The workers' queries are short OLTP ones whose cost estimates can
	 * still cross jit_above_cost (a claim then spent 0.9 s compiling for a
	 * 1 ms execution).  They never gain from JIT.
	 */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_SESSION);
	/* an acknowledgement must never come before the flush */
	SetConfigOption("synchronous_commit", "on", PGC_SUSET, PGC_S_OVERRIDE);
	snprintf(buf, sizeof(buf), "%d", mpqr_worker_lock_timeout_ms);
	SetConfigOption("lock_timeout", buf, PGC_SUSET, PGC_S_OVERRIDE);

	MpqrWorkerAttach(slot);
}

/*
 * Re-read the configuration file if SIGHUP asked for it.
 */
void
MpqrReloadConfigIfPending(void)
{
	char		buf[32];

	if (!ConfigReloadPending)
		return;
	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	snprintf(buf, sizeof(buf), "%d", mpqr_worker_lock_timeout_ms);
	SetConfigOption("lock_timeout", buf, PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * The version of the extension of this OID, as pg_extension says, or NULL.
 *
 * Caller must be inside a transaction.
 */
static char *
extension_version(Oid ext)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/*
 * Lock the extension for this transaction and say whether it is ready.
 * Returns its OID, or InvalidOid with not_ready_reason set.
 *
 * Caller must be inside a transaction.  A CREATE EXTENSION that has not
 * committed is invisible here, so its tables are never touched half made.
 */
static Oid
lock_extension(void)
{
	Oid			ext = get_extension_oid("mpqr", true);
	char	   *version;

	if (RecoveryInProgress())
	{
		not_ready_reason = "the server is in recovery";
		return InvalidOid;
	}
	if (!OidIsValid(ext))
	{
		not_ready_reason = "extension \"mpqr\" does not exist";
		return InvalidOid;
	}
	LockDatabaseObject(ExtensionRelationId, ext, 0, AccessShareLock);
	/* a DROP EXTENSION may have ended while this waited */
	if (get_extension_oid("mpqr", true) != ext)
	{
		not_ready_reason = "extension \"mpqr\" does not exist";
		return InvalidOid;
	}
	version = extension_version(ext);
	if (version == NULL || strcmp(version, MPQR_VERSION) != 0)
	{
		snprintf(version_reason, sizeof(version_reason),
				 "extension \"mpqr\" is at version %s, the library at %s: run ALTER EXTENSION mpqr UPDATE",
				 version ? version : "?", MPQR_VERSION);
		not_ready_reason = version_reason;
		return InvalidOid;
	}
	if (MpqrRestoreInProgress())
	{
		not_ready_reason = "a restore is loading the database";
		return InvalidOid;
	}
	not_ready_reason = NULL;
	return ext;
}

/*
 * Why the last unit found the extension not ready (NULL when it was).
 */
const char *
MpqrNotReadyReason(void)
{
	return not_ready_reason;
}

/*
 * Run one unit of work in its own transaction, with the extension locked
 * (see the head of this file).  Returns 0 when it committed, else the
 * SQLSTATE of the error that aborted it.  The error is logged and kept as
 * the worker's last error, unless quiet says it is the client's.
 *
 * The body runs in the caller's memory context, which survives the unit, so
 * what it allocates outlives the transaction; SPI results are SPI's own.
 */
int
MpqrRunUnit(MpqrWorkerSlot *slot, const char *activity, MpqrUnitBody body,
			void *arg, MpqrUnitQuiet quiet)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile int sqlerrcode = 0;

	PG_TRY();
	{
		Oid			ext;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		MemoryContextSwitchTo(cxt);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		/* what the body allocates must outlive SPI_finish */
		MemoryContextSwitchTo(cxt);
		ext = lock_extension();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (mpqr_worker_statement_timeout_ms > 0)
			enable_timeout_after(STATEMENT_TIMEOUT, mpqr_worker_statement_timeout_ms);
		pgstat_report_activity(STATE_RUNNING, activity);

		body(ext, arg);

		disable_timeout(STATEMENT_TIMEOUT, false);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(cxt);
		pgstat_report_stat(false);
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		bool		silent;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		sqlerrcode = edata->sqlerrcode;
		silent = quiet != NULL && quiet(edata->sqlerrcode);

		disable_timeout(STATEMENT_TIMEOUT, false);
		HOLD_INTERRUPTS();
		if (!silent)
			EmitErrorReport();
		AbortCurrentTransaction();
		FlushErrorState();
		RESUME_INTERRUPTS();
		MemoryContextSwitchTo(cxt);
		pgstat_report_activity(STATE_IDLE, NULL);
		if (!silent)
			MpqrWorkerSetError(slot, edata->message);
		FreeErrorData(edata);
		if (sqlerrcode == 0)
			sqlerrcode = ERRCODE_INTERNAL_ERROR;
	}
	PG_END_TRY();

	return sqlerrcode;
}
