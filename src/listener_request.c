/*-------------------------------------------------------------------------
 *
 * listener_request.c
 *		Classify and buffer one HTTP request for the listener.
 *
 * libmicrohttpd calls the listener's handler with the request line and
 * headers first, then with chunks of the body.  These functions decide the
 * route (or the 404/405 answer), catch an over-long body (413), and copy
 * what the ingest function needs into one malloc'd request: the query
 * arguments (already URL-decoded by libmicrohttpd), the allowed headers
 * with their names lowercased, and the raw body.  Everything is bounded;
 * query arguments past the bounds are dropped, except that the ones the
 * ingest function reads keep a reserve of room that the others cannot use.
 * They also judge the framing of the body from the headers: a request that
 * says both Content-Length and Transfer-Encoding, or says either twice or
 * unreadably, is refused (400), so that no proxy in front can read a
 * different body than the listener does.
 *
 * They run inside libmicrohttpd's callbacks, so they use malloc and
 * nothing that could raise a PostgreSQL error, and they are fuzzed.
 *
 *-------------------------------------------------------------------------
 */
#include <stdlib.h>
#include <string.h>

#include "listener_request.h"

/* room kept back for the fields that matter */
#define RESERVED_FIELDS		8
#define RESERVED_STRINGS	4096

static const char *const important_query[] = {
	"topic", "id", "data.id", "type", "account", NULL
};

/*
 * The only headers kept: what the ingest function reads or stores.  Any
 * other header (Authorization, Cookie, an API key, anything nobody asked
 * for) never leaves libmicrohttpd's buffer.
 */
static const char *const allowed_headers[] = {
	"content-type", "content-length", "user-agent", "x-signature",
	"x-request-id", "x-retry", "x-socket-timeout", "x-forwarded-for",
	"x-real-ip", "x-forwarded-proto", NULL
};

/*
 * Is [path, path + len) this path, with or without one trailing slash?
 */
static bool
path_is(const char *path, size_t len, const char *want)
{
	size_t		wlen = strlen(want);

	if (len == wlen + 1 && path[wlen] == '/')
		len--;
	return len == wlen && memcmp(path, want, wlen) == 0;
}

/*
 * Route a request from its method and URL.
 *
 * Returns 0 and sets *route when the request is to be read on; else the
 * status to answer right away: 404 for an unknown path, 405 for a method
 * the path does not take (with *allow set to the Allow header's value).
 */
int
MpqrRequestRoute(const char *method, const char *url, MpqrRoute *route,
				 const char **allow)
{
	size_t		len;

	*allow = NULL;
	if (method == NULL || url == NULL)
		return 400;
	len = strcspn(url, "?");

	if (path_is(url, len, "/notifications"))
	{
		*route = MPQR_ROUTE_NOTIFICATIONS;
		if (strcmp(method, "POST") != 0)
		{
			*allow = "POST";
			return 405;
		}
		return 0;
	}
	if (path_is(url, len, "/healthz"))
	{
		*route = MPQR_ROUTE_HEALTHZ;
		if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		{
			*allow = "GET, HEAD";
			return 405;
		}
		return 0;
	}
	return 404;
}

/*
 * Judge a request's URI as soon as it arrives: 414 when its query string
 * holds more than MPQR_REQUEST_MAX_URI_ARGS arguments, else 0.
 *
 * libmicrohttpd splits the arguments into its per-connection memory before
 * calling the handler; with too many it runs out, and leaves the client
 * with no answer at all.  Mercado Pago sends three or four.
 */
int
MpqrRequestUriStatus(const char *uri)
{
	const char *q;
	int			args = 1;

	if (uri == NULL || (q = strchr(uri, '?')) == NULL)
		return 0;
	for (q++; *q != '\0'; q++)
	{
		if (*q == '&' && ++args > MPQR_REQUEST_MAX_URI_ARGS)
			return 414;
	}
	return 0;
}

/*
 * Does a Content-Length header announce more than max_body bytes?
 *
 * A value that is not a number is libmicrohttpd's to reject; here it is
 * not too large.
 */
