/*-------------------------------------------------------------------------
 *
 * listener_http.c
 *		The listener's HTTP server: libmicrohttpd in external epoll mode.
 *
 * Only the listener worker runs this, on its one thread; libmicrohttpd
 * starts no thread of its own in this mode.  The worker calls
 * MpqrHttpdRun() when the daemon's epoll fd is readable, and that is the
 * only place where libmicrohttpd calls back into this file.
 *
 * The callbacks only copy: the request line and headers go through
 * listener_request.c, which routes them (404 and 405 are answered at
 * once, and so are an ambiguous framing of the body, with 400, and a
 * Content-Length over mpqr.max_body, with 413), then the body is buffered,
 * and when it is complete the request joins the pending list and its
 * connection is suspended.  The worker takes the list, stores
 * the whole batch in one transaction, and answers each request with
 * MpqrHttpdAnswer(), which queues the response and resumes the connection.
 *
 * Every connection is booked in listener_conn.c, so that none can hold its
 * place for ever: after each run, a connection past its deadline (a whole
 * request within mpqr.listen_request_timeout) is answered 408 if it had
 * started a request, and shut down; near the connection cap the oldest
 * connections are shut down as well, so that new ones are always served.
 * A held request (complete, waiting for its batch) is never shut down.
 * Shutting the socket down, rather than closing it, leaves libmicrohttpd
 * the owner of the descriptor: its next run reads the end of the stream
 * and closes the connection as it would any other.
 *
 * No PostgreSQL error may unwind through libmicrohttpd's frames, so the
 * callbacks use malloc and static memory only: no palloc and no ereport.
 * Even the log callback only formats into a static ring, which the worker
 * empties into the server log after each run.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <sys/socket.h>

#include "storage/ipc.h"

#include "guc.h"
#include "listener_conn.h"
#include "listener_http.h"
#include "shmem.h"

/* per connection: buffer for headers, and the read buffer for the body */
#define CONNECTION_MEMORY_LIMIT ((size_t) 32 * 1024)

/*
 * Near the cap: the oldest connections are shut down while more than the
 * limit less this share of it are open.
 */
#define CONNECTION_RESERVE_DIVISOR	8

/*
 * Written as they are to a connection before it is shut down: where
 * libmicrohttpd has no answer to give (see shut_down).
 */
static const char timeout_answer[] =
"HTTP/1.1 408 Request Timeout\r\n"
"Connection: close\r\n"
"Content-Type: application/json\r\n"
"Content-Length: 28\r\n"
"\r\n"
"{\"error\":\"request timeout\"}\n";

static const char uri_answer[] =
"HTTP/1.1 414 URI Too Long\r\n"
"Connection: close\r\n"
"Content-Type: application/json\r\n"
"Content-Length: 37\r\n"
"\r\n"
"{\"error\":\"too many query arguments\"}\n";

/* messages kept from libmicrohttpd between two runs */
#define LOG_RING_SIZE	16
#define LOG_LINE_SIZE	256

/* A response built once and queued as often as needed. */
typedef struct CannedResponse
{
	int			status;
	MpqrRoute	route;			/* whose 200 or 503 this is */
	const char *allow;			/* Allow header of a 405, else NULL */
	const char *body;
	struct MHD_Response *response;
} CannedResponse;

static CannedResponse canned[] = {
	{200, MPQR_ROUTE_NOTIFICATIONS, NULL, "{\"status\":\"stored\"}\n"},
	{200, MPQR_ROUTE_HEALTHZ, NULL, "{\"status\":\"ok\"}\n"},
	{400, MPQR_ROUTE_NOTIFICATIONS, NULL, "{\"error\":\"malformed request\"}\n"},
	{401, MPQR_ROUTE_NOTIFICATIONS, NULL, "{\"error\":\"invalid signature\"}\n"},
	{404, MPQR_ROUTE_NOTIFICATIONS, NULL, "{\"error\":\"not found\"}\n"},
	{405, MPQR_ROUTE_NOTIFICATIONS, "POST", "{\"error\":\"method not allowed\"}\n"},
	{405, MPQR_ROUTE_HEALTHZ, "GET, HEAD", "{\"error\":\"method not allowed\"}\n"},
	{413, MPQR_ROUTE_NOTIFICATIONS, NULL, "{\"error\":\"body too large\"}\n"},
	{414, MPQR_ROUTE_NOTIFICATIONS, NULL, "{\"error\":\"too many query arguments\"}\n"},
	{500, MPQR_ROUTE_NOTIFICATIONS, NULL, "{\"error\":\"internal error\"}\n"},
	{503, MPQR_ROUTE_NOTIFICATIONS, NULL, "{\"error\":\"unavailable\"}\n"},
	{503, MPQR_ROUTE_HEALTHZ, NULL, "{\"status\":\"unavailable\"}\n"},
};

