/*-------------------------------------------------------------------------
 *
 * http_client.c
 *		The sender's HTTP client: one libcurl multi handle, driven through
 *		curl's socket API and one private epoll fd.
 *
 * Only the sender worker uses this file.  It keeps one multi handle for its
 * whole life, so that connections (keep-alive) and TLS sessions are reused,
 * and recycles easy handles through a free list.  curl reports the sockets
 * it wants watched to socket_cb, which mirrors them into a private epoll
 * set; that one fd sits in the worker's WaitEventSet next to its latch.
 * curl's timer_cb only records a deadline, which the worker turns into the
 * timeout of its wait.
 *
 * Note: curl calls socket_cb, timer_cb and write_cb from inside its own
 * stack frames, so they must never ereport or palloc: they record errors
 * in plain fields and grow response buffers with malloc.  Results are
 * copied into palloc'd memory only in MpqrHttpNextResult, outside curl.
 * Memory that curl allocates (easy handles, header lists) is freed with
 * curl's own functions.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "utils/memutils.h"

#include "guc.h"
#include "http_client.h"

/* epoll events handled per MpqrHttpDrive call */
#define MPQR_HTTP_MAX_EVENTS 64

/* response buffers larger than this are freed rather than kept for reuse */
#define MPQR_HTTP_KEEP_BUFFER (64 * 1024)

typedef struct MpqrHttpTransfer
{
	CURL	   *easy;
	struct MpqrHttpTransfer *next_free; /* free list link */
	struct MpqrHttpTransfer *next_all;	/* every transfer, for cleanup */
	bool		active;			/* added to the multi handle */
	struct curl_slist *headers; /* allocated by curl */
	int64		id;
	uint32		tag;
	int32		attempt;
	char	   *buf;			/* response body, malloc'd */
	size_t		len;
	size_t		cap;
	bool		truncated;		/* body exceeded MPQR_HTTP_MAX_RESPONSE */
	bool		oom;			/* malloc failed in write_cb */
	char		errbuf[CURL_ERROR_SIZE];
	char		label[MPQR_HTTP_LABEL_LEN];
} MpqrHttpTransfer;

struct MpqrHttpClient
{
	MemoryContext cxt;			/* holds this struct and the transfers */
	CURLM	   *multi;
	int			epfd;
	MpqrHttpTransfer *free_list;
	MpqrHttpTransfer *all;
	int			in_flight;
	bool		timer_set;		/* curl wants a timeout call at deadline */
	int64		timer_deadline; /* monotonic microseconds */
	int			socket_errno;	/* last epoll_ctl failure in socket_cb */
};

static bool curl_initialised = false;

/*
 * Monotonic clock, in microseconds.
 */
static int64
monotonic_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * curl's socket callback: mirror the sockets curl watches into our epoll
 * set.  Must not ereport.
 */
static int
socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	MpqrHttpClient *client = (MpqrHttpClient *) userp;
	struct epoll_event ev;

	if (what == CURL_POLL_REMOVE)
	{
		/* curl may already have closed it; nothing to do then */
		(void) epoll_ctl(client->epfd, EPOLL_CTL_DEL, s, NULL);
		return 0;
	}

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
		ev.events |= EPOLLIN;
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
		ev.events |= EPOLLOUT;

	if (epoll_ctl(client->epfd, EPOLL_CTL_MOD, s, &ev) != 0)
	{
		if (errno != ENOENT ||
			epoll_ctl(client->epfd, EPOLL_CTL_ADD, s, &ev) != 0)
			client->socket_errno = errno;
	}
	return 0;
}

/*
 * curl's timer callback: remember when curl wants to be called with
 * CURL_SOCKET_TIMEOUT.  Must not ereport.
 */
static int
timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	MpqrHttpClient *client = (MpqrHttpClient *) userp;

	if (timeout_ms < 0)
		client->timer_set = false;
	else
	{
		client->timer_set = true;
		client->timer_deadline = monotonic_us() + (int64) timeout_ms * 1000;
	}
	return 0;
}

/*
 * curl's write callback: append to the transfer's malloc'd buffer, up to
 * MPQR_HTTP_MAX_RESPONSE.  Must not ereport.
 */
