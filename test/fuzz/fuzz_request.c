/*-------------------------------------------------------------------------
 *
 * fuzz_request.c
 *		libFuzzer target for src/listener_request.c: routing, the early
 *		Content-Length check, and the bounded buffering of query
 *		arguments, headers and body that runs inside libmicrohttpd's
 *		callbacks.
 *
 * An input reads like a request:
 *		byte 0          max_body, in 64-byte steps
 *		byte 1          body chunk size (1..256)
 *		METHOD\n URL\n  request line
 *		name: value\n   headers, up to an empty line
 *		body            the rest, fed in chunks
 * The query string of the URL is split on '&' and '=' as libmicrohttpd
 * would (without decoding).  Whatever the bytes, the bounds must hold,
 * every kept string must be NUL-terminated where its length says, only
 * headers of the allow-list may be kept, a request that names both
 * Content-Length and Transfer-Encoding must be refused with 400, and a URI
 * with more than MPQR_REQUEST_MAX_URI_ARGS arguments with 414.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "listener_request.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(int ok, const char *what)
{
	if (!ok)
	{
		fprintf(stderr, "fuzz_request: check failed: %s\n", what);
		abort();
	}
}

/* the next line of [*p, end), NUL-terminated, malloc'd; NULL at the end */
static char *
next_line(const uint8_t **p, const uint8_t *end)
{
	const uint8_t *start = *p;
	const uint8_t *nl;
	size_t		len;
	char	   *s;

	if (start >= end)
		return NULL;
	nl = memchr(start, '\n', (size_t) (end - start));
	len = nl ? (size_t) (nl - start) : (size_t) (end - start);
	s = malloc(len + 1);
	memcpy(s, start, len);
	s[len] = '\0';
	*p = nl ? nl + 1 : end;
	return s;
}

/* the allow-list, written out again as the oracle */
static const char *const allowed[] = {
	"content-type", "content-length", "user-agent", "x-signature",
	"x-request-id", "x-retry", "x-socket-timeout", "x-forwarded-for",
	"x-real-ip", "x-forwarded-proto", NULL
};

static int
is_allowed(const char *name)
{
	for (int i = 0; allowed[i] != NULL; i++)
	{
		if (strcmp(name, allowed[i]) == 0)
			return 1;
	}
	return 0;
}