static struct MHD_Daemon *http_daemon = NULL;
static unsigned int http_connection_limit = 0;
static unsigned int http_connection_timeout_s = 0;

/* complete requests waiting for the batch, in arrival order */
static MpqrRequest *pending_head = NULL;
static MpqrRequest *pending_tail = NULL;

/* libmicrohttpd's messages, waiting for the worker to log them */
static char log_ring[LOG_RING_SIZE][LOG_LINE_SIZE];
static int	log_first = 0;
static int	log_count = 0;
static unsigned long log_dropped = 0;

/*
 * Keep a message of libmicrohttpd for the worker to log.
 */
static void
http_log(void *cls, const char *fmt, va_list ap)
{
	char	   *line;
	size_t		len;

	if (log_count == LOG_RING_SIZE)
	{
		log_dropped++;
		return;
	}
	line = log_ring[(log_first + log_count) % LOG_RING_SIZE];
	vsnprintf(line, LOG_LINE_SIZE, fmt, ap);
	len = strlen(line);
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		line[--len] = '\0';
	log_count++;
}

/*
 * libmicrohttpd found its own state inconsistent, and must not be returned
 * to.  Exit with status 1: the postmaster restarts just this worker, in
 * about a second, where abort() would restart the whole cluster.  No
 * transaction is open while libmicrohttpd runs.
 */
static void
http_panic(void *cls, const char *file, unsigned int line, const char *reason)
{
	write_stderr("mpqr listener: libmicrohttpd failed at %s:%u: %s\n",
				 file ? file : "?", line, reason ? reason : "unknown error");
	proc_exit(1);
}

/*
 * Count an answer in the counters that mpqr_status() shows.
 */
static void
count_answer(int status)
{
	MpqrCount(MPQR_CTR_HTTP_REQUESTS, 1);
	if (status == 503)
		MpqrCount(MPQR_CTR_UNAVAILABLE, 1);
	else if (status == 401)
		MpqrCount(MPQR_CTR_SIGNATURE_REJECTED, 1);
	else if (status >= 400 && status < 500)
		MpqrCount(MPQR_CTR_BAD_REQUESTS, 1);
}

/*
 * The response for a status: the route's own if it has one, else any with
 * that status, else the 500.
 */
static struct MHD_Response *
canned_response(int status, MpqrRoute route, const char *allow)
{
	CannedResponse *fallback = NULL;

	for (int i = 0; i < lengthof(canned); i++)
	{
		CannedResponse *c = &canned[i];

		if (c->status != status)
			continue;
		if (status == 405)
		{
			if (allow != NULL && strcmp(c->allow, allow) == 0)
				return c->response;
			continue;
		}
		if (c->route == route)
			return c->response;
		if (fallback == NULL)
			fallback = c;
	}
	if (fallback != NULL)
		return fallback->response;
	for (int i = 0; i < lengthof(canned); i++)
	{
		if (canned[i].status == 500)
			return canned[i].response;
	}
	return NULL;
}

/*
 * The booking of a connection, or NULL if it could not be booked.
 */