static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	MpqrHttpTransfer *t = (MpqrHttpTransfer *) userdata;
	size_t		n = size * nmemb;

	if (t->truncated)
		return n;
	if (t->len + n > MPQR_HTTP_MAX_RESPONSE)
	{
		/* keep reading, so the connection stays usable, but drop it */
		t->truncated = true;
		return n;
	}
	if (t->len + n + 1 > t->cap)
	{
		size_t		newcap = Max(t->cap, 4096);
		char	   *p;

		while (newcap < t->len + n + 1)
			newcap *= 2;
		p = realloc(t->buf, newcap);
		if (p == NULL)
		{
			t->oom = true;
			return 0;			/* makes curl fail the transfer */
		}
		t->buf = p;
		t->cap = newcap;
	}
	memcpy(t->buf + t->len, ptr, n);
	t->len += n;
	return n;
}

/*
 * Raise the soft limit on open files to the hard limit: each connection
 * costs a descriptor, and the default soft limit of 1024 is too low for a
 * large mpqr.max_in_flight.
 */
static void
raise_nofile_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur == rl.rlim_max)
		return;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
		ereport(LOG,
				(errmsg("could not raise the open files limit of the sender: %m")));
}

/*
 * Create the client: the multi handle, the epoll fd and the callbacks.
 * The client lives in its own context under TopMemoryContext.
 */
