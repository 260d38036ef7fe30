/*-------------------------------------------------------------------------
 *
 * limits.c
 *		Rate limits, one-time warnings and counters, kept in shared memory.
 *
 * mpqr.take_token() is the budget of fetches of resources mpqr does not
 * know, and the rate of the sweep's checks.  A bucket refills at the rate
 * the caller gives, holding one second of it; it also holds credits, which
 * mpqr.add_tokens() adds (the budget grows as orders start waiting for
 * news) and which are spent once the refilled tokens are gone.  It lives in
 * shared memory rather than in a table row, so that the listener's batch
 * transaction and the sender's never wait for each other on it.
 * mpqr.warn_once() lets the SQL log a warning once per server start.  All
 * of it resets when the postmaster re-initialises shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "shmem.h"

PG_FUNCTION_INFO_V1(mpqr_take_token);
PG_FUNCTION_INFO_V1(mpqr_add_tokens);
PG_FUNCTION_INFO_V1(mpqr_warn_once);
PG_FUNCTION_INFO_V1(mpqr_count_event);

static const char *const bucket_names[MPQR_NUM_BUCKETS] = {
	[MPQR_BUCKET_UNKNOWN_FETCH] = "unknown_fetch",
	[MPQR_BUCKET_SWEEP] = "sweep",
};

/*
 * The bucket of a name; an unknown name is an error.
 */
static MpqrTokenBucket *
bucket_by_name(text *name_text)
{
	char	   *name = text_to_cstring(name_text);

	for (int i = 0; i < MPQR_NUM_BUCKETS; i++)
	{
		if (strcmp(name, bucket_names[i]) == 0)
			return MpqrState ? &MpqrState->buckets[i] : NULL;
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown rate limit \"%s\"", name)));
	return NULL;				/* keep compiler quiet */
}

/*
 * Refill a bucket up to one second of rate.
 *
 * Caller must hold the mutex.
 */
static void
refill(MpqrTokenBucket *b, double rate, TimestampTz now)
{
	double		full = Max(rate, 1.0);

	if (b->updated_at == 0 || now < b->updated_at)
		b->tokens = full;
	else
		b->tokens = Min(full, b->tokens + rate * (now - b->updated_at) / 1000000.0);
	b->updated_at = now;
}

/*
 * mpqr.take_token(bucket text, rate float8, burst float8) returns boolean
 *
 * Take one token from a bucket refilled at rate tokens per second, or else
 * one of its credits; false when both are gone.  burst is accepted for
 * symmetry with mpqr.add_tokens() and ignored.  Without the preloaded
 * library there is no limit.
 */
Datum
mpqr_take_token(PG_FUNCTION_ARGS)
{
	MpqrTokenBucket *b;
	double		rate;
	bool		taken = false;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	b = bucket_by_name(PG_GETARG_TEXT_PP(0));
	rate = PG_GETARG_FLOAT8(1);
	if (!(rate > 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate must be positive")));
	if (b == NULL)
		PG_RETURN_BOOL(true);

	SpinLockAcquire(&MpqrState->mutex);
	refill(b, rate, GetCurrentTimestamp());
	if (b->tokens >= 1.0)
	{
		b->tokens -= 1.0;
		taken = true;
	}
	else if (b->credits >= 1.0)
	{
		b->credits -= 1.0;
		taken = true;
	}
	SpinLockRelease(&MpqrState->mutex);

	PG_RETURN_BOOL(taken);
}

/*
 * mpqr.add_tokens(bucket text, tokens float8, cap float8) returns void
 *
 * Add credits to a bucket; a cap that is not NULL becomes the most credits
 * it keeps (what is above is dropped); without one, the cap grows by what is
 * added, until the next cap is set.
 */
Datum
mpqr_add_tokens(PG_FUNCTION_ARGS)
{
	MpqrTokenBucket *b;
	double		tokens = PG_ARGISNULL(1) ? 0 : PG_GETARG_FLOAT8(1);

	/* not strict: a NULL cap means "keep it", not "do nothing" */
	if (PG_ARGISNULL(0))
		PG_RETURN_VOID();
	b = bucket_by_name(PG_GETARG_TEXT_PP(0));
	if (b == NULL)
		PG_RETURN_VOID();
	SpinLockAcquire(&MpqrState->mutex);
	if (!PG_ARGISNULL(2))
		b->credit_cap = Max(PG_GETARG_FLOAT8(2), 0);
	else if (b->credit_cap >= 0)
		b->credit_cap += Max(tokens, 0);
	b->credits = Max(b->credits + Max(tokens, 0), 0);
	if (b->credit_cap >= 0)
		b->credits = Min(b->credits, b->credit_cap);
	SpinLockRelease(&MpqrState->mutex);
	PG_RETURN_VOID();
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

/*
 * mpqr.count_event(counter text, n bigint) returns void
 *
 * Add n to one of the counters that mpqr_status() shows.
 */
Datum
mpqr_count_event(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int64		n = PG_GETARG_INT64(1);
	int			counter = MpqrCounterByName(name);

	if (counter < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown counter \"%s\"", name)));
	if (n > 0)
		MpqrCount((MpqrCounter) counter, (uint64) n);
	PG_RETURN_VOID();
}