static MpqrConn *
booked(struct MHD_Connection *connection)
{
	const union MHD_ConnectionInfo *info;

	info = MHD_get_connection_info(connection,
								   MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return info ? (MpqrConn *) info->socket_context : NULL;
}

static void
set_phase(struct MHD_Connection *connection, MpqrConnPhase phase)
{
	MpqrConn   *c = booked(connection);

	if (c != NULL)
		MpqrConnSetPhase(c, phase, MpqrConnNowMs());
}

/*
 * Answer a request right away, from inside the handler.
 */
static enum MHD_Result
answer_now(struct MHD_Connection *connection, int status, MpqrRoute route,
		   const char *allow)
{
	count_answer(status);
	set_phase(connection, MPQR_CONN_ANSWERING);
	return MHD_queue_response(connection, status,
							  canned_response(status, route, allow));
}

static enum MHD_Result
keep_query(void *cls, enum MHD_ValueKind kind, const char *key,
		   const char *value)
{
	MpqrRequestAddQuery((MpqrRequest *) cls, key, value);
	return MHD_YES;
}

static enum MHD_Result
keep_header(void *cls, enum MHD_ValueKind kind, const char *key,
			const char *value)
{
	MpqrRequestAddHeader((MpqrRequest *) cls, key, value);
	return MHD_YES;
}

/*
 * libmicrohttpd's access handler: called with the headers first, then
 * with each piece of the body, then once more with none when the request
 * is complete.
 */
static enum MHD_Result
handle_request(void *cls, struct MHD_Connection *connection,
			   const char *url, const char *method, const char *version,
			   const char *upload_data, size_t *upload_data_size,
			   void **con_cls)
{
	MpqrRequest *req = *con_cls;

	if (req == NULL)
	{
		MpqrRoute	route = MPQR_ROUTE_NOTIFICATIONS;
		const char *allow;
		int			status;
		size_t		max_body = 0;
		MpqrConn   *c = booked(connection);

		status = MpqrRequestRoute(method, url, &route, &allow);
		if (status == 0 && c != NULL && c->refuse_status != 0)
			status = c->refuse_status;
		if (status != 0)
			return answer_now(connection, status, route, allow);

		if (route == MPQR_ROUTE_NOTIFICATIONS)
		{
			const char *length;

			max_body = (size_t) mpqr_max_body;
			length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
												 MHD_HTTP_HEADER_CONTENT_LENGTH);
			if (MpqrRequestLengthTooLarge(length, max_body))
				return answer_now(connection, 413, route, NULL);
		}

		req = MpqrRequestCreate(route, max_body);
		if (req == NULL)
			return MHD_NO;
		req->connection = connection;
		*con_cls = req;
		if (route == MPQR_ROUTE_NOTIFICATIONS)
			MHD_get_connection_values(connection, MHD_GET_ARGUMENT_KIND,
									  keep_query, req);
		MHD_get_connection_values(connection, MHD_HEADER_KIND,
								  keep_header, req);
		status = MpqrRequestFramingStatus(req);
		if (status != 0)
		{
			req->answered = true;
			return answer_now(connection, status, route, NULL);
		}
		return MHD_YES;
	}

	/* called again after an answer that could not be queued: give up */
	if (req->answered)
		return MHD_NO;

	if (*upload_data_size > 0)
	{
		if (MpqrRequestAppendBody(req, upload_data, *upload_data_size) ==
			MPQR_BODY_ABORT)
			return MHD_NO;
		*upload_data_size = 0;
		return MHD_YES;
	}

	if (req->early_status != 0)
	{
		req->answered = true;
		return answer_now(connection, req->early_status, req->route, NULL);
	}

	/* complete: hand it to the worker, and wait for its answer */
	req->next = NULL;
	if (pending_tail != NULL)
		pending_tail->next = req;
	else
		pending_head = req;
	pending_tail = req;
	set_phase(connection, MPQR_CONN_HELD);
	MHD_suspend_connection(connection);
	return MHD_YES;
}

/*
 * The request line has arrived: the request has begun.  What this returns
 * is the handler's first *con_cls, which must stay NULL.
 */
static void *
request_started(void *cls, const char *uri, struct MHD_Connection *connection)
{
	MpqrConn   *c = booked(connection);

	if (c != NULL)
	{
		MpqrConnSetPhase(c, MPQR_CONN_READING, MpqrConnNowMs());
		c->refuse_status = MpqrRequestUriStatus(uri);
	}
	return NULL;
}

/*
 * Book each connection when it is accepted, and strike it off when
 * libmicrohttpd closes it.
 */
static void
connection_notified(void *cls, struct MHD_Connection *connection,
					void **socket_context,
					enum MHD_ConnectionNotificationCode toe)
{
	if (toe == MHD_CONNECTION_NOTIFY_STARTED)
	{
		const union MHD_ConnectionInfo *info;

		info = MHD_get_connection_info(connection,
									   MHD_CONNECTION_INFO_CONNECTION_FD);
		*socket_context = info ? MpqrConnOpen(info->connect_fd, connection,
											  MpqrConnNowMs()) : NULL;
	}
	else if (toe == MHD_CONNECTION_NOTIFY_CLOSED)
	{
		MpqrConnClose((MpqrConn *) *socket_context);
		*socket_context = NULL;
	}
}

/*
 * Free a request once libmicrohttpd is done with its connection.
 */
static void
request_completed(void *cls, struct MHD_Connection *connection,
				  void **con_cls, enum MHD_RequestTerminationCode toe)
{
	MpqrRequestFree((MpqrRequest *) *con_cls);
	*con_cls = NULL;
	set_phase(connection, MPQR_CONN_WAITING);
}

/*
 * Start the daemon on addr.  Returns false when it could not bind; the
 * reason is among the log lines.
 */
