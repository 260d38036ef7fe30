/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		Shared memory of mpqr.
 *
 * One small struct, asked for from shmem_request_hook and set up from
 * shmem_startup_hook.  The spinlock guards the worker slots and the bound
 * port; the counters are atomics that anyone may bump.  Every backend may
 * read it, which is how mpqr_status() and the wake-at-commit callback work.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "shmem.h"

MpqrShared *MpqrState = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static const char *const counter_names[MPQR_NUM_COUNTERS] = {
	[MPQR_CTR_REQUESTS_SENT] = "requests_sent",
	[MPQR_CTR_REQUESTS_2XX] = "requests_2xx",
	[MPQR_CTR_REQUESTS_4XX] = "requests_4xx",
	[MPQR_CTR_REQUESTS_5XX] = "requests_5xx",
	[MPQR_CTR_REQUESTS_NETWORK_ERROR] = "requests_network_errors",
	[MPQR_CTR_SENDER_BATCHES] = "sender_batches",
	[MPQR_CTR_REQUESTS_RECOVERED] = "requests_recovered",
	[MPQR_CTR_FETCHES_REFUSED] = "fetches_refused",
	[MPQR_CTR_HTTP_REQUESTS] = "listener_requests",
	[MPQR_CTR_NOTIFICATIONS_STORED] = "notifications_stored",
	[MPQR_CTR_SIGNATURE_REJECTED] = "signatures_rejected",
	[MPQR_CTR_BAD_REQUESTS] = "listener_bad_requests",
	[MPQR_CTR_UNAVAILABLE] = "listener_unavailable",
	[MPQR_CTR_LISTENER_BATCHES] = "listener_batches",
	[MPQR_CTR_CONNECTIONS_TIMED_OUT] = "listener_timed_out",
	[MPQR_CTR_CONNECTIONS_EVICTED] = "listener_evicted",
};

static void
mpqr_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(MpqrShared)));
}

static void
mpqr_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	MpqrState = ShmemInitStruct("mpqr", sizeof(MpqrShared), &found);
	if (!found)
	{
		memset(MpqrState, 0, sizeof(MpqrShared));
		SpinLockInit(&MpqrState->mutex);
		pg_atomic_init_u32(&MpqrState->sender_woken, 0);
		pg_atomic_init_u32(&MpqrState->warned, 0);
		for (int i = 0; i < MPQR_NUM_COUNTERS; i++)
			pg_atomic_init_u64(&MpqrState->counters[i], 0);
		for (int i = 0; i < MPQR_NUM_BUCKETS; i++)
			MpqrState->buckets[i].credit_cap = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Install the shared memory hooks.  Called from _PG_init while
 * shared_preload_libraries is being processed.
 */
void
MpqrShmemInit(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = mpqr_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = mpqr_shmem_startup;
}

/*
 * Add n to a counter.  A no-op when the library was not preloaded.
 */
void
MpqrCount(MpqrCounter counter, uint64 n)
{
	if (MpqrState != NULL)
		pg_atomic_fetch_add_u64(&MpqrState->counters[counter], n);
}

const char *
MpqrCounterName(MpqrCounter counter)
{
	return counter_names[counter];
}

/*
 * The counter of a name, or -1.
 */
int
MpqrCounterByName(const char *name)
{
	for (int i = 0; i < MPQR_NUM_COUNTERS; i++)
	{
		if (strcmp(counter_names[i], name) == 0)
			return i;
	}
	return -1;
}

/*
 * Is a restore loading this database right now?  True while the session
 * whose CREATE EXTENSION ran as part of a restore (see mpqr_note_install)
 * is still there; once it has gone, the note is forgotten.
 *
 * Note: the session is known by its pid alone; a pid reused by another
 * backend of the same database before the worker looks would only make the
 * workers wait for that backend too.
 */
bool
MpqrRestoreInProgress(void)
{
	MpqrInstallNote note;

	if (MpqrState == NULL)
		return false;
	SpinLockAcquire(&MpqrState->mutex);
	note = MpqrState->install;
	SpinLockRelease(&MpqrState->mutex);

	if (!note.restoring || note.database != MyDatabaseId)
		return false;
	if (BackendPidGetProc(note.pid) != NULL)
		return true;

	SpinLockAcquire(&MpqrState->mutex);
	if (MpqrState->install.pid == note.pid)
		MpqrState->install.restoring = false;
	SpinLockRelease(&MpqrState->mutex);
	return false;
}

/*
 * Record the calling worker in its slot, and clear it at exit.
 */
static void
worker_detach(int code, Datum arg)
{
	MpqrWorkerSlot *slot = (MpqrWorkerSlot *) DatumGetPointer(arg);

	SpinLockAcquire(&MpqrState->mutex);
	if (slot->pid == MyProcPid)
	{
		slot->pid = 0;
		slot->latch = NULL;
	}
	SpinLockRelease(&MpqrState->mutex);
}

void
MpqrWorkerAttach(MpqrWorkerSlot *slot)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&MpqrState->mutex);
	slot->pid = MyProcPid;
	slot->latch = &MyProc->procLatch;
	slot->started_at = now;
	SpinLockRelease(&MpqrState->mutex);
	on_shmem_exit(worker_detach, PointerGetDatum(slot));
}

/*
 * Keep the last error of a worker for mpqr_status().  NULL clears it.
 */
void
MpqrWorkerSetError(MpqrWorkerSlot *slot, const char *message)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&MpqrState->mutex);
	if (message == NULL)
		slot->last_error[0] = '\0';
	else
	{
		strlcpy(slot->last_error, message, MPQR_ERROR_LEN);
		slot->last_error_at = now;
	}
	SpinLockRelease(&MpqrState->mutex);
}

/*
 * Set the sender's latch, if it runs, noting that work was queued: the latch
 * is also set by signals that mean nothing to the sender (a timeout's alarm
 * that PostgreSQL leaves armed once it is disabled), which must not make it
 * look for work.
 */
void
MpqrWakeSender(void)
{
	Latch	   *latch = NULL;

	if (MpqrState == NULL)
		return;
	pg_atomic_write_u32(&MpqrState->sender_woken, 1);
	SpinLockAcquire(&MpqrState->mutex);
	latch = MpqrState->sender.latch;
	SpinLockRelease(&MpqrState->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * Was the sender woken by MpqrWakeSender() since the last call?  Clears it.
 */
bool
MpqrSenderWasWoken(void)
{
	return MpqrState != NULL && pg_atomic_exchange_u32(&MpqrState->sender_woken, 0) != 0;
}
