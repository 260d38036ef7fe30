/*-------------------------------------------------------------------------
 *
 * status.c
 *		SQL-callable helpers that read or note shared state:
 *		mpqr.worker_status(), mpqr.system_identifier() and
 *		mpqr.note_install().
 *
 * The public mpqr_status() is SQL: it adds queue depths and per-account
 * state read from the tables to the rows of mpqr.worker_status().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc_tables.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "shmem.h"
#include "wake.h"

PG_FUNCTION_INFO_V1(mpqr_worker_status);
PG_FUNCTION_INFO_V1(mpqr_system_identifier);
PG_FUNCTION_INFO_V1(mpqr_note_install);

/*
 * mpqr.system_identifier() returns bigint
 *
 * The cluster's system identifier, from shared memory: mpqr.here() is read
 * on every claim, and pg_control_system() reads the control file.
 */
Datum
mpqr_system_identifier(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT64((int64) GetSystemIdentifier());
}

/*
 * Did this transaction start with check_function_bodies off?
 *
 * pg_dump's output sets it off before everything else, and an interactive
 * session practically never does.  CREATE EXTENSION turns it off for the
 * script, so the value that counts is the one below the transaction's GUC
 * stack.
 */
static bool
session_restoring(void)
{
	struct config_generic **vars = get_guc_variables();
	int			n = GetNumConfigOptions();

	for (int i = 0; i < n; i++)
	{
		struct config_generic *g = vars[i];
		bool		value;

		if (g->vartype != PGC_BOOL || strcmp(g->name, "check_function_bodies") != 0)
			continue;
		value = *((struct config_bool *) g)->variable;
		for (GucStack *st = g->stack; st != NULL; st = st->prev)
			value = st->prior.val.boolval;
		return !value;
	}
	return false;
}

/*
 * mpqr.note_install() returns void
 *
 * Called by the install script.  Notes in shared memory that the extension
 * was made in this database, by this session, and whether as part of a
 * restore; the workers then leave the database alone until this session
 * ends (MpqrRestoreInProgress), so that they never act on tables a restore
 * has only half loaded.  Wakes the sender at commit, which was idling
 * while the extension did not exist.
 */
Datum
mpqr_note_install(PG_FUNCTION_ARGS)
{
	bool		restoring = session_restoring();

	if (MpqrState != NULL && restoring)
	{
		SpinLockAcquire(&MpqrState->mutex);
		MpqrState->install.database = MyDatabaseId;
		MpqrState->install.pid = MyProcPid;
		MpqrState->install.restoring = true;
		SpinLockRelease(&MpqrState->mutex);
		ereport(NOTICE,
				(errmsg("mpqr is being restored: its workers wait until this session ends")));
	}
	MpqrWakeSenderAtCommit();
	PG_RETURN_VOID();
}

static void
put_row(Tuplestorestate *store, TupleDesc desc, const char *name,
		const char *value)
{
	Datum		values[2];
	bool		nulls[2] = {false, value == NULL};

	values[0] = CStringGetTextDatum(name);
	values[1] = value ? CStringGetTextDatum(value) : (Datum) 0;
	tuplestore_putvalues(store, desc, values, nulls);
}

static void
put_worker(Tuplestorestate *store, TupleDesc desc, const char *prefix,
		   const MpqrWorkerSlot *slot)
{
	char		name[64];

	snprintf(name, sizeof(name), "%s_pid", prefix);
	put_row(store, desc, name, slot->pid ? psprintf("%d", (int) slot->pid) : NULL);
	snprintf(name, sizeof(name), "%s_started_at", prefix);
	put_row(store, desc, name,
			slot->pid ? timestamptz_to_str(slot->started_at) : NULL);
	snprintf(name, sizeof(name), "%s_last_error", prefix);
	put_row(store, desc, name, slot->last_error[0] ? slot->last_error : NULL);
	snprintf(name, sizeof(name), "%s_last_error_at", prefix);
	put_row(store, desc, name,
			slot->last_error[0] ? timestamptz_to_str(slot->last_error_at) : NULL);
	if (slot->database_missing)
	{
		snprintf(name, sizeof(name), "%s_database_missing", prefix);
		put_row(store, desc, name, mpqr_database);
	}
}

/*
 * mpqr.worker_status() returns table (name text, value text)
 */
Datum
mpqr_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MpqrShared	copy;

	if (MpqrState == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("mpqr must be loaded via \"shared_preload_libraries\"")));

	InitMaterializedSRF(fcinfo, 0);

	SpinLockAcquire(&MpqrState->mutex);
	copy.sender = MpqrState->sender;
	copy.listener = MpqrState->listener;
	copy.listen_port = MpqrState->listen_port;
	SpinLockRelease(&MpqrState->mutex);

	put_row(rsinfo->setResult, rsinfo->setDesc, "database", mpqr_database);
	put_row(rsinfo->setResult, rsinfo->setDesc, "restore_in_progress",
			MpqrRestoreInProgress() ? "true" : "false");
	put_worker(rsinfo->setResult, rsinfo->setDesc, "sender", &copy.sender);
	put_worker(rsinfo->setResult, rsinfo->setDesc, "listener", &copy.listener);
	put_row(rsinfo->setResult, rsinfo->setDesc, "listen_address",
			mpqr_listen_address);
	put_row(rsinfo->setResult, rsinfo->setDesc, "listen_port",
			copy.listen_port ? psprintf("%d", copy.listen_port) : NULL);
	for (int i = 0; i < MPQR_NUM_COUNTERS; i++)
		put_row(rsinfo->setResult, rsinfo->setDesc, MpqrCounterName(i),
				psprintf(UINT64_FORMAT,
						 pg_atomic_read_u64(&MpqrState->counters[i])));

	return (Datum) 0;
}
