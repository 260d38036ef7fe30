/*-------------------------------------------------------------------------
 *
 * signature.c
 *		Verify Mercado Pago's webhook signatures (x-signature).
 *
 * MP signs a webhook with HMAC-SHA256, keyed by the application's secret,
 * over the manifest "id:{data.id};request-id:{x-request-id};ts:{ts};",
 * where each pair whose value is absent is left out.  The header reads
 * "ts=<ts>,v1=<lowercase hex>": parts split on ',', each on its first '=',
 * trimmed, keys case-insensitive, unknown keys ignored.  Sources disagree
 * on whether data.id is signed as received or lowercased, so both are
 * tried; and on whether ts is in seconds or milliseconds, so a ts above
 * 10^12 is taken as milliseconds for the staleness check (the HMAC always
 * covers ts exactly as sent).
 *
 * These are pure functions over bytes: no PostgreSQL, no global state, no
 * allocation that outlives a call.  They run inside the batch transaction
 * of the listener through mpqr.signature_verdict() (signature_sql.c), and
 * in the fuzz targets on their own.  OpenSSL's one-shot HMAC() needs no
 * resource owner and never longjmps.
 *
 *-------------------------------------------------------------------------
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "signature.h"

/* manifests up to this size are built on the stack */
#define MANIFEST_STACK_SIZE 512

/* the longest ts we take as a number: 18 digits cannot overflow int64 */
#define TS_MAX_DIGITS 18

static const char hex_digits[] = "0123456789abcdef";

static bool
is_blank(char c)
{
	return c == ' ' || c == '\t';
}

static char
ascii_tolower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char) (c + ('a' - 'A')) : c;
}

/*
 * Does the key [key, key + len) equal the lowercase word, ignoring case?
 */
static bool
key_is(const char *key, size_t len, const char *word)
{
	size_t		wlen = strlen(word);

	if (len != wlen)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		if (ascii_tolower(key[i]) != word[i])
			return false;
	}
	return true;
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Parse an x-signature header of len bytes (need not be NUL-terminated).
 *
 * Returns false when ts or v1 is missing or empty, or when ts is not a
 * number of at most 18 digits.  The first occurrence of a key wins.
 */
bool
MpqrSignatureParse(const char *header, size_t len, MpqrSignatureHeader *out)
{
	size_t		pos = 0;

	memset(out, 0, sizeof(*out));
	if (header == NULL)
		return false;

	while (pos <= len)
	{
		size_t		end = pos;
		size_t		eq;
		size_t		kb,
					ke,
					vb,
					ve;

		while (end < len && header[end] != ',')
			end++;
		eq = pos;
		while (eq < end && header[eq] != '=')
			eq++;

		if (eq < end)
		{
			kb = pos;
			ke = eq;
			while (kb < ke && is_blank(header[kb]))
				kb++;
			while (ke > kb && is_blank(header[ke - 1]))
				ke--;
			vb = eq + 1;
			ve = end;
			while (vb < ve && is_blank(header[vb]))
				vb++;
			while (ve > vb && is_blank(header[ve - 1]))
				ve--;

			if (out->ts == NULL && key_is(header + kb, ke - kb, "ts"))
			{
				out->ts = header + vb;
				out->ts_len = ve - vb;
			}
			else if (out->v1 == NULL && key_is(header + kb, ke - kb, "v1"))
			{
				out->v1 = header + vb;
				out->v1_len = ve - vb;
			}
		}
		pos = end + 1;
	}

	if (out->ts == NULL || out->ts_len == 0 ||
		out->v1 == NULL || out->v1_len == 0)
		return false;
	if (out->ts_len > TS_MAX_DIGITS)
		return false;
	for (size_t i = 0; i < out->ts_len; i++)
	{
		if (out->ts[i] < '0' || out->ts[i] > '9')
			return false;
		out->ts_value = out->ts_value * 10 + (out->ts[i] - '0');
	}
	return true;
}

/*
 * Append len bytes to a manifest being written into buf; *total counts
 * every byte, written or not.
 */
static void
manifest_put(char *buf, size_t size, size_t *total, const char *s, size_t len)
{
	if (*total < size)
	{
		size_t		room = size - *total;

		memcpy(buf + *total, s, len < room ? len : room);
	}
	*total += len;
}

/*
 * Write the manifest "id:..;request-id:..;ts:..;" into buf, leaving out
 * each pair whose value is NULL or empty.
 *
 * Like snprintf: writes at most size bytes including the terminating NUL,
 * and returns the manifest's full length (without the NUL).
 */
size_t
MpqrSignatureManifest(char *buf, size_t size, const char *data_id,
					  const char *request_id, const char *ts, size_t ts_len)
{
	size_t		total = 0;

	if (data_id != NULL && data_id[0] != '\0')
	{
		manifest_put(buf, size, &total, "id:", 3);
		manifest_put(buf, size, &total, data_id, strlen(data_id));
		manifest_put(buf, size, &total, ";", 1);
	}
	if (request_id != NULL && request_id[0] != '\0')
	{
		manifest_put(buf, size, &total, "request-id:", 11);
		manifest_put(buf, size, &total, request_id, strlen(request_id));
		manifest_put(buf, size, &total, ";", 1);
	}
	if (ts != NULL && ts_len > 0)
	{
		manifest_put(buf, size, &total, "ts:", 3);
		manifest_put(buf, size, &total, ts, ts_len);
		manifest_put(buf, size, &total, ";", 1);
	}
	if (size > 0)
		buf[total < size ? total : size - 1] = '\0';
	return total;
}

