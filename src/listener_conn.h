/*-------------------------------------------------------------------------
 *
 * listener_conn.h
 *		The listener's book of open connections: what each is doing, since
 *		when, and which to close when a deadline passes or the connection
 *		cap is near.
 *
 * Plain C with no PostgreSQL or libmicrohttpd dependency, like
 * listener_request.h: it runs inside libmicrohttpd's callbacks.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_LISTENER_CONN_H
#define MPQR_LISTENER_CONN_H

#include <stdbool.h>
#include <stdint.h>

typedef enum MpqrConnPhase
{
	MPQR_CONN_WAITING,			/* accepted or answered; no request line yet */
	MPQR_CONN_READING,			/* request line seen; the rest on its way */
	MPQR_CONN_ANSWERING,		/* answered from the handler (4xx) */
	MPQR_CONN_HELD				/* complete: with the worker until answered */
} MpqrConnPhase;

typedef struct MpqrConn
{
	int			fd;
	MpqrConnPhase phase;
	bool		first;			/* no request completed on it yet */
	bool		evicted;		/* shut down, libmicrohttpd yet to close it */
	int			refuse_status;	/* to be shut down at once with this answer */
	void	   *handle;			/* libmicrohttpd's connection */
	int64_t		since_ms;		/* start of the phase's clock */
	struct MpqrConn *prev;		/* the book, oldest since_ms first */
	struct MpqrConn *next;
} MpqrConn;

/* What each phase may last, in milliseconds. */
typedef struct MpqrConnLimits
{
	int64_t		request_ms;		/* a whole request, from accept or request line */
	int64_t		idle_ms;		/* between an answer and the next request line */
} MpqrConnLimits;

extern int64_t MpqrConnNowMs(void);
extern MpqrConn *MpqrConnOpen(int fd, void *handle, int64_t now);
extern void MpqrConnClose(MpqrConn *c);
extern void MpqrConnSetPhase(MpqrConn *c, MpqrConnPhase phase, int64_t now);
extern int	MpqrConnLive(void);
extern int64_t MpqrConnNextDeadline(const MpqrConnLimits *limits);
extern MpqrConn *MpqrConnNextExpired(const MpqrConnLimits *limits, int64_t now);
extern MpqrConn *MpqrConnOldestEvictable(void);
extern void MpqrConnMarkEvicted(MpqrConn *c);
extern int	MpqrConnTimeoutStatus(const MpqrConn *c);

#endif							/* MPQR_LISTENER_CONN_H */