static void
check_fields(const MpqrRequest *req, const MpqrField *fields, int n, int max,
			 int lowercase)
{
	check(n >= 0 && n <= max, "field count");
	for (int i = 0; i < n; i++)
	{
		const MpqrField *f = &fields[i];
		const char *name = MpqrFieldName(req, f);
		const char *value = MpqrFieldValue(req, f);

		check(f->name + f->name_len < req->strings_len, "name inside strings");
		check(name[f->name_len] == '\0' && strlen(name) <= f->name_len, "name terminated");
		if (lowercase)
		{
			for (uint32_t k = 0; k < f->name_len; k++)
				check(name[k] < 'A' || name[k] > 'Z', "header name lowercased");
			check(is_allowed(name), "only allowed headers kept");
		}
		if (value != NULL)
		{
			check(f->value + f->value_len < req->strings_len, "value inside strings");
			check(value[f->value_len] == '\0', "value terminated");
		}
		else
			check(f->value_len == 0, "null value has no length");
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p;
	const uint8_t *end = data + size;
	size_t		max_body;
	size_t		chunk;
	char	   *method,
			   *url,
			   *line;
	MpqrRoute	route = MPQR_ROUTE_NOTIFICATIONS;
	const char *allow;
	int			status;
	MpqrRequest *req;
	char	   *content_length = NULL;
	int			saw_length = 0,
				saw_encoding = 0;
	MpqrBodyResult result = MPQR_BODY_OK;

	if (size < 2)
		return 0;
	max_body = (size_t) data[0] * 64;
	chunk = (size_t) data[1] + 1;
	p = data + 2;

	method = next_line(&p, end);
	url = next_line(&p, end);
	if (method == NULL || url == NULL)
	{
		free(method);
		free(url);
		return 0;
	}

	/* a URI with too many arguments is refused, one with few never */
	{
		int			args = 0;
		const char *q = strchr(url, '?');

		if (q != NULL)
		{
			args = 1;
			for (q++; *q != '\0'; q++)
				args += (*q == '&');
		}
		status = MpqrRequestUriStatus(url);
		check(status == (args > MPQR_REQUEST_MAX_URI_ARGS ? 414 : 0),
			  "414 exactly when there are too many arguments");
	}

	status = MpqrRequestRoute(method, url, &route, &allow);
	check(status == 0 || status == 404 || status == 405, "route status");
	check((status == 405) == (allow != NULL), "Allow only with 405");

	req = MpqrRequestCreate(route, max_body);
	check(req != NULL, "create");

	/* query arguments, split as libmicrohttpd does */
	{
		char	   *q = strchr(url, '?');

		if (q != NULL)
		{
			char	   *save = NULL;

			for (char *arg = strtok_r(q + 1, "&", &save); arg != NULL;
				 arg = strtok_r(NULL, "&", &save))
			{
				char	   *eq = strchr(arg, '=');

				if (eq != NULL)
					*eq = '\0';
				MpqrRequestAddQuery(req, arg, eq ? eq + 1 : NULL);
			}
		}
	}

	/* headers, up to an empty line */
	while ((line = next_line(&p, end)) != NULL)
	{
		char	   *colon;

		if (line[0] == '\0')
		{
			free(line);
			break;
		}
		colon = strchr(line, ':');
		if (colon != NULL)
		{
			char	   *value = colon + 1;

			*colon = '\0';
			while (*value == ' ')
				value++;
			MpqrRequestAddHeader(req, line, value);
			if (strcasecmp(line, "Content-Length") == 0)
			{
				saw_length = 1;
				if (content_length == NULL)
					content_length = strdup(value);
			}
			if (strcasecmp(line, "Transfer-Encoding") == 0)
				saw_encoding = 1;
		}
		free(line);
	}

	status = MpqrRequestFramingStatus(req);
	check(status == 0 || status == 400, "framing status");
	if (saw_length && saw_encoding)
		check(status == 400, "Content-Length with Transfer-Encoding refused");
	if (!saw_length && !saw_encoding)
		check(status == 0, "no framing headers, nothing to refuse");

	if (MpqrRequestLengthTooLarge(content_length, max_body))
		check(content_length != NULL && strtoull(content_length, NULL, 10) > max_body,
			  "too large only when larger");

	/* the body, in chunks */
	while (p < end && result != MPQR_BODY_ABORT)
	{
		size_t		n = (size_t) (end - p) < chunk ? (size_t) (end - p) : chunk;

		result = MpqrRequestAppendBody(req, (const char *) p, n);
		p += n;
		check(req->body_len <= req->max_body, "body within max_body");
		check(req->body_len <= req->body_cap, "body within its buffer");
		if (result == MPQR_BODY_OK)
			check(req->early_status == 0, "no 413 while kept");
		else
			check(req->early_status == 413 && req->body == NULL, "413 drops the body");
	}
	if (req->early_status == 0)
		check(req->body_len == (size_t) req->body_seen, "all of the body kept");

	check(req->strings_len <= MPQR_REQUEST_MAX_STRINGS, "strings bound");
	check(req->strings_len <= req->strings_cap || req->strings_cap == 0, "strings buffer");
	check_fields(req, req->query, req->nquery, MPQR_REQUEST_MAX_QUERY, 0);
	check_fields(req, req->headers, req->nheaders, MPQR_REQUEST_MAX_HEADERS, 1);

	MpqrRequestFree(req);
	free(content_length);
	free(method);
	free(url);
	return 0;
}
