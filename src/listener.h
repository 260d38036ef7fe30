/*-------------------------------------------------------------------------
 *
 * listener.h
 *		The listener background worker: an HTTP server for notifications.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MPQR_LISTENER_H
#define MPQR_LISTENER_H

extern void MpqrListenerRegister(void);

#endif							/* MPQR_LISTENER_H */
