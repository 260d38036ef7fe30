/*-------------------------------------------------------------------------
 *
 * outbox_sql.c
 *		Marshal the sender's side of the outbox contract: rows of
 *		mpqr.claimed_request into C structs, and outcomes into an array of
 *		mpqr.request_outcome.
 *
 * Columns and attributes are found by name in the composite types the
 * extension defines (sql/schema/40_outbox.sql), and their types checked,
 * so that a change on one side is an error here rather than a silent
 * misreading.  Every function runs inside a unit of work of the sender
 * (SPI connected, a transaction open).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "nodes/makefuncs.h"
#include "parser/parse_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#include "outbox_sql.h"

#define CLAIM_SQL "SELECT * FROM mpqr.claim_requests($1, $2)"
#define RECORD_SQL "SELECT mpqr.record_responses($1, $2)"
#define NEXT_DUE_SQL "SELECT mpqr.outbox_next_due()"
#define TICK_SQL "SELECT mpqr.tick()"

/* the attributes of mpqr.request_outcome, in this file's order */
enum
{
	OUT_ID, OUT_ATTEMPT, OUT_HTTP_STATUS, OUT_BODY, OUT_ERROR, OUT_RETRY_AFTER, OUT_NATTS
};
static const char *const outcome_names[OUT_NATTS] = {
	"id", "attempt", "http_status", "body", "error", "retry_after"
};
static const Oid outcome_types[OUT_NATTS] = {
	INT8OID, INT4OID, INT4OID, TEXTOID, TEXTOID, INT4OID
};

/*
 * The attribute number of a column of a result, checking its type.
 */
static int
column(TupleDesc desc, const char *name, Oid type)
{
	int			col = SPI_fnumber(desc, name);

	if (col <= 0 || SPI_gettypeid(desc, col) != type)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("mpqr.claimed_request has no column \"%s\" of type %s",
						name, format_type_be(type))));
	return col;
}

static char *
text_column(HeapTuple tuple, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tuple, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/*
 * Claim up to max_rows requests for the sender incarnation given, with
 * mpqr.claim_requests().  The rows are copied into the caller's memory
 * context.  Returns how many.
 */
int
MpqrClaimRequests(int max_rows, int64 incarnation, MpqrClaimedRequest **rows)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			argtypes[2] = {INT4OID, INT8OID};
	Datum		args[2] = {Int32GetDatum(max_rows), Int64GetDatum(incarnation)};
	TupleDesc	desc;
	int			c_id, c_attempt, c_method, c_path, c_body, c_token, c_key, c_headers;
	MpqrClaimedRequest *out;
	int			ret;

	ret = SPI_execute_with_args(CLAIM_SQL, 2, argtypes, args, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: error code %d", ret);

	desc = SPI_tuptable->tupdesc;
	c_id = column(desc, "id", INT8OID);
	c_attempt = column(desc, "attempt", INT4OID);
	c_method = column(desc, "method", TEXTOID);
	c_path = column(desc, "path", TEXTOID);
	c_body = column(desc, "body", TEXTOID);
	c_token = column(desc, "token", TEXTOID);
	c_key = column(desc, "idempotency_key", TEXTOID);
	c_headers = column(desc, "headers", TEXTARRAYOID);

	out = MemoryContextAllocZero(cxt, Max(SPI_processed, 1) * sizeof(MpqrClaimedRequest));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		MpqrClaimedRequest *c = &out[i];
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
		bool		isnull;
		Datum		d;

		c->id = DatumGetInt64(SPI_getbinval(tuple, desc, c_id, &isnull));
		c->attempt = DatumGetInt32(SPI_getbinval(tuple, desc, c_attempt, &isnull));
		c->method = text_column(tuple, desc, c_method);
		c->path = text_column(tuple, desc, c_path);
		c->body = text_column(tuple, desc, c_body);
		c->token = text_column(tuple, desc, c_token);
		c->idempotency_key = text_column(tuple, desc, c_key);
		d = SPI_getbinval(tuple, desc, c_headers, &isnull);
		if (!isnull)
		{
			Datum	   *elems;
			bool	   *nulls;
			int			n;

			deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, &nulls, &n);
			c->headers = palloc0(sizeof(char *) * (n + 1));
			for (int k = 0; k < n; k++)
			{
				if (!nulls[k])
					c->headers[c->nheaders++] = TextDatumGetCString(elems[k]);
			}
		}
		MemoryContextSwitchTo(oldcxt);
	}
	*rows = out;
	return (int) SPI_processed;
}

/*
 * Run a query that returns one timestamptz (or NULL: DT_NOEND).
 */
static TimestampTz
timestamp_query(const char *sql)
{
	bool		isnull;
	Datum		d;
	int			ret = SPI_execute(sql, false, 1);

	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "SPI_execute failed: error code %d", ret);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return DT_NOEND;
	return DatumGetTimestampTz(d);
}

/*
 * When the next queued request is due (DT_NOEND: nothing waits).
 */
