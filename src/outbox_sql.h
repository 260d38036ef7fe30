/*-------------------------------------------------------------------------
 *
 * outbox_sql.h
 *		The typed contract between the sender and the outbox's SQL: claimed
 *		requests in, outcomes out, and the times things are next due.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_OUTBOX_SQL_H
#define MPQR_OUTBOX_SQL_H

#include "datatype/timestamp.h"

#include "http_client.h"

/* one mpqr.claimed_request, copied out of SPI */
typedef struct MpqrClaimedRequest
{
	int64		id;
	int32		attempt;		/* handed back, so that a late outcome of an
								 * older attempt is never recorded */
	char	   *method;			/* NULL: nothing to send (skipped) */
	char	   *path;
	char	   *body;
	char	   *token;
	char	   *idempotency_key;
	char	  **headers;		/* extra "Name: value" lines */
	int			nheaders;
} MpqrClaimedRequest;

/* outcomes that are not an HTTP status */
#define MPQR_OUTCOME_NETWORK_ERROR	0
#define MPQR_OUTCOME_SKIPPED		(-1)

extern int	MpqrClaimRequests(int max_rows, int64 incarnation,
							  MpqrClaimedRequest **rows);
extern TimestampTz MpqrOutboxNextDue(void);
extern int	MpqrRecordResponses(const MpqrHttpResult *results, int n,
								Oid ext, int64 incarnation);
extern TimestampTz MpqrTick(void);

#endif							/* MPQR_OUTBOX_SQL_H */