bool
MpqrRequestLengthTooLarge(const char *content_length, size_t max_body)
{
	const char *p = content_length;
	uint64_t	n = 0;

	if (p == NULL)
		return false;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p < '0' || *p > '9')
		return false;
	for (; *p >= '0' && *p <= '9'; p++)
	{
		n = n * 10 + (uint64_t) (*p - '0');
		if (n > max_body)
			return true;
	}
	return false;
}

/*
 * Allocate an empty request.  Returns NULL when out of memory.
 */
MpqrRequest *
MpqrRequestCreate(MpqrRoute route, size_t max_body)
{
	MpqrRequest *req = calloc(1, sizeof(MpqrRequest));

	if (req == NULL)
		return NULL;
	req->route = route;
	req->max_body = max_body;
	return req;
}

void
MpqrRequestFree(MpqrRequest *req)
{
	if (req == NULL)
		return;
	free(req->strings);
	free(req->body);
	free(req);
}

static bool
in_list(const char *name, const char *const *list)
{
	for (; *list != NULL; list++)
	{
		if (strcmp(name, *list) == 0)
			return true;
	}
	return false;
}

/*
 * Copy len bytes and a NUL into the strings buffer; return the offset, or
 * -1 when the request's bound (less the reserve) would be passed.
 */
static int64_t
store_string(MpqrRequest *req, const char *s, size_t len, size_t reserve)
{
	size_t		need = req->strings_len + len + 1;
	int64_t		off;

	if (need > MPQR_REQUEST_MAX_STRINGS - reserve)
		return -1;
	if (need > req->strings_cap)
	{
		size_t		cap = req->strings_cap ? req->strings_cap : 1024;
		char	   *p;

		while (cap < need)
			cap *= 2;
		if (cap > MPQR_REQUEST_MAX_STRINGS)
			cap = MPQR_REQUEST_MAX_STRINGS;
		p = realloc(req->strings, cap);
		if (p == NULL)
			return -1;
		req->strings = p;
		req->strings_cap = cap;
	}
	off = (int64_t) req->strings_len;
	memcpy(req->strings + off, s, len);
	req->strings[off + len] = '\0';
	req->strings_len = need;
	return off;
}

/*
 * Add a name and value to fields[*n] if the bounds allow.  Returns false
 * when the field was dropped.
 */
static bool
add_field(MpqrRequest *req, MpqrField *fields, int *n, int max,
		  const char *name, const char *value, bool lowercase,
		  const char *const *important)
{
	size_t		name_len = strlen(name);
	size_t		value_len = value ? strlen(value) : 0;
	size_t		mark = req->strings_len;
	int64_t		noff,
				voff = 0;
	MpqrField  *f;
	bool		keep;

	if (*n >= max)
		return false;

	noff = store_string(req, name, name_len, 0);
	if (noff < 0)
		return false;
	if (lowercase)
	{
		for (char *p = req->strings + noff; *p != '\0'; p++)
		{
			if (*p >= 'A' && *p <= 'Z')
				*p = (char) (*p + ('a' - 'A'));
		}
	}
	keep = in_list(req->strings + noff, important);
	if (!keep && (*n >= max - RESERVED_FIELDS ||
				  req->strings_len + value_len + 1 >
				  MPQR_REQUEST_MAX_STRINGS - RESERVED_STRINGS))
	{
		req->strings_len = mark;
		return false;
	}
	if (value != NULL)
	{
		voff = store_string(req, value, value_len, 0);
		if (voff < 0)
		{
			req->strings_len = mark;
			return false;
		}
	}

	f = &fields[(*n)++];
	f->name = (uint32_t) noff;
	f->name_len = (uint32_t) name_len;
	f->value = (uint32_t) voff;
	f->value_len = (uint32_t) value_len;
	f->value_null = (value == NULL);
	return true;
}

/*
 * Keep a query argument; value NULL for an argument without '='.
 */
