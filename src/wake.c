/*-------------------------------------------------------------------------
 *
 * wake.c
 *		Wake the sender when a transaction that queued work commits.
 *
 * The SQL functions and triggers that insert into the outbox call
 * mpqr.wake_sender_at_commit().  It arms a backend-local flag and, the
 * first time, registers a transaction callback; at commit the callback sets
 * the sender's latch, so the rows are visible by the time the sender looks.
 * A rollback only disarms the flag: nothing is sent for it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"

#include "shmem.h"
#include "wake.h"

PG_FUNCTION_INFO_V1(mpqr_wake_sender_at_commit);

static bool wake_armed = false;
static bool callback_registered = false;

static void
wake_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_armed)
				MpqrWakeSender();
			wake_armed = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_armed = false;
			break;
		default:
			break;
	}
}

/*
 * Arm the wake-up of the sender at the commit of the current transaction.
 */
void
MpqrWakeSenderAtCommit(void)
{
	if (!callback_registered)
	{
		RegisterXactCallback(wake_xact_callback, NULL);
		callback_registered = true;
	}
	wake_armed = true;
}

/*
 * mpqr.wake_sender_at_commit() returns void
 */
Datum
mpqr_wake_sender_at_commit(PG_FUNCTION_ARGS)
{
	MpqrWakeSenderAtCommit();
	PG_RETURN_VOID();
}