bool
MpqrHttpdStart(const struct sockaddr *addr, unsigned int connection_limit,
			  unsigned int connection_timeout_s)
{
	unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
		MHD_USE_ERROR_LOG;

	Assert(http_daemon == NULL);

	MHD_set_panic_func(http_panic, NULL);

	for (int i = 0; i < lengthof(canned); i++)
	{
		CannedResponse *c = &canned[i];

		if (c->response != NULL)
			continue;
		c->response = MHD_create_response_from_buffer(strlen(c->body),
													  (void *) c->body,
													  MHD_RESPMEM_PERSISTENT);
		if (c->response == NULL)
			return false;
		MHD_add_response_header(c->response, MHD_HTTP_HEADER_CONTENT_TYPE,
								"application/json");
		if (c->allow != NULL)
			MHD_add_response_header(c->response, MHD_HTTP_HEADER_ALLOW,
									c->allow);
	}

	if (addr->sa_family == AF_INET6)
		flags |= MHD_USE_IPv6;

	/*
	 * The logger must come first, so that it sees the errors of the options
	 * after it.  The URI logger's only use is to learn when a request has
	 * begun.  MHD_OPTION_LISTENING_ADDRESS_REUSE is left out on purpose:
	 * without it the socket gets plain SO_REUSEADDR, which rebinds at once
	 * after a crash; 0 would disable that, 1 would add SO_REUSEPORT.
	 */
	http_daemon = MHD_start_daemon(flags, 0, NULL, NULL,
								   handle_request, NULL,
								   MHD_OPTION_EXTERNAL_LOGGER, http_log, NULL,
								   MHD_OPTION_SOCK_ADDR, addr,
								   MHD_OPTION_CONNECTION_LIMIT,
								   connection_limit,
								   MHD_OPTION_CONNECTION_TIMEOUT,
								   connection_timeout_s,
								   MHD_OPTION_CONNECTION_MEMORY_LIMIT,
								   CONNECTION_MEMORY_LIMIT,
								   MHD_OPTION_NOTIFY_COMPLETED,
								   request_completed, NULL,
								   MHD_OPTION_NOTIFY_CONNECTION,
								   connection_notified, NULL,
								   MHD_OPTION_URI_LOG_CALLBACK,
								   request_started, NULL,
								   MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1,
								   MHD_OPTION_END);
	if (http_daemon == NULL)
		return false;
	http_connection_limit = connection_limit;
	http_connection_timeout_s = connection_timeout_s;
	return true;
}

/*
 * The daemon's epoll fd, for the worker's WaitEventSet.
 */
int
MpqrHttpdEpollFd(void)
{
	const union MHD_DaemonInfo *info;

	info = MHD_get_daemon_info(http_daemon, MHD_DAEMON_INFO_EPOLL_FD);
	return info ? info->epoll_fd : -1;
}

/*
 * The port the daemon is bound to.
 */
int
MpqrHttpdPort(void)
{
	const union MHD_DaemonInfo *info;

	info = MHD_get_daemon_info(http_daemon, MHD_DAEMON_INFO_BIND_PORT);
	return info ? (int) info->port : 0;
}