MpqrHttpClient *
MpqrHttpCreate(void)
{
	MemoryContext cxt;
	MpqrHttpClient *client;

	raise_nofile_limit();

	if (!curl_initialised)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not initialize libcurl")));
		curl_initialised = true;
	}

	cxt = AllocSetContextCreate(TopMemoryContext, "mpqr http client",
								ALLOCSET_DEFAULT_SIZES);
	client = MemoryContextAllocZero(cxt, sizeof(MpqrHttpClient));
	client->cxt = cxt;
	client->epfd = -1;

	client->multi = curl_multi_init();
	if (client->multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));

	client->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (client->epfd < 0)
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("could not create an epoll descriptor: %m")));

	curl_multi_setopt(client->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
	curl_multi_setopt(client->multi, CURLMOPT_SOCKETDATA, client);
	curl_multi_setopt(client->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(client->multi, CURLMOPT_TIMERDATA, client);
	/* HTTP/1.1 only: no multiplexing */
	curl_multi_setopt(client->multi, CURLMOPT_PIPELINING, (long) CURLPIPE_NOTHING);

	MpqrHttpConfigure(client);

	return client;
}

/*
 * Apply the settings that belong to the multi handle.  Call again after a
 * configuration reload; per-request settings (timeouts, CA file) are read
 * by each MpqrHttpStart.
 */
void
MpqrHttpConfigure(MpqrHttpClient *client)
{
	long		limit = mpqr_max_in_flight;

	curl_multi_setopt(client->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, limit);
	curl_multi_setopt(client->multi, CURLMOPT_MAX_HOST_CONNECTIONS, limit);
	curl_multi_setopt(client->multi, CURLMOPT_MAXCONNECTS, limit);
}

/*
 * Abandon every transfer and free everything curl holds.  The client's
 * memory context is deleted too.
 */
void
MpqrHttpDestroy(MpqrHttpClient *client)
{
	MpqrHttpTransfer *t;

	for (t = client->all; t != NULL; t = t->next_all)
	{
		if (t->active)
			curl_multi_remove_handle(client->multi, t->easy);
		curl_easy_cleanup(t->easy);
		curl_slist_free_all(t->headers);
		free(t->buf);
	}
	curl_multi_cleanup(client->multi);
	if (client->epfd >= 0)
		close(client->epfd);
	MemoryContextDelete(client->cxt);
}

/*
 * The fd that becomes readable when curl has socket work to do.
 */
int
MpqrHttpSocket(MpqrHttpClient *client)
{
	return client->epfd;
}

/*
 * Milliseconds until curl wants MpqrHttpDrive called even without socket
 * activity; -1 when it has no timer.
 */
long
MpqrHttpTimeout(MpqrHttpClient *client)
{
	int64		remaining;

	if (!client->timer_set)
		return -1;
	remaining = client->timer_deadline - monotonic_us();
	if (remaining <= 0)
		return 0;
	return (long) ((remaining + 999) / 1000);
}

/*
 * Number of requests started and not yet handed back as results.
 */
int
MpqrHttpInFlight(MpqrHttpClient *client)
{
	return client->in_flight;
}

/*
 * Take a transfer from the free list, or make a new one; NULL when libcurl
 * cannot make a handle.
 */
static MpqrHttpTransfer *
get_transfer(MpqrHttpClient *client)
{
	MpqrHttpTransfer *t = client->free_list;

	if (t != NULL)
	{
		client->free_list = t->next_free;
		t->next_free = NULL;
		return t;
	}

	t = MemoryContextAllocZero(client->cxt, sizeof(MpqrHttpTransfer));
	t->easy = curl_easy_init();
	if (t->easy == NULL)
	{
		pfree(t);
		return NULL;
	}
	t->next_all = client->all;
	client->all = t;
	return t;
}

/*
 * Make a finished transfer ready for reuse and put it on the free list.
 */
static void
release_transfer(MpqrHttpClient *client, MpqrHttpTransfer *t)
{
	curl_easy_reset(t->easy);
	curl_slist_free_all(t->headers);
	t->headers = NULL;
	if (t->cap > MPQR_HTTP_KEEP_BUFFER)
	{
		free(t->buf);
		t->buf = NULL;
		t->cap = 0;
	}
	t->len = 0;
	t->truncated = false;
	t->oom = false;
	t->errbuf[0] = '\0';
	t->label[0] = '\0';
	t->next_free = client->free_list;
	client->free_list = t;
}

/*
 * Append one header line to the transfer's list; false when out of memory.
 */
static bool
add_header(MpqrHttpTransfer *t, const char *line)
{
	struct curl_slist *l = curl_slist_append(t->headers, line);

	if (l == NULL)
		return false;
	t->headers = l;
	return true;
}

/*
 * Start one request.  It runs as MpqrHttpDrive is called; its outcome comes
 * back from MpqrHttpNextResult.  Returns false, with the reason in error,
 * when it could not even be started (out of memory in libcurl); nothing is
 * then in flight for it.  Never raises an error.
 */
bool
MpqrHttpStart(MpqrHttpClient *client, const MpqrHttpRequest *req,
			  char *error, size_t error_size)
{
	MpqrHttpTransfer *t = get_transfer(client);
	CURL	   *easy;
	bool		has_body = (req->body != NULL);
	bool		bodyless_method = (strcmp(req->method, "GET") == 0 ||
								   strcmp(req->method, "DELETE") == 0 ||
								   strcmp(req->method, "HEAD") == 0);
	bool		ok = true;
	CURLMcode	mc;

	if (t == NULL)
	{
		strlcpy(error, "could not create a libcurl easy handle", error_size);
		return false;
	}
	easy = t->easy;
	t->id = req->id;
	t->tag = req->tag;
	t->attempt = req->attempt;
	strlcpy(t->label, req->label ? req->label : req->method, sizeof(t->label));

	for (const char *const *h = req->headers; h != NULL && *h != NULL; h++)
		ok = ok && add_header(t, *h);
	/* never wait for "100 Continue" */
	ok = ok && add_header(t, "Expect:");
	/* no form-urlencoded default for an empty POST or PUT */
	if (!has_body && !bodyless_method)
		ok = ok && add_header(t, "Content-Type:");
	if (!ok)
	{
		release_transfer(client, t);
		strlcpy(error, "out of memory while building the request headers", error_size);
		return false;
	}

	curl_easy_setopt(easy, CURLOPT_PRIVATE, t);
	curl_easy_setopt(easy, CURLOPT_URL, req->url);
#if CURL_AT_LEAST_VERSION(7, 85, 0)
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_PROXY, "");
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (mpqr_ca_file != NULL && mpqr_ca_file[0] != '\0')
		curl_easy_setopt(easy, CURLOPT_CAINFO, mpqr_ca_file);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) mpqr_connect_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) mpqr_http_timeout_ms);
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	if (req->user_agent != NULL)
		curl_easy_setopt(easy, CURLOPT_USERAGENT, req->user_agent);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, t->headers);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, t->errbuf);

	if (has_body)
	{
		/* the size first, so that COPYPOSTFIELDS copies exactly that */
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
						 (curl_off_t) strlen(req->body));
		curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, req->body);
		if (strcmp(req->method, "POST") != 0)
			curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req->method);
	}
	else if (strcmp(req->method, "GET") == 0)
		curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
	else if (bodyless_method)
		curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req->method);
	else
	{
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) 0);
		curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, "");
		if (strcmp(req->method, "POST") != 0)
			curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req->method);
	}

	mc = curl_multi_add_handle(client->multi, easy);
	if (mc != CURLM_OK)
	{
		release_transfer(client, t);
		snprintf(error, error_size, "could not start the request: %s",
				 curl_multi_strerror(mc));
		return false;
	}
	t->active = true;
	client->in_flight++;
	return true;
}

/*
 * Let curl do the socket work that is ready and fire its timer if due.
 * Never blocks.
 */
