/*-------------------------------------------------------------------------
 *
 * listener_http.h
 *		The listener's libmicrohttpd daemon: external epoll mode, requests
 *		suspended until the batch that stores them has committed.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_LISTENER_HTTP_H
#define MPQR_LISTENER_HTTP_H

#include <sys/socket.h>

#include "listener_request.h"

extern bool MpqrHttpdStart(const struct sockaddr *addr,
						  unsigned int connection_limit,
						  unsigned int connection_timeout_s);
extern int	MpqrHttpdEpollFd(void);
extern int	MpqrHttpdPort(void);
extern void MpqrHttpdRun(void);
extern long MpqrHttpdTimeout(void);
extern MpqrRequest *MpqrHttpdTakePending(void);
extern void MpqrHttpdAnswer(MpqrRequest *req, int status);
extern const char *MpqrHttpdNextLogLine(void);
extern unsigned long MpqrHttpdLogLinesDropped(void);

#endif							/* MPQR_LISTENER_HTTP_H */
