/*-------------------------------------------------------------------------
 *
 * signature_sql.c
 *		mpqr.signature_verdict(): the SQL face of signature.c.
 *
 * The ingest function (sql/install/50_notifications.sql) calls it for each
 * signed webhook, inside the listener's batch transaction.  Everything that
 * parses or hashes is in signature.c, which knows nothing of PostgreSQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "signature.h"

PG_FUNCTION_INFO_V1(mpqr_signature_verdict);

/*
 * mpqr.signature_verdict(secret text, x_signature text, data_id text,
 *						  request_id text, tolerance interval) returns text
 *
 * Not strict: a NULL secret means the account has none, a NULL x_signature
 * that the request carried none, a NULL data_id or request_id that the
 * pair is left out of the manifest, and a NULL tolerance that no signature
 * is ever stale.
 */
Datum
mpqr_signature_verdict(PG_FUNCTION_ARGS)
{
	char	   *secret = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *header = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *data_id = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	char	   *request_id = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	int64		tolerance_s = -1;
	MpqrSignatureVerdict verdict;

	if (!PG_ARGISNULL(4))
	{
		Interval   *tolerance = PG_GETARG_INTERVAL_P(4);

		tolerance_s = tolerance->time / USECS_PER_SEC +
			(int64) tolerance->day * SECS_PER_DAY +
			(int64) tolerance->month * DAYS_PER_MONTH * SECS_PER_DAY;
		if (tolerance_s < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("signature tolerance must not be negative")));
	}

	verdict = MpqrSignatureVerify(secret, header, data_id, request_id,
								  (int64) timestamptz_to_time_t(GetCurrentTimestamp()),
								  tolerance_s);

	PG_RETURN_TEXT_P(cstring_to_text(MpqrSignatureVerdictName(verdict)));
}