void
MpqrHttpDrive(MpqrHttpClient *client)
{
	struct epoll_event events[MPQR_HTTP_MAX_EVENTS];
	int			n;
	int			running;

	n = epoll_wait(client->epfd, events, MPQR_HTTP_MAX_EVENTS, 0);
	if (n < 0 && errno != EINTR)
		elog(ERROR, "epoll_wait failed: %m");

	for (int i = 0; i < n; i++)
	{
		int			flags = 0;

		if (events[i].events & EPOLLIN)
			flags |= CURL_CSELECT_IN;
		if (events[i].events & EPOLLOUT)
			flags |= CURL_CSELECT_OUT;
		if (events[i].events & (EPOLLERR | EPOLLHUP))
			flags |= CURL_CSELECT_ERR;
		curl_multi_socket_action(client->multi, events[i].data.fd, flags,
								 &running);
	}

	if (client->timer_set && client->timer_deadline <= monotonic_us())
	{
		client->timer_set = false;
		curl_multi_socket_action(client->multi, CURL_SOCKET_TIMEOUT, 0,
								 &running);
	}

	if (client->socket_errno != 0)
	{
		errno = client->socket_errno;
		client->socket_errno = 0;
		ereport(WARNING,
				(errcode_for_socket_access(),
				 errmsg("could not watch an API connection: %m"),
				 errdetail("The request will fail when it times out.")));
	}
}

/*
 * Seconds that a Retry-After header asks for, or -1.  Both the
 * delay-seconds and the HTTP-date forms are understood.
 */
static int
retry_after_seconds(CURL *easy)
{
	struct curl_header *h;
	const char *v;
	char	   *end;
	long		secs;

	if (curl_easy_header(easy, "Retry-After", 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return -1;
	v = h->value;
	while (*v == ' ' || *v == '\t')
		v++;
	if (*v >= '0' && *v <= '9')
	{
		errno = 0;
		secs = strtol(v, &end, 10);
		while (*end == ' ' || *end == '\t')
			end++;
		if (*end != '\0')
			return -1;
		if (errno == ERANGE || secs > INT_MAX)
			return INT_MAX;
		return (int) secs;
	}
	else
	{
		time_t		when = curl_getdate(v, NULL);
		time_t		now = time(NULL);

		if (when == (time_t) -1)
			return -1;
		if (when <= now)
			return 0;
		return (int) Min((int64) (when - now), (int64) INT_MAX);
	}
}

/*
 * Hand back the outcome of one finished request, if any.  Returns false
 * when none has finished since the last call.  The result's strings are
 * palloc'd in the current memory context.
 */
bool
MpqrHttpNextResult(MpqrHttpClient *client, MpqrHttpResult *result)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(client->multi, &left)) != NULL)
	{
		MpqrHttpTransfer *t = NULL;
		CURLcode	code = msg->data.result;
		CURL	   *easy = msg->easy_handle;
		long		status = 0;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &t);

		memset(result, 0, sizeof(MpqrHttpResult));
		result->id = t->id;
		result->tag = t->tag;
		result->attempt = t->attempt;
		result->retry_after = -1;
		strlcpy(result->label, t->label, sizeof(result->label));

		if (code == CURLE_OK)
			curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);

		if (code != CURLE_OK || status <= 0)
		{
			const char *text;

			if (t->oom)
				text = "out of memory while reading the response";
			else if (t->errbuf[0] != '\0')
				text = t->errbuf;
			else if (code != CURLE_OK)
				text = curl_easy_strerror(code);
			else
				text = "no HTTP response";
			result->status = 0;
			result->error = pstrdup(text);
			/* curl's messages sometimes end with a newline */
			if (result->error[0] != '\0' &&
				result->error[strlen(result->error) - 1] == '\n')
				result->error[strlen(result->error) - 1] = '\0';
		}
		else
		{
			result->status = (int) status;
			result->retry_after = retry_after_seconds(easy);
			if (t->truncated)
				result->error = psprintf("response body larger than %d bytes dropped",
										 MPQR_HTTP_MAX_RESPONSE);
			else if (t->len > 0)
			{
				result->body = palloc(t->len + 1);
				memcpy(result->body, t->buf, t->len);
				result->body[t->len] = '\0';
				result->body_len = (int) t->len;
			}
		}

		curl_multi_remove_handle(client->multi, easy);
		t->active = false;
		client->in_flight--;
		release_transfer(client, t);
		return true;
	}
	return false;
}