TimestampTz
MpqrOutboxNextDue(void)
{
	return timestamp_query(NEXT_DUE_SQL);
}

/*
 * Run the periodic duties; return when they are next due (DT_NOEND: none).
 */
TimestampTz
MpqrTick(void)
{
	return timestamp_query(TICK_SQL);
}

/*
 * Replace every byte that is not part of a valid UTF-8 character (NUL
 * included) with U+FFFD.
 */
static char *
utf8_repair(const char *s, int len, int *newlen)
{
	StringInfoData buf;

	initStringInfo(&buf);
	while (len > 0)
	{
		const unsigned char *u = (const unsigned char *) s;
		int			l = pg_utf_mblen(u);

		if (*u != '\0' && l <= len && pg_utf8_islegal(u, l))
		{
			appendBinaryStringInfo(&buf, s, l);
			s += l;
			len -= l;
		}
		else
		{
			appendBinaryStringInfo(&buf, "\xEF\xBF\xBD", 3);
			s++;
			len--;
		}
	}
	*newlen = buf.len;
	return buf.data;
}

/*
 * A response body as text in the database encoding.  Mercado Pago answers
 * in UTF-8; invalid bytes are replaced rather than failing the batch.
 */
static Datum
body_to_text(const char *body, int len)
{
	const char *s = body;

	if (!pg_verify_mbstr(PG_UTF8, s, len, true))
		s = utf8_repair(body, len, &len);
	if (GetDatabaseEncoding() != PG_UTF8)
	{
		s = pg_any_to_server(s, len, PG_UTF8);
		len = strlen(s);
	}
	return PointerGetDatum(cstring_to_text_with_len(s, len));
}

/*
 * The OID of a type of schema mpqr.
 */
static Oid
mpqr_type(const char *name)
{
	TypeName   *tn = makeTypeNameFromNameList(list_make2(makeString("mpqr"),
														 makeString((char *) name)));

	return typenameTypeId(NULL, tn);
}

/*
 * Record n outcomes with mpqr.record_responses(), as an array of
 * mpqr.request_outcome.  Outcomes tagged with another OID than ext were
 * claimed under another incarnation of the extension and are dropped.
 * Returns how many were handed over.
 */
int
MpqrRecordResponses(const MpqrHttpResult *results, int n, Oid ext, int64 incarnation)
{
	Oid			type = mpqr_type("request_outcome");
	Oid			array_type = get_array_type(type);
	TupleDesc	desc = lookup_rowtype_tupdesc_copy(type, -1);
	int			attnum[OUT_NATTS];
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			k = 0;

	for (int a = 0; a < OUT_NATTS; a++)
	{
		attnum[a] = -1;
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (!att->attisdropped && strcmp(NameStr(att->attname), outcome_names[a]) == 0 &&
				att->atttypid == outcome_types[a])
				attnum[a] = i;
		}
		if (attnum[a] < 0)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("mpqr.request_outcome has no attribute \"%s\" of type %s",
							outcome_names[a], format_type_be(outcome_types[a]))));
	}

	for (int i = 0; i < n; i++)
	{
		const MpqrHttpResult *r = &results[i];
		Datum	   *values = palloc0(sizeof(Datum) * desc->natts);
		bool	   *nulls = palloc(sizeof(bool) * desc->natts);

		if (r->tag != ext)
			continue;
		memset(nulls, true, sizeof(bool) * desc->natts);
		values[attnum[OUT_ID]] = Int64GetDatum(r->id);
		nulls[attnum[OUT_ID]] = false;
		values[attnum[OUT_ATTEMPT]] = Int32GetDatum(r->attempt);
		nulls[attnum[OUT_ATTEMPT]] = false;
		values[attnum[OUT_HTTP_STATUS]] = Int32GetDatum(r->status);
		nulls[attnum[OUT_HTTP_STATUS]] = false;
		if (r->body != NULL)
		{
			values[attnum[OUT_BODY]] = body_to_text(r->body, r->body_len);
			nulls[attnum[OUT_BODY]] = false;
		}
		if (r->error != NULL)
		{
			values[attnum[OUT_ERROR]] = CStringGetTextDatum(r->error);
			nulls[attnum[OUT_ERROR]] = false;
		}
		if (r->retry_after >= 0)
		{
			values[attnum[OUT_RETRY_AFTER]] = Int32GetDatum(r->retry_after);
			nulls[attnum[OUT_RETRY_AFTER]] = false;
		}
		elems[k++] = HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
	}

	if (k > 0)
	{
		Oid			argtypes[2] = {array_type, INT8OID};
		Datum		args[2];
		int			ret;

		args[0] = PointerGetDatum(construct_array(elems, k, type, -1, false, TYPALIGN_DOUBLE));
		args[1] = Int64GetDatum(incarnation);
		ret = SPI_execute_with_args(RECORD_SQL, 2, argtypes, args, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed: error code %d", ret);
	}
	return k;
}