static unsigned int
current_connections(void)
{
	const union MHD_DaemonInfo *info;

	info = MHD_get_daemon_info(http_daemon,
							   MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
	return info ? info->num_connections : 0;
}

static void
connection_limits(MpqrConnLimits *limits)
{
	limits->request_ms = mpqr_listen_request_timeout_ms;
	limits->idle_ms = (int64_t) http_connection_timeout_s * 1000;
}

/*
 * Has libmicrohttpd an answer of its own for this connection, which it can
 * send?  While it is still reading a request it has none, and writes
 * nothing.  A URI refused on arrival (see MpqrRequestUriStatus) that the
 * handler never saw is one whose arguments exhausted the connection's
 * memory: libmicrohttpd 0.9.75 then queues a 431 that never leaves, and
 * lets the client wait for its idle timeout.
 */
static bool
answer_queued(const MpqrConn *c)
{
	const union MHD_ConnectionInfo *info;

	info = MHD_get_connection_info((struct MHD_Connection *) c->handle,
								   MHD_CONNECTION_INFO_HTTP_STATUS);
	if (info == NULL)
		return false;
	return !(c->refuse_status != 0 &&
			 info->http_status == MHD_HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE);
}

/*
 * Shut a connection down: libmicrohttpd's next run closes it.  First it
 * is told why (408, or 414 for a URI refused on arrival), unless it was
 * idle between requests or libmicrohttpd has an answer of its own, so
 * that these bytes cannot interleave with libmicrohttpd's.  Best effort:
 * the socket buffer may be full.
 */
static void
shut_down(MpqrConn *c)
{
	int			status = MpqrConnTimeoutStatus(c);

	if (status != 0 && !answer_queued(c))
	{
		const char *answer = status == 414 ? uri_answer : timeout_answer;
		size_t		len = status == 414 ? sizeof(uri_answer) - 1 :
		sizeof(timeout_answer) - 1;
		ssize_t		rc;

		do
			rc = send(c->fd, answer, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		while (rc < 0 && errno == EINTR);
		count_answer(status);
	}
	(void) shutdown(c->fd, SHUT_RDWR);
	MpqrConnMarkEvicted(c);
}

/*
 * Shut down the connections past their deadline, then, near the cap, the
 * oldest ones until there is room again.
 */
static void
enforce_limits(void)
{
	MpqrConnLimits limits;
	int64_t		now = MpqrConnNowMs();
	unsigned int reserve = http_connection_limit / CONNECTION_RESERVE_DIVISOR;
	MpqrConn   *c;
	uint64		timed_out = 0;
	uint64		evicted = 0;

	connection_limits(&limits);
	while ((c = MpqrConnNextExpired(&limits, now)) != NULL)
	{
		if (c->refuse_status == 0)
			timed_out++;
		shut_down(c);
	}
	if (reserve > 0)
	{
		while ((unsigned int) MpqrConnLive() > http_connection_limit - reserve &&
			   (c = MpqrConnOldestEvictable()) != NULL)
		{
			shut_down(c);
			evicted++;
		}
	}
	if (timed_out > 0)
		MpqrCount(MPQR_CTR_CONNECTIONS_TIMED_OUT, timed_out);
	if (evicted > 0)
		MpqrCount(MPQR_CTR_CONNECTIONS_EVICTED, evicted);
}

/*
 * Let libmicrohttpd do all the I/O it can without blocking.
 *
 * At the connection limit libmicrohttpd stops watching its listen socket,
 * and watches it again only at the start of a run; so when a run closes
 * connections of a full daemon, run once more, or new clients would wait
 * for some unrelated event.
 */
void
MpqrHttpdRun(void)
{
	unsigned int before = current_connections();

	MHD_run(http_daemon);
	if (before >= http_connection_limit &&
		current_connections() < http_connection_limit)
		MHD_run(http_daemon);
	enforce_limits();
}

/*
 * How long the worker may wait before it must run the daemon again, in
 * milliseconds, or -1 for as long as it likes.
 */
long
MpqrHttpdTimeout(void)
{
	MHD_UNSIGNED_LONG_LONG timeout;
	MpqrConnLimits limits;
	int64_t		deadline;
	long		ms = -1;

	if (MHD_get_timeout(http_daemon, &timeout) == MHD_YES)
		ms = timeout > (MHD_UNSIGNED_LONG_LONG) INT_MAX ? INT_MAX : (long) timeout;

	connection_limits(&limits);
	deadline = MpqrConnNextDeadline(&limits);
	if (deadline >= 0)
	{
		int64_t		left = deadline - MpqrConnNowMs();

		if (left < 0)
			left = 0;
		if (left > INT_MAX)
			left = INT_MAX;
		if (ms < 0 || left < ms)
			ms = (long) left;
	}
	return ms;
}

/*
 * Take every complete request, as a list linked by next.
 */
MpqrRequest *
MpqrHttpdTakePending(void)
{
	MpqrRequest *list = pending_head;

	pending_head = pending_tail = NULL;
	return list;
}

/*
 * Answer a request taken from the pending list, and resume its connection.
 *
 * Note: the request is freed by the next MpqrHttpdRun(), once its answer
 * is sent.
 */
void
MpqrHttpdAnswer(MpqrRequest *req, int status)
{
	struct MHD_Connection *connection = req->connection;

	count_answer(status);
	req->status = status;
	req->answered = true;
	MHD_queue_response(connection, status,
					   canned_response(status, req->route, NULL));
	MHD_resume_connection(connection);
}

/*
 * The next message libmicrohttpd logged, or NULL.  The line stays valid
 * until the next run.
 */
const char *
MpqrHttpdNextLogLine(void)
{
	const char *line;

	if (log_count == 0)
		return NULL;
	line = log_ring[log_first];
	log_first = (log_first + 1) % LOG_RING_SIZE;
	log_count--;
	return line;
}

/*
 * How many messages were dropped because the ring was full, since the
 * last call.
 */
unsigned long
MpqrHttpdLogLinesDropped(void)
{
	unsigned long n = log_dropped;

	log_dropped = 0;
	return n;
}