static bool
hmac_sha256(const char *secret, size_t secret_len,
			const char *message, size_t message_len,
			unsigned char out[MPQR_SIGNATURE_BYTES])
{
	unsigned int out_len = 0;

	if (secret_len > INT_MAX)
		return false;
	if (HMAC(EVP_sha256(), secret, (int) secret_len,
			 (const unsigned char *) message, message_len,
			 out, &out_len) == NULL)
		return false;
	return out_len == MPQR_SIGNATURE_BYTES;
}

/*
 * Compute HMAC-SHA256(secret, message) as lowercase hex, NUL-terminated.
 */
bool
MpqrSignatureHmacHex(const char *secret, size_t secret_len,
					 const char *message, size_t message_len,
					 char hex[MPQR_SIGNATURE_HEX + 1])
{
	unsigned char mac[MPQR_SIGNATURE_BYTES];

	if (!hmac_sha256(secret, secret_len, message, message_len, mac))
		return false;
	for (int i = 0; i < MPQR_SIGNATURE_BYTES; i++)
	{
		hex[2 * i] = hex_digits[mac[i] >> 4];
		hex[2 * i + 1] = hex_digits[mac[i] & 0x0f];
	}
	hex[MPQR_SIGNATURE_HEX] = '\0';
	return true;
}

/*
 * Does the HMAC of the manifest built with this data_id equal expected?
 * The comparison takes the same time whatever the bytes.
 */
static bool
manifest_matches(const char *secret, const char *data_id,
				 const char *request_id, const MpqrSignatureHeader *sig,
				 const unsigned char expected[MPQR_SIGNATURE_BYTES])
{
	char		stackbuf[MANIFEST_STACK_SIZE];
	char	   *buf = stackbuf;
	size_t		len;
	unsigned char mac[MPQR_SIGNATURE_BYTES];
	bool		ok;

	len = MpqrSignatureManifest(NULL, 0, data_id, request_id,
								sig->ts, sig->ts_len);
	if (len >= sizeof(stackbuf))
	{
		buf = malloc(len + 1);
		if (buf == NULL)
			return false;
	}
	MpqrSignatureManifest(buf, len + 1, data_id, request_id,
						  sig->ts, sig->ts_len);
	ok = hmac_sha256(secret, strlen(secret), buf, len, mac) &&
		CRYPTO_memcmp(mac, expected, MPQR_SIGNATURE_BYTES) == 0;
	if (buf != stackbuf)
		free(buf);
	return ok;
}

/*
 * Judge an x-signature header.
 *
 * header NULL or blank: unsigned.  secret NULL or empty: unverified.  A
 * malformed header or a wrong HMAC: invalid.  A right HMAC is stale when
 * its ts is more than tolerance_s seconds before now_s (a negative
 * tolerance never makes it stale), else valid.  data_id is tried as given,
 * then lowercased.
 */
MpqrSignatureVerdict
MpqrSignatureVerify(const char *secret, const char *header,
					const char *data_id, const char *request_id,
					int64_t now_s, int64_t tolerance_s)
{
	MpqrSignatureHeader sig;
	unsigned char expected[MPQR_SIGNATURE_BYTES];
	const char *p;
	bool		match;
	int64_t		ts_s;

	if (header == NULL)
		return MPQR_SIGNATURE_UNSIGNED;
	for (p = header; is_blank(*p); p++)
		;
	if (*p == '\0')
		return MPQR_SIGNATURE_UNSIGNED;
	if (secret == NULL || secret[0] == '\0')
		return MPQR_SIGNATURE_UNVERIFIED;

	if (!MpqrSignatureParse(header, strlen(header), &sig) ||
		sig.v1_len != MPQR_SIGNATURE_HEX)
		return MPQR_SIGNATURE_INVALID;
	for (int i = 0; i < MPQR_SIGNATURE_BYTES; i++)
	{
		int			hi = hex_value(sig.v1[2 * i]);
		int			lo = hex_value(sig.v1[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return MPQR_SIGNATURE_INVALID;
		expected[i] = (unsigned char) (hi << 4 | lo);
	}

	match = manifest_matches(secret, data_id, request_id, &sig, expected);
	if (!match && data_id != NULL)
	{
		bool		has_upper = false;

		for (p = data_id; *p != '\0'; p++)
			has_upper |= (*p >= 'A' && *p <= 'Z');
		if (has_upper)
		{
			size_t		len = strlen(data_id);
			char	   *lower = malloc(len + 1);

			if (lower != NULL)
			{
				for (size_t i = 0; i <= len; i++)
					lower[i] = ascii_tolower(data_id[i]);
				match = manifest_matches(secret, lower, request_id, &sig,
										 expected);
				free(lower);
			}
		}
	}
	if (!match)
		return MPQR_SIGNATURE_INVALID;

	ts_s = sig.ts_value > MPQR_SIGNATURE_TS_MS_ABOVE ?
		sig.ts_value / 1000 : sig.ts_value;
	if (tolerance_s >= 0 && now_s - ts_s > tolerance_s)
		return MPQR_SIGNATURE_STALE;
	return MPQR_SIGNATURE_VALID;
}

/*
 * The word stored in mpqr.notifications.signature.
 */
const char *
MpqrSignatureVerdictName(MpqrSignatureVerdict verdict)
{
	switch (verdict)
	{
		case MPQR_SIGNATURE_VALID:
			return "valid";
		case MPQR_SIGNATURE_STALE:
			return "stale";
		case MPQR_SIGNATURE_INVALID:
			return "invalid";
		case MPQR_SIGNATURE_UNSIGNED:
			return "unsigned";
		case MPQR_SIGNATURE_UNVERIFIED:
			return "unverified";
	}
	return "invalid";
}
