/*-------------------------------------------------------------------------
 *
 * listener_request.h
 *		One HTTP request as the listener keeps it between libmicrohttpd's
 *		callbacks and the batch transaction: route, query arguments,
 *		headers and body, all bounded.
 *
 * Plain C with no PostgreSQL or libmicrohttpd dependency: it runs inside
 * libmicrohttpd's callbacks, where only malloc is allowed, and the fuzz
 * targets link it on its own.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_LISTENER_REQUEST_H
#define MPQR_LISTENER_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* bounds on what one request may keep */
#define MPQR_REQUEST_MAX_QUERY		32	/* query arguments */
#define MPQR_REQUEST_MAX_HEADERS	48	/* allowed headers, repeats included */
#define MPQR_REQUEST_MAX_STRINGS	16384	/* bytes of names and values */
#define MPQR_REQUEST_MAX_URI_ARGS	128 /* query arguments in a URI, at most */

/*
 * A body over max_body is read and thrown away (so that the 413 can be
 * answered) up to this many bytes past the limit; after that the
 * connection is closed without an answer.
 */
#define MPQR_REQUEST_MAX_DISCARD	(1024 * 1024)

typedef enum MpqrRoute
{
	MPQR_ROUTE_NOTIFICATIONS,	/* POST /notifications */
	MPQR_ROUTE_HEALTHZ			/* GET /healthz */
} MpqrRoute;

typedef enum MpqrBodyResult
{
	MPQR_BODY_OK,				/* kept */
	MPQR_BODY_TOO_LARGE,		/* over max_body: thrown away, answer 413 */
	MPQR_BODY_ABORT				/* far over, or out of memory: close */
} MpqrBodyResult;

/* A name and its value, as offsets into MpqrRequest.strings. */
typedef struct MpqrField
{
	uint32_t	name;
	uint32_t	name_len;
	uint32_t	value;
	uint32_t	value_len;
	bool		value_null;		/* a query argument given without '=' */
} MpqrField;

typedef struct MpqrRequest
{
	MpqrRoute	route;
	size_t		max_body;

	/* the answer decided while reading (413), or 0 */
	int			early_status;

	/* how the headers frame the body (see MpqrRequestFramingStatus) */
	int			content_lengths;
	int			transfer_encodings;
	bool		bad_framing;

	int			nquery;
	int			nheaders;
	MpqrField	query[MPQR_REQUEST_MAX_QUERY];
	MpqrField	headers[MPQR_REQUEST_MAX_HEADERS];
	char	   *strings;		/* NUL-terminated names and values */
	size_t		strings_len;
	size_t		strings_cap;

	char	   *body;			/* not NUL-terminated; NULL when empty */
	size_t		body_len;
	size_t		body_cap;
	uint64_t	body_seen;		/* bytes received, kept or not */

	/* owned by the listener: its connection, batch link and answer */
	void	   *connection;
	struct MpqrRequest *next;
	int			status;
	bool		answered;
} MpqrRequest;

extern int	MpqrRequestRoute(const char *method, const char *url,
							 MpqrRoute *route, const char **allow);
extern int	MpqrRequestUriStatus(const char *uri);
extern bool MpqrRequestLengthTooLarge(const char *content_length,
									  size_t max_body);
extern MpqrRequest *MpqrRequestCreate(MpqrRoute route, size_t max_body);
extern void MpqrRequestFree(MpqrRequest *req);
extern bool MpqrRequestAddQuery(MpqrRequest *req, const char *name,
								const char *value);
extern bool MpqrRequestAddHeader(MpqrRequest *req, const char *name,
								 const char *value);
extern int	MpqrRequestFramingStatus(const MpqrRequest *req);
extern MpqrBodyResult MpqrRequestAppendBody(MpqrRequest *req,
											const char *data, size_t size);

static inline const char *
MpqrFieldName(const MpqrRequest *req, const MpqrField *f)
{
	return req->strings + f->name;
}

static inline const char *
MpqrFieldValue(const MpqrRequest *req, const MpqrField *f)
{
	return f->value_null ? NULL : req->strings + f->value;
}

#endif							/* MPQR_LISTENER_REQUEST_H */
