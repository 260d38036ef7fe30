/*-------------------------------------------------------------------------
 *
 * fuzz_signature.c
 *		libFuzzer target for src/signature.c: the x-signature parser, the
 *		manifest and the verdict.
 *
 * Each input is used three ways:
 *	- as a raw header for MpqrSignatureParse(), whose results must point
 *	  inside the input;
 *	- split on '\n' into secret, header, data.id and request-id for
 *	  MpqrSignatureVerify(), which must return a verdict and not crash;
 *	- as the material of a signature made here, which must verify (as
 *	  given and with data.id lowercased), and must stop verifying when one
 *	  hex digit changes.
 * The initializer checks the test vectors of mercadopago-api.md section 5.3.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "signature.h"

#define VECTOR_SECRET	"your_secret_key_here"
#define VECTOR_ID		"ORD01JQ4S4KY8HWQ6NA5PXB65B3D3"
#define VECTOR_RID		"2066ca19-c6f1-498a-be75-1923005edd06"
#define VECTOR_TS		"1742505638683"
#define NOW_S			INT64_C(1742505700)

int			LLVMFuzzerInitialize(int *argc, char ***argv);
int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(int ok, const char *what)
{
	if (!ok)
	{
		fprintf(stderr, "fuzz_signature: check failed: %s\n", what);
		abort();
	}
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char		manifest[256];
	char		hex[MPQR_SIGNATURE_HEX + 1];

	MpqrSignatureManifest(manifest, sizeof(manifest), "ord01jq4s4ky8hwq6na5pxb65b3d3",
						  VECTOR_RID, VECTOR_TS, strlen(VECTOR_TS));
	check(strcmp(manifest, "id:ord01jq4s4ky8hwq6na5pxb65b3d3;request-id:" VECTOR_RID
				 ";ts:" VECTOR_TS ";") == 0, "manifest of the vector");
	check(MpqrSignatureHmacHex(VECTOR_SECRET, strlen(VECTOR_SECRET),
							   manifest, strlen(manifest), hex), "hmac");
	check(strcmp(hex, "633f91233312dd391ec75fa0bea539cfc2d6c4918873305b84a96cc1c58db71c") == 0,
		  "lowercased vector");

	check(MpqrSignatureVerify(VECTOR_SECRET,
							  "ts=" VECTOR_TS ",v1=fb15ae6472eb449173c556793205d77787d58f384d183bb5bc3b724c27bd103c",
							  VECTOR_ID, VECTOR_RID, NOW_S, 300) == MPQR_SIGNATURE_VALID,
		  "as-received vector");
	check(MpqrSignatureVerify(VECTOR_SECRET,
							  "ts=" VECTOR_TS ",v1=633f91233312dd391ec75fa0bea539cfc2d6c4918873305b84a96cc1c58db71c",
							  VECTOR_ID, VECTOR_RID, NOW_S, 300) == MPQR_SIGNATURE_VALID,
		  "lowercased vector through verify");
	check(MpqrSignatureVerify(VECTOR_SECRET,
							  "ts=" VECTOR_TS ",v1=633f91233312dd391ec75fa0bea539cfc2d6c4918873305b84a96cc1c58db71c",
							  VECTOR_ID, VECTOR_RID, NOW_S + 3600, 300) == MPQR_SIGNATURE_STALE,
		  "stale vector");
	check(MpqrSignatureVerify(VECTOR_SECRET,
							  "ts=" VECTOR_TS ",v1=633f91233312dd391ec75fa0bea539cfc2d6c4918873305b84a96cc1c58db71d",
							  VECTOR_ID, VECTOR_RID, NOW_S, 300) == MPQR_SIGNATURE_INVALID,
		  "wrong vector");
	check(MpqrSignatureVerify(NULL, "ts=1,v1=00", VECTOR_ID, VECTOR_RID, NOW_S, 300) ==
		  MPQR_SIGNATURE_UNVERIFIED, "no secret");
	check(MpqrSignatureVerify(VECTOR_SECRET, NULL, VECTOR_ID, VECTOR_RID, NOW_S, 300) ==
		  MPQR_SIGNATURE_UNSIGNED, "no header");
	return 0;
}

/* the next '\n'-separated field of [*p, end), NUL-terminated, malloc'd */
static char *
next_field(const uint8_t **p, const uint8_t *end)
{
	const uint8_t *start = *p;
	const uint8_t *nl = memchr(start, '\n', (size_t) (end - start));
	size_t		len = nl ? (size_t) (nl - start) : (size_t) (end - start);
	char	   *s = malloc(len + 1);

	memcpy(s, start, len);
	s[len] = '\0';
	*p = nl ? nl + 1 : end;
	return s;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *raw = (const char *) data;
	MpqrSignatureHeader sig;
	const uint8_t *p = data;
	const uint8_t *end = data + size;
	char	   *secret,
			   *header,
			   *data_id,
			   *request_id;
	MpqrSignatureVerdict verdict;

	/* 1: the parser on raw bytes */
	if (MpqrSignatureParse(raw, size, &sig))
	{
		check(sig.ts >= raw && sig.ts + sig.ts_len <= raw + size, "ts inside input");
		check(sig.v1 >= raw && sig.v1 + sig.v1_len <= raw + size, "v1 inside input");
		check(sig.ts_len > 0 && sig.ts_len <= 18 && sig.v1_len > 0, "lengths");
		check(sig.ts_value >= 0, "ts value");
	}

	/* 2: verify on fields */
	secret = next_field(&p, end);
	header = next_field(&p, end);
	data_id = next_field(&p, end);
	request_id = next_field(&p, end);
	verdict = MpqrSignatureVerify(secret, header, data_id[0] ? data_id : NULL,
								  request_id[0] ? request_id : NULL, NOW_S, 300);
	check(verdict >= MPQR_SIGNATURE_VALID && verdict <= MPQR_SIGNATURE_UNVERIFIED,
		  "verdict in range");
	check(MpqrSignatureVerdictName(verdict) != NULL, "verdict name");

	/* 3: a signature made here verifies, and a changed one does not */
	if (secret[0] != '\0')
	{
		char		ts[32];
		size_t		len;
		char	   *manifest;
		char	   *lower;
		char		hex[MPQR_SIGNATURE_HEX + 1];
		char		hdr[128];
		size_t		idlen = strlen(data_id);

		snprintf(ts, sizeof(ts), "%llu",
				 (unsigned long long) ((size * 2654435761u) % 2000000000000u));

		/* sign the lowercased id: verify must find it through its fallback */
		lower = malloc(idlen + 1);
		for (size_t i = 0; i <= idlen; i++)
			lower[i] = (data_id[i] >= 'A' && data_id[i] <= 'Z') ? data_id[i] + 32 : data_id[i];

		len = MpqrSignatureManifest(NULL, 0, lower, request_id, ts, strlen(ts));
		manifest = malloc(len + 1);
		check(MpqrSignatureManifest(manifest, len + 1, lower, request_id, ts,
									strlen(ts)) == len, "manifest length");
		check(strlen(manifest) == len, "manifest terminated");
		if (len > 4)
		{
			char		small[5];

			MpqrSignatureManifest(small, sizeof(small), lower, request_id, ts, strlen(ts));
			check(strlen(small) == 4 && memcmp(small, manifest, 4) == 0, "truncated manifest");
		}
		check(MpqrSignatureHmacHex(secret, strlen(secret), manifest, len, hex), "hmac");

		snprintf(hdr, sizeof(hdr), " v9=x, TS=%s ,V1=%s", ts, hex);
		verdict = MpqrSignatureVerify(secret, hdr, data_id[0] ? data_id : NULL,
									  request_id[0] ? request_id : NULL, NOW_S, 300);
		check(verdict == MPQR_SIGNATURE_VALID || verdict == MPQR_SIGNATURE_STALE,
			  "own signature verifies");

		hex[size % MPQR_SIGNATURE_HEX] = hex[size % MPQR_SIGNATURE_HEX] == '0' ? '1' : '0';
		snprintf(hdr, sizeof(hdr), "ts=%s,v1=%s", ts, hex);
		verdict = MpqrSignatureVerify(secret, hdr, data_id[0] ? data_id : NULL,
									  request_id[0] ? request_id : NULL, NOW_S, 300);
		check(verdict == MPQR_SIGNATURE_INVALID, "changed signature fails");

		free(manifest);
		free(lower);
	}

	free(secret);
	free(header);
	free(data_id);
	free(request_id);
	return 0;
}
