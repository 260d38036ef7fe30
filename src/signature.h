/*-------------------------------------------------------------------------
 *
 * signature.h
 *		Mercado Pago's webhook signature (x-signature): parsing, manifest,
 *		HMAC-SHA256 and the verdict stored with each notification.
 *
 * Plain C with no PostgreSQL dependency, so that the fuzz targets link it
 * without the server.  The SQL wrapper lives in signature_sql.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_SIGNATURE_H
#define MPQR_SIGNATURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* SHA-256 output, and its lowercase hex spelling */
#define MPQR_SIGNATURE_BYTES	32
#define MPQR_SIGNATURE_HEX		(2 * MPQR_SIGNATURE_BYTES)

/* a ts above this is in milliseconds (10^12 s is 31,000 years away) */
#define MPQR_SIGNATURE_TS_MS_ABOVE	INT64_C(1000000000000)

typedef enum MpqrSignatureVerdict
{
	MPQR_SIGNATURE_VALID,		/* HMAC matches, ts within tolerance */
	MPQR_SIGNATURE_STALE,		/* HMAC matches, ts older than tolerance */
	MPQR_SIGNATURE_INVALID,		/* wrong HMAC, or a malformed header */
	MPQR_SIGNATURE_UNSIGNED,	/* no x-signature header */
	MPQR_SIGNATURE_UNVERIFIED	/* header present, but no secret to check it */
} MpqrSignatureVerdict;

/* The parts of "ts=...,v1=..." that matter; pointers into the header. */
typedef struct MpqrSignatureHeader
{
	const char *ts;
	size_t		ts_len;
	const char *v1;
	size_t		v1_len;
	int64_t		ts_value;		/* ts as a number, as sent (s or ms) */
} MpqrSignatureHeader;

extern bool MpqrSignatureParse(const char *header, size_t len,
							   MpqrSignatureHeader *out);
extern size_t MpqrSignatureManifest(char *buf, size_t size,
									const char *data_id,
									const char *request_id,
									const char *ts, size_t ts_len);
extern bool MpqrSignatureHmacHex(const char *secret, size_t secret_len,
								 const char *message, size_t message_len,
								 char hex[MPQR_SIGNATURE_HEX + 1]);
extern MpqrSignatureVerdict MpqrSignatureVerify(const char *secret,
												const char *header,
												const char *data_id,
												const char *request_id,
												int64_t now_s,
												int64_t tolerance_s);
extern const char *MpqrSignatureVerdictName(MpqrSignatureVerdict verdict);

#endif							/* MPQR_SIGNATURE_H */
