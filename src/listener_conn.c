/*-------------------------------------------------------------------------
 *
 * listener_conn.c
 *		The listener's book of open connections.
 *
 * libmicrohttpd's own timeout counts only idle time, so a client that
 * sends one byte a second keeps its connection for ever, and enough of
 * them fill the connection cap.  So each connection is booked here, with
 * the phase it is in and when that phase's clock started:
 *
 *	waiting		accepted, or answered and kept alive, with no request line
 *				yet.  A new connection must deliver its whole first request
 *				within the request limit of its accept; a kept-alive one
 *				must start its next request within the idle limit.
 *	reading		the request line has arrived: headers and body must follow
 *				within the request limit of it (for a first request, of the
 *				accept).
 *	answering	the handler queued a 4xx; the answer must be gone within the
 *				request limit.
 *	held		the request is complete and with the worker, which answers
 *				it once stored: never closed from here, so that nothing
 *				acknowledged is lost.
 *
 * A connection refused before the handler could answer it (see
 * MpqrRequestUriStatus) has its deadline now.  Past its deadline a
 * connection is shut down (listener_http.c).  Near the
 * cap the oldest ones that are not held are shut down too, whatever their
 * phase: a real notification arrives whole in milliseconds, so it is
 * never the oldest, and new connections always find room.
 *
 * The book is a list in the order of since_ms: every phase change that
 * restarts a clock moves the connection to the tail.
 *
 *-------------------------------------------------------------------------
 */
#include <stdlib.h>
#include <time.h>

#include "listener_conn.h"

static MpqrConn *book_head = NULL;
static MpqrConn *book_tail = NULL;
static int	book_count = 0;
static int	book_evicted = 0;

/*
 * Milliseconds on the monotonic clock.
 */
int64_t
MpqrConnNowMs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
unlink_conn(MpqrConn *c)
{
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		book_head = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	else
		book_tail = c->prev;
	c->prev = c->next = NULL;
}

static void
append_conn(MpqrConn *c)
{
	c->prev = book_tail;
	c->next = NULL;
	if (book_tail != NULL)
		book_tail->next = c;
	else
		book_head = c;
	book_tail = c;
}

/*
 * Book a connection just accepted.  Returns NULL when out of memory.
 */
MpqrConn *
MpqrConnOpen(int fd, void *handle, int64_t now)
{
	MpqrConn   *c = calloc(1, sizeof(MpqrConn));

	if (c == NULL)
		return NULL;
	c->fd = fd;
	c->handle = handle;
	c->phase = MPQR_CONN_WAITING;
	c->first = true;
	c->since_ms = now;
	append_conn(c);
	book_count++;
	return c;
}

/*
 * Strike a closed connection from the book, and free it.
 */
void
MpqrConnClose(MpqrConn *c)
{
	if (c == NULL)
		return;
	unlink_conn(c);
	book_count--;
	if (c->evicted)
		book_evicted--;
	free(c);
}

/*
 * Move a connection to a phase.  The request line of a first request keeps
 * the clock of the accept; an answer ends the first request.
 */
void
MpqrConnSetPhase(MpqrConn *c, MpqrConnPhase phase, int64_t now)
{
	bool		restart;

	if (phase == MPQR_CONN_READING)
		restart = !c->first;
	else if (phase == MPQR_CONN_WAITING)
	{
		restart = true;
		c->first = false;
	}
	else
		restart = (phase != c->phase);
	if (phase != MPQR_CONN_READING)
		c->refuse_status = 0;
	c->phase = phase;
	if (restart)
	{
		c->since_ms = now;
		unlink_conn(c);
		append_conn(c);
	}
}

/* connections open and not shut down */
int
MpqrConnLive(void)
{
	return book_count - book_evicted;
}

/*
 * When a connection's phase must be over, or -1 for never.
 */
static int64_t
deadline_of(const MpqrConn *c, const MpqrConnLimits *limits)
{
	if (c->evicted || c->phase == MPQR_CONN_HELD)
		return -1;
	if (c->refuse_status != 0)
		return 0;
	if (c->phase == MPQR_CONN_WAITING && !c->first)
		return c->since_ms + limits->idle_ms;
	return c->since_ms + limits->request_ms;
}

/*
 * The earliest deadline in the book, or -1.
 */
int64_t
MpqrConnNextDeadline(const MpqrConnLimits *limits)
{
	int64_t		next = -1;

	for (MpqrConn *c = book_head; c != NULL; c = c->next)
	{
		int64_t		d = deadline_of(c, limits);

		if (d >= 0 && (next < 0 || d < next))
			next = d;
	}
	return next;
}

/*
 * A connection whose deadline has passed, or NULL.
 */
MpqrConn *
MpqrConnNextExpired(const MpqrConnLimits *limits, int64_t now)
{
	for (MpqrConn *c = book_head; c != NULL; c = c->next)
	{
		int64_t		d = deadline_of(c, limits);

		if (d >= 0 && d <= now)
			return c;
	}
	return NULL;
}

/*
 * The connection to shut down first when room is needed: the oldest that
 * is neither held nor already shut down.  NULL when there is none.
 */
MpqrConn *
MpqrConnOldestEvictable(void)
{
	for (MpqrConn *c = book_head; c != NULL; c = c->next)
	{
		if (!c->evicted && c->phase != MPQR_CONN_HELD)
			return c;
	}
	return NULL;
}

void
MpqrConnMarkEvicted(MpqrConn *c)
{
	if (!c->evicted)
	{
		c->evicted = true;
		book_evicted++;
	}
}

/*
 * What to tell a connection that is shut down, before the end of the
 * stream: its refusal, or 408 when a request was (or may have been) on
 * its way; 0 for nothing, for a kept-alive connection that was idle, or
 * one whose answer is already queued.
 */
int
MpqrConnTimeoutStatus(const MpqrConn *c)
{
	if (c->refuse_status != 0)
		return c->refuse_status;
	if (c->phase == MPQR_CONN_READING ||
		(c->phase == MPQR_CONN_WAITING && c->first))
		return 408;
	return 0;
}
