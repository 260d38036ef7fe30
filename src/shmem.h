/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		Shared state of mpqr: worker pids and latches, counters and last
 *		errors shown by mpqr_status(), rate limits, and the note that a
 *		restore is loading the database.
 *
 * Nothing here is durable: after a crash restart the postmaster
 * re-initialises shared memory and the workers rebuild what they need
 * from the tables.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_SHMEM_H
#define MPQR_SHMEM_H

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"

typedef enum MpqrCounter
{
	/* sender */
	MPQR_CTR_REQUESTS_SENT,		/* HTTP requests completed or failed */
	MPQR_CTR_REQUESTS_2XX,
	MPQR_CTR_REQUESTS_4XX,
	MPQR_CTR_REQUESTS_5XX,
	MPQR_CTR_REQUESTS_NETWORK_ERROR,	/* timeouts, refused, TLS, drops */
	MPQR_CTR_SENDER_BATCHES,	/* record transactions */
	MPQR_CTR_REQUESTS_RECOVERED,	/* held by a dead sender, or lease expired */
	MPQR_CTR_FETCHES_REFUSED,	/* 401/403 to a fetch: not yours, or no such id */
	/* listener */
	MPQR_CTR_HTTP_REQUESTS,		/* every request the listener answered */
	MPQR_CTR_NOTIFICATIONS_STORED,
	MPQR_CTR_SIGNATURE_REJECTED,	/* 401 under signature_policy=enforce */
	MPQR_CTR_BAD_REQUESTS,		/* 400, 404, 405, 408, 413, ... */
	MPQR_CTR_UNAVAILABLE,		/* 503 */
	MPQR_CTR_LISTENER_BATCHES,	/* group commits */
	MPQR_CTR_CONNECTIONS_TIMED_OUT,	/* closed at mpqr.listen_request_timeout */
	MPQR_CTR_CONNECTIONS_EVICTED,	/* closed to make room near the cap */
	MPQR_NUM_COUNTERS
} MpqrCounter;

#define MPQR_ERROR_LEN 256

typedef struct MpqrWorkerSlot
{
	pid_t		pid;
	Latch	   *latch;
	TimestampTz started_at;
	TimestampTz last_error_at;
	char		last_error[MPQR_ERROR_LEN];
	bool		connecting;		/* connecting to mpqr.database */
	bool		database_missing;	/* the last connection failed */
} MpqrWorkerSlot;

/* token buckets of mpqr.take_token(), by name */
typedef enum MpqrBucket
{
	MPQR_BUCKET_UNKNOWN_FETCH,	/* fetches of resources mpqr does not know */
	MPQR_BUCKET_SWEEP,			/* status checks queued by the sweep */
	MPQR_NUM_BUCKETS
} MpqrBucket;

typedef struct MpqrTokenBucket
{
	double		tokens;			/* refilled at the caller's rate */
	double		credits;		/* added by mpqr.add_tokens(), spent last */
	double		credit_cap;		/* most credits kept; < 0 for no cap */
	TimestampTz updated_at;
} MpqrTokenBucket;

/*
 * The last CREATE EXTENSION: by whom, and whether it ran as part of a
 * restore.  While the restoring session lives, the workers leave that
 * database alone.
 */
typedef struct MpqrInstallNote
{
	Oid			database;
	pid_t		pid;
	bool		restoring;
} MpqrInstallNote;

typedef struct MpqrShared
{
	slock_t		mutex;			/* protects everything but the atomics */
	MpqrWorkerSlot sender;
	MpqrWorkerSlot listener;
	int			listen_port;	/* port actually bound, 0 until bound */
	MpqrTokenBucket buckets[MPQR_NUM_BUCKETS];
	MpqrInstallNote install;
	pg_atomic_uint32 warned;	/* bits of mpqr.warn_once() */
	pg_atomic_uint32 sender_woken;	/* a commit queued work since the last look */
	pg_atomic_uint64 counters[MPQR_NUM_COUNTERS];
} MpqrShared;

extern MpqrShared *MpqrState;

extern void MpqrShmemInit(void);
extern void MpqrCount(MpqrCounter counter, uint64 n);
extern void MpqrWorkerAttach(MpqrWorkerSlot *slot);
extern void MpqrWorkerSetError(MpqrWorkerSlot *slot, const char *message);
extern void MpqrWakeSender(void);
extern bool MpqrSenderWasWoken(void);
extern const char *MpqrCounterName(MpqrCounter counter);
extern int	MpqrCounterByName(const char *name);
extern bool MpqrRestoreInProgress(void);

#endif							/* MPQR_SHMEM_H */
