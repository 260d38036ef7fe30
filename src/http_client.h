/*-------------------------------------------------------------------------
 *
 * http_client.h
 *		The sender's HTTP client: libcurl multi, driven through one epoll fd.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_HTTP_CLIENT_H
#define MPQR_HTTP_CLIENT_H

/* largest response body kept; a longer one is reported as an error */
#define MPQR_HTTP_MAX_RESPONSE (1024 * 1024)

/* longest description of a request kept for error messages */
#define MPQR_HTTP_LABEL_LEN 160

typedef struct MpqrHttpClient MpqrHttpClient;

/*
 * One request to start.  Every string is copied by MpqrHttpStart, so the
 * caller may free them as soon as it returns.
 */
typedef struct MpqrHttpRequest
{
	int64		id;				/* caller's id, handed back in the result */
	uint32		tag;			/* caller's tag, handed back in the result */
	int32		attempt;		/* caller's attempt number, handed back too */
	const char *method;			/* GET, POST, PUT, DELETE, ... */
	const char *url;
	const char *body;			/* NULL for none */
	const char *const *headers; /* "Name: value" strings, NULL-terminated */
	const char *user_agent;
	const char *label;			/* short text for error messages */
} MpqrHttpRequest;

/*
 * The outcome of one request.  status is 0 for a network error (refused,
 * timed out, TLS failure, dropped connection); error then says what
 * happened.  body and error are palloc'd in the caller's context.
 */
typedef struct MpqrHttpResult
{
	int64		id;
	uint32		tag;
	int32		attempt;
	int			status;
	char	   *body;			/* NULL when the response had none */
	int			body_len;
	char	   *error;			/* NULL when none */
	int			retry_after;	/* seconds from Retry-After, -1 if absent */
	char		label[MPQR_HTTP_LABEL_LEN];
} MpqrHttpResult;

extern MpqrHttpClient *MpqrHttpCreate(void);
extern void MpqrHttpDestroy(MpqrHttpClient *client);
extern void MpqrHttpConfigure(MpqrHttpClient *client);
extern int	MpqrHttpSocket(MpqrHttpClient *client);
extern long MpqrHttpTimeout(MpqrHttpClient *client);
extern bool MpqrHttpStart(MpqrHttpClient *client, const MpqrHttpRequest *req,
						  char *error, size_t error_size);
extern void MpqrHttpDrive(MpqrHttpClient *client);
extern bool MpqrHttpNextResult(MpqrHttpClient *client, MpqrHttpResult *result);
extern int	MpqrHttpInFlight(MpqrHttpClient *client);

#endif							/* MPQR_HTTP_CLIENT_H */
