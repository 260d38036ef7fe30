/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The pieces that the sender and the listener workers share.
 *
 * Both workers are static background workers, registered at preload and
 * restarted after a crash.  Both connect to mpqr.database as the bootstrap
 * superuser, and wrap each unit of work in one transaction with SPI, a
 * snapshot, a statement timeout armed by hand (statement_timeout is not
 * enforced for SPI in a background worker) and pgstat reporting.  Both
 * idle while the extension does not exist in their database.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "guc.h"
#include "worker.h"

/* seconds before the postmaster restarts a worker that exited non-zero */
#define MPQR_WORKER_RESTART_SECONDS 1

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
 * Set up the calling background worker: signals, the database connection,
 * session settings, and its slot in shared memory.
 */
void
MpqrWorkerStart(MpqrWorkerSlot *slot)
{
	char		buf[32];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(mpqr_database, NULL, 0);

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
 * Start a unit of work: a transaction, SPI, a snapshot and the statement
 * timeout.
 */
void
MpqrTxBegin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	if (mpqr_worker_statement_timeout_ms > 0)
		enable_timeout_after(STATEMENT_TIMEOUT, mpqr_worker_statement_timeout_ms);
	pgstat_report_activity(STATE_RUNNING, activity);
}

/*
 * Finish a unit of work started by MpqrTxBegin and commit it.
 */
void
MpqrTxCommit(void)
{
	disable_timeout(STATEMENT_TIMEOUT, false);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Clean up after an error caught inside a unit of work: abort the
 * transaction and leave the worker ready for the next one.
 *
 * Caller must have copied the error data it needs (CopyErrorData) and be
 * back in a memory context that survives the abort.
 */
void
MpqrTxCleanupAfterError(void)
{
	disable_timeout(STATEMENT_TIMEOUT, false);
	HOLD_INTERRUPTS();
	EmitErrorReport();
	AbortCurrentTransaction();
	FlushErrorState();
	RESUME_INTERRUPTS();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Does the extension exist in this database, committed?
 *
 * Caller must be inside a transaction.  A CREATE EXTENSION that has not
 * committed is invisible here, so its tables are never touched half made.
 */
bool
MpqrExtensionReady(void)
{
	return OidIsValid(get_extension_oid("mpqr", true));
}
