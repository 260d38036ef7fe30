/*-------------------------------------------------------------------------
 *
 * status.c
 *		mpqr.worker_status(): what shared memory knows, as name/value rows.
 *
 * The public mpqr_status() is SQL: it adds queue depths and per-account
 * state read from the tables to these rows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "guc.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(mpqr_worker_status);

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