bool
MpqrRequestAddQuery(MpqrRequest *req, const char *name, const char *value)
{
	if (name == NULL)
		return false;
	return add_field(req, req->query, &req->nquery, MPQR_REQUEST_MAX_QUERY,
					 name, value, false, important_query);
}

/*
 * Case-insensitive comparison of a header name with a lowercase name.
 */
static bool
name_is(const char *name, const char *lower)
{
	for (; *name != '\0' && *lower != '\0'; name++, lower++)
	{
		char		c = *name;

		if (c >= 'A' && c <= 'Z')
			c = (char) (c + ('a' - 'A'));
		if (c != *lower)
			return false;
	}
	return *name == *lower;
}

static bool
allowed_header(const char *name)
{
	for (const char *const *a = allowed_headers; *a != NULL; a++)
	{
		if (name_is(name, *a))
			return true;
	}
	return false;
}

/*
 * Is this Content-Length value one decimal number (with optional blanks
 * around it)?
 */
static bool
plain_length(const char *value)
{
	const char *p = value;

	while (*p == ' ' || *p == '\t')
		p++;
	if (*p < '0' || *p > '9')
		return false;
	while (*p >= '0' && *p <= '9')
		p++;
	while (*p == ' ' || *p == '\t')
		p++;
	return *p == '\0';
}

/*
 * Take note of how a header frames the body.
 */
static void
note_framing(MpqrRequest *req, const char *name, const char *value)
{
	if (name_is(name, "content-length"))
	{
		if (req->content_lengths++ > 0 || value == NULL || !plain_length(value))
			req->bad_framing = true;
	}
	else if (name_is(name, "transfer-encoding"))
	{
		if (req->transfer_encodings++ > 0 || value == NULL ||
			!name_is(value, "chunked"))
			req->bad_framing = true;
	}
	if (req->content_lengths > 0 && req->transfer_encodings > 0)
		req->bad_framing = true;
}

/*
 * Look at a header: note its framing, and keep it, its name lowercased, if
 * it is on the allow-list.  Returns whether it was kept.
 */
bool
MpqrRequestAddHeader(MpqrRequest *req, const char *name, const char *value)
{
	if (name == NULL)
		return false;
	note_framing(req, name, value);
	if (!allowed_header(name))
		return false;
	return add_field(req, req->headers, &req->nheaders,
					 MPQR_REQUEST_MAX_HEADERS, name, value ? value : "", true,
					 allowed_headers);
}

/*
 * The answer the headers call for before any body is read: 400 when the
 * body's framing is ambiguous (see note_framing), else 0.
 */
int
MpqrRequestFramingStatus(const MpqrRequest *req)
{
	return req->bad_framing ? 400 : 0;
}

/*
 * Take the next size bytes of the body.
 *
 * Past max_body the body is dropped and the request marked for a 413; the
 * rest is read and thrown away up to MPQR_REQUEST_MAX_DISCARD bytes more,
 * after which the caller should close the connection.
 */
MpqrBodyResult
MpqrRequestAppendBody(MpqrRequest *req, const char *data, size_t size)
{
	size_t		need;

	req->body_seen += size;
	if (req->early_status != 0 || req->body_seen > req->max_body)
	{
		req->early_status = 413;
		free(req->body);
		req->body = NULL;
		req->body_len = 0;
		req->body_cap = 0;
		if (req->body_seen - req->max_body > MPQR_REQUEST_MAX_DISCARD)
			return MPQR_BODY_ABORT;
		return MPQR_BODY_TOO_LARGE;
	}
	if (size == 0)
		return MPQR_BODY_OK;

	need = req->body_len + size;
	if (need > req->body_cap)
	{
		size_t		cap = req->body_cap ? req->body_cap : 1024;
		char	   *p;

		while (cap < need)
			cap *= 2;
		if (cap > req->max_body)
			cap = req->max_body;
		p = realloc(req->body, cap);
		if (p == NULL)
			return MPQR_BODY_ABORT;
		req->body = p;
		req->body_cap = cap;
	}
	memcpy(req->body + req->body_len, data, size);
	req->body_len = need;
	return MPQR_BODY_OK;
}
