/*-------------------------------------------------------------------------
 *
 * limits.c
 *		Rate limits and one-time warnings, kept in shared memory.
 *
 * mpqr.take_token() is the global rate limit of fetches of resources mpqr
 * does not know, and of the sweep's checks.  It lives in shared memory
 * rather than in a table row, so that the listener's batch transaction and
 * the sender's record transaction never wait for each other on one row.
 * mpqr.warn_once() lets the SQL log a warning once per server start.
 * Both reset when the postmaster re-initialises shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "shmem.h"

PG_FUNCTION_INFO_V1(mpqr_take_token);
PG_FUNCTION_INFO_V1(mpqr_warn_once);

static const char *const bucket_names[MPQR_NUM_BUCKETS] = {
	[MPQR_BUCKET_UNKNOWN_FETCH] = "unknown_fetch",
	[MPQR_BUCKET_SWEEP] = "sweep",
};

/*
 * mpqr.take_token(bucket text, rate float8) returns boolean
 *
 * Take one token from a bucket refilled at rate tokens per second, holding at
 * most rate tokens (one second of burst, at least one token); false when it
 * is empty.  Without
 * the preloaded library there is no limit.
 */
Datum
mpqr_take_token(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	double		rate = PG_GETARG_FLOAT8(1);
	TimestampTz now = GetCurrentTimestamp();
	MpqrTokenBucket *b;
	int			i;
	bool		taken;

	for (i = 0; i < MPQR_NUM_BUCKETS; i++)
		if (strcmp(name, bucket_names[i]) == 0)
			break;
	if (i == MPQR_NUM_BUCKETS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown rate limit \"%s\"", name)));
	if (!(rate > 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate must be positive")));
	if (MpqrState == NULL)
		PG_RETURN_BOOL(true);

	b = &MpqrState->buckets[i];
	SpinLockAcquire(&MpqrState->mutex);
	if (b->updated_at == 0 || now < b->updated_at)
		b->tokens = Max(rate, 1.0);
	else
		b->tokens = Min(Max(rate, 1.0),
						b->tokens + rate * (now - b->updated_at) / 1000000.0);
	b->updated_at = now;
	taken = (b->tokens >= 1.0);
	if (taken)
		b->tokens -= 1.0;
	SpinLockRelease(&MpqrState->mutex);

	PG_RETURN_BOOL(taken);
}

/*
 * mpqr.warn_once(flag integer) returns boolean
 *
 * True the first time it is called with this flag (0 to 31) since the
 * server started, false afterwards.  Without the preloaded library: true.
 */
Datum
mpqr_warn_once(PG_FUNCTION_ARGS)
{
	int32		flag = PG_GETARG_INT32(0);
	uint32		bit;

	if (flag < 0 || flag > 31)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("flag %d is out of range", flag)));
	if (MpqrState == NULL)
		PG_RETURN_BOOL(true);
	bit = ((uint32) 1) << flag;
	PG_RETURN_BOOL((pg_atomic_fetch_or_u32(&MpqrState->warned, bit) & bit) == 0);
}
